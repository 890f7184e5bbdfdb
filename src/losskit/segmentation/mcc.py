r"""Matthews correlation coefficient (MCC) loss for binary and multi-label segmentation.

.. math::
    \mathrm{MCC} = \frac{TP\,TN - FP\,FN}{\sqrt{(TP + FP)(TP + FN)(TN + FP)(TN + FN)}},\qquad
    \ell = 1 - \mathrm{MCC}

on the soft per-class sums of the overlap family (:mod:`losskit.segmentation.overlap`), with
``TN = n - TP - FP - FN`` and ``n`` the number of positions that count. Unlike Dice, MCC uses the
true negatives, so it stays informative when the foreground is tiny (Abhishek & Hamarneh 2021,
skin-lesion segmentation; Chicco & Jurman 2020 for its behaviour on imbalanced data).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import LossValueError, check_number, check_reduction
from ..registry import register
from ._sums import _check_options, _check_weight, _finish, _stats

__all__ = ["MCCLoss", "mcc_loss"]

MCC_MODES = ("binary", "multilabel")


def _check_mcc_options(
    mode: str, eps: float, empty_smooth: float | None, ignore_index: int | None, include_background: bool
) -> None:
    _check_options(mode, 0.0, eps, empty_smooth, ignore_index, include_background)
    if mode not in MCC_MODES:
        raise LossValueError(
            f"mode must be one of 'binary', 'multilabel' for the MCC loss (one sigmoid per channel), "
            f"got {mode!r}"
        )


def mcc_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "binary",
    from_logits: bool = True,
    eps: float = 1e-7,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    *,
    empty_smooth: float | None = 1.0,
    gather_distributed: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Soft Matthews correlation loss ``1 - MCC`` per image and channel (Matthews 1975; Abhishek &
    Hamarneh 2021, "Matthews Correlation Coefficient Loss for Deep Convolutional Networks").

    .. math::
        \ell_{nc} = 1 - \frac{TP\,TN - FP\,FN}{\sqrt{(TP + FP)(TP + FN)(TN + FP)(TN + FN)}}

    with soft ``TP``, ``FP``, ``FN`` from the probabilities (the L1 form for dense soft targets, see
    :mod:`losskit.segmentation.overlap`) and ``TN = n - TP - FP - FN``. The loss lies in ``[0, 2]``:
    0 for a perfect prediction, 1 for an uninformative one, 2 for the inverted mask. The sums are
    divided by ``n`` before the products (MCC is scale-free; this keeps the four-fold product in
    range for large volumes), and the product under the square root is clamped at ``eps ** 2``.

    **Empty and full targets**: where the target of an entry has no positive (``TP + FN = 0``) or no
    negative (``TN + FP = 0``) MCC is ``0 / 0`` and its soft form a constant, so a false positive on
    an empty mask would get no gradient. Such entries use the overlap family's empty-mask value
    instead: ``FP / (FP + empty_smooth)`` for an empty target (0 when nothing is predicted, rising
    towards 1 with a gradient as mass is predicted) and ``FN / (FN + empty_smooth)`` for a full one.
    ``empty_smooth=None`` keeps the plain formula there (loss 1, no gradient).
    segmentation_models_pytorch's ``MCCLoss`` pools the whole batch (``batch_dice=True`` here) and
    adds ``eps`` to each factor instead.

    Args:
        input: logits (or probabilities with ``from_logits=False``), ``(N, C, d1, ...)``.
        target: ``'binary'``: 0/1 class indices ``(N, d1, ...)`` or a dense ``(N, 1, d1, ...)``
            target; ``'multilabel'``: a dense 0/1 or soft target of ``input``'s shape.
        mode: ``'binary'`` (``C == 1``) or ``'multilabel'`` (a sigmoid per channel).
        eps: lower bound of the product under the square root and of the empty-entry denominator.
        include_background: ``False`` drops channel 0 (multi-label only).
        batch_dice: sum over the batch before the ratio (one MCC per channel).
        ignore_index: class-index value (binary targets) whose positions are left out.
        weight: per-channel weights ``(C,)`` for the mean.
        reduction: ``'none'`` (``(N, C)`` or ``(C,)``), ``'mean'`` or ``'sum'``.
        empty_smooth: smoothing of the empty/full-target value (``None``: the plain formula).
        gather_distributed: under DDP, the loss of the global batch (as :func:`~losskit.dice_loss`).
        mask: per-pixel bool ``(N, d1, ...)`` or ``(N, 1, d1, ...)``; False positions leave every sum.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])  # TP = 1, FN = 1, FP = 1, TN = 1
        >>> mcc_loss(probs, torch.tensor([[1, 1, 0, 0]]), from_logits=False)  # MCC = 0
        tensor(1.)
        >>> mcc_loss(probs, torch.tensor([[1, 0, 1, 0]]), from_logits=False)  # perfect
        tensor(0.)
        >>> mcc_loss(probs, torch.tensor([[0, 1, 0, 1]]), from_logits=False)  # inverted
        tensor(2.)
    """
    check_reduction(reduction)
    _check_mcc_options(mode, eps, empty_smooth, ignore_index, include_background)
    _check_weight(weight)
    tp, fp, fn, n = _stats(
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
    tn = n - tp - fp - fn
    empty = (tp + fn) <= 0
    full = (tn + fp) <= 0
    # scale-free: fractions of the counted positions (n = 0 only where the target is empty too)
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    a, b, c, d = tp / safe_n, fp / safe_n, fn / safe_n, tn / safe_n
    prod = ((a + b) * (a + c)).clamp_min(0) * ((d + b) * (d + c)).clamp_min(0)
    loss = 1.0 - (a * d - b * c) / prod.clamp_min(float(eps) ** 2).sqrt()
    if empty_smooth is not None:
        s = float(empty_smooth)
        loss = torch.where(empty, fp / (fp + s).clamp_min(eps), loss)
        loss = torch.where(full & ~empty, fn / (fn + s).clamp_min(eps), loss)
    global_mean = gather_distributed and not batch_dice
    return _finish(loss, weight, input.shape[1], include_background, reduction, global_mean)


class MCCLoss(nn.Module):
    """Module form of :func:`mcc_loss`; ``weight`` is a buffer, ``forward(input, target, mask=None)``.

    Example:
        >>> loss_fn = MCCLoss(from_logits=False)
        >>> loss_fn(torch.tensor([[[1.0, 0.0, 1.0, 0.0]]]), torch.tensor([[1, 0, 1, 0]]))
        tensor(0.)
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "binary",
        from_logits: bool = True,
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
        _check_mcc_options(mode, eps, empty_smooth, ignore_index, include_background)
        self.reduction = check_reduction(reduction)
        if weight is not None and not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight, dtype=torch.get_default_dtype())
        _check_weight(weight)
        self.mode = mode
        self.from_logits = bool(from_logits)
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)
        self.ignore_index = ignore_index
        self.empty_smooth = None if empty_smooth is None else float(empty_smooth)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("weight", weight)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return mcc_loss(
            input,
            target,
            self.mode,
            self.from_logits,
            self.eps,
            self.include_background,
            self.batch_dice,
            self.ignore_index,
            self.weight,
            self.reduction,
            empty_smooth=self.empty_smooth,
            gather_distributed=self.gather_distributed,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, batch_dice={self.batch_dice}, reduction={self.reduction!r}"


register(
    "mcc",
    MCCLoss,
    family="segmentation",
    functional=mcc_loss,
    source="Matthews 1975; Abhishek & Hamarneh 2021",
    notes="1 - soft MCC (binary / multilabel); empty or full targets penalise FP / FN with gradient",
)
