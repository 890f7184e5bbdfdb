"""Large-vocabulary cross-entropy: forward+backward time and memory of three ways to train an LM head.

* ``naive``:  ``F.cross_entropy(hidden @ weight.T, target)`` (materialises the (N, V) logits)
* ``torch``:  ``F.linear_cross_entropy(hidden, weight, target, options=LinearCrossEntropyOptions())``
  (torch >= 2.13's chunked op, automatic chunking)
* ``losskit``: ``losskit.functional.linear_cross_entropy(hidden, weight, target)``

Default shape: N=4096 tokens (500 of them ``ignore_index``), H=1024, V=32000, float32, 2 threads.
Every measurement runs in a FRESH subprocess (so allocator state and the peak-RSS high-water mark
of one method cannot leak into another):

* time: ``--runs`` forward+backward passes after one warm-up; median wall-clock and median process
  CPU time (user+sys, less sensitive to other jobs on a shared machine);
* peak RSS growth: ``VmHWM`` after one forward+backward minus ``VmRSS`` before it (the high-water mark
  is reset through ``/proc/self/clear_refs`` after the inputs are built and a tiny warm-up ran), so it
  includes the weight/hidden gradients every method must produce;
* bytes held for backward: ``losskit.bench.measure.held_bytes`` (saved tensors and tensors kept as
  attributes of custom autograd nodes, the precomputed gradients of fused ops; inputs excluded).

``losskit bench --only linear_ce`` measures the same three methods inside one process; this script
adds the chunk-size sweep and a fresh process per measurement.

    python benchmarks/bench_language.py              # full shape, 3 timed runs (the shape is big)
    python benchmarks/bench_language.py --quick      # N=1024, H=256, V=8000: smoke test
    python benchmarks/bench_language.py --sweep 64 128 256 512   # losskit chunk sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

METHODS = ("naive", "torch", "losskit")


# ----------------------------------------------------------------------------- child side


def _loss_fn(method: str, chunk_size: int | None) -> Callable[..., torch.Tensor]:
    if method == "naive":
        return lambda h, w, t: F.cross_entropy(h @ w.T, t)
    if method == "torch":
        opts = torch.nn.LinearCrossEntropyOptions()
        return lambda h, w, t: F.linear_cross_entropy(h, w, t, ignore_index=-100, options=opts)
    if method == "losskit":
        import losskit.functional as LF

        return lambda h, w, t: LF.linear_cross_entropy(h, w, t, chunk_size=chunk_size)
    raise SystemExit(f"unknown method {method!r}")


def _inputs(n: int, h: int, v: int, ignored: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype).requires_grad_(True)
    target = torch.randint(0, v, (n,), generator=g)
    target[torch.randperm(n, generator=g)[:ignored]] = -100
    return hidden, weight, target


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    fn = _loss_fn(args.method, args.chunk_size)
    # tiny warm-up: BLAS / OpenMP pools, lazy imports
    wh, ww, wt = _inputs(64, 32, 128, 8, dtype, seed=1)
    fn(wh, ww, wt).backward()
    hidden, weight, target = _inputs(args.n, args.h, args.v, args.ignored, dtype)
    out: dict = {"method": args.method, "chunk_size": args.chunk_size}
    if args.mode == "memory":
        import gc

        gc.collect()
        ok = _reset_peak()
        before = _status_kib("VmRSS")
        loss = fn(hidden, weight, target)
        loss.backward()
        peak = _status_kib("VmHWM")
        out.update(
            peak_growth_mib=(peak - before) / 1024 if ok else float("nan"),
            grads_mib=(hidden.grad.numel() * hidden.grad.element_size() + weight.grad.nbytes) / 2**20,
        )
        hidden.grad = weight.grad = None
        from losskit.bench.measure import held_bytes

        out["held_mib"] = held_bytes(fn, (hidden.detach(), weight.detach(), target), (0, 1)) / 2**20
        return out
    walls, cpus = [], []
    for i in range(args.runs + 1):
        hidden.grad = weight.grad = None
        t0, c0 = time.perf_counter(), _cpu_seconds()
        fn(hidden, weight, target).backward()
        t1, c1 = time.perf_counter(), _cpu_seconds()
        if i > 0:  # the first pass is the warm-up
            walls.append(t1 - t0)
            cpus.append(c1 - c0)
    out.update(wall_s=statistics.median(walls), cpu_s=statistics.median(cpus), walls=walls)
    return out


# ----------------------------------------------------------------------------- parent side


def run_child(args: argparse.Namespace, method: str, mode: str, chunk_size: int | None) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        method,
        "--mode",
        mode,
        "--shape",
        str(args.n),
        str(args.h),
        str(args.v),
        "--ignored",
        str(args.ignored),
        "--threads",
        str(args.threads),
        "--runs",
        str(args.runs),
        "--dtype",
        args.dtype,
    ]
    if chunk_size is not None:
        cmd += ["--chunk-size", str(chunk_size)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"method": method, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, metavar=("N", "H", "V"), default=None)
    p.add_argument("--ignored", type=int, default=None, help="number of ignore_index targets (500)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=None, help="timed runs per method (3 full, 5 quick)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="N=1024, H=256, V=8000")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--sweep", type=int, nargs="*", default=None, help="losskit chunk sizes to compare")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="time", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    n, h, v = args.shape or ((1024, 256, 8000) if args.quick else (4096, 1024, 32000))
    args.n, args.h, args.v = n, h, v
    if args.ignored is None:
        args.ignored = max(1, n * 500 // 4096)
    if args.runs is None:
        args.runs = 5 if args.quick else 3

    if args.child:
        args.method = args.child
        print(json.dumps(child(args)))
        return

    jobs: list[tuple[str, int | None]] = [
        (m, args.chunk_size if m == "losskit" else None) for m in args.methods
    ]
    if args.sweep:
        jobs += [("losskit", c) for c in args.sweep]
    print(
        f"N={n} H={h} V={v} {args.dtype}, {args.ignored} ignored targets, threads={args.threads}, "
        f"torch {torch.__version__}, {args.runs} timed runs after 1 warm-up, one fresh process per cell"
    )
    rows = []
    for method, cs in jobs:
        mem = run_child(args, method, "memory", cs)
        tim = {} if args.skip_time else run_child(args, method, "time", cs)
        rows.append({**mem, **{k: val for k, val in tim.items() if k not in mem}})
        print("  measured", method, cs, json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["method"] == "naive" and "error" not in r), None)
    print()
    print(
        "| method | chunk | fwd+bwd wall s | CPU s | wall / naive | peak RSS growth MiB | / naive | held for bwd MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | | error: {r['error']} | | | | | |")
            continue
        wall = r.get("wall_s", float("nan"))
        rel_t = wall / base["wall_s"] if base and "wall_s" in base else float("nan")
        rel_m = r["peak_growth_mib"] / base["peak_growth_mib"] if base else float("nan")
        held = r["held_mib"]
        print(
            f"| {r['method']} | {r['chunk_size'] or 'auto'} | {wall:.2f} | {r.get('cpu_s', float('nan')):.2f} | "
            f"{rel_t:.2f} | {r['peak_growth_mib']:.0f} | {rel_m:.2f} | {held:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"shape": [n, h, v], "dtype": args.dtype, "threads": args.threads, "rows": rows}, fh, indent=1
            )


if __name__ == "__main__":
    main()
