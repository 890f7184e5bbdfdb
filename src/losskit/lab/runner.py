"""Run a list of experiments with fixed seeds and threads, then write the report."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .core import ExperimentResult, LabContext, Unavailable
from .report import write_outputs

__all__ = [
    "EXPERIMENTS",
    "LAB_EXTRAS",
    "LabError",
    "check_lab_extras",
    "check_output_dir",
    "resolve_experiments",
    "run_experiments",
    "run_lab",
]

# name -> (module under losskit.lab.experiments, title). Order is the report's order.
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "robust_regression": ("robust_regression", "Robust regression with outlier targets"),
    "imbalanced_classification": ("imbalanced", "Long-tailed classification"),
    "distillation": ("distillation", "Knowledge distillation into a tiny student"),
    "metric_learning": ("metric_learning", "Embeddings for unseen classes"),
    "contrastive": ("contrastive", "Image-text retrieval: CLIP vs SigLIP"),
    "segmentation": ("segmentation", "Small-foreground segmentation"),
    "detection": ("detection", "Single-object detection: box losses"),
    "multitask": ("multitask", "Multi-task weighting with mismatched loss scales"),
    "large_vocabulary": ("large_vocabulary", "Large-vocabulary cross-entropy memory"),
    "preference": ("preference", "Preference optimisation: prefer the real continuation"),
    "policy_gradient": ("policy_gradient", "RL policy losses: verifiable reward"),
}


# import name -> pip name of the packages the ``lab`` extra installs that every run needs (tqdm is optional)
LAB_EXTRAS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}
INSTALL_HINT = "pip install 'losskit[lab]'"


class LabError(Exception):
    """A user error of the lab command (unknown experiment, unwritable output directory, missing extra)."""


def check_lab_extras() -> None:
    """Raise :class:`LabError` naming what to install when a package of the ``lab`` extra is missing."""
    missing = []
    for module, package in LAB_EXTRAS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-removed installation
            found = False
        if not found:
            missing.append(package)
    if missing:
        names = " and ".join(missing)
        raise LabError(
            f"the lab needs {names}, which {'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}"
        )


def resolve_experiments(names: Sequence[str]) -> list[str]:
    """Validate experiment names (all of them when empty), keeping the catalog order and dropping repeats."""
    if not names:
        return list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise LabError(
            f"unknown experiment{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}; "
            f"valid experiments: {', '.join(EXPERIMENTS)}"
        )
    return [n for n in EXPERIMENTS if n in set(names)]


def check_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and prove it is writable, or raise :class:`LabError`."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LabError(f"output directory {str(out_dir)!r} is not writable: {exc.strerror or exc}") from exc
    return out_dir


def _load(name: str) -> Callable[[LabContext], ExperimentResult]:
    module = importlib.import_module(f"losskit.lab.experiments.{EXPERIMENTS[name][0]}")
    run: Callable[[LabContext], ExperimentResult] = module.run
    return run


def configure_torch() -> None:
    """One intra-op thread and deterministic kernels where torch has them.

    The lab's models are tiny: their matrices are too small to split across threads, and on a shared
    machine OpenMP's spin-waiting made 2 intra-op threads about 10x slower than 1 (measured). The thread
    budget (``--threads``) is spent on running experiments side by side in worker processes instead, which
    also keeps every number independent of the thread count.
    """
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    torch.use_deterministic_algorithms(True, warn_only=True)


def _run_one(name: str, ctx: LabContext) -> ExperimentResult:
    title = EXPERIMENTS[name][1]
    t0 = time.perf_counter()
    try:
        res = _load(name)(ctx)
    except Unavailable as exc:
        res = ExperimentResult(name, title, "", True, "", skipped=str(exc))
    except ModuleNotFoundError as exc:
        if exc.name not in LAB_EXTRAS:
            traceback.print_exc(file=sys.stderr)
            res = ExperimentResult(name, title, "", True, "", error=f"{type(exc).__name__}: {exc}")
        else:  # one line saying what to install, no traceback
            missing = f"{LAB_EXTRAS[exc.name]} is not installed ({INSTALL_HINT})"
            res = ExperimentResult(name, title, "", True, "", skipped=missing)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        res = ExperimentResult(name, title, "", True, "", error=f"{type(exc).__name__}: {exc}")
    res.seconds = time.perf_counter() - t0
    res.seeds = list(ctx.seeds)
    return res


def _worker(name: str, ctx: LabContext) -> ExperimentResult:
    configure_torch()
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ModuleNotFoundError:  # _run_one reports the missing lab extra
        pass
    return _run_one(name, ctx)


def _status(res: ExperimentResult) -> str:
    if res.skipped:
        return f"skipped ({res.skipped})"
    if res.error:
        return f"FAILED ({res.error})"
    return f"done in {res.seconds:.1f} s"


def run_experiments(names: Sequence[str], ctx: LabContext) -> list[ExperimentResult]:
    """Run experiments (in ``ctx.threads`` worker processes when > 1); results in catalog order.

    Missing losses become "skipped", crashes become "failed": no experiment ever reports made-up numbers.
    """
    names = list(names)
    if ctx.threads <= 1 or len(names) <= 1:
        configure_torch()
        results = []
        for name in names:
            res = _run_one(name, ctx)
            results.append(res)
            if ctx.progress:
                print(f"[lab] {name}: {_status(res)}", file=sys.stderr, flush=True)
        return results
    return _run_pool(names, ctx)


def _run_pool(names: list[str], ctx: LabContext) -> list[ExperimentResult]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    mpctx = mp.get_context("spawn")
    manager = mpctx.Manager() if ctx.progress else None
    worker_ctx = replace(ctx, queue=manager.Queue() if manager is not None else None)
    bars: dict[str, Any] = {}
    done: dict[str, ExperimentResult] = {}
    pool = ProcessPoolExecutor(max_workers=min(ctx.threads, len(names)), mp_context=mpctx)
    try:
        futures = {pool.submit(_worker, n, worker_ctx): n for n in names}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(worker_ctx.queue, bars, ctx)
            for fut in finished:
                res = fut.result()
                done[res.name] = res
                if ctx.progress:
                    print(f"[lab] {res.name}: {_status(res)}", file=sys.stderr, flush=True)
        _drain(worker_ctx.queue, bars, ctx)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):  # stop the workers we started
            proc.terminate()
        raise
    finally:
        for bar in bars.values():
            bar.close()
        pool.shutdown(wait=True)
        if manager is not None:
            manager.shutdown()
    return [done[n] for n in names]


def _drain(queue: Any, bars: dict[str, Any], ctx: LabContext) -> None:
    if queue is None:
        return
    import queue as queue_mod

    while True:
        try:
            desc, kind, value = queue.get_nowait()
        except (queue_mod.Empty, EOFError, OSError):
            return
        if kind == "open":
            if desc in bars:
                bars.pop(desc).close()
            bars[desc] = LabContext(progress=True).bar(value, desc)
        elif desc in bars:
            if kind == "update":
                bars[desc].update(value)
            elif kind == "postfix":
                bars[desc].set_postfix_str(value, refresh=False)
            elif kind == "close":
                bars.pop(desc).close()


def lab_config(ctx: LabContext, names: Sequence[str], command: str, seconds: float) -> dict[str, Any]:
    import numpy

    cfg: dict[str, Any] = {
        "command": command,
        "mode": ctx.mode,
        "seeds": list(ctx.seeds),
        "threads": ctx.threads,
        "experiments": list(names),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "deterministic_algorithms": True,
        "torch_threads_per_experiment": 1,
        "worker_processes": min(ctx.threads, len(names)),
        "seconds": round(seconds, 1),
    }
    try:
        import sklearn

        cfg["sklearn"] = sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    return cfg


def run_lab(
    names: Sequence[str],
    ctx: LabContext,
    command: str = "losskit lab",
) -> list[ExperimentResult]:
    """Validate, run, and write ``report.md`` + ``results.json`` (+ figures) into ``ctx.out_dir``."""
    names = resolve_experiments(names)
    check_lab_extras()
    check_output_dir(ctx.out_dir)
    t0 = time.perf_counter()
    results = run_experiments(names, ctx)
    write_outputs(ctx.out_dir, results, lab_config(ctx, names, command, time.perf_counter() - t0))
    return results
