"""``losskit lab [EXPERIMENT ...] [--quick] [--seeds N] [--out DIR] [--threads N]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .core import LabContext
from .runner import EXPERIMENTS, LabError, resolve_experiments, run_lab

__all__ = ["build_parser", "main"]

DEFAULT_SEEDS = {"full": 10, "quick": 3, "tiny": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="losskit lab",
        description=(
            "Run experiments on bundled data that show what each loss does; writes DIR/report.md, "
            "DIR/results.json and PNG figures."
        ),
        epilog="experiments: " + ", ".join(EXPERIMENTS),
    )
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="experiments to run (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer seeds and steps (a few minutes for all)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke-test size
    p.add_argument(
        "--seeds", type=int, default=None, metavar="N", help="number of seeds (default 10, quick 3)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("lab-out"), metavar="DIR", help="output directory (lab-out)"
    )
    p.add_argument("--threads", type=int, default=2, metavar="N", help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are drawn only when stderr is a terminal)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``losskit lab``; returns the process exit code (2 for usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code or 0)
    if args.list:
        for name, (_, title) in EXPERIMENTS.items():
            print(f"{name:28s} {title}")
        return 0
    if args.seeds is not None and args.seeds < 1:
        print("losskit lab: error: --seeds must be >= 1", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("losskit lab: error: --threads must be >= 1", file=sys.stderr)
        return 2
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    n_seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[mode]
    ctx = LabContext(
        mode=mode,
        seeds=list(range(n_seeds)),
        out_dir=args.out,
        threads=args.threads,
        progress=not args.no_progress and sys.stderr.isatty(),  # bars on a terminal only
    )
    command = "losskit lab" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    try:
        names = resolve_experiments(args.experiments)
        results = run_lab(names, ctx, command=command)
    except LabError as exc:
        print(f"losskit lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("losskit lab: interrupted; the previous report (if any) is left as it was", file=sys.stderr)
        return 130
    print(f"wrote {ctx.out_dir / 'report.md'} and {ctx.out_dir / 'results.json'}")
    failed = [r.name for r in results if r.error]
    if failed:
        print(f"losskit lab: experiments failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
