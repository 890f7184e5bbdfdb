"""Generalized Dice loss (Sudre et al. 2017): one overlap ratio per image, classes weighted by volume.

Same inputs and conventions as the rest of the overlap family (:mod:`losskit.segmentation.overlap`:
``mode``, ``from_logits``, ``ignore_index``, ``mask``, soft labels, empty masks, DDP).
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_reduction
from .._reduction import reduce_loss
from ..registry import register
from ._sums import (
    _check_options,
    _global_mean_normalizer,
    _overlap_stats,
    _OverlapLoss,
    _smooth_pair,
    _smoothed_index,
)

__all__ = ["GeneralizedDiceLoss", "generalized_dice_loss"]

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
    smooth_nr: float | None = None,
    smooth_dr: float | None = None,
    mask: torch.Tensor | None = None,
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
    :func:`dice_loss` (``smooth_nr`` / ``smooth_dr`` and ``mask`` too; the classes are already
    pooled, so there is no ``average``).

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 0.5, 0.5]]])
        >>> generalized_dice_loss(probs, torch.tensor([[1, 1, 0, 0]]), "binary", from_logits=False)
        tensor(0.5000)
    """
    check_reduction(reduction)
    _check_options(mode, smooth, eps, empty_smooth, ignore_index, include_background, smooth_nr, smooth_dr)
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
        mask=mask,
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
    smooth_both = _smooth_pair(smooth, smooth_nr, smooth_dr)
    loss = 1.0 - _smoothed_index(num, den, none_present.squeeze(-1), smooth_both, empty_smooth, eps)
    global_mean = gather_distributed and not batch_dice
    return reduce_loss(
        loss, reduction, normalizer=_global_mean_normalizer(loss, None, reduction, global_mean)
    )


class GeneralizedDiceLoss(_OverlapLoss):
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
        smooth_nr: float | None = None,
        smooth_dr: float | None = None,
    ) -> None:
        super().__init__(
            mode,
            from_logits,
            smooth,
            eps,
            include_background,
            batch_dice,
            ignore_index,
            None,
            reduction,
            empty_smooth,
            gather_distributed,
            smooth_nr,
            smooth_dr,
        )
        self.weight_type = check_choice("weight_type", weight_type, WEIGHT_TYPES)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        kw = self._common(mask)
        del kw["weight"], kw["average"]
        return generalized_dice_loss(input, target, weight_type=self.weight_type, **kw)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, weight_type={self.weight_type!r}, reduction={self.reduction!r}"


register(
    "generalized_dice",
    GeneralizedDiceLoss,
    family="segmentation",
    functional=generalized_dice_loss,
    source="Sudre et al. 2017",
    notes="1/volume^2 class weights; absent classes get the largest finite weight",
)
