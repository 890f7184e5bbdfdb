r"""Segmentation presets: Dice + cross-entropy, Dice + focal, and a deep-supervision wrapper.

The compound losses of nnU-Net and MONAI in one call: ``L = w_dice * Dice + w_ce * CE`` (or ``+
w_focal * focal``), each term from the family that owns it (:func:`~losskit.dice_loss`,
:func:`~losskit.classification.cross_entropy_loss`, :func:`~losskit.classification.focal_loss`,
:func:`~losskit.classification.sigmoid_focal_loss`); the modules keep the last value of each term
(detached, before its weight) in :attr:`last_terms`.

The second term follows ``mode``: ``'multiclass'`` uses the softmax cross-entropy (focal) over the
``C`` channels, ``'binary'`` / ``'multilabel'`` the element-wise sigmoid BCE (focal) -- the soft-label
BCE of segmentation_models_pytorch's ``SoftBCEWithLogitsLoss`` when ``smooth_factor > 0``:
targets ``y (1 - s) + (1 - y) s``. In ``'multiclass'`` mode ``smooth_factor`` is the cross-entropy's
label smoothing (torch semantics: ``(1 - s) onehot + s / C``). Inputs are logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import LossTypeError, LossValueError, check_choice, check_number, check_tensor, shape_str
from .._reduction import reduce_loss
from ..classification import cross_entropy_loss, focal_loss, sigmoid_focal_loss
from ..registry import register
from ._sums import _check_mask, _check_options, _check_weight
from .overlap import dice_loss

__all__ = ["DeepSupervisionLoss", "DiceCELoss", "DiceFocalLoss", "dice_ce_loss", "dice_focal_loss"]

_DICE_KEYS = (
    "include_background",
    "batch_dice",
    "smooth",
    "smooth_nr",
    "smooth_dr",
    "average",
    "squared",
    "empty_smooth",
    "eps",
    "gather_distributed",
)


def _check_preset(
    mode: str,
    dice_kw: dict[str, Any],
    ignore_index: int | None,
    smooth_factor: float,
    weights: dict[str, float],
) -> None:
    _check_options(
        mode,
        dice_kw.get("smooth", 0.0),
        dice_kw.get("eps", 1e-7),
        dice_kw.get("empty_smooth", 1.0),
        ignore_index,
        dice_kw.get("include_background", True),
        dice_kw.get("smooth_nr"),
        dice_kw.get("smooth_dr"),
        dice_kw.get("average", "macro"),
    )
    unknown = sorted(set(dice_kw) - set(_DICE_KEYS))
    if unknown:
        raise LossTypeError(f"unexpected Dice option {unknown[0]!r}; expected one of {', '.join(_DICE_KEYS)}")
    check_number("smooth_factor", smooth_factor, low=0.0, high=1.0)
    for name, value in weights.items():
        check_number(name, value, low=0.0)


def _second_term(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    *,
    focal: bool,
    gamma: float,
    alpha: float | None,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    smooth_factor: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Mean cross-entropy (softmax or sigmoid) or focal term over the positions that count."""
    m = _check_mask(input, mask)
    index_target = target.dim() == input.dim() - 1
    if mode == "multiclass":
        if alpha is not None:
            raise LossValueError(
                "alpha balances positives in the sigmoid focal term (mode='binary' or 'multilabel'); "
                "for mode='multiclass' use weight= (per-class weights)"
            )
        if index_target:
            # masked positions become ignored ones; a sentinel outside [0, C) when there is no ignore_index
            ii = -100 if ignore_index is None else ignore_index
            t = target if m is None else torch.where(m, target, torch.full_like(target, ii))
            if focal:
                return focal_loss(
                    input, t, 1.0, gamma, weight=weight, ignore_index=ii, label_smoothing=smooth_factor
                )
            return cross_entropy_loss(input, t, weight, ii, label_smoothing=smooth_factor)
        # probability targets: a plain mean over the positions (torch semantics), masked ones excluded
        if focal:
            per = focal_loss(input, target, 1.0, gamma, "none", weight=weight, label_smoothing=smooth_factor)
        else:
            per = cross_entropy_loss(input, target, weight, reduction="none", label_smoothing=smooth_factor)
        return reduce_loss(per, "mean", mask=m)
    # binary / multilabel: element-wise sigmoid terms on (N, C, ...)
    if index_target:
        valid = None if ignore_index is None else (target != ignore_index)
        y = (target == 1).unsqueeze(1).to(input.dtype)
    else:
        valid, y = None, target
    if m is not None:
        valid = m if valid is None else valid & m
    if smooth_factor > 0.0:
        y = y * (1.0 - smooth_factor) + (1.0 - y) * smooth_factor
    elem_mask = None if valid is None else valid.unsqueeze(1).expand(input.shape)
    w = None
    if weight is not None:
        w = weight.to(device=input.device).reshape(1, -1, *([1] * (input.dim() - 2))).expand(input.shape)
    a = -1.0 if alpha is None else float(alpha)
    g = gamma if focal else 0.0
    return sigmoid_focal_loss(input, y, a, g, "mean", weight=w, mask=elem_mask)


