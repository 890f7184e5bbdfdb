r"""Region-overlap segmentation losses: Dice, Jaccard (soft IoU), Tversky, focal Tversky, generalized Dice.

All of them are built on the same per-class sums, computed once by :func:`_overlap_stats`:

.. math::
    TP_c = \sum_i p_{ic} g_{ic},\quad FP_c = \sum_i p_{ic} - TP_c,\quad FN_c = \sum_i g_{ic} - TP_c

over the spatial positions ``i`` of one image (or of the whole batch with ``batch_dice=True``), where
``p`` are predicted probabilities and ``g`` the target.

Inputs are ``(N, C, d1, ..., dk)`` (any spatial rank ``k >= 1``). Targets are class indices
``(N, d1, ..., dk)`` or a dense (one-hot or soft) tensor of the input's shape. ``mode``:

* ``'multiclass'``: softmax over the ``C`` channels (exactly one class per pixel);
* ``'binary'``: one channel (``C == 1``), sigmoid; class-index targets hold 0/1;
* ``'multilabel'``: an independent sigmoid per channel; dense targets.

With ``from_logits=False`` the input already holds probabilities.

**Soft labels.** For dense targets ``TP`` is computed in the L1 form
``TP = (|p|_1 + |g|_1 - |p - g|_1) / 2`` (Wang & Blaschko's JDT losses, used by MONAI since
MONAI#8138 and by segmentation_models_pytorch since smp#927). It equals ``sum(p * g)`` for hard (0/1)
targets, and unlike it the loss is zero only when ``p == g`` for soft targets: Dice becomes
``|p - g|_1 / (|p|_1 + |g|_1)``. The classic product form is minimised by over-confident
predictions when the target is soft (MONAI#8094). Class-index targets are hard, so the cheaper
product form is used there. ``squared=True`` (Dice only) uses ``sum(p^2) + sum(g^2)`` in the
denominator; its inner product ``sum(p * g)`` is already exact for soft labels.

**Empty masks** (a class absent from an image's target, or from the whole batch with
``batch_dice``): the plain ratio is ``0 / 0`` when the class is also absent from the prediction and
the constant 1 (no gradient) when it is predicted. losskit evaluates the index of such an entry with
the smoothing constant ``empty_smooth`` (default 1) instead of ``smooth``; for Dice that is
``P / (P + empty_smooth)`` with ``P = sum(p)`` the predicted mass: ~0 when the class is (correctly)
not predicted, rising towards 1 with a non-zero gradient when it is falsely predicted.
segmentation_models_pytorch instead zeroes such entries (false positives on empty images are never
penalised); MONAI's default ``smooth_dr = 1e-5`` gives ~1 with a vanishing gradient (MONAI#7883).
``empty_smooth=None`` uses ``smooth`` everywhere (the plain formula).

**ignore_index** (class-index targets only): ignored positions leave every sum, for prediction and
target alike. An image whose positions are all ignored contributes the empty-mask value (0).

**Speed and memory**: multi-class logits with class-index targets go through the fused kernel
:func:`losskit._kernels.overlap.class_sums` (no one-hot tensor; backward keeps only the logits and
indices and recomputes the softmax) for inputs of >= 262144 elements, compiled on first use
(seconds to a minute on a small CPU, then cached); smaller inputs run faster through the plain tensor
code. ``LOSSKIT_FUSED_KERNELS=0`` or ``losskit._kernels.fused_kernels(False)`` uses the plain code at
every size, ``LOSSKIT_FUSED_KERNELS=always`` the kernel at every size (uncompiled below the threshold
or with ``LOSSKIT_COMPILE_KERNELS=0``). Other modes and dense targets use plain tensor code.

**Reduction**: the per-(image, class) losses ``(N, C)`` (``(C,)`` with ``batch_dice``) are what
``reduction='none'`` returns; ``'mean'`` averages them (weighted by the per-class ``weight`` when
given: ``sum(w_c l_nc) / sum(w_c)`` over entries; MONAI multiplies by the weight and divides by
the entry count instead), ``'sum'`` adds them. ``include_background=False`` drops channel 0 after the
softmax (and entry 0 of ``weight``).

**DDP** (``gather_distributed=True``, every function and module of the family): with
``batch_dice=True`` the per-class sums ``TP``, ``FP``, ``FN`` are summed over ranks with the
differentiable :func:`losskit.distributed.global_sum` before the ratio, so every rank computes the
Dice of the global batch and, after DDP's gradient averaging, the gradient equals that of one process
on the concatenated batch (the all-reduce in the backward supplies the factor ``W`` that the
averaging divides out). With ``batch_dice=False`` and ``reduction='mean'`` the mean over
(image, class) entries is made global with :func:`losskit.distributed.ddp_normalizer` (local sum
divided by the global entry count / ``W``). ``'sum'`` and ``'none'`` of per-image losses are left
local. Every rank must make the call (it runs a collective). Without an initialised process group
the flag changes nothing.
"""

