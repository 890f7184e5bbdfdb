"""Compilation cache for the fused kernels.

Each kernel is written once as plain tensor code (a forward and a backward function of the saved
inputs). Above a size threshold that code is run through ``torch.compile`` (Inductor generates one
vectorised C++/OpenMP loop per reduction on CPU, Triton on GPU), so a forward or backward pass
reads its inputs once or twice and writes only its result. Below the threshold, when compilation
is switched off, while an outer ``torch.compile`` is tracing, or if compilation fails, the same
code runs eagerly (correct, but with the usual temporaries of eager PyTorch).

**First-call cost**: compiling one kernel variant (one forward or one backward for one set of
hyperparameters and dtype) took 10-60 s on the 2-core CPU this was developed on (under heavy load
from other processes; a few seconds once Inductor's on-disk cache under
``/tmp/torchinductor_$USER`` holds it). Compiled kernels are cached per process and per
hyperparameter set and use dynamic shapes, so a new batch size does not recompile.

**When the public losses use a kernel** (:func:`use_fused_kernel`): by default only where it runs
compiled (input of at least the threshold's size, compilation on). Run eagerly, a kernel still keeps
nothing but its inputs for backward, but it recomputes in backward with the ordinary temporaries and
measured up to 3.7x slower than the plain reference code on inputs below the threshold (e.g. sigmoid
focal at 256x1000: 7.7 vs 2.2 ms, 2 threads), so small inputs take the reference code.

**Logging**: each compile is announced by one ``INFO`` line on the ``'losskit'`` logger (when it
starts, so that a stall has a cause; a ``DEBUG`` line gives its duration), e.g. ``losskit: compiling
fused kernel sigmoid_focal.fwd(0.25, 2.0, 'mean', False) for float32 cpu 2-D, float32 cpu 2-D with
torch.compile ...``. Python's logging shows ``INFO`` only where configured to (``logging.basicConfig(
level=logging.INFO)``); ``logging.getLogger('losskit').setLevel(logging.WARNING)`` silences it.
:func:`losskit.warmup` compiles the kernels of chosen losses ahead of training.

Switches:

* ``LOSSKIT_FUSED_KERNELS=0`` in the environment, or :func:`set_fused_kernels(False) <set_fused_kernels>`
  (also a context manager, :func:`fused_kernels`), makes the public losses skip the fused kernels and
  run their eager reference code (autograd of ordinary tensor operations, which also supports double
  backward); ``LOSSKIT_FUSED_KERNELS=always`` or ``set_fused_kernels("always")`` uses the kernels at
  every size and also uncompiled (inputs-only memory at the price of time);
* ``LOSSKIT_COMPILE_KERNELS=0`` in the environment, or :func:`set_compile_kernels(False)
  <set_compile_kernels>`, keeps every kernel eager;
* :func:`set_compile_kernels(True, min_numel=0) <set_compile_kernels>` compiles whatever the size
  (the default threshold is ``LOSSKIT_COMPILE_MIN_NUMEL`` = 262144 elements: below it the one-time
  compile cost is not worth it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Literal

import torch

__all__ = [
    "compile_kernels_enabled",
    "compiled_kernels",
    "compiled_keys",
    "fused_kernels",
    "fused_kernels_enabled",
    "run_kernel",
    "set_compile_kernels",
    "set_fused_kernels",
    "use_fused_kernel",
]

FusedMode = Literal["off", "auto", "always"]


def _fused_mode(value: bool | str) -> FusedMode:
    if value is True or value in ("1", "true", "True", "auto", "on"):
        return "auto"
    if value is False or value in ("0", "false", "False", "", "off"):
        return "off"
    if value == "always":
        return "always"
    raise ValueError(f"fused kernels setting must be True, False, 'auto' or 'always', got {value!r}")


_FUSED: FusedMode = _fused_mode(os.environ.get("LOSSKIT_FUSED_KERNELS", "auto"))
_ENABLED = os.environ.get("LOSSKIT_COMPILE_KERNELS", "1") not in ("0", "false", "False", "")
_MIN_NUMEL = int(os.environ.get("LOSSKIT_COMPILE_MIN_NUMEL", str(1 << 18)))
_BACKEND = os.environ.get("LOSSKIT_KERNEL_BACKEND", "inductor")
_CACHE: dict[Hashable, Callable[..., Any]] = {}
_EAGER: dict[Hashable, Callable[..., Any]] = {}
_FAILED: set[Hashable] = set()
# (key, argument signature) pairs run compiled so far: a new one is a compile (logged)
_COMPILED: dict[tuple[Hashable, tuple[Any, ...]], None] = {}
_LOG = logging.getLogger("losskit")


def set_fused_kernels(enabled: bool | str) -> FusedMode:
    """Choose when the public losses use the fused kernels; returns the previous setting.

    ``True`` / ``'auto'`` (default): where the kernel runs compiled (see the module docstring);
    ``'always'``: at every size, compiled or not; ``False`` / ``'off'``: never (every public loss
    runs its eager reference code).
    """
    global _FUSED
    previous = _FUSED
    _FUSED = _fused_mode(enabled)
    return previous


def fused_kernels_enabled() -> bool:
    """True when the public losses may dispatch to the fused kernels (the setting is not off)."""
    return _FUSED != "off"


def use_fused_kernel(numel: int) -> bool:
    """Whether a public loss should run its fused kernel on an input of ``numel`` elements.

    Example:
        >>> with fused_kernels("auto"):  # the default: 640 elements run faster through the plain code
        ...     use_fused_kernel(64 * 10)
        False
    """
    if _FUSED == "off" or numel == 0:
        return False
    return _FUSED == "always" or (numel >= _MIN_NUMEL and compile_kernels_enabled())


@contextlib.contextmanager
def fused_kernels(enabled: bool | str) -> Iterator[None]:
    """Context manager form of :func:`set_fused_kernels` (restores the previous setting on exit).

    Example:
        >>> import losskit.functional as LF
        >>> x, y = torch.randn(4, 3), torch.rand(4, 3)
        >>> with fused_kernels(False):  # the eager reference path
        ...     ref = LF.sigmoid_focal_loss(x, y, reduction="sum")
        >>> torch.allclose(LF.sigmoid_focal_loss(x, y, reduction="sum"), ref)
        True
    """
    previous = set_fused_kernels(enabled)
    try:
        yield
    finally:
        set_fused_kernels(previous)


def set_compile_kernels(enabled: bool, min_numel: int | None = None, backend: str | None = None) -> None:
    """Turn compilation of the fused kernels on or off (and optionally set the size threshold).

    With ``enabled=False`` every kernel runs its eager implementation. ``min_numel`` is the number
    of input elements from which the compiled version is used. ``backend`` is the
    ``torch.compile`` backend (default ``'inductor'``, or ``LOSSKIT_KERNEL_BACKEND``); changing it
    clears the cache of compiled kernels.
    """
    global _ENABLED, _MIN_NUMEL, _BACKEND
    _ENABLED = bool(enabled)
    if min_numel is not None:
        _MIN_NUMEL = int(min_numel)
    if backend is not None and backend != _BACKEND:
        _BACKEND = backend
        _CACHE.clear()
        _FAILED.clear()
        _COMPILED.clear()


def compile_kernels_enabled() -> bool:
    """True when kernels may be compiled (switched on and not inside an outer ``torch.compile``)."""
    return _ENABLED and not torch.compiler.is_compiling()


def _eager(key: Hashable, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    fn = _EAGER.get(key)
    if fn is None:
        fn = _EAGER[key] = build()
    return fn


def run_kernel(key: Hashable, build: Callable[[], Callable[..., Any]], numel: int, *args: Any) -> Any:
    """Run the function made by ``build()`` on ``args``, compiled when worthwhile.

    ``key`` identifies the function and every Python constant baked into it (hyperparameters).
    A compilation error disables compilation for that key (with one warning) and runs eagerly.
    With grad mode on (only inside a backward run with ``create_graph=True``: autograd Functions
    run their forward without it) the eager code runs, so that autograd records it.
    """
    if numel < _MIN_NUMEL or not compile_kernels_enabled() or key in _FAILED or torch.is_grad_enabled():
        # grad mode on: a backward with ``create_graph=True`` (double backward) differentiates the
        # kernel's plain tensor code with autograd; the compiled function would record no graph
        return _eager(key, build)(*args)
    fn = _CACHE.get(key)
    if fn is None:
        fn = _CACHE[key] = torch.compile(build(), dynamic=True, fullgraph=True, backend=_BACKEND)
    sig = _signature(args)
    first = (key, sig) not in _COMPILED
    try:
        if not first:
            return fn(*args)
        _LOG.info(
            "losskit: compiling fused kernel %s for %s with torch.compile (backend %r); a first call "
            "takes seconds to a minute, later calls reuse it (losskit.warmup compiles ahead)",
            _describe(key),
            _describe_args(sig),
            _BACKEND,
        )
        start = time.perf_counter()
        out = fn(*args)
        _COMPILED[(key, sig)] = None
        _LOG.debug("losskit: compiled %s in %.1f s", _describe(key), time.perf_counter() - start)
        return out
    except Exception as err:  # pragma: no cover - depends on the toolchain
        _FAILED.add(key)
        warnings.warn(
            f"losskit: compiling kernel {key[0] if isinstance(key, tuple) else key} failed "
            f"({type(err).__name__}: {err}); using the eager implementation",
            RuntimeWarning,
            stacklevel=3,
        )
        return _eager(key, build)(*args)


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What makes torch.compile build a new kernel for the same key: dtype, device and rank of each
    tensor argument (sizes are dynamic), ``None`` for anything else."""
    return tuple((a.dtype, a.device.type, a.dim()) if isinstance(a, torch.Tensor) else None for a in args)


def _describe(key: Hashable) -> str:
    if isinstance(key, tuple) and key:
        params = ", ".join(repr(k) for k in key[1:])
        return f"{key[0]}({params})"
    return str(key)


def _describe_args(sig: tuple[Any, ...]) -> str:
    parts = [f"{str(d).replace('torch.', '')} {dev} {n}-D" for d, dev, n in (s for s in sig if s is not None)]
    return ", ".join(parts) or "no tensors"


def compiled_kernels() -> list[str]:
    """Names of the kernels compiled so far in this process, one per compile (e.g.
    ``'sigmoid_focal.fwd'``; a kernel compiled for two dtypes is listed twice)."""
    return [k[0] if isinstance(k, tuple) else str(k) for k, _ in _COMPILED]


def compiled_keys() -> list[Hashable]:
    """Keys of the kernels compiled so far in this process (for tests and the benchmark)."""
    return list(_CACHE)
