"""``losskit bench``: forward/backward time and memory of losskit's losses side by side.

    losskit bench [--quick] [--only NAME ...] [--json PATH] [--threads N] [--repeat N]
                  [--dtype float32|bfloat16|float16] [--no-peak] [--no-scaling] [--no-progress]
                  [--extra FILE_OR_MODULE ...]

For each case: shape, dtype, threads, torch version; median forward, backward and total
milliseconds over ``--repeat`` (>= 10 by default) interleaved rounds after warm-up; ratios to the
eager composition and to the nearest native torch loss; bytes held for backward (inputs excluded);
peak RSS growth of one forward+backward in a fresh subprocess. See :mod:`losskit.bench.measure` for
the exact rules. A scaling section times the losskit function, the eager composition and the native
loss across ``N`` and ``C``. Output is a markdown table on stdout (and JSON with ``--json``, which
holds every figure of the table). A progress bar goes to stderr when it is a terminal (tqdm, if
installed); ``--no-progress`` turns it off.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .cases import CASES, Case, load_extra
from .measure import held_bytes, peak_growth_subprocess, time_variants

__all__ = ["main", "run"]


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n == 0:
        return "0"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _ratio(a: float, b: float | None) -> float | None:
    return None if not b else a / b


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def _input_bytes(args: Sequence[Any]) -> int:
    return sum(a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr when ``enabled`` and stderr is a terminal; otherwise a silent stand-in."""
    if enabled and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="losskit bench", leave=False, dynamic_ncols=True)
        except ImportError:  # tqdm is optional
            pass
    return _NoBar()


def _repeat(case: Case, repeat: int) -> int:
    return repeat if case.max_repeat is None else min(repeat, case.max_repeat)