from __future__ import annotations

import math

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
from ..registry import register

__all__ = [
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "TverskyLoss",
    "dice_loss",
    "focal_tversky_loss",
    "generalized_dice_loss",
    "jaccard_loss",
    "tversky_loss",
]

MODES = ("multiclass", "binary", "multilabel")


# ----------------------------------------------------------------------------- shared machinery


def _check_options(
    mode: str,
    smooth: float,
    eps: float,
    empty_smooth: float | None,
    ignore_index: int | None,
    include_background: bool,
) -> None:
    check_choice("mode", mode, MODES)
    check_number("smooth", smooth, low=0.0)
    check_number("eps", eps, low=0.0, low_open=True)
    check_number("empty_smooth", empty_smooth, low=0.0, allow_none=True)
    check_int("ignore_index", ignore_index, allow_none=True)
    if not include_background and mode == "binary":
        raise LossValueError(
            "include_background=False drops channel 0, but mode='binary' has a single channel; "
            "keep include_background=True"
        )


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


def _overlap_stats(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class soft ``(TP, FP, FN)``, shape ``(N, C)`` (``(C,)`` with ``batch_dice``).

    ``C`` excludes channel 0 when ``include_background`` is False. Computed in float32 for half
    inputs. With ``batch_dice`` and ``gather_distributed`` (under an initialised process group) the
    batch sums are summed over ranks by the differentiable :func:`losskit.distributed.global_sum`.
    """
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device(("input", input), ("target", target))
    check_min_ndim("input", input, 3, "(N, C, d1, ...) with at least one spatial dimension")
    num_classes = input.shape[1]
    if mode == "binary" and num_classes != 1:
        raise LossValueError(
            f"mode='binary' expects input with one channel (N, 1, ...), got shape {shape_str(input.shape)}; "
            "use mode='multiclass' or 'multilabel' for several channels"
        )
    if not include_background and num_classes < 2:
        raise LossValueError("include_background=False needs at least 2 channels")

    x = upcast(input)
    dtype = x.dtype
    # multi-class logits with class indices: the fused kernel (softmax and sums in one pass, softmax
    # recomputed in backward from the saved logits) whenever it covers the call
    fused = (
        use_fused_kernel(input.numel())
        and mode == "multiclass"
        and from_logits
        and class_sums_supports(input, target)
    )
    if fused:
        p = x  # the softmax happens inside the kernel
    elif from_logits:
        p = torch.softmax(x, dim=1) if mode == "multiclass" else torch.sigmoid(x)
    else:
        if can_read_values(x) and x.numel() > 0:
            lo, hi = value_range(x)
            if not (lo >= 0.0 and hi <= 1.0):
                raise LossValueError(
                    f"input must hold probabilities in [0, 1] when from_logits=False, got range "
                    f"[{lo:g}, {hi:g}]"
                )
        p = x

    n = input.shape[0]
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
        if mode == "binary":
            hit = target == 1
            g = (hit if valid is None else hit & valid).unsqueeze(1).to(dtype)
            if valid is not None:
                p = p * valid.unsqueeze(1).to(dtype)
            tp, psum, gsum = (p * g).sum(spatial), _power_sum(p, squared, spatial), g.sum(spatial)
        elif fused:
            tp, psum, gsum = class_sums(input, target, ignore_index, squared)
        else:
            # class indices: TP_c = sum of p_c over the positions labelled c, without a one-hot tensor
            size = math.prod(input.shape[2:])
            t = target if valid is None else torch.where(valid, target, torch.zeros_like(target))
            idx = t.reshape(n, size).long()
            flat_p = p.reshape(n, num_classes, size)
            if valid is None:
                ones = torch.ones((), dtype=dtype, device=x.device).expand(n, size)
            else:
                ones = valid.reshape(n, size).to(dtype)
                flat_p = flat_p * ones.unsqueeze(1)
            p_true = flat_p.gather(1, idx.unsqueeze(1)).squeeze(1)
            tp = flat_p.new_zeros(n, num_classes).scatter_add(1, idx, p_true)
            psum = _power_sum(flat_p, squared, (2,))
            gsum = torch.zeros(n, num_classes, dtype=dtype, device=x.device).scatter_add(1, idx, ones)
    else:
        if ignore_index is not None:
            raise LossValueError(
                "ignore_index is only supported with class-index targets; for dense targets "
                "zero the ignored positions in both input probabilities and target instead"
            )
        g = _dense_target(input, target, dtype)
        if squared:
            tp = (p * g).sum(spatial)
            psum = _power_sum(p, True, spatial)
            gsum = _power_sum(g, True, spatial)
        else:
            psum = p.sum(spatial)
            gsum = g.sum(spatial)
            # L1 form: exact for hard targets, zero-loss only at p == g for soft ones
            tp = 0.5 * (psum + gsum - (p - g).abs().sum(spatial))

    if batch_dice:
        tp, psum, gsum = tp.sum(0), psum.sum(0), gsum.sum(0)
        if _gather_active(gather_distributed):
            # one all-reduce; its backward all-reduces the gradients, so with DDP's 1/W averaging
            # every rank's logits get exactly the gradient of the global-batch Dice
            tp, psum, gsum = global_sum(torch.stack((tp, psum, gsum.to(tp.dtype)))).unbind(0)
    if not include_background:
        tp, psum, gsum = tp[..., 1:], psum[..., 1:], gsum[..., 1:]
    return tp, psum - tp, gsum - tp


def _power_sum(p: torch.Tensor, squared: bool, dims: tuple[int, ...]) -> torch.Tensor:
    return (p * p).sum(dims) if squared else p.sum(dims)


def _smoothed_index(
    num: torch.Tensor,
    den: torch.Tensor,
    empty: torch.Tensor,
    smooth: float,
    empty_smooth: float | None,
    eps: float,
) -> torch.Tensor:
    """``(num + s) / max(den + s, eps)`` with ``s = empty_smooth`` on empty-target entries."""
    if empty_smooth is None or float(empty_smooth) == float(smooth):
        s: torch.Tensor | float = float(smooth)
    else:
        s = torch.full_like(num, float(smooth)).masked_fill(empty, float(empty_smooth))
    return (num + s) / (den + s).clamp_min(eps)


def _class_weight(weight: torch.Tensor | None, include_background: bool, like: torch.Tensor):
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
    if weight is not None and weight.shape[0] != num_classes:
        raise LossValueError(
            f"weight has shape {shape_str(weight.shape)}, expected ({num_classes},): one entry per "
            "input channel"
        )
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


def _tversky_family(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str,
    from_logits: bool,
    smooth: float,
    eps: float,
    include_background: bool,
    batch_dice: bool,
    ignore_index: int | None,
    weight: torch.Tensor | None,
    reduction: str,
    empty_smooth: float | None,
    tp_coef: float,
    alpha: float,
    beta: float,
    squared: bool = False,
    gamma: float | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """``1 - (k TP + s) / (k TP + alpha FP + beta FN + s)`` (optionally ``** (1 / gamma)``).

    Dice is ``k = 2, alpha = beta = 1``, Jaccard ``k = 1, alpha = beta = 1``, Tversky ``k = 1``.
    """
    check_reduction(reduction)
    _check_options(mode, smooth, eps, empty_smooth, ignore_index, include_background)
    _check_weight(weight)
    tp, fp, fn = _overlap_stats(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        include_background=include_background,
        batch_dice=batch_dice,
        squared=squared,
        gather_distributed=gather_distributed,
    )
    num = tp_coef * tp
    den = num + alpha * fp + beta * fn
    empty = (tp + fn) <= 0
    loss = 1.0 - _smoothed_index(num, den, empty, smooth, empty_smooth, eps)
    if gamma is not None:
        # (1 - TI) ** (1 / gamma) has an infinite slope at TI = 1 when gamma > 1: clamp first
        loss = loss.clamp_min(eps) ** (1.0 / float(gamma))
    global_mean = gather_distributed and not batch_dice
    return _finish(loss, weight, input.shape[1], include_background, reduction, global_mean)


# ----------------------------------------------------------------------------- public functions


def dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | None = None,
    squared: bool = False,
    reduction: str = "mean",
    *,
    empty_smooth: float | None = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Soft Dice loss (Milletari et al. 2016, V-Net; Sudre et al. 2017).

    .. math::
        \ell_{nc} = 1 - \frac{2\,TP_{nc} + s}{\sum_i p_{nic} + \sum_i g_{nic} + s}
        = 1 - \frac{2\,TP + s}{2\,TP + FP + FN + s}

    per image ``n`` and class ``c`` (sums over the batch too with ``batch_dice=True``), the
    denominator clamped at ``eps``. ``squared=True`` uses ``sum(p^2) + sum(g^2)``. For equal settings
    this is MONAI's ``DiceLoss`` (``smooth_nr = smooth_dr = smooth``, ``batch=batch_dice``,
    ``squared_pred=squared``) on entries whose target is not empty; see the module docstring for
    soft labels, empty masks, ``ignore_index`` and the reductions.

    Args:
        input: logits (or probabilities with ``from_logits=False``), ``(N, C, d1, ...)``.
        target: class indices ``(N, d1, ...)`` or a dense one-hot/soft target of ``input``'s shape.
        mode: ``'multiclass'`` (softmax), ``'binary'`` (``C == 1``, sigmoid) or ``'multilabel'``.
        smooth: added to numerator and denominator.
        eps: lower bound of the denominator.
        include_background: ``False`` drops channel 0.
        batch_dice: sum over the batch before the ratio (one Dice per class).
        ignore_index: class-index value whose positions are left out.
        weight: per-class weights ``(C,)`` for the mean over classes.
        squared: squared terms in the denominator.
        reduction: ``'none'`` (``(N, C)`` or ``(C,)``), ``'mean'`` or ``'sum'``.
        empty_smooth: smoothing used where the target of a class is empty (``None``: ``smooth``).
        gather_distributed: under DDP, compute the loss of the global batch (see the module
            docstring); no effect without an initialised process group.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])  # (N=1, C=1, 4 pixels)
        >>> target = torch.tensor([[1, 1, 0, 0]])  # TP = 1, sum(p) = 2, sum(g) = 2
        >>> dice_loss(probs, target, mode="binary", from_logits=False)
        tensor(0.5000)
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> dice_loss(logits, torch.randint(0, 3, (2, 8, 8)), reduction="none").shape
        torch.Size([2, 3])
    """
    return _tversky_family(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        smooth=smooth,
        eps=eps,
        include_background=include_background,
        batch_dice=batch_dice,
        ignore_index=ignore_index,
        weight=weight,
        reduction=reduction,
        empty_smooth=empty_smooth,
        gather_distributed=gather_distributed,
        tp_coef=2.0,
        alpha=1.0,
        beta=1.0,
        squared=squared,
    )


def jaccard_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    *,
    empty_smooth: float | None = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Soft Jaccard / IoU loss (Rahman & Wang 2016; Berman et al. 2018 use its Lovász surrogate).

    .. math::
        \ell_{nc} = 1 - \frac{TP + s}{TP + FP + FN + s}
        = 1 - \frac{TP + s}{\sum p + \sum g - TP + s}

    Same arguments and conventions as :func:`dice_loss` (the soft-label L1 form, empty masks,
    ``ignore_index``). For ``smooth = 0`` the indices satisfy ``J = D / (2 - D)``. This is the smp
    convention for ``smooth``; MONAI's ``DiceLoss(jaccard=True)`` is the same with ``smooth / 2``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])
        >>> jaccard_loss(probs, torch.tensor([[1, 1, 0, 0]]), mode="binary", from_logits=False)
        tensor(0.6667)
    """
    return _tversky_family(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        smooth=smooth,
        eps=eps,
        include_background=include_background,
        batch_dice=batch_dice,
        ignore_index=ignore_index,
        weight=weight,
        reduction=reduction,
        empty_smooth=empty_smooth,
        gather_distributed=gather_distributed,
        tp_coef=1.0,
        alpha=1.0,
        beta=1.0,
    )


def tversky_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 0.5,
    beta: float = 0.5,
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    *,
    empty_smooth: float | None = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Tversky loss (Salehi et al. 2017).

    .. math::
        \ell_{nc} = 1 - \frac{TP + s}{TP + \alpha\,FP + \beta\,FN + s}

    ``alpha`` weighs the **false positives**, ``beta`` the **false negatives** (Salehi et al.'s and
    MONAI's convention; ``beta > alpha`` favours recall). ``alpha = beta = 0.5`` is the Dice loss
    (with ``smooth`` halved: ``tversky(0.5, 0.5, smooth=s/2) == dice(smooth=s)``), ``alpha = beta =
    1`` the Jaccard loss. Other arguments as in :func:`dice_loss`; equal to MONAI's ``TverskyLoss``
    with ``smooth_nr = smooth_dr = smooth`` on non-empty entries.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])  # TP = 1, FP = 1, FN = 1
        >>> tversky_loss(probs, torch.tensor([[1, 1, 0, 0]]), "binary", alpha=0.0, beta=1.0, from_logits=False)
        tensor(0.5000)
    """
    check_number("alpha", alpha, low=0.0)
    check_number("beta", beta, low=0.0)
    return _tversky_family(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        smooth=smooth,
        eps=eps,
        include_background=include_background,
        batch_dice=batch_dice,
        ignore_index=ignore_index,
        weight=weight,
        reduction=reduction,
        empty_smooth=empty_smooth,
        gather_distributed=gather_distributed,
        tp_coef=1.0,
        alpha=float(alpha),
        beta=float(beta),
    )


def focal_tversky_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 4.0 / 3.0,
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    *,
    empty_smooth: float | None = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Focal Tversky loss (Abraham & Khan 2019).

    .. math::
        \ell_{nc} = \big(1 - TI_{nc}\big)^{1/\gamma},\qquad
        TI = \frac{TP + s}{TP + \alpha\,FP + \beta\,FN + s}

    **Exponent convention**: the paper writes the exponent as ``1/gamma`` with ``gamma`` in
    ``[1, 3]`` and recommends ``gamma = 4/3`` (exponent 0.75); libraries that write
    ``(1 - TI) ** gamma`` with ``gamma = 0.75`` compute the same thing. ``gamma = 1`` is the Tversky
    loss. The paper's ``alpha = 0.7`` multiplies the false *negatives*; in the Salehi/MONAI
    convention used here that is ``beta = 0.7, alpha = 0.3`` (the defaults). ``1 - TI`` is clamped
    at ``eps`` before the power, whose slope is infinite at 0 for ``gamma > 1``, so a perfect
    prediction gives ``eps ** (1 / gamma)`` (about 6e-6) with a zero gradient.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])  # TP = 1, FP = 1, FN = 1
        >>> focal_tversky_loss(probs, torch.tensor([[1, 1, 0, 0]]), "binary", alpha=0.5, beta=0.5,
        ...                    gamma=2.0, from_logits=False)  # sqrt(1 - 1/2)
        tensor(0.7071)
    """
    check_number("alpha", alpha, low=0.0)
    check_number("beta", beta, low=0.0)
    check_number("gamma", gamma, low=0.0, low_open=True)
    return _tversky_family(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        smooth=smooth,
        eps=eps,
        include_background=include_background,
        batch_dice=batch_dice,
        ignore_index=ignore_index,
        weight=weight,
        reduction=reduction,
        empty_smooth=empty_smooth,
        gather_distributed=gather_distributed,
        tp_coef=1.0,
        alpha=float(alpha),
        beta=float(beta),
        gamma=float(gamma),
    )


WEIGHT_TYPES = ("square", "simple", "uniform")


def generalized_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    weight_type: str = "square",
    reduction: str = "mean",
    *,
    empty_smooth: float | None = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Generalized Dice loss (Sudre et al. 2017), one value per image (or per batch).

    .. math::
        \ell_n = 1 - \frac{2 \sum_c w_c\,TP_{nc} + s}{\sum_c w_c \big(\sum_i p_{nic} + \sum_i g_{nic}\big) + s},
        \qquad w_c = 1 / \big(\sum_i g_{nic}\big)^2

    (``weight_type='simple'``: ``1 / sum(g)``; ``'uniform'``: 1). The weights are constants (no
    gradient). A class absent from the target has an infinite weight; like MONAI it is replaced by
    the largest finite weight of that image. When no class is present (empty target, or all
    positions ignored) every weight is 1 and ``empty_smooth`` is the smoothing, so the loss is
    ``P / (P + empty_smooth)`` (MONAI gives 0 there, whatever is predicted).

    ``reduction='none'`` returns ``(N,)`` (a 0-d tensor with ``batch_dice``). Other arguments as in
    :func:`dice_loss`.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])
        >>> generalized_dice_loss(probs, torch.tensor([[1, 1, 0, 0]]), "binary", from_logits=False)
        tensor(0.5000)
    """
    check_reduction(reduction)
    _check_options(mode, smooth, eps, empty_smooth, ignore_index, include_background)
    check_choice("weight_type", weight_type, WEIGHT_TYPES)
    tp, fp, fn = _overlap_stats(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        include_background=include_background,
        batch_dice=batch_dice,
        gather_distributed=gather_distributed,
    )
    gsum = (tp + fn).detach()
    present = gsum > 0
    if weight_type == "uniform":
        w = torch.ones_like(gsum)
    else:
        g = gsum * gsum if weight_type == "square" else gsum
        w = torch.where(present, 1.0 / torch.where(present, g, torch.ones_like(g)), torch.zeros_like(g))
        finite = torch.isfinite(w) & present
        w = torch.where(finite, w, torch.zeros_like(w))
        w = torch.where(finite, w, w.amax(dim=-1, keepdim=True))
    none_present = ~present.any(dim=-1, keepdim=True)
    w = torch.where(none_present, torch.ones_like(w), w)
    num = 2.0 * (w * tp).sum(-1)
    den = (w * (2.0 * tp + fp + fn)).sum(-1)
    loss = 1.0 - _smoothed_index(num, den, none_present.squeeze(-1), smooth, empty_smooth, eps)
    global_mean = gather_distributed and not batch_dice
    return reduce_loss(
        loss, reduction, normalizer=_global_mean_normalizer(loss, None, reduction, global_mean)
    )


