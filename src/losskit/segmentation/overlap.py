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

**Options** (keyword-only, every loss of the family):

* ``smooth_nr`` / ``smooth_dr``: separate numerator and denominator smoothing, MONAI's semantics
  ``(num + smooth_nr) / (den + smooth_dr)`` (MONAI's defaults are ``1e-5`` for both). They replace
  ``smooth`` (which adds the same constant to both) and cannot be combined with a non-zero
  ``smooth``; an omitted one falls back to ``smooth``. Empty-target entries still use
  ``empty_smooth`` for both.
* ``average='micro'`` (Dice, Jaccard, Tversky, focal Tversky): ``TP``, ``FP``, ``FN`` are pooled over
  the classes (after ``include_background``; weighted by ``weight`` when given: ``TP = sum_c w_c
  TP_c``) before the ratio, one value per image (per batch with ``batch_dice``): kornia's default.
  For multiclass softmax with class-index targets and ``smooth = 0`` the micro Dice index is the
  mean probability of the true class. The default ``'macro'`` (one ratio per class, then the mean)
  is unchanged; ``reduction='none'`` returns ``(N,)`` (0-dim with ``batch_dice``) for ``'micro'``.
* ``mask=``: a per-pixel bool tensor ``(N, d1, ...)`` or ``(N, 1, d1, ...)`` (MONAI's masked Dice);
  positions where it is False leave every sum, for prediction and target alike (the same as
  ``ignore_index``, and usable with dense targets). An image with no position left gives the
  empty-mask value. Modules take it in ``forward(input, target, mask=None)``.

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

from typing import Any

import torch

from .._checks import check_number, check_reduction
from .._reduction import reduce_loss
from ..registry import register
from ._sums import (
    _check_options,
    _check_weight,
    _check_weight_len,
    _class_weight,
    _finish,
    _global_mean_normalizer,
    _overlap_stats,
    _OverlapLoss,
    _smooth_pair,
    _smoothed_index,
)

# generalized Dice lives in its own module; it is part of this family
from .generalized import GeneralizedDiceLoss, generalized_dice_loss

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
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    average: str = "macro",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - (k TP + s_nr) / (k TP + alpha FP + beta FN + s_dr)`` (optionally ``** (1 / gamma)``).

    Dice is ``k = 2, alpha = beta = 1``, Jaccard ``k = 1, alpha = beta = 1``, Tversky ``k = 1``.
    """
    check_reduction(reduction)
    _check_options(
        mode, smooth, eps, empty_smooth, ignore_index, include_background, smooth_nr, smooth_dr, average
    )
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
        mask=mask,
    )
    micro = average == "micro"
    if micro:
        # pool the classes before the ratio (weighted by the class weights, if any)
        _check_weight_len(weight, input.shape[1])
        w = _class_weight(weight, include_background, tp)
        tp, fp, fn = ((t if w is None else t * w).sum(-1) for t in (tp, fp, fn))
    num = tp_coef * tp
    den = num + alpha * fp + beta * fn
    empty = (tp + fn) <= 0
    loss = 1.0 - _smoothed_index(
        num, den, empty, _smooth_pair(smooth, smooth_nr, smooth_dr), empty_smooth, eps
    )
    if gamma is not None:
        # (1 - TI) ** (1 / gamma) has an infinite slope at TI = 1 when gamma > 1: clamp first
        loss = loss.clamp_min(eps) ** (1.0 / float(gamma))
    global_mean = gather_distributed and not batch_dice
    if micro:
        return reduce_loss(
            loss, reduction, normalizer=_global_mean_normalizer(loss, None, reduction, global_mean)
        )
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
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    average: str = "macro",
    mask: torch.Tensor | None = None,
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
        smooth_nr, smooth_dr: numerator / denominator smoothing (MONAI), instead of ``smooth``.
        average: ``'macro'`` (per class, then the mean) or ``'micro'`` (classes pooled first).
        mask: per-pixel bool ``(N, d1, ...)`` or ``(N, 1, d1, ...)``; False positions leave the sums.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])  # (N=1, C=1, 4 pixels)
        >>> target = torch.tensor([[1, 1, 0, 0]])  # TP = 1, sum(p) = 2, sum(g) = 2
        >>> dice_loss(probs, target, mode="binary", from_logits=False)
        tensor(0.5000)
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> dice_loss(logits, torch.randint(0, 3, (2, 8, 8)), reduction="none").shape
        torch.Size([2, 3])
        >>> dice_loss(logits, torch.randint(0, 3, (2, 8, 8)), average="micro", reduction="none").shape
        torch.Size([2])
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
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        average=average,
        mask=mask,
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
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    average: str = "macro",
    mask: torch.Tensor | None = None,
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
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        average=average,
        mask=mask,
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
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    average: str = "macro",
    mask: torch.Tensor | None = None,
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
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        average=average,
        mask=mask,
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
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    average: str = "macro",
    mask: torch.Tensor | None = None,
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
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        average=average,
        mask=mask,
        tp_coef=1.0,
        alpha=float(alpha),
        beta=float(beta),
        gamma=float(gamma),
    )


# ----------------------------------------------------------------------------- modules


class DiceLoss(_OverlapLoss):
    """Module form of :func:`dice_loss`.

    Example:
        >>> loss_fn = DiceLoss(mode="binary", from_logits=False)
        >>> loss_fn(torch.tensor([[[1.0, 0.0, 0.5, 0.5]]]), torch.tensor([[1, 1, 0, 0]]))
        tensor(0.5000)
    """

    def __init__(self, *args: Any, squared: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.squared = bool(squared)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dice_loss(input, target, squared=self.squared, **self._common(mask))


class JaccardLoss(_OverlapLoss):
    """Module form of :func:`jaccard_loss`.

    Example:
        >>> JaccardLoss(mode="binary", from_logits=False)(torch.ones(1, 1, 3), torch.ones(1, 3).long())
        tensor(0.)
    """

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return jaccard_loss(input, target, **self._common(mask))


class TverskyLoss(_OverlapLoss):
    """Module form of :func:`tversky_loss` (``alpha`` weighs false positives, ``beta`` false negatives).

    Example:
        >>> TverskyLoss(mode="binary", alpha=0.3, beta=0.7, from_logits=False)(
        ...     torch.ones(1, 1, 3), torch.ones(1, 3).long())
        tensor(0.)
    """

    def __init__(self, mode: str = "multiclass", alpha: float = 0.5, beta: float = 0.5, **kwargs: Any) -> None:
        super().__init__(mode, **kwargs)
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.beta = float(check_number("beta", beta, low=0.0))

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return tversky_loss(input, target, alpha=self.alpha, beta=self.beta, **self._common(mask))

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
        **kwargs: Any,
    ) -> None:
        super().__init__(mode, **kwargs)
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.beta = float(check_number("beta", beta, low=0.0))
        self.gamma = float(check_number("gamma", gamma, low=0.0, low_open=True))

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        kw = self._common(mask)
        return focal_tversky_loss(input, target, alpha=self.alpha, beta=self.beta, gamma=self.gamma, **kw)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, {super().extra_repr()}"


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