def run_case(
    case: Case,
    *,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    threads: int,
    repeat: int,
    peak: bool,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure every available variant of ``case`` at ``shape``; returns a JSON-able record."""
    repeat = _repeat(case, repeat)
    args, grad_idx = case.make(shape, dtype, 0)
    available = [v for v in case.variants() if v.fn is not None]
    variants = [v for v in available if v.runs_at(shape)]
    too_large = [v.name for v in available if not v.runs_at(shape)]
    fns = {v.name: v.fn for v in variants if v.fn is not None}  # every variant that runs has one
    times = time_variants(fns, args, grad_idx, repeat=repeat)
    base = {v.role: times[v.name]["total"] for v in variants if v.role in ("eager", "native")}
    rows = []
    for v in variants:
        t = times[v.name]
        row = {
            "variant": v.name,
            "role": v.role,
            "forward_ms": t["fwd"],
            "backward_ms": t["bwd"],
            "total_ms": t["total"],
            "vs_eager": _ratio(t["total"], base.get("eager")),
            "vs_native": _ratio(t["total"], base.get("native")),
            "held_bytes": held_bytes(fns[v.name], args, grad_idx),
            "peak_bytes": (
                peak_growth_subprocess(case.name, v.name, shape, str(dtype).split(".")[-1], threads, extra)
                if peak
                else None
            ),
            "note": v.note,
        }
        rows.append(row)
    return {
        "case": case.name,
        "shape": list(shape),
        "dtype": str(dtype).split(".")[-1],
        "threads": threads,
        "torch": torch.__version__,
        "input_bytes": _input_bytes(args),
        "repeat": repeat,
        "rows": rows,
        "too_large": too_large,
        "note": case.note,
    }


def run_scaling(case: Case, *, dtype: torch.dtype, threads: int, repeat: int) -> list[dict[str, Any]]:
    """Total time and held bytes of the losskit / kernel / eager / native variants across shapes."""
    out = []
    roles = ("losskit", "kernel", "eager", "native")
    repeat = _repeat(case, repeat)
    for shape in case.scaling:
        variants = [v for v in case.variants() if v.role in roles and v.runs_at(shape)]
        args, grad_idx = case.make(shape, dtype, 0)
        fns = {v.name: v.fn for v in variants if v.fn is not None}  # every variant that runs has one
        times = time_variants(fns, args, grad_idx, repeat=repeat)
        for v in variants:
            out.append(
                {
                    "case": case.name,
                    "shape": list(shape),
                    "variant": v.name,
                    "role": v.role,
                    "total_ms": times[v.name]["total"],
                    "held_bytes": held_bytes(fns[v.name], args, grad_idx),
                }
            )
    return out


def run(
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    threads: int = 2,
    repeat: int = 10,
    dtype: str = "float32",
    peak: bool = True,
    scaling: bool = True,
    extra: Sequence[str] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and return ``{"meta", "cases", "scaling", "skipped"}`` (the JSON output)."""
    for e in extra:
        load_extra(e)
    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    names = list(only) if only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown benchmark case(s) {unknown}; available: {sorted(CASES)}")
    skipped = []
    for mod in ("kornia", "monai", "torchvision", "pytorch_metric_learning"):
        try:
            __import__(mod)
        except Exception:
            skipped.append(mod)
    results = []
    with_scaling = scaling and not quick
    bar = _bar(len(names) * (2 if with_scaling else 1), progress)
    try:
        for name in names:
            case = CASES[name]
            shape = case.quick_shape if quick else case.shape
            bar.set_postfix_str(name)
            results.append(
                run_case(case, shape=shape, dtype=dt, threads=threads, repeat=repeat, peak=peak, extra=extra)
            )
            bar.update()
        scale = []
        if with_scaling:
            for name in names:
                bar.set_postfix_str(f"{name} scaling")
                scale.extend(run_scaling(CASES[name], dtype=dt, threads=threads, repeat=repeat))
                bar.update()
    finally:
        bar.close()
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "dtype": dtype,
        "repeat": repeat,
        "quick": quick,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    return {"meta": meta, "cases": results, "scaling": scale, "skipped_peers": skipped}


def to_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        f"### losskit bench — torch {m['torch']}, {m['dtype']}, {m['threads']} threads, "
        f"median of {m['repeat']} after warm-up",
        "",
        "Times are forward+backward in ms; ratios are total time over the eager composition and over "
        "the native torch loss on the same tensors. *Held* = bytes saved for backward beyond the "
        "inputs; *peak* = peak RSS growth of one forward+backward in a fresh process.",
        "",
    ]
    for rec in report["cases"]:
        shape = "x".join(str(d) for d in rec["shape"])
        lines += [
            f"#### {rec['case']} — shape ({shape}), {rec['dtype']}, {rec['threads']} threads, "
            f"torch {rec['torch']}, inputs {_fmt_bytes(rec['input_bytes'])}",
            "",
            "| variant | role | fwd ms | bwd ms | total ms | vs eager | vs native | held | peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rec["rows"]:
            name = r["variant"] + (f" ({r['note']})" if r["note"] else "")
            lines.append(
                f"| {name} | {r['role']} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | {r['total_ms']:.1f} "
                f"| {_fmt_ratio(r['vs_eager'])} | {_fmt_ratio(r['vs_native'])} | {_fmt_bytes(r['held_bytes'])} "
                f"| {_fmt_bytes(r['peak_bytes'])} |"
            )
        if rec.get("too_large"):
            lines += [
                "",
                "Not run at this shape (memory beyond this machine): " + ", ".join(rec["too_large"]),
            ]
        lines.append("")
    if report["scaling"]:
        lines += [
            "#### Scaling (total fwd+bwd ms / bytes held for backward)",
            "",
            "| case | shape | variant | total ms | held |",
            "|---|---|---|---:|---:|",
        ]
        for r in report["scaling"]:
            shape = "x".join(str(d) for d in r["shape"])
            lines.append(
                f"| {r['case']} | {shape} | {r['variant']} | {r['total_ms']:.1f} | {_fmt_bytes(r['held_bytes'])} |"
            )
        lines.append("")
    if report["skipped_peers"]:
        lines.append(
            "Peers not importable (skipped): "
            + ", ".join(report["skipped_peers"])
            + " (`pip install losskit[peers]` installs kornia, MONAI and pytorch-metric-learning; "
            "torchvision must match the installed torch build)."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="losskit bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, no scaling section")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"cases to run, from {sorted(CASES)}")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds after warm-up (default 10)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-peak", action="store_true", help="skip the subprocess peak-memory runs")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling section")
    parser.add_argument("--extra", nargs="+", default=[], metavar="FILE", help="modules adding cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if ns.repeat < 1 or ns.threads < 1:
        parser.error("--repeat and --threads must be >= 1")
    report = run(
        quick=ns.quick,
        only=ns.only,
        threads=ns.threads,
        repeat=ns.repeat,
        dtype=ns.dtype,
        peak=not ns.no_peak,
        scaling=not ns.no_scaling,
        extra=ns.extra,
        progress=not ns.no_progress,
    )
    print(to_markdown(report))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
