"""Reductions shared by every loss.

``reduction='mean'`` is the *weighted mean over the elements that count*: masked (ignored) elements
leave the denominator, per-element weights enter it (``sum(w_i l_i) / sum(w_i)``, like torch's
weighted cross-entropy). An empty input, or one where everything is ignored, gives a zero that is
still connected to the autograd graph instead of torch's NaN.

``normalizer=`` replaces the denominator: the loss becomes ``sum / normalizer``. Passing the number
of valid elements of a whole gradient-accumulation window (or its DDP-global value) makes the sum of
micro-batch losses equal the loss of the full batch.
"""

from __future__ import annotations

from typing import Union

import torch

from ._checks import LossTypeError, LossValueError, check_reduction, shape_str

__all__ = ["Normalizer", "check_normalizer", "compute_dtype", "connected_zero", "reduce_loss", "upcast"]

Normalizer = Union[float, int, torch.Tensor, None]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Dtype losses are computed in: float32 for half types, the input's own otherwise."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its compute dtype (float32 for fp16/bf16)."""
    dt = compute_dtype(x)
    return x if x.dtype == dt else x.to(dt)


def connected_zero(*tensors: torch.Tensor | None) -> torch.Tensor:
    """A scalar zero that depends on every given tensor, so ``backward()`` works and yields zero grads."""
    out = None
    for t in tensors:
        if t is None:
            continue
        z = t.reshape(-1)[:0].sum()
        out = z if out is None else out + z
    if out is None:
        raise LossValueError("connected_zero needs at least one tensor")
    return out


def check_normalizer(normalizer: Normalizer, reduction: str) -> None:
    if normalizer is None:
        return
    if reduction != "mean":
        raise LossValueError(f"normalizer is only used with reduction='mean', got reduction={reduction!r}")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise LossValueError(
                f"normalizer must be a scalar tensor, got shape {shape_str(normalizer.shape)}"
            )
        return
    if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)):
        raise LossTypeError(
            f"normalizer must be a positive number or a scalar tensor, got {type(normalizer).__name__}"
        )
    if not normalizer > 0:
        raise LossValueError(f"normalizer must be > 0, got {normalizer!r}")


def reduce_loss(
    loss: torch.Tensor,
    reduction: str = "mean",
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    """Reduce an element-wise loss.

    Args:
        loss: element-wise loss (any shape).
        reduction: ``'none'`` (same shape, masked entries 0), ``'sum'``, or ``'mean'``.
        weight: per-element weights broadcastable to ``loss``; they scale the elements and, for
            ``'mean'``, form the denominator.
        mask: boolean tensor broadcastable to ``loss``; ``False`` entries are ignored everywhere.
        normalizer: for ``'mean'`` only, divide the sum by this instead of the (weighted) count.

    Masked entries are replaced (not multiplied) by zero, so a non-finite value there cannot leak.

    Example:
        >>> loss = torch.tensor([1.0, 2.0, 3.0])
        >>> reduce_loss(loss, "mean", mask=torch.tensor([True, True, False]))
        tensor(1.5000)
        >>> reduce_loss(loss, "mean", weight=torch.tensor([1.0, 3.0, 0.0]))
        tensor(1.7500)
        >>> reduce_loss(loss[:0], "mean")
        tensor(0.)
    """
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    if mask is not None:
        loss = torch.where(mask, loss, loss.new_zeros(()))
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "mean" and normalizer is None and weight is None and mask is None and loss.numel():
        return loss.mean()  # one op; an empty loss takes the sum / 1 = 0 below
    total = loss.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        return total / normalizer
    if weight is not None:
        w = weight if mask is None else torch.where(mask, weight, weight.new_zeros(()))
        denom = w.expand_as(loss).sum() if w.shape != loss.shape else w.sum()
    elif mask is not None:
        denom = mask.expand_as(loss).sum() if mask.shape != loss.shape else mask.sum()
    else:
        # Python int: no device sync; an empty loss gives 0 / 1 = 0 (graph-connected).
        return total / max(loss.numel(), 1)
    denom = denom.to(total.dtype)
    # When nothing counts the numerator is exactly 0, so clamping the denominator gives 0, not NaN.
    return total / denom.clamp_min(torch.finfo(total.dtype).tiny)
