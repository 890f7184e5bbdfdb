"""``losskit`` command line: ``losskit lab ...``, ``losskit bench ...``, ``losskit catalog``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="losskit", description="losskit command line")
    parser.add_argument("command", choices=["lab", "bench", "catalog"], help="what to run")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "catalog":
        from .registry import catalog_markdown, update_readme_catalog

        if rest[:1] == ["--write"]:
            path = rest[1] if len(rest) > 1 else "README.md"
            update_readme_catalog(path)
            print(f"catalog written to {path}")
        else:
            print(catalog_markdown())
        return 0
    if command == "lab":
        from .lab.cli import main as lab_main

        return lab_main(rest)
    if command == "bench":
        from .bench.cli import main as bench_main

        return bench_main(rest)
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