def _terms(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    *,
    focal: bool,
    gamma: float,
    alpha: float | None,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    smooth_factor: float,
    mask: torch.Tensor | None,
    dice_kw: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_weight(weight)
    dice = dice_loss(
        input,
        target,
        mode,
        True,
        ignore_index=ignore_index,
        weight=weight,
        reduction="mean",
        mask=mask,
        **dice_kw,
    )
    second = _second_term(
        input,
        target,
        mode,
        focal=focal,
        gamma=gamma,
        alpha=alpha,
        weight=weight,
        ignore_index=ignore_index,
        smooth_factor=float(smooth_factor),
        mask=mask,
    )
    return dice, second


def dice_ce_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = None,
    smooth_factor: float = 0.0,
    mask: torch.Tensor | None = None,
    **dice_kw: Any,
) -> torch.Tensor:
    r"""Dice + cross-entropy (the nnU-Net / MONAI ``DiceCELoss`` compound loss).

    .. math::
        \mathcal{L} = w_{dice}\,\mathrm{Dice}(x, y) + w_{ce}\,\mathrm{CE}(x, y)

    The Dice term is :func:`~losskit.dice_loss` (``'mean'``) with the Dice options in ``dice_kw``
    (``include_background``, ``batch_dice``, ``smooth``, ``smooth_nr``, ``smooth_dr``,
    ``average``, ``squared``, ``empty_smooth``, ``eps``, ``gather_distributed``). The CE term
    is the mean softmax cross-entropy over the pixels (``'multiclass'``: torch's weighted mean with
    ``weight`` and ``ignore_index``) or the mean sigmoid BCE over the elements (``'binary'`` /
    ``'multilabel'``; ``weight`` is then a per-channel element weight and the mean
    ``sum(w l) / sum(w)``). ``ignore_index`` and the per-pixel ``mask`` leave both terms;
    ``smooth_factor`` smooths the CE targets (module docstring). ``include_background`` applies to the
    Dice term only (the CE needs every channel, as in MONAI). MONAI's ``lambda_dice`` /
    ``lambda_ce`` are ``dice_weight`` / ``ce_weight``; MONAI's binary CE uses ``weight`` as
    ``pos_weight`` instead. ``gather_distributed`` makes the Dice term global; the CE term stays the
    local mean (exact under DDP's averaging when every rank counts the same number of positions).

    Args:
        input: logits ``(N, C, d1, ...)``.
        target: class indices ``(N, d1, ...)`` or a dense target of ``input``'s shape.
        mode: ``'multiclass'``, ``'binary'`` (``C == 1``) or ``'multilabel'``.
        dice_weight, ce_weight: weights of the two terms.
        weight: per-class weights ``(C,)`` for both terms.
        ignore_index: class-index value left out of both terms.
        smooth_factor: target smoothing of the CE term, in ``[0, 1]``.
        mask: per-pixel bool ``(N, d1, ...)`` or ``(N, 1, d1, ...)``, False = left out of both terms.

    Example:
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> target = torch.randint(0, 3, (2, 8, 8))
        >>> total = dice_ce_loss(logits, target)
        >>> torch.allclose(total, dice_loss(logits, target) + cross_entropy_loss(logits, target))
        True
    """
    _check_preset(
        mode, dice_kw, ignore_index, smooth_factor, {"dice_weight": dice_weight, "ce_weight": ce_weight}
    )
    dice, ce = _terms(
        input,
        target,
        mode,
        focal=False,
        gamma=0.0,
        alpha=None,
        weight=weight,
        ignore_index=ignore_index,
        smooth_factor=smooth_factor,
        mask=mask,
        dice_kw=dice_kw,
    )
    return float(dice_weight) * dice + float(ce_weight) * ce


