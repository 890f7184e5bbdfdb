"""``losskit.warmup``: compile the fused kernels of chosen losses ahead of training.

A public loss runs its fused kernel compiled from :data:`~losskit._kernels._compile` 's size threshold
up (262144 elements by default), and the first such call compiles it: seconds to a minute per
kernel and direction on a CPU, announced by an ``INFO`` line on the ``'losskit'`` logger. Calling
:func:`warmup` at start-up moves that cost to a known place (before the data loader or the first
logging step, say).

This function sits with the kernels but calls the public losses (imported when it runs), so that
exactly the kernel variants of a real call are compiled: a kernel is specialised on the loss's
hyperparameters (``alpha``, ``gamma``, ``reduction``, ``temperature``, ...), the input's dtype, device
and number of dimensions, not on its sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .._checks import LossTypeError, LossValueError
from . import _compile

__all__ = ["WARMUP_LOSSES", "warmup"]

# loss name -> kind of example inputs
WARMUP_LOSSES: dict[str, str] = {
    "sigmoid_focal": "binary",
    "asymmetric": "binary",
    "focal": "classes",
    "kd": "pair",
    "jsd": "pair",
    "distillation": "pair_target",
    "dice": "segmentation",
    "jaccard": "segmentation",
    "tversky": "segmentation",
    "focal_tversky": "segmentation",
    "generalized_dice": "segmentation",
}


def _inputs(kind: str, numel: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Example arguments of at least ``numel`` elements (logits first); values do not matter."""
    g = torch.Generator().manual_seed(0)
    shape: tuple[int, ...]
    if kind == "segmentation":
        shape = (2, 4, max(1, math.ceil(numel / 512)), 64)
        x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        y = torch.randint(0, 4, (shape[0], *shape[2:]), generator=g).to(device)
        return [x, y]
    shape = (max(1, math.ceil(numel / 128)), 128)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if kind == "binary":
        return [x, (torch.rand(shape, generator=g) < 0.3).to(device=device, dtype=dtype)]
    if kind == "classes":
        return [x, torch.randint(0, shape[1], shape[:1], generator=g).to(device)]
    teacher = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if kind == "pair":
        return [x, teacher]
    return [x, teacher, torch.randint(0, shape[1], shape[:1], generator=g).to(device)]


def _loss_fn(name: str) -> Callable[..., torch.Tensor]:
    from .. import functional  # the public face, imported on use (see the module docstring)

    fn: Callable[..., torch.Tensor] = getattr(functional, f"{name}_loss")
    return fn


def _requests(losses: Iterable[str] | Mapping[str, Mapping[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    if losses is None:
        return [(name, {}) for name in WARMUP_LOSSES]
    if isinstance(losses, str):
        raise LossTypeError(f"losses must be a list of loss names or a mapping, got the string {losses!r}")
    if isinstance(losses, Mapping):
        items = [(name, dict(kw or {})) for name, kw in losses.items()]
    else:
        items = [(name, {}) for name in losses]
    for name, _ in items:
        if name not in WARMUP_LOSSES:
            raise LossValueError(
                f"losses names {name!r}, expected one of {sorted(WARMUP_LOSSES)} (the losses with fused kernels)"
            )
    return items


def warmup(
    losses: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    backward: bool = True,
) -> list[str]:
    """Compile the fused kernels that the given losses use above the compile threshold, now.

    Each loss runs once (forward and, with ``backward``, backward) on synthetic inputs of the
    threshold's size in ``dtype`` on ``device``: 2-D ``(N, C)`` logits (``focal``, ``kd``, ``jsd``,
    ``distillation``; element-wise targets for ``sigmoid_focal`` and ``asymmetric``) or 4-D
    ``(N, C, H, W)`` logits with class-index masks (the Dice family). Kernels are compiled for
    dynamic sizes, so later calls with other batch sizes reuse them; another dtype, device, number of
    dimensions or hyperparameter compiles anew.

    Every compile (here or on a first large call) logs one ``INFO`` line on the ``'losskit'`` logger,
    ``losskit: compiling fused kernel <name>(<hyperparameters>) for <dtypes> ...``; it shows where
    logging is configured for ``INFO`` (``logging.basicConfig(level=logging.INFO)``) and
    ``logging.getLogger("losskit").setLevel(logging.WARNING)`` silences it.

    Args:
        losses: names from :data:`WARMUP_LOSSES` (``None``: all of them), or a mapping from a name to
            the keyword arguments of its call, e.g. ``{"sigmoid_focal": {"alpha": 0.5, "reduction":
            "sum"}}``: the hyperparameters select the kernel variant, so pass those of training.
        dtype: dtype of the logits (half types compile their own variants).
        device: device of the inputs.
        backward: also compile the backward kernels.

    Returns:
        The kernels compiled by this call, one name per compile (``[]`` when all were compiled
        already, compilation is off, or the fused kernels are off).

    Example:
        >>> warmup([])  # e.g. warmup(["sigmoid_focal", "dice"]) before the training loop
        []
    """
    items = _requests(losses)
    dev = torch.device(device)
    numel = max(_compile._MIN_NUMEL, 1)
    if not items or not _compile.use_fused_kernel(numel):
        return []
    before = set(_compile._COMPILED)
    for name, kwargs in items:
        args = _inputs(WARMUP_LOSSES[name], numel, dtype, dev)
        x = args[0].requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = _loss_fn(name)(*args, **kwargs)
            if backward:
                torch.autograd.grad(out.sum(), x)
    return [
        k[0] if isinstance(k, tuple) else str(k) for k, sig in _compile._COMPILED if (k, sig) not in before
    ]