# ----------------------------------------------------------------------------- modules


class _OverlapLoss(nn.Module):
    """Stores the options shared by the overlap losses; ``weight`` is a buffer."""

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
    ) -> None:
        super().__init__()
        _check_options(mode, smooth, eps, empty_smooth, ignore_index, include_background)
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
        self.register_buffer("weight", weight)

    def _common(self) -> dict:
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
        }

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, batch_dice={self.batch_dice}, reduction={self.reduction!r}"


class DiceLoss(_OverlapLoss):
    """Module form of :func:`dice_loss`.

    Example:
        >>> loss_fn = DiceLoss(mode="binary", from_logits=False)
        >>> loss_fn(torch.tensor([[[1.0, 0.0, 0.5, 0.5]]]), torch.tensor([[1, 1, 0, 0]]))
        tensor(0.5000)
    """

    def __init__(self, *args, squared: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.squared = bool(squared)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(input, target, squared=self.squared, **self._common())


class JaccardLoss(_OverlapLoss):
    """Module form of :func:`jaccard_loss`.

    Example:
        >>> JaccardLoss(mode="binary", from_logits=False)(torch.ones(1, 1, 3), torch.ones(1, 3).long())
        tensor(0.)
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return jaccard_loss(input, target, **self._common())


class TverskyLoss(_OverlapLoss):
    """Module form of :func:`tversky_loss` (``alpha`` weighs false positives, ``beta`` false negatives).

    Example:
        >>> TverskyLoss(mode="binary", alpha=0.3, beta=0.7, from_logits=False)(
        ...     torch.ones(1, 1, 3), torch.ones(1, 3).long())
        tensor(0.)
    """

    def __init__(self, mode: str = "multiclass", alpha: float = 0.5, beta: float = 0.5, **kwargs) -> None:
        super().__init__(mode, **kwargs)
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.beta = float(check_number("beta", beta, low=0.0))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tversky_loss(input, target, alpha=self.alpha, beta=self.beta, **self._common())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, {super().extra_repr()}"


class FocalTverskyLoss(_OverlapLoss):
    """Module form of :func:`focal_tversky_loss` (exponent ``1 / gamma``, paper convention).

    Example:
        >>> loss_fn = FocalTverskyLoss(mode="binary", alpha=0.5, beta=0.5, from_logits=False)
        >>> loss_fn(torch.tensor([[[1.0, 0.0, 0.5, 0.5]]]), torch.tensor([[1, 1, 0, 0]]))  # (1 - 1/2) ** 0.75
        tensor(0.5946)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        **kwargs,
    ) -> None:
        super().__init__(mode, **kwargs)
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.beta = float(check_number("beta", beta, low=0.0))
        self.gamma = float(check_number("gamma", gamma, low=0.0, low_open=True))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_tversky_loss(
            input, target, alpha=self.alpha, beta=self.beta, gamma=self.gamma, **self._common()
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, {super().extra_repr()}"


class GeneralizedDiceLoss(nn.Module):
    """Module form of :func:`generalized_dice_loss`.

    Example:
        >>> GeneralizedDiceLoss(mode="binary", from_logits=False)(
        ...     torch.tensor([[[1.0, 0.0, 0.5, 0.5]]]), torch.tensor([[1, 1, 0, 0]]))
        tensor(0.5000)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        from_logits: bool = True,
        smooth: float = 0.0,
        eps: float = 1e-7,
        include_background: bool = True,
        batch_dice: bool = False,
        ignore_index: int | None = None,
        weight_type: str = "square",
        reduction: str = "mean",
        empty_smooth: float | None = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_options(mode, smooth, eps, empty_smooth, ignore_index, include_background)
        self.reduction = check_reduction(reduction)
        self.weight_type = check_choice("weight_type", weight_type, WEIGHT_TYPES)
        self.mode = mode
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)
        self.eps = float(eps)
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)
        self.ignore_index = ignore_index
        self.empty_smooth = None if empty_smooth is None else float(empty_smooth)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return generalized_dice_loss(
            input,
            target,
            mode=self.mode,
            from_logits=self.from_logits,
            smooth=self.smooth,
            eps=self.eps,
            include_background=self.include_background,
            batch_dice=self.batch_dice,
            ignore_index=self.ignore_index,
            weight_type=self.weight_type,
            reduction=self.reduction,
            empty_smooth=self.empty_smooth,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, weight_type={self.weight_type!r}, reduction={self.reduction!r}"


_FAMILY = "segmentation"
register(
    "dice",
    DiceLoss,
    family=_FAMILY,
    functional=dice_loss,
    source="Milletari et al. 2016 (V-Net)",
    notes="soft-label L1 form; empty masks penalise false positives with gradient",
)
register(
    "jaccard",
    JaccardLoss,
    family=_FAMILY,
    functional=jaccard_loss,
    source="Rahman & Wang 2016",
    notes="soft IoU",
    aliases=("iou_seg", "soft_iou"),
)
register(
    "tversky",
    TverskyLoss,
    family=_FAMILY,
    functional=tversky_loss,
    source="Salehi et al. 2017",
    notes="alpha weighs FP, beta FN; 0.5/0.5 is Dice",
)
register(
    "focal_tversky",
    FocalTverskyLoss,
    family=_FAMILY,
    functional=focal_tversky_loss,
    source="Abraham & Khan 2019",
    notes="(1 - TI)^(1/gamma), gamma=4/3",
)
register(
    "generalized_dice",
    GeneralizedDiceLoss,
    family=_FAMILY,
    functional=generalized_dice_loss,
    source="Sudre et al. 2017",
    notes="1/volume^2 class weights; absent classes get the largest finite weight",
)