def dice_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    dice_weight: float = 1.0,
    focal_weight: float = 1.0,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = None,
    smooth_factor: float = 0.0,
    mask: torch.Tensor | None = None,
    **dice_kw: Any,
) -> torch.Tensor:
    r"""Dice + focal loss (MONAI's ``DiceFocalLoss``; Lin et al. 2017 for the focal term).

    .. math::
        \mathcal{L} = w_{dice}\,\mathrm{Dice}(x, y) + w_{focal}\,\mathrm{FL}_\gamma(x, y)

    As :func:`dice_ce_loss` with the focal loss in place of the cross-entropy: the softmax focal loss
    :func:`~losskit.classification.focal_loss` for ``'multiclass'`` (``gamma = 0`` is the CE term
    exactly), the sigmoid focal loss :func:`~losskit.classification.sigmoid_focal_loss` for
    ``'binary'`` / ``'multilabel'``, where ``alpha`` in ``[0, 1]`` is RetinaNet's positive-class
    balance (``None``: none, MONAI's default). ``alpha`` with ``'multiclass'`` is an error (use
    ``weight``).

    Example:
        >>> logits = torch.randn(2, 1, 8, 8)
        >>> target = torch.randint(0, 2, (2, 8, 8))
        >>> dice_focal_loss(logits, target, "binary", gamma=0.0).shape  # gamma = 0: Dice + BCE
        torch.Size([])
    """
    _check_preset(
        mode, dice_kw, ignore_index, smooth_factor, {"dice_weight": dice_weight, "focal_weight": focal_weight}
    )
    check_number("gamma", gamma, low=0.0)
    check_number("alpha", alpha, low=0.0, high=1.0, allow_none=True)
    dice, focal = _terms(
        input,
        target,
        mode,
        focal=True,
        gamma=float(gamma),
        alpha=alpha,
        weight=weight,
        ignore_index=ignore_index,
        smooth_factor=smooth_factor,
        mask=mask,
        dice_kw=dice_kw,
    )
    return float(dice_weight) * dice + float(focal_weight) * focal


class _CompoundLoss(nn.Module):
    """Options of the two presets; ``weight`` is a buffer, the last terms are in :attr:`last_terms`."""

    weight: torch.Tensor | None
    dice_weight: float
    _second = "ce"

    def __init__(
        self,
        mode: str,
        term_weights: dict[str, float],
        weight: torch.Tensor | Sequence[float] | None,
        ignore_index: int | None,
        smooth_factor: float,
        dice_kw: dict[str, Any],
    ) -> None:
        super().__init__()
        _check_preset(mode, dice_kw, ignore_index, smooth_factor, term_weights)
        if weight is not None and not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight, dtype=torch.get_default_dtype())
        _check_weight(weight)
        self.mode = mode
        for name, value in term_weights.items():
            setattr(self, name, float(value))
        self.ignore_index = ignore_index
        self.smooth_factor = float(smooth_factor)
        self.dice_kw = dict(dice_kw)
        self.register_buffer("weight", weight)
        self.last_terms: dict[str, torch.Tensor] = {}

    def _record(self, dice: torch.Tensor, second: torch.Tensor, w_second: float) -> torch.Tensor:
        self.last_terms = {"dice": dice.detach(), self._second: second.detach()}
        return self.dice_weight * dice + w_second * second

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, dice_weight={self.dice_weight}, smooth_factor={self.smooth_factor}"


class DiceCELoss(_CompoundLoss):
    ce_weight: float

    """Module form of :func:`dice_ce_loss`; :attr:`last_terms` holds ``{'dice': ..., 'ce': ...}``.

    Dice options (``include_background``, ``batch_dice``, ``smooth_nr``, ...) are keyword arguments.
    ``forward(input, target, mask=None)``.

    Example:
        >>> loss_fn = DiceCELoss(ce_weight=0.5, include_background=False)
        >>> loss = loss_fn(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> sorted(loss_fn.last_terms)
        ['ce', 'dice']
    """

    _second = "ce"

    def __init__(
        self,
        mode: str = "multiclass",
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        *,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        smooth_factor: float = 0.0,
        **dice_kw: Any,
    ) -> None:
        super().__init__(
            mode,
            {"dice_weight": dice_weight, "ce_weight": ce_weight},
            weight,
            ignore_index,
            smooth_factor,
            dice_kw,
        )

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        dice, ce = _terms(
            input,
            target,
            self.mode,
            focal=False,
            gamma=0.0,
            alpha=None,
            weight=self.weight,
            ignore_index=self.ignore_index,
            smooth_factor=self.smooth_factor,
            mask=mask,
            dice_kw=self.dice_kw,
        )
        return self._record(dice, ce, self.ce_weight)


