"""Check and time losskit's fused kernels and chunked losses on a CUDA device.

    python benchmarks/gpu_check.py [--only NAME ...] [--budget-s S] [--repeat N] [--json PATH]
                                   [--device cuda|cpu] [--tiny] [--no-compile]

Runs from a plain checkout (``../src`` goes first on ``sys.path``) with only torch (>= 2.4), numpy and
losskit. The cases are listed in ``benchmarks/gpu_cases.py``. For each case:

* **check** (float32 and bfloat16): every losskit variant (the public call with the fused kernels
  forced on, its reference path with them off, the kernel called directly) runs on the device; the
  loss and the input gradients are compared with a float64 CPU run of the reference path (or of the
  eager composition where the case has no separate reference path) on the same input values. The
  figures are relative errors ``||a - ref|| / ||ref||``; a NaN or inf never passes. The eager
  composition's error on the device is reported beside them (the precision floor of the dtype).
* **time**: forward+backward of every variant (losskit, kernel, eager, native, and torch's native
  ``F.linear_cross_entropy`` where the installed torch has it), warm-up first, then the median of
  ``--repeat`` runs timed with ``torch.cuda.Event``; ratios to the eager composition and the native
  loss; the peak ``torch.cuda.max_memory_allocated`` of one forward+backward (stats reset before it).

One table is printed last and the same figures go to JSON (``--json``; default ``$OUT/gpu_check.json``
if ``OUT`` is set, else ``./gpu_check.json``). Exit status 1 if any check failed or a losskit variant
raised; 0 (with a message) where no CUDA device is present and ``--device cpu`` was not given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _p in (_HERE.parent / "src", _HERE):
    if _p.is_dir() and str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from gpu_cases import GPU_CASES, GpuCase  # noqa: E402

# relative-error limits (loss and gradients) against the float64 reference
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 1e-2}
CHECKED_ROLES = ("losskit", "kernel")
TIMED_ROLES = ("losskit", "kernel", "eager", "native")

COLUMNS = [
    ("case", "case"),
    ("phase", "phase"),
    ("dtype", "dtype"),
    ("shape", "shape"),
    ("variant", "variant"),
    ("role", "role"),
    ("loss_rel", "loss rel err"),
    ("grad_rel", "grad rel err"),
    ("status", "status"),
    ("ms", "fwd+bwd ms"),
    ("vs_eager", "x eager"),
    ("vs_native", "x native"),
    ("peak_mib", "peak MiB"),
]


# ----------------------------------------------------------------------------- helpers


def _bench_case(name: str) -> Any:
    import losskit.bench  # noqa: F401  (registers the cases)
    from losskit.bench.cases import get_case

    return get_case(name)


def _move(args: Sequence[Any], device: torch.device, to64: bool = False) -> list[Any]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            a = a.detach()
            if to64 and a.is_floating_point():
                a = a.double()
            a = a.to(device)
        out.append(a)
    return out


def _leaves(args: Sequence[Any], grad_idx: Sequence[int]) -> list[Any]:
    out = list(args)
    for i in grad_idx:
        out[i] = args[i].detach().clone().requires_grad_(True)
    return out


def _forward_backward(fn: Callable[..., torch.Tensor], args: Sequence[Any], grad_idx: Sequence[int]):
    """Loss (detached) and the gradients of the ``grad_idx`` inputs."""
    leaves = _leaves(args, grad_idx)
    loss = fn(*leaves)
    loss.backward()
    grads = [leaves[i].grad for i in grad_idx]
    return loss.detach(), grads


def rel_err(a: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    """``||a - ref|| / ||ref||`` in float64 on the CPU; inf if ``a`` is missing or not finite."""
    if a is None or ref is None:
        return math.inf if (a is None) != (ref is None) else 0.0
    a64 = a.detach().double().cpu()
    r64 = ref.detach().double().cpu()
    if a64.shape != r64.shape or not bool(torch.isfinite(a64).all()):
        return math.inf
    den = float(r64.norm())
    num = float((a64 - r64).norm())
    return num / den if den > 0 else num


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reference_variant(variants: list[Any]) -> Any:
    for v in variants:
        if v.role == "losskit" and "(reference path)" in v.name:
            return v
    return next(v for v in variants if v.role == "eager")


# ----------------------------------------------------------------------------- phases


def check_case(gc: GpuCase, shape: tuple[int, ...], dtype_name: str, device: torch.device) -> list[dict]:
    """Accuracy rows of one case at one dtype."""
    from losskit._kernels import fused_kernels

    case = _bench_case(gc.bench)
    dtype = getattr(torch, dtype_name)
    variants = [v for v in case.variants() if v.fn is not None and v.runs_at(shape)]
    ref_v = _reference_variant(variants)
    args, grad_idx = case.make(shape, dtype, 0)
    ref_loss, ref_grads = _forward_backward(ref_v.fn, _move(args, torch.device("cpu"), True), grad_idx)
    dev_args = _move(args, device)
    tol = TOLERANCE[dtype_name]
    rows = []
    checked = [v for v in variants if v.role in CHECKED_ROLES] + [v for v in variants if v.role == "eager"]
    for v in checked:
        row = _row(gc, "check", dtype_name, shape, v.name, v.role)
        try:
            with fused_kernels("always"):  # the public call takes its kernel at every size
                loss, grads = _forward_backward(v.fn, dev_args, grad_idx)
            row["loss_rel"] = rel_err(loss, ref_loss)
            row["grad_rel"] = max((rel_err(g, r) for g, r in zip(grads, ref_grads)), default=0.0)
            ok = max(row["loss_rel"], row["grad_rel"]) <= tol
            row["status"] = ("PASS" if ok else "FAIL") if v.role in CHECKED_ROLES else "info"
            if not ok and v.role in CHECKED_ROLES:
                row["message"] = f"relative error above {tol:g} (or not finite)"
        except Exception as exc:
            row.update(_failed(exc, counts=v.role in CHECKED_ROLES))
        rows.append(row)
        _free(device)
    return rows


def _time_one(fn, args, grad_idx, device: torch.device, warmup: int, repeat: int) -> tuple[float, float | None]:
    """Median fwd+bwd milliseconds and the peak allocated MiB of one fwd+bwd (CUDA only)."""
    leaves = _leaves(args, grad_idx)

    def step() -> None:
        fn(*leaves).backward()
        for i in grad_idx:
            leaves[i].grad = None

    for _ in range(warmup):
        step()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), peak


def time_case(
    gc: GpuCase, shape: tuple[int, ...], dtype_name: str, device: torch.device, warmup: int, repeat: int
) -> list[dict]:
    """Timing and peak-memory rows of one case at one dtype."""
    case = _bench_case(gc.bench)
    variants = [v for v in case.variants() if v.fn is not None and v.role in TIMED_ROLES]
    args, grad_idx = case.make(shape, getattr(torch, dtype_name), 0)
    dev_args = _move(args, device)
    del args
    rows = []
    for v in variants:
        row = _row(gc, "time", dtype_name, shape, v.name, v.role)
        if not v.runs_at(shape):
            row["status"] = "skipped"
            row["message"] = "does not fit this shape"
        else:
            try:
                row["ms"], row["peak_mib"] = _time_one(v.fn, dev_args, grad_idx, device, warmup, repeat)
                row["status"] = "ok"
            except Exception as exc:
                row.update(_failed(exc, counts=v.role in CHECKED_ROLES))
        rows.append(row)
        _free(device)
    base = {r["role"]: r["ms"] for r in rows if r["role"] in ("eager", "native") and r.get("ms")}
    for r in rows:
        if r.get("ms") is not None:
            r["vs_eager"] = r["ms"] / base["eager"] if "eager" in base else None
            r["vs_native"] = r["ms"] / base["native"] if "native" in base else None
    return rows


def _row(gc: GpuCase, phase: str, dtype: str, shape: Sequence[int], variant: str, role: str) -> dict:
    row: dict[str, Any] = {
        "case": gc.name,
        "phase": phase,
        "dtype": dtype,
        "shape": "x".join(map(str, shape)),
        "variant": variant,
        "role": role,
    }
    for key, _ in COLUMNS[6:]:
        row[key] = None
    row["message"] = ""
    return row


def _failed(exc: BaseException, counts: bool) -> dict:
    msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return {"status": "FAILED" if counts else "error", "message": msg, "traceback": traceback.format_exc()}


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- report


def fmt(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in ("loss_rel", "grad_rel"):
        return "inf" if value == math.inf else f"{value:.2e}"
    if key == "ms":
        return f"{value:.3f}"
    if key in ("vs_eager", "vs_native"):
        return f"{value:.2f}x"
    if key == "peak_mib":
        return f"{value:.1f}"
    return str(value)


def to_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def _meta(device: torch.device, args: argparse.Namespace) -> dict:
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "tiny": args.tiny,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "compile": not args.no_compile,
        "native_linear_cross_entropy": hasattr(torch.nn.functional, "linear_cross_entropy"),
        "tolerance": TOLERANCE,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
        meta["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    else:
        meta["threads"] = torch.get_num_threads()
    return meta


def default_json_path() -> str:
    out = os.environ.get("OUT")
    return os.path.join(out, "gpu_check.json") if out else "gpu_check.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="every case at its tiny (quick) shape")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="case names to run")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no new case after this many seconds")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per variant (default 20; tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; tiny 1)")
    p.add_argument("--json", default=None, help="JSON output (default $OUT/gpu_check.json or ./gpu_check.json)")
    p.add_argument("--no-compile", action="store_true", help="run the kernels uncompiled (no torch.compile)")
    a = p.parse_args(argv)
    a.repeat = a.repeat if a.repeat is not None else (3 if a.tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    a.json = a.json or default_json_path()
    return a


def select(only: Sequence[str] | None) -> list[GpuCase]:
    if not only:
        return list(GPU_CASES)
    names = [n for item in only for n in item.split(",") if n]
    known = {c.name for c in GPU_CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {unknown}; known: {sorted(known)}")
    return [c for c in GPU_CASES if c.name in names]


def run(args: argparse.Namespace) -> dict:
    """Run the selected cases; returns the JSON record (``meta``, ``rows``, ``failures``)."""
    device = torch.device(args.device)
    if args.no_compile:
        from losskit._kernels import set_compile_kernels

        set_compile_kernels(False)
    t_start = time.monotonic()
    rows: list[dict] = []
    for gc in select(args.only):
        bench = _bench_case(gc.bench)
        check_shape = bench.quick_shape if args.tiny else gc.check_shape
        time_shape = bench.quick_shape if args.tiny else gc.time_shape
        jobs: list[tuple[str, str]] = []
        if check_shape is not None:
            jobs += [("check", d) for d in ("float32", "bfloat16")]
        jobs += [("time", d) for d in gc.time_dtypes]
        for phase, dtype in jobs:
            shape = check_shape if phase == "check" else time_shape
            if time.monotonic() - t_start > args.budget_s:
                row = _row(gc, phase, dtype, shape, "-", "-")
                row.update(status="skipped", message="time budget spent")
                rows.append(row)
                continue
            print(f"[{time.monotonic() - t_start:6.1f}s] {gc.name} {phase} {dtype} {shape}", flush=True)
            try:
                if phase == "check":
                    rows += check_case(gc, shape, dtype, device)
                else:
                    rows += time_case(gc, shape, dtype, device, args.warmup, args.repeat)
            except Exception as exc:
                row = _row(gc, phase, dtype, shape, "-", "-")
                row.update(_failed(exc, counts=True))
                rows.append(row)
            _free(device)
    failures = [r for r in rows if r["status"] in ("FAIL", "FAILED")]
    meta = _meta(device, args)
    meta["elapsed_s"] = time.monotonic() - t_start
    return {"meta": meta, "rows": rows, "failures": len(failures)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device available; nothing run (use --device cpu [--tiny] to run on the CPU)")
        return 0
    record = run(args)
    for r in record["rows"]:
        if r["status"] in ("FAIL", "FAILED", "error"):
            print(f"{r['status']}: {r['case']} {r['phase']} {r['dtype']} {r['variant']}: {r['message']}")
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)
    meta = record["meta"]
    print(
        f"\ntorch {meta['torch']}, device {meta.get('gpu', meta['device'])}, "
        f"{meta['elapsed_s']:.0f} s, JSON: {args.json}"
    )
    print(to_table(record["rows"]))
    print(f"\n{record['failures']} failed check(s)")
    return 1 if record["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
