"""Machinery shared by the overlap-based segmentation losses: checks, per-class sums, smoothing, reduction.

Private to :mod:`losskit.segmentation`; the conventions it implements are described in
:mod:`losskit.segmentation.overlap`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_choice,
    check_class_target,
    check_floating,
    check_int,
    check_integer,
    check_min_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_tensor,
    shape_str,
    value_range,
)
from .._kernels._compile import use_fused_kernel
from .._kernels.overlap import class_sums, class_sums_supports
from .._reduction import reduce_loss, upcast
from ..distributed import ddp_normalizer, global_sum, is_initialized
from ._inputs import MODES, probabilities

AVERAGES = ("macro", "micro")


def _check_options(
    mode: str,
    smooth: float,
    eps: float,
    empty_smooth: float | None,
    ignore_index: int | None,
    include_background: bool,
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    average: str = "macro",
) -> None:
    check_choice("mode", mode, MODES)
    check_number("smooth", smooth, low=0.0)
    check_number("smooth_nr", smooth_nr, low=0.0, allow_none=True)
    check_number("smooth_dr", smooth_dr, low=0.0, allow_none=True)
    if float(smooth) != 0.0 and (smooth_nr is not None or smooth_dr is not None):
        raise LossValueError(
            f"pass either smooth (added to numerator and denominator) or smooth_nr / smooth_dr, got "
            f"smooth={smooth}, smooth_nr={smooth_nr}, smooth_dr={smooth_dr}"
        )
    check_number("eps", eps, low=0.0, low_open=True)
    check_number("empty_smooth", empty_smooth, low=0.0, allow_none=True)
    check_int("ignore_index", ignore_index, allow_none=True)
    check_choice("average", average, AVERAGES)
    if not include_background and mode == "binary":
        raise LossValueError(
            "include_background=False drops channel 0, but mode='binary' has a single channel; "
            "keep include_background=True"
        )


def _smooth_pair(smooth: float, smooth_nr: float | None, smooth_dr: float | None) -> tuple[float, float]:
    """Numerator and denominator smoothing: ``smooth_nr`` / ``smooth_dr`` where given, else ``smooth``."""
    nr = float(smooth) if smooth_nr is None else float(smooth_nr)
    dr = float(smooth) if smooth_dr is None else float(smooth_dr)
    return nr, dr


def _check_weight(weight: torch.Tensor | None) -> None:
    if weight is None:
        return
    check_floating("weight", weight)
    if weight.dim() != 1:
        raise LossValueError(
            f"weight has shape {shape_str(weight.shape)}, expected (C,): one entry per class"
        )
    if can_read_values(weight) and bool((weight < 0).any()):
        raise LossValueError("weight must be non-negative")


def _check_weight_len(weight: torch.Tensor | None, num_classes: int) -> None:
    if weight is not None and weight.shape[0] != num_classes:
        raise LossValueError(
            f"weight has shape {shape_str(weight.shape)}, expected ({num_classes},): one entry per "
            "input channel"
        )


def _dense_target(input: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if target.shape != input.shape:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(input.shape)} (dense) "
            f"or {shape_str((input.shape[0], *input.shape[2:]))} (class indices) to match input"
        )
    if target.is_complex():
        raise LossTypeError(f"target must be real, got dtype {target.dtype}")
    g = target.to(dtype)
    if can_read_values(g) and g.numel() > 0:
        lo, hi = value_range(g)
        if not (lo >= 0.0 and hi <= 1.0):
            raise LossValueError(f"target must have values in [0, 1], got range [{lo:g}, {hi:g}]")
    return g


def _check_binary_indices(input: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> None:
    check_integer("target", target)
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(expected)} to match input "
            f"of shape {shape_str(input.shape)}"
        )
    # a (N, 1, ...) input is a 2-class problem for the range check: values 0 and 1
    check_class_target(input.expand(input.shape[0], 2, *input.shape[2:]), target, ignore_index=ignore_index)


def _check_mask(input: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A per-pixel bool ``mask`` ``(N, d1, ...)`` or ``(N, 1, d1, ...)``, returned as ``(N, d1, ...)``."""
    if mask is None:
        return None
    check_tensor("mask", mask)
    check_same_device(("input", input), ("mask", mask))
    if mask.dtype != torch.bool:
        raise LossValueError(f"mask must be a bool tensor (True = counts), got dtype {mask.dtype}")
    spatial = (input.shape[0], *input.shape[2:])
    if tuple(mask.shape) == spatial:
        return mask
    if tuple(mask.shape) == (input.shape[0], 1, *input.shape[2:]):
        return mask.squeeze(1)
    raise LossValueError(
        f"mask has shape {shape_str(mask.shape)}, expected {shape_str(spatial)} or "
        f"{shape_str((input.shape[0], 1, *input.shape[2:]))}: one entry per pixel of input "
        f"{shape_str(input.shape)}"
    )