class DiceFocalLoss(_CompoundLoss):
    focal_weight: float

    """Module form of :func:`dice_focal_loss`; :attr:`last_terms` holds ``{'dice': ..., 'focal': ...}``.

    Example:
        >>> loss_fn = DiceFocalLoss("multilabel", gamma=2.0, alpha=0.25)
        >>> loss = loss_fn(torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 3, 8, 8)).float())
        >>> sorted(loss_fn.last_terms)
        ['dice', 'focal']
    """

    _second = "focal"

    def __init__(
        self,
        mode: str = "multiclass",
        dice_weight: float = 1.0,
        focal_weight: float = 1.0,
        *,
        gamma: float = 2.0,
        alpha: float | None = None,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        smooth_factor: float = 0.0,
        **dice_kw: Any,
    ) -> None:
        super().__init__(
            mode,
            {"dice_weight": dice_weight, "focal_weight": focal_weight},
            weight,
            ignore_index,
            smooth_factor,
            dice_kw,
        )
        self.gamma = float(check_number("gamma", gamma, low=0.0))
        self.alpha = None if alpha is None else float(check_number("alpha", alpha, low=0.0, high=1.0))
        if self.alpha is not None and mode == "multiclass":
            raise LossValueError(
                "alpha balances positives in the sigmoid focal term (mode='binary' or 'multilabel'); "
                "for mode='multiclass' use weight= (per-class weights)"
            )

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        dice, focal = _terms(
            input,
            target,
            self.mode,
            focal=True,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.weight,
            ignore_index=self.ignore_index,
            smooth_factor=self.smooth_factor,
            mask=mask,
            dice_kw=self.dice_kw,
        )
        return self._record(dice, focal, self.focal_weight)


# ----------------------------------------------------------------------------- deep supervision

WEIGHT_MODES = ("same", "exp", "two")


def _level_weights(weight_mode: str, weights: Sequence[float] | None, levels: int) -> list[float]:
    """MONAI's DeepSupervisionLoss weights for ``levels`` outputs (level 0 = full resolution)."""
    if weights is not None:
        if len(weights) < levels:
            raise LossValueError(
                f"weights has {len(weights)} entries, expected at least {levels}: one per output"
            )
        return [float(w) for w in weights[:levels]]
    if weight_mode == "same":
        return [1.0] * levels
    if weight_mode == "exp":
        return [max(0.5**level, 0.0625) for level in range(levels)]
    return [1.0 if level == 0 else 0.5 for level in range(levels)]


def _resize_nearest(t: torch.Tensor, size: torch.Size, channel_dim: bool) -> torch.Tensor:
    """Nearest-neighbour ('nearest-exact') resize of a target or mask to the spatial ``size``."""
    if tuple(t.shape[2 if channel_dim else 1 :]) == tuple(size):
        return t
    x = t if channel_dim else t.unsqueeze(1)
    out = F.interpolate(x.float() if not x.is_floating_point() else x, size=tuple(size), mode="nearest-exact")
    out = out if channel_dim else out.squeeze(1)
    return out.to(t.dtype)


