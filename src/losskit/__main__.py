"""``losskit`` command line: ``losskit lab ...``, ``losskit bench ...``, ``losskit catalog``, ``losskit --version``."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "lab": "run experiments on bundled data that show what each loss does (needs losskit[lab])",
    "bench": "measure speed and memory of losses side by side",
    "catalog": "print the catalog table of every loss (or write it into README.md)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="losskit",
        description="losskit command line",
        epilog="commands:\n"
        + "\n".join(f"  {k:9s} {v}" for k, v in COMMANDS.items())
        + "\n\n`losskit COMMAND --help` describes a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), help="what to run")
    parser.add_argument("--version", action="store_true", help="print the versions of losskit and torch")
    return parser


def _version() -> str:
    import torch

    import losskit

    return f"losskit {losskit.__version__} (torch {torch.__version__})"


def _catalog(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="losskit catalog",
        description="Print the catalog table of every registered loss (Markdown), or write it into a README "
        "between its catalog markers.",
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const="README.md",
        metavar="PATH",
        help="replace the table between the catalog markers of PATH (default README.md in the current "
        "directory: run it from the repository root)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return int(exc.code or 0)
    from ._checks import LossValueError
    from .registry import catalog_markdown, update_readme_catalog

    if args.write is None:
        print(catalog_markdown())
        return 0
    try:
        update_readme_catalog(args.write)
    except FileNotFoundError:
        print(
            f"losskit catalog: error: {args.write} not found (run `losskit catalog --write` from the "
            "repository root, or pass the README's path)",
            file=sys.stderr,
        )
        return 2
    except (OSError, UnicodeDecodeError, LossValueError) as exc:
        print(f"losskit catalog: error: {exc}", file=sys.stderr)
        return 2
    print(f"catalog written to {args.write}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``losskit``; returns the process exit code (2 for usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(_version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        try:
            parser.parse_args(argv[:1])  # prints usage and "invalid choice" to stderr
        except SystemExit as exc:
            return int(exc.code or 2)
        return 2
    if command == "catalog":
        return _catalog(rest)
    if command == "lab":
        from .lab.cli import main as lab_main

        return lab_main(rest)
    from .bench.cli import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