def _probabilities(input: torch.Tensor, mode: str, from_logits: bool, fused: bool) -> torch.Tensor:
    """:func:`probabilities`, or the float32 logits themselves for the fused kernel (it applies the softmax)."""
    return upcast(input) if fused else probabilities(input, mode, from_logits)


def _stats(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str,
    from_logits: bool,
    ignore_index: int | None,
    include_background: bool,
    batch_dice: bool,
    squared: bool = False,
    gather_distributed: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class soft ``(TP, FP, FN, n)``, shape ``(N, C)`` (``(C,)`` with ``batch_dice``).

    ``n`` is the number of positions that count (not ignored, ``mask`` True), the same for every
    class. ``C`` excludes channel 0 when ``include_background`` is False. Computed in float32 for
    half inputs. With ``batch_dice`` and ``gather_distributed`` (under an initialised process group)
    the batch sums are summed over ranks by the differentiable :func:`losskit.distributed.global_sum`.
    """
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device(("input", input), ("target", target))
    check_min_ndim("input", input, 3, "(N, C, d1, ...) with at least one spatial dimension")
    m = _check_mask(input, mask)
    num_classes = input.shape[1]
    if mode == "binary" and num_classes != 1:
        raise LossValueError(
            f"mode='binary' expects input with one channel (N, 1, ...), got shape {shape_str(input.shape)}; "
            "use mode='multiclass' or 'multilabel' for several channels"
        )
    if not include_background and num_classes < 2:
        raise LossValueError("include_background=False needs at least 2 channels")

    # multi-class logits with class indices: the fused kernel (softmax and sums in one pass, softmax
    # recomputed in backward from the saved logits) whenever it covers the call
    fused = (
        m is None
        and use_fused_kernel(input.numel())
        and mode == "multiclass"
        and from_logits
        and class_sums_supports(input, target)
    )
    p = _probabilities(input, mode, from_logits, fused)
    dtype = p.dtype
    n = input.shape[0]
    size = math.prod(input.shape[2:])
    spatial = tuple(range(2, input.dim()))
    if target.dim() == input.dim() - 1:
        if mode == "multilabel":
            raise LossValueError(
                f"mode='multilabel' needs a dense target of shape {shape_str(input.shape)}, got class "
                f"indices of shape {shape_str(target.shape)}"
            )
        if mode == "binary":
            _check_binary_indices(input, target, ignore_index)
        else:
            check_class_target(input, target, ignore_index=ignore_index)
        valid = None if ignore_index is None else target != ignore_index
        if m is not None:
            valid = m if valid is None else valid & m
        if mode == "binary":
            hit = target == 1
            g = (hit if valid is None else hit & valid).unsqueeze(1).to(dtype)
            if valid is not None:
                # where, not a product: a non-finite value at a left-out position must not leak
                p = torch.where(valid.unsqueeze(1), p, p.new_zeros(()))
            tp, psum, gsum = (p * g).sum(spatial), _power_sum(p, squared, spatial), g.sum(spatial)
        elif fused:
            tp, psum, gsum = class_sums(input, target, ignore_index, squared)
        else:
            # class indices: TP_c = sum of p_c over the positions labelled c, without a one-hot tensor
            t = target if valid is None else torch.where(valid, target, torch.zeros_like(target))
            idx = t.reshape(n, size).long()
            flat_p = p.reshape(n, num_classes, size)
            if valid is None:
                ones = torch.ones((), dtype=dtype, device=p.device).expand(n, size)
            else:
                ones = valid.reshape(n, size).to(dtype)
                flat_p = torch.where(valid.reshape(n, 1, size), flat_p, flat_p.new_zeros(()))
            p_true = flat_p.gather(1, idx.unsqueeze(1)).squeeze(1)
            tp = flat_p.new_zeros(n, num_classes).scatter_add(1, idx, p_true)
            psum = _power_sum(flat_p, squared, (2,))
            gsum = torch.zeros(n, num_classes, dtype=dtype, device=p.device).scatter_add(1, idx, ones)
    else:
        if ignore_index is not None:
            raise LossValueError(
                "ignore_index is only supported with class-index targets; for dense targets pass "
                "mask= (False at the ignored positions) instead"
            )
        g = _dense_target(input, target, dtype)
        valid = m
        if m is not None:
            zero = p.new_zeros(())
            p, g = torch.where(m.unsqueeze(1), p, zero), torch.where(m.unsqueeze(1), g, zero)
        if squared:
            tp = (p * g).sum(spatial)
            psum = _power_sum(p, True, spatial)
            gsum = _power_sum(g, True, spatial)
        else:
            psum = p.sum(spatial)
            gsum = g.sum(spatial)
            # L1 form: exact for hard targets, zero-loss only at p == g for soft ones
            tp = 0.5 * (psum + gsum - (p - g).abs().sum(spatial))
    if valid is None:
        count = torch.full((n, 1), float(size), dtype=dtype, device=p.device)
    else:
        count = valid.reshape(n, size).sum(1, keepdim=True).to(dtype)
    count = count.expand(tp.shape)
    if from_logits and mode != "multiclass":
        # a sigmoid saturates at +-inf (the softmax gives NaN): keep a non-finite logit at a counted
        # position visible in the loss instead of a finite value
        x = upcast(input)
        x = x if valid is None else torch.where(valid.unsqueeze(1), x, x.new_zeros(()))
        tp = tp + x.sum(spatial) * 0.0

    if batch_dice:
        tp, psum, gsum, count = tp.sum(0), psum.sum(0), gsum.sum(0), count.sum(0)
        if _gather_active(gather_distributed):
            # one all-reduce; its backward all-reduces the gradients, so with DDP's 1/W averaging
            # every rank's logits get exactly the gradient of the global-batch Dice
            stacked = torch.stack((tp, psum, gsum.to(tp.dtype), count.to(tp.dtype)))
            tp, psum, gsum, count = global_sum(stacked).unbind(0)
    if not include_background:
        tp, psum, gsum, count = tp[..., 1:], psum[..., 1:], gsum[..., 1:], count[..., 1:]
    return tp, psum - tp, gsum - tp, count


def _overlap_stats(input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """Per-class soft ``(TP, FP, FN)``: :func:`_stats` without the position count."""
    tp, fp, fn, _ = _stats(input, target, **kwargs)
    return tp, fp, fn


def _power_sum(p: torch.Tensor, squared: bool, dims: tuple[int, ...]) -> torch.Tensor:
    return (p * p).sum(dims) if squared else p.sum(dims)


def _smoothed_index(
    num: torch.Tensor,
    den: torch.Tensor,
    empty: torch.Tensor,
    smooth: float | tuple[float, float],
    empty_smooth: float | None,
    eps: float,
) -> torch.Tensor:
    """``(num + s_nr) / max(den + s_dr, eps)``, with ``s_nr = s_dr = empty_smooth`` on empty-target entries.

    ``smooth`` is one number (both) or the pair ``(s_nr, s_dr)``.
    """
    nr, dr = (float(smooth), float(smooth)) if not isinstance(smooth, tuple) else smooth
    if empty_smooth is None or (float(empty_smooth) == nr and nr == dr):
        s_nr: torch.Tensor | float = nr
        s_dr: torch.Tensor | float = dr
    else:
        s_nr = torch.full_like(num, nr).masked_fill(empty, float(empty_smooth))
        s_dr = torch.full_like(num, dr).masked_fill(empty, float(empty_smooth))
    return (num + s_nr) / (den + s_dr).clamp_min(eps)


def _class_weight(
    weight: torch.Tensor | None, include_background: bool, like: torch.Tensor
) -> torch.Tensor | None:
    if weight is None:
        return None
    w = weight.to(device=like.device, dtype=like.dtype)
    return w if include_background else w[1:]


def _finish(
    loss: torch.Tensor,
    weight: torch.Tensor | None,
    num_classes: int,
    include_background: bool,
    reduction: str,
    global_mean: bool = False,
) -> torch.Tensor:
    _check_weight_len(weight, num_classes)
    w = _class_weight(weight, include_background, loss)
    return reduce_loss(
        loss, reduction, weight=w, normalizer=_global_mean_normalizer(loss, w, reduction, global_mean)
    )


def _gather_active(gather_distributed: bool) -> bool:
    return bool(gather_distributed) and is_initialized()


def _global_mean_normalizer(
    loss: torch.Tensor, weight: torch.Tensor | None, reduction: str, global_mean: bool
) -> torch.Tensor | None:
    """``normalizer=`` making ``'mean'`` over per-image entries global under DDP (else None).

    The local denominator (entry count, or the sum of the class weights over the entries) is summed
    over ranks and divided by the world size (:func:`losskit.distributed.ddp_normalizer`): DDP's
    gradient averaging then gives the gradient of the mean over the global batch.
    """
    if reduction != "mean" or not _gather_active(global_mean):
        return None
    if weight is None:
        return ddp_normalizer(loss.numel())
    return ddp_normalizer(weight.detach().expand_as(loss).sum())


class _OverlapLoss(nn.Module):
    """Stores the options shared by the overlap losses; ``weight`` is a buffer.

    ``forward(input, target, mask=None)``; ``mask`` is the per-pixel mask of the functional.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        from_logits: bool = True,
        smooth: float = 0.0,
        eps: float = 1e-7,
        include_background: bool = True,
        batch_dice: bool = False,
        ignore_index: int | None = None,
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
        empty_smooth: float | None = 1.0,
        gather_distributed: bool = False,
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
        average: str = "macro",
    ) -> None:
        super().__init__()
        _check_options(
            mode, smooth, eps, empty_smooth, ignore_index, include_background, smooth_nr, smooth_dr, average
        )
        self.reduction = check_reduction(reduction)
        if weight is not None and not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight, dtype=torch.get_default_dtype())
        _check_weight(weight)
        self.mode = mode
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)
        self.eps = float(eps)
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)
        self.ignore_index = ignore_index
        self.empty_smooth = None if empty_smooth is None else float(empty_smooth)
        self.gather_distributed = bool(gather_distributed)
        self.smooth_nr = None if smooth_nr is None else float(smooth_nr)
        self.smooth_dr = None if smooth_dr is None else float(smooth_dr)
        self.average = average
        self.register_buffer("weight", weight)

    def _common(self, mask: torch.Tensor | None) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "from_logits": self.from_logits,
            "smooth": self.smooth,
            "eps": self.eps,
            "include_background": self.include_background,
            "batch_dice": self.batch_dice,
            "ignore_index": self.ignore_index,
            "weight": self.weight,
            "reduction": self.reduction,
            "empty_smooth": self.empty_smooth,
            "gather_distributed": self.gather_distributed,
            "smooth_nr": self.smooth_nr,
            "smooth_dr": self.smooth_dr,
            "average": self.average,
            "mask": mask,
        }

    def extra_repr(self) -> str:
        avg = "" if self.average == "macro" else f", average={self.average!r}"
        return f"mode={self.mode!r}, batch_dice={self.batch_dice}, reduction={self.reduction!r}{avg}"
