"""Measurement primitives of ``losskit bench``: timing, bytes held for backward, peak memory.

* **Time**: forward (the loss call, graph recording included) and backward (``loss.backward()``)
  are timed separately on each run; every variant of a case runs once per round, interleaved, so
  load from other processes hits them alike. Warm-up rounds first (they also trigger any kernel
  compilation), then the median of ``repeat`` rounds.
* **Bytes held for backward**: every tensor autograd saves goes through
  ``torch.autograd.graph.saved_tensors_hooks``; the unique storages are summed by ``nbytes``,
  **except storages of the loss's own inputs** (logits, targets, teacher logits: tensors the
  caller holds anyway). An upcast copy of an input or any intermediate is counted. Tensors that
  custom autograd Functions keep as ``ctx`` attributes (the precomputed gradients of the chunked
  large-vocabulary loss, for instance) escape the hooks, so the graph is also walked from the loss
  and every tensor attribute of its nodes is counted too.
* **Peak memory growth**: measured in a fresh ``python`` subprocess per (case, variant, shape) with
  glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed (large blocks are returned to the OS on free): the
  process builds the inputs, runs one warm-up forward+backward (compilation happens there), frees
  it, resets the peak RSS (``/proc/self/clear_refs``), runs one forward+backward and reports
  ``VmHWM - VmRSS(before)``. Linux only; ``None`` elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["held_bytes", "peak_growth_subprocess", "run_json_child", "time_variants"]


def _grad_leaves(args: Sequence[Any], grad_idx: Sequence[int]) -> list[Any]:
    out = list(args)
    for i in grad_idx:
        out[i] = args[i].detach().clone().requires_grad_(True)
    return out


def _clear(args: Sequence[Any], grad_idx: Sequence[int]) -> None:
    for i in grad_idx:
        args[i].grad = None


def time_variants(
    fns: dict[str, Callable[..., torch.Tensor]],
    args: Sequence[Any],
    grad_idx: Sequence[int],
    *,
    repeat: int = 10,
    warmup: int = 2,
) -> dict[str, dict[str, float]]:
    """Median forward / backward / total milliseconds of each function, interleaved rounds."""
    leaves = _grad_leaves(args, grad_idx)
    times: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "bwd": [], "total": []} for k in fns}
    for rnd in range(warmup + repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            loss = fn(*leaves)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            _clear(leaves, grad_idx)
            del loss
            if rnd >= warmup:
                times[name]["fwd"].append((t1 - t0) * 1e3)
                times[name]["bwd"].append((t2 - t1) * 1e3)
                times[name]["total"].append((t2 - t0) * 1e3)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}


def _node_tensors(root: Any) -> list[torch.Tensor]:
    """Tensors kept as attributes of the autograd nodes reachable from ``root`` (custom ``ctx`` state)."""
    out: list[torch.Tensor] = []
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for value in getattr(node, "__dict__", {}).values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, torch.Tensor):
                    out.append(item)
        stack.extend(nf[0] for nf in node.next_functions)
    return out


def held_bytes(fn: Callable[..., torch.Tensor], args: Sequence[Any], grad_idx: Sequence[int]) -> int:
    """Bytes of the unique storages kept for backward (saved tensors and ``ctx`` tensor attributes),
    the inputs' own storages excluded."""
    leaves = _grad_leaves(args, grad_idx)
    inputs = {a.untyped_storage().data_ptr() for a in leaves if isinstance(a, torch.Tensor)}
    seen: dict[int, int] = {}

    def note(t: torch.Tensor) -> None:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in inputs and st.nbytes() > 0:
            seen[ptr] = st.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        note(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(*leaves)
    for t in _node_tensors(loss.grad_fn):
        note(t)
    loss.backward()
    return sum(seen.values())


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


def child_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside the fresh subprocess: see the module docstring."""
    from .cases import get_case, load_extra

    torch.set_num_threads(int(spec["threads"]))
    for extra in spec.get("extra", []):
        load_extra(extra)
    case = get_case(spec["case"])
    variant = next(v for v in case.variants() if v.name == spec["variant"])
    fn = variant.fn
    if fn is None:
        return {"peak_bytes": None}
    args, grad_idx = case.make(tuple(spec["shape"]), getattr(torch, spec["dtype"]), 0)
    leaves = _grad_leaves(args, grad_idx)
    fn(*leaves).backward()
    _clear(leaves, grad_idx)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn(*leaves).backward()
    after = _status_kb("VmHWM")
    return {"peak_bytes": max(after - before, 0) * 1024}


def run_json_child(
    target: str, spec: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 900
) -> tuple[Any, str]:
    """Call ``target`` (``"package.module:function"``) on ``spec`` in a fresh Python process.

    The child's malloc returns freed blocks to the OS promptly, so RSS readings there are meaningful.
    Returns the function's JSON-decoded result (``None`` if the child printed none) and its stderr.
    """
    module, function = target.split(":")
    code = (
        f"import json, sys; from {module} import {function}; "
        f"print('LOSSKIT_JSON ' + json.dumps({function}(json.loads(sys.argv[1]))))"
    )
    child_env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072", **(env or {})
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("LOSSKIT_JSON "):
            return json.loads(line[len("LOSSKIT_JSON ") :]), proc.stderr
    return None, proc.stderr


def peak_growth_subprocess(
    case: str, variant: str, shape: Sequence[int], dtype: str, threads: int, extra: Sequence[str] = ()
) -> int | None:
    """Peak RSS growth of one forward+backward, in a fresh process (``None`` if unavailable)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    spec = {
        "case": case,
        "variant": variant,
        "shape": list(shape),
        "dtype": dtype,
        "threads": threads,
        "extra": list(extra),
    }
    try:
        result, _ = run_json_child("losskit.bench.measure:child_peak", spec)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None if result is None else result["peak_bytes"]