class DeepSupervisionLoss(nn.Module):
    r"""A loss over the multi-scale outputs of a deeply supervised network (MONAI's ``DeepSupervisionLoss``).

    .. math::
        \mathcal{L} = \sum_{l=0}^{L-1} w_l\, \ell\big(x_l, \mathrm{resize}(y, x_l)\big)

    ``forward(input, target, mask=None)``: ``input`` is a list (or tuple) of outputs, level 0 at full
    resolution; a single tensor is passed to ``loss`` unchanged. The target (class indices
    ``(N, d1, ...)`` or dense ``(N, C, d1, ...)``) and the optional per-pixel ``mask`` are resized to
    each output's spatial size by nearest neighbour (``'nearest-exact'``, as MONAI; class indices and
    ``ignore_index`` values are kept exactly). ``weight_mode``: ``'exp'`` (default) ``w_l =
    max(0.5^l, 1/16)``, ``'two'`` ``1, 0.5, 0.5, ...``, ``'same'`` all 1; an explicit ``weights`` list
    overrides it (at least one entry per output; extra entries are unused, as MONAI). The weighted
    terms are summed, not normalised. :attr:`last_terms` holds each level's loss (detached, before
    its weight) as ``{'level0': ..., 'level1': ...}``.

    Args:
        loss: the per-level loss, a module (a registered loss, :class:`DiceCELoss`, ...) or a callable
            ``loss(input, target)``; a name or config mapping is built with :func:`losskit.build`.
        weight_mode: ``'exp' | 'two' | 'same'``.
        weights: explicit per-level weights.

    Example:
        >>> loss_fn = DeepSupervisionLoss(DiceCELoss(), weight_mode="exp")
        >>> outputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
        >>> loss = loss_fn(outputs, torch.randint(0, 3, (2, 16, 16)))  # 1, 0.5, 0.25 times each level
        >>> sorted(loss_fn.last_terms)
        ['level0', 'level1', 'level2']
    """

    def __init__(
        self,
        loss: nn.Module | Callable[..., torch.Tensor] | str | Mapping[str, Any],
        weight_mode: str = "exp",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(loss, (str, Mapping)):
            from ..registry import build

            loss = build(loss)
        if not callable(loss):
            raise LossTypeError(f"loss must be a module or a callable, got {type(loss).__name__}")
        self.loss = loss
        self.weight_mode = check_choice("weight_mode", weight_mode, WEIGHT_MODES)
        if weights is not None:
            weights = [float(check_number("weights", w, low=0.0)) for w in weights]
            if not weights:
                raise LossValueError("weights must have at least one entry")
        self.weights = weights
        self.last_terms: dict[str, torch.Tensor] = {}

    def get_weights(self, levels: int) -> list[float]:
        """The weights of ``levels`` outputs."""
        return _level_weights(self.weight_mode, self.weights, levels)

    def forward(
        self,
        input: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kw = {} if mask is None else {"mask": mask}
        if isinstance(input, torch.Tensor):
            out = self.loss(input, target, **kw)
            self.last_terms = {"level0": out.detach()}
            return out
        if not isinstance(input, (list, tuple)) or not input:
            raise LossTypeError(
                f"input must be a tensor or a non-empty list of tensors, got {type(input).__name__}"
            )
        check_tensor("target", target)
        dense = None
        total: torch.Tensor | None = None
        terms = {}
        for level, (x, w) in enumerate(zip(input, self.get_weights(len(input)))):
            check_tensor(f"input[{level}]", x)
            if dense is None:
                dense = target.dim() == x.dim()
            size = x.shape[2:]
            if target.dim() != x.dim() - (0 if dense else 1):
                raise LossValueError(
                    f"input[{level}] has shape {shape_str(x.shape)}, expected the rank of target "
                    f"{shape_str(target.shape)} ({'dense' if dense else 'class indices'})"
                )
            t = _resize_nearest(target, size, channel_dim=bool(dense))
            lkw = {} if mask is None else {"mask": _resize_nearest(mask, size, mask.dim() == x.dim())}
            value = self.loss(x, t, **lkw)
            terms[f"level{level}"] = value.detach()
            total = w * value if total is None else total + w * value
        self.last_terms = terms
        return total  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"weight_mode={self.weight_mode!r}, weights={self.weights}"


register(
    "dice_ce",
    DiceCELoss,
    family="segmentation",
    functional=dice_ce_loss,
    source="Isensee et al. 2021 (nnU-Net); MONAI DiceCELoss",
    notes="w_dice Dice + w_ce CE (softmax) / BCE (sigmoid, smooth_factor soft labels); terms in last_terms",
)
register(
    "dice_focal",
    DiceFocalLoss,
    family="segmentation",
    functional=dice_focal_loss,
    source="Lin et al. 2017; MONAI DiceFocalLoss",
    notes="w_dice Dice + w_focal focal (softmax or sigmoid, alpha for sigmoid); terms in last_terms",
)
