"""torch's losses with losskit's conventions: MSE, L1, BCE, BCE-with-logits, KL divergence, hinge embedding
and triplet margin.

On valid input each loss gives torch's values and gradients (the element-wise loss is torch's own op).
Around it, losskit's conventions hold where torch's differ:

- ``reduction='mean'`` (and ``'batchmean'``) of an empty input is a zero still connected to the graph
  (torch: NaN);
- fp16 / bf16 inputs are computed in float32 and the loss is float32 (torch: the input's dtype);
- ``target`` must have ``input``'s shape (torch broadcasts MSE / L1 / KL targets with only a warning),
  targets of the wrong dtype and bad ``reduction`` values raise :class:`~losskit.LossTypeError` /
  :class:`~losskit.LossValueError` naming the argument, and reductions are checked when a module is built;
- while value checks are on (:func:`losskit.set_value_checks`), out-of-range values raise: BCE
  probabilities and targets in ``[0, 1]``, KL targets in ``[0, 1]`` (unless ``log_target``),
  hinge-embedding targets in ``{-1, 1}``;
- a NaN or inf in an input gives a non-finite loss (or a value-check error), never a finite value.

The modules subclass torch's (``isinstance(losskit.MSELoss(), torch.nn.MSELoss)`` holds) and take
torch's arguments, except the long-deprecated ``size_average`` / ``reduce``; ``reduction`` (and the
options after it) are keyword-only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_broadcastable,
    check_floating,
    check_number,
    check_prob_target,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from ._reduction import compute_dtype, reduce_loss
from .registry import register

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "HingeEmbeddingLoss",
    "KLDivLoss",
    "L1Loss",
    "MSELoss",
    "TripletMarginLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "hinge_embedding_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "triplet_margin_loss",
]

_KL_REDUCTIONS = ("none", "batchmean", "mean", "sum")


# ----------------------------------------------------------------------------- shared pieces


def _to_compute(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in one compute dtype: torch's type promotion, with fp16 / bf16 raised to float32."""
    dtype = compute_dtype(tensors[0])
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, compute_dtype(t))
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _check_pair(input: torch.Tensor, target: torch.Tensor, reduction: str) -> tuple[torch.Tensor, ...]:
    """Floating ``input`` and ``target`` of one shape, a valid reduction; both in the compute dtype."""
    check_reduction(reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_same_shape("target", target, "input", input)
    check_same_device(("input", input), ("target", target))
    return _to_compute(input, target)


def _check_weight(name: str, weight: torch.Tensor | None, input: torch.Tensor | None = None) -> None:
    if weight is None:
        return
    check_tensor(name, weight)
    check_floating(name, weight)
    if input is not None:
        check_broadcastable(name, weight, "input", input)
        check_same_device(("input", input), (name, weight))


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise LossTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _as(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if weight is None else weight.to(like.dtype)


def _poison(loss: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
    """``loss + (t - t)`` for each ``t``: unchanged where ``t`` is finite, NaN where it is NaN or inf.

    ``clamp`` and ``where`` can map an infinite input to a finite loss (a dissimilar pair infinitely far
    apart has hinge loss 0); this keeps the rule that a non-finite input never gives a finite loss.
    """
    for t in tensors:
        loss = loss + (t - t)
    return loss


def _torch_reduced(
    loss_fn: Callable[[str], torch.Tensor], reduction: str, input: torch.Tensor
) -> torch.Tensor:
    """``loss_fn(reduction)``, torch's own fused reduction, for ``'mean'`` / ``'sum'`` of a non-empty input;
    otherwise ``reduce_loss(loss_fn('none'), reduction)`` (torch's ``'mean'`` of an empty input is NaN)."""
    if reduction in ("mean", "sum") and input.numel() > 0:
        return loss_fn(reduction)
    return reduce_loss(loss_fn("none"), reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``reduce_loss`` plus ``'batchmean'``: the sum over the batch size (the first dimension)."""
    if reduction == "batchmean":
        total = loss.sum()
        return total / max(loss.shape[0], 1) if loss.dim() else total
    return reduce_loss(loss, reduction)


# ----------------------------------------------------------------------------- regression


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Mean squared error, equal to :func:`torch.nn.functional.mse_loss` on valid input.

    .. math::
        \ell_i = w_i\,(x_i - y_i)^2, \qquad \text{mean} = \sum_i w_i (x_i - y_i)^2 / \sum_i w_i

    (without ``weight``, the plain mean). An empty input gives a graph-connected zero; ``target`` must
    have ``input``'s shape (torch would broadcast it).

    Args:
        input, target: floating tensors of the same shape.
        weight: optional element-wise weights broadcastable to ``input``.
        reduction: ``'none' | 'mean' | 'sum'``.

    Example:
        >>> mse_loss(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(4.6250)
    """
    x, y = _check_pair(input, target, reduction)
    _check_weight("weight", weight, input)
    if weight is None:
        return _torch_reduced(lambda r: F.mse_loss(x, y, reduction=r), reduction, x)
    return reduce_loss(F.mse_loss(x, y, reduction="none"), reduction, weight=_as(weight, x))


def l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Mean absolute error, equal to :func:`torch.nn.functional.l1_loss` on valid input.

    .. math::
        \ell_i = w_i\,|x_i - y_i|, \qquad \text{mean} = \sum_i w_i |x_i - y_i| / \sum_i w_i

    Args:
        input, target: floating tensors of the same shape.
        weight: optional element-wise weights broadcastable to ``input``.
        reduction: ``'none' | 'mean' | 'sum'``.

    Example:
        >>> l1_loss(torch.tensor([0.5, -3.0]), torch.zeros(2))
        tensor(1.7500)
    """
    x, y = _check_pair(input, target, reduction)
    _check_weight("weight", weight, input)
    if weight is None:
        return _torch_reduced(lambda r: F.l1_loss(x, y, reduction=r), reduction, x)
    return reduce_loss(F.l1_loss(x, y, reduction="none"), reduction, weight=_as(weight, x))


# ----------------------------------------------------------------------------- binary cross-entropy


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Binary cross-entropy on probabilities, equal to :func:`torch.nn.functional.binary_cross_entropy`.

    .. math::
        \ell_i = -w_i\,\big[y_i \max(\log p_i, -100) + (1 - y_i) \max(\log(1 - p_i), -100)\big]

    The logs are clamped at -100 as in torch, so saturated probabilities give a finite but wrong-scale
    loss: prefer :func:`binary_cross_entropy_with_logits`. ``weight`` rescales elements; ``'mean'`` is the
    plain mean of the weighted elements (torch's rule for BCE, unlike :func:`mse_loss`'s weighted mean).

    Args:
        input: probabilities in ``[0, 1]``.
        target: floating tensor of ``input``'s shape with values in ``[0, 1]``.
        weight: optional weights broadcastable to ``input``.
        reduction: ``'none' | 'mean' | 'sum'``.

    With value checks on, probabilities or targets outside ``[0, 1]`` (NaN included) raise
    :class:`~losskit.LossValueError`; with them off, a NaN or inf gives a NaN loss at that element
    (torch's kernel would reject it) and other out-of-range values reach torch's own check.

    Example:
        >>> binary_cross_entropy(torch.tensor([0.8, 0.4]), torch.tensor([1.0, 0.0]))
        tensor(0.3670)
    """
    x, y = _check_pair(input, target, reduction)
    _check_weight("weight", weight, input)
    if can_read_values(input, target):
        try:
            check_prob_target("input", input)
        except LossValueError as err:
            raise LossValueError(f"{err} (probabilities; for logits use bce_with_logits)") from None
        check_prob_target("target", target)
        w = _as(weight, x)
        return _torch_reduced(lambda r: F.binary_cross_entropy(x, y, w, reduction=r), reduction, x)
    # checks off: torch's kernel rejects NaN / inf (an error on CPU, a device assert on GPU); keep them as NaN
    ok = torch.isfinite(x) & torch.isfinite(y)
    safe = F.binary_cross_entropy(
        torch.where(ok, x, 0.5), torch.where(ok, y, 0.5), _as(weight, x), reduction="none"
    )
    return reduce_loss(_poison(safe, x, y), reduction)


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Binary cross-entropy on logits, equal to :func:`torch.nn.functional.binary_cross_entropy_with_logits`.

    .. math::
        \ell_i = -w_i\,\big[p_c\, y_i \log\sigma(x_i) + (1 - y_i) \log(1 - \sigma(x_i))\big]

    computed in log-space (``logsigmoid``), finite for any logit. ``pos_weight`` (``p_c``, broadcast over
    the last dimension, e.g. one entry per class) re-weights the positive term: it trades precision for
    recall; it is not focal loss (that is :func:`~losskit.functional.sigmoid_focal_loss`). ``'mean'`` is
    the plain mean of the weighted elements, as in torch.

    Args:
        input: logits.
        target: floating tensor of ``input``'s shape with values in ``[0, 1]`` (soft labels allowed).
        weight: optional weights broadcastable to ``input``.
        reduction: ``'none' | 'mean' | 'sum'``.
        pos_weight: optional weights of the positive term, broadcastable to ``input``.

    Example:
        >>> binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
        tensor(0.2201)
    """
    x, y = _check_pair(input, target, reduction)
    _check_weight("weight", weight, input)
    _check_weight("pos_weight", pos_weight, input)
    if can_read_values(target):
        check_prob_target("target", target)
    w, pw = _as(weight, x), _as(pos_weight, x)
    return _torch_reduced(
        lambda r: F.binary_cross_entropy_with_logits(x, y, w, reduction=r, pos_weight=pw), reduction, x
    )


# ----------------------------------------------------------------------------- KL divergence


def kl_div(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    log_target: bool = False,
) -> torch.Tensor:
    r"""KL divergence ``KL(target || input)`` with ``input`` in log-space, equal to :func:`torch.nn.functional.kl_div`.

    .. math::
        \ell_i = q_i\,(\log q_i - x_i), \qquad q = \text{target}\ (\text{or } e^{\text{target}}
        \text{ with } \texttt{log\_target})

    ``reduction='batchmean'`` (the sum over the batch size, the first dimension) is the KL divergence of
    the math definition; ``'mean'`` (torch's default, kept for drop-in use) also divides by the number of
    classes. For (batch, sequence, vocabulary) inputs divide by the number of tokens instead
    (``reduction='sum'`` / tokens), or use :func:`~losskit.functional.kd_loss`.

    Args:
        input: log-probabilities.
        target: probabilities in ``[0, 1]`` (log-probabilities with ``log_target=True``), ``input``'s shape.
        reduction: ``'none' | 'batchmean' | 'mean' | 'sum'``.
        log_target: whether ``target`` is given in log-space.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> kl_div(logp, torch.tensor([[0.9, 0.1]]), reduction="batchmean")
        tensor(0.3681)
    """
    check_reduction(reduction, _KL_REDUCTIONS)
    _check_bool("log_target", log_target)
    x, y = _check_pair(input, target, "none")
    if not log_target and can_read_values(target):
        check_prob_target("target", target)
    return _reduce(F.kl_div(x, y, reduction="none", log_target=log_target), reduction)


# ----------------------------------------------------------------------------- embedding


def hinge_embedding_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    margin: float = 1.0,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Hinge embedding loss, equal to :func:`torch.nn.functional.hinge_embedding_loss` on valid input.

    .. math::
        \ell_i = \begin{cases} x_i & y_i = 1 \\ \max(0, \Delta - x_i) & y_i = -1 \end{cases}

    ``input`` is usually a distance (e.g. ``||a - b||``) and ``target`` says whether the pair is similar
    (1) or dissimilar (-1). 0/1 labels are rejected while value checks are on (torch silently applies
    both branches to a 0): convert them with ``2 * target - 1``.

    Args:
        input: floating tensor.
        target: ``input``'s shape, values -1 / 1 (floating or integer dtype).
        margin: ``Delta``.
        reduction: ``'none' | 'mean' | 'sum'``.

    Example:
        >>> hinge_embedding_loss(torch.tensor([0.3, 0.2]), torch.tensor([1, -1]), margin=1.0, reduction="none")
        tensor([0.3000, 0.8000])
    """
    check_number("margin", margin)
    check_reduction(reduction)
    check_floating("input", input)
    check_tensor("target", target)
    if target.dtype == torch.bool or target.is_complex():
        raise LossTypeError(
            f"target must hold -1 / 1 labels (a floating or integer tensor), got dtype {target.dtype}"
        )
    check_same_shape("target", target, "input", input)
    check_same_device(("input", input), ("target", target))
    if can_read_values(target) and target.numel() > 0:
        bad = (target != 1) & (target != -1)
        if bool(bad.any()):
            value = target[bad][0].item()
            hint = "; convert 0/1 labels with 2 * target - 1" if value == 0 else ""
            raise LossValueError(
                f"target must hold only -1 and 1 (1: similar, -1: dissimilar), got {value:g}{hint}"
            )
    x, y = _to_compute(input, target)
    loss = F.hinge_embedding_loss(x, y, margin=float(margin), reduction="none")
    return reduce_loss(_poison(loss, x, y), reduction)


def triplet_margin_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Triplet margin loss on explicit triplets (Balntas et al. 2016), equal to
    :func:`torch.nn.functional.triplet_margin_loss` on valid input.

    .. math::
        \ell_i = \max\big(0,\ d(a_i, p_i) - d(a_i, n_i) + m\big), \qquad d(u, v) = \lVert u - v + \epsilon \rVert_p

    With ``swap`` (the distance swap of Balntas et al.), ``d(a_i, n_i)`` is replaced by
    ``min(d(a_i, n_i), d(p_i, n_i))``. For triplets mined from a labelled batch use
    :func:`~losskit.functional.triplet_loss`.

    Args:
        anchor, positive, negative: ``(N, D)`` or ``(D,)``, all of one shape.
        margin: ``m > 0``.
        p: norm degree, ``> 0``.
        eps: added to the difference before the norm (torch's ``pairwise_distance``).
        swap: use the distance swap.
        reduction: ``'none' | 'mean' | 'sum'``.

    Example:
        >>> a, pos, neg = torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.5]])
        >>> triplet_margin_loss(a, pos, neg, margin=1.0, eps=0.0)
        tensor(0.5000)
    """
    _check_triplet_options(margin, p, eps, swap)
    check_reduction(reduction)
    check_floating("anchor", anchor)
    if anchor.dim() not in (1, 2):
        raise LossValueError(f"anchor must be 1-D (D,) or 2-D (N, D), got shape {shape_str(anchor.shape)}")
    for name, t in (("positive", positive), ("negative", negative)):
        check_floating(name, t)
        check_same_shape(name, t, "anchor", anchor)
    check_same_device(("anchor", anchor), ("positive", positive), ("negative", negative))
    a, pos, neg = _to_compute(anchor, positive, negative)
    p, eps = float(p), float(eps)
    d_ap = F.pairwise_distance(a, pos, p, eps)
    d_an = F.pairwise_distance(a, neg, p, eps)
    nearest = torch.minimum(d_an, F.pairwise_distance(pos, neg, p, eps)) if swap else d_an
    loss = torch.clamp_min(float(margin) + d_ap - nearest, 0.0)
    return reduce_loss(_poison(loss, d_an), reduction)


def _check_triplet_options(margin: float, p: float, eps: float, swap: bool) -> None:
    check_number("margin", margin, low=0.0, low_open=True)
    check_number("p", p, low=0.0, low_open=True)
    check_number("eps", eps, low=0.0)
    _check_bool("swap", swap)


# ----------------------------------------------------------------------------- modules


class _PairwiseReduction(nn.Module):
    """Shared module body of the element-wise ``(input, target)`` losses whose only option is
    ``reduction``: ``forward`` calls the class's functional ``_fn``."""

    _fn: Callable[..., torch.Tensor]
    reduction: str

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__(reduction=check_reduction(reduction))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_PairwiseReduction, nn.MSELoss):
    """Module form of :func:`mse_loss` (a :class:`torch.nn.MSELoss`).

    Example:
        >>> MSELoss()(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(4.6250)
    """

    _fn = staticmethod(mse_loss)


class L1Loss(_PairwiseReduction, nn.L1Loss):
    """Module form of :func:`l1_loss` (a :class:`torch.nn.L1Loss`).

    Example:
        >>> L1Loss(reduction="sum")(torch.tensor([0.5, -3.0]), torch.zeros(2))
        tensor(3.5000)
    """

    _fn = staticmethod(l1_loss)


class BCELoss(nn.BCELoss):
    """Module form of :func:`binary_cross_entropy` (a :class:`torch.nn.BCELoss`); ``weight`` is a buffer.

    Example:
        >>> BCELoss()(torch.tensor([0.8, 0.4]), torch.tensor([1.0, 0.0]))
        tensor(0.3670)
    """

    def __init__(self, weight: torch.Tensor | None = None, *, reduction: str = "mean") -> None:
        _check_weight("weight", weight)
        super().__init__(weight=weight, reduction=check_reduction(reduction))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy(input, target, self.weight, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Module form of :func:`binary_cross_entropy_with_logits` (a :class:`torch.nn.BCEWithLogitsLoss`).

    ``weight`` and ``pos_weight`` are buffers (they follow ``.to()`` and the ``state_dict``).

    Example:
        >>> loss_fn = BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]))
        >>> loss_fn(torch.tensor([[2.0], [-1.0]]), torch.tensor([[1.0], [0.0]]))
        tensor(0.3470)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        reduction: str = "mean",
        pos_weight: torch.Tensor | None = None,
    ) -> None:
        _check_weight("weight", weight)
        _check_weight("pos_weight", pos_weight)
        super().__init__(weight=weight, reduction=check_reduction(reduction), pos_weight=pos_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class KLDivLoss(nn.KLDivLoss):
    """Module form of :func:`kl_div` (a :class:`torch.nn.KLDivLoss`); use ``reduction='batchmean'``.

    Example:
        >>> loss_fn = KLDivLoss(reduction="batchmean")
        >>> loss_fn(torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.9, 0.1]]))
        tensor(0.3681)
    """

    def __init__(self, *, reduction: str = "mean", log_target: bool = False) -> None:
        check_reduction(reduction, _KL_REDUCTIONS)
        super().__init__(reduction=reduction, log_target=_check_bool("log_target", log_target))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, log_target={self.log_target}"


class HingeEmbeddingLoss(nn.HingeEmbeddingLoss):
    """Module form of :func:`hinge_embedding_loss` (a :class:`torch.nn.HingeEmbeddingLoss`).

    Example:
        >>> HingeEmbeddingLoss(margin=1.0)(torch.tensor([0.3, 0.2]), torch.tensor([1, -1]))
        tensor(0.5500)
    """

    def __init__(self, margin: float = 1.0, *, reduction: str = "mean") -> None:
        check_number("margin", margin)
        super().__init__(margin=float(margin), reduction=check_reduction(reduction))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return hinge_embedding_loss(input, target, self.margin, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"


class TripletMarginLoss(nn.TripletMarginLoss):
    """Module form of :func:`triplet_margin_loss` (a :class:`torch.nn.TripletMarginLoss`).

    Example:
        >>> a, pos, neg = torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.5]])
        >>> TripletMarginLoss(margin=1.0, eps=0.0)(a, pos, neg)
        tensor(0.5000)
    """

    def __init__(
        self,
        margin: float = 1.0,
        p: float = 2.0,
        eps: float = 1e-6,
        swap: bool = False,
        *,
        reduction: str = "mean",
    ) -> None:
        _check_triplet_options(margin, p, eps, swap)
        super().__init__(
            margin=float(margin), p=float(p), eps=float(eps), swap=swap, reduction=check_reduction(reduction)
        )

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return triplet_margin_loss(
            anchor, positive, negative, self.margin, self.p, self.eps, self.swap, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, p={self.p}, eps={self.eps}, swap={self.swap}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------- registry

_FAMILY = "torch"
_NOTES = "torch's values; empty -> 0, half in float32"
register("mse", MSELoss, family=_FAMILY, functional=mse_loss, source="torch", notes=_NOTES)
register("l1", L1Loss, family=_FAMILY, functional=l1_loss, source="torch", notes=_NOTES)
register(
    "bce",
    BCELoss,
    family=_FAMILY,
    functional=binary_cross_entropy,
    source="torch",
    notes="takes probabilities; log clamped at -100; prefer `bce_with_logits`",
)
register(
    "bce_with_logits",
    BCEWithLogitsLoss,
    family=_FAMILY,
    functional=binary_cross_entropy_with_logits,
    source="torch",
    notes="targets in [0, 1]; `pos_weight` re-weights positives; it is not focal loss",
)
register(
    "kl_div",
    KLDivLoss,
    family=_FAMILY,
    functional=kl_div,
    source="torch",
    notes="input in log-space, KL(target ‖ input); use reduction='batchmean'",
)
register(
    "hinge_embedding",
    HingeEmbeddingLoss,
    family=_FAMILY,
    functional=hinge_embedding_loss,
    source="torch",
    notes="targets 1 / -1 (0/1 rejected)",
)
register(
    "triplet_margin",
    TripletMarginLoss,
    family=_FAMILY,
    functional=triplet_margin_loss,
    source="Balntas et al. 2016 / torch",
    notes="explicit (anchor, positive, negative) triplets",
)
