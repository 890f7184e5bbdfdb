"""Classification losses: cross-entropy, softmax and sigmoid focal, PolyLoss, asymmetric, hinge, class weights.

Multi-class losses (cross-entropy, focal, Poly-1, multi-class hinge) take logits ``input`` of shape
``(N, C)`` or ``(N, C, d1, ...)`` (class axis is dim 1, like :func:`torch.nn.functional.cross_entropy`)
and either class indices ``target`` of shape ``(N, d1, ...)`` (entries equal to ``ignore_index`` are
ignored) or class probabilities of the input's shape. Binary / multi-label losses (sigmoid focal,
asymmetric) take logits and 0/1 or soft targets of the same shape, an element-wise ``weight`` and a
bool ``mask``; their ``'mean'`` is ``sum(w l) / sum(w)`` over unmasked elements.

``reduction='mean'`` follows torch's cross-entropy: with a per-class ``weight`` it is
``sum_i w_{y_i} l_i / sum_i w_{y_i}`` over the non-ignored elements. Unlike torch, an empty or
all-ignored batch gives a zero that is still connected to the graph (torch gives NaN), and
``normalizer=`` replaces the denominator (see :mod:`losskit._reduction`). Half-precision logits are
computed in float32 (``log_softmax`` / log-sigmoid forms) and the loss is returned in float32.

**Speed and memory**: :func:`sigmoid_focal_loss`, :func:`focal_loss` and :func:`asymmetric_loss` run
fused autograd kernels (:mod:`losskit._kernels`) when the call allows it: autograd then keeps only
the inputs (no ``(N, C)`` temporaries) and backward recomputes what it needs. The kernels are
``torch.compile``-d on first use and taken for inputs of >= 262144 elements (smaller ones run faster
through the plain code; ``LOSSKIT_FUSED_KERNELS=always`` takes them at every size). Covered: sigmoid
focal and asymmetric without ``weight`` / ``mask`` (``normalizer`` and ``pos_weight`` are fine; sigmoid
focal with ``gamma=0`` and no ``alpha`` is torch's own BCE-with-logits); softmax focal on ``(N, C)``
logits with class-index targets, any ``alpha`` / ``weight`` / ``ignore_index`` / ``normalizer``, no label
smoothing. Everything else -- and targets or weights that require grad, calls inside an outer
``torch.compile``, empty inputs -- runs the plain tensor code, which is also the reference the
kernels are tested against. ``losskit._kernels.fused_kernels(False)`` (or
``LOSSKIT_FUSED_KERNELS=0``) forces that code. Double backward (``create_graph=True``) works on
both paths: a kernel's backward then runs its plain tensor code under autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_broadcastable,
    check_choice,
    check_class_target,
    check_class_weight,
    check_floating,
    check_int,
    check_integer,
    check_min_ndim,
    check_number,
    check_prob_target,
    check_reduction,
    check_same_device,
    check_tensor,
    shape_str,
)
from ._kernels._compile import use_fused_kernel
from ._kernels.asymmetric import asymmetric as _fused_asymmetric
from ._kernels.asymmetric import asymmetric_supports
from ._kernels.sigmoid_focal import sigmoid_focal as _fused_sigmoid_focal
from ._kernels.sigmoid_focal import sigmoid_focal_supports
from ._kernels.softmax_focal import softmax_focal_mean, softmax_focal_rows, softmax_focal_supports
from ._reduction import Normalizer, check_normalizer, compute_dtype, reduce_loss, upcast
from .registry import register

__all__ = [
    "AsymmetricLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "MulticlassHingeLoss",
    "Poly1CrossEntropyLoss",
    "SigmoidFocalLoss",
    "WeightedCrossEntropyLoss",
    "asymmetric_loss",
    "class_weights",
    "cross_entropy_loss",
    "focal_loss",
    "multiclass_hinge_loss",
    "poly1_cross_entropy_loss",
    "sigmoid_focal_loss",
]

AlphaLike = float | Sequence[float] | torch.Tensor | None


# ============================================================================ shared helpers


def _reduce(
    loss: torch.Tensor,
    reduction: str,
    *,
    mask: torch.Tensor | None = None,
    denom: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    """Reduce a loss whose elements already carry their weights.

    ``denom`` (same shape as ``loss``) is the per-element contribution to the ``'mean'`` denominator
    (torch's ``w_{y_i}``); without it the denominator is the number of unmasked elements.
    """
    if reduction != "mean" or normalizer is not None or denom is None:
        return reduce_loss(loss, reduction, mask=mask, normalizer=normalizer)
    total = reduce_loss(loss, "sum", mask=mask)
    count = reduce_loss(denom.to(total.dtype), "sum", mask=mask)
    # Nothing counts -> the numerator is exactly 0 and so is the result (graph-connected, no NaN).
    return total / count.clamp_min(torch.finfo(total.dtype).tiny)


def _check_common(reduction: str, normalizer: Normalizer, label_smoothing: float = 0.0) -> float:
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    return float(check_number("label_smoothing", label_smoothing, low=0.0, high=1.0))


def _check_gamma(gamma: float, name: str = "gamma") -> float:
    return float(check_number(name, gamma, low=0.0))


def _class_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-class vector ``(C,)`` shaped to broadcast against ``(N, C, d1, ...)``."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def _multiclass_target(input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[bool, int | None]:
    """Check a multi-class ``(input, target)`` pair.

    Returns ``(probability_target, ignore)``: ``ignore`` is the ``ignore_index`` to mask with, or
    ``None`` when the value check found no entry equal to it (probability targets have none), so the
    loss can skip masking.
    """
    check_floating("input", input)
    check_min_ndim("input", input, 2, "(N, C) or (N, C, d1, ...) with classes on dim 1")
    check_tensor("target", target)
    check_same_device(("input", input), ("target", target))
    check_int("ignore_index", ignore_index)
    if target.is_floating_point():
        if target.shape != input.shape:
            raise LossValueError(
                f"target has shape {shape_str(target.shape)} and dtype {target.dtype}; a floating target "
                f"holds class probabilities and must have input's shape {shape_str(input.shape)} "
                "(class indices must be an integer tensor)"
            )
        check_prob_target("target", target.detach())
        return True, None
    ignored = check_class_target(input, target, ignore_index=ignore_index)
    return False, None if ignored is False else ignore_index


def _prepare_weight(
    name: str, weight: torch.Tensor | None, input: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    if weight is None:
        return None
    check_tensor(name, weight)
    check_same_device(("input", input), (name, weight))
    check_class_weight(name, weight, input.shape[1])
    return weight.to(dtype=dtype)


def _pow_modulator(base: torch.Tensor, gamma: float) -> torch.Tensor | None:
    """``base ** gamma`` for ``base`` in ``[0, 1]`` with finite gradients everywhere.

    ``d/db b^gamma = gamma b^(gamma-1)`` is infinite at ``b = 0`` when ``gamma < 1``; the base is
    clamped to the smallest normal number there (the exact limit of the loss's gradient is 0, which
    the clamp gives). Returns ``None`` for ``gamma == 0`` (factor 1).
    """
    if gamma == 0.0:
        return None
    if gamma < 1.0:
        base = base.clamp_min(torch.finfo(base.dtype).tiny)
    if gamma == 2.0:
        return base * base  # the common case: one multiplication (and a cheaper backward) than pow
    return base.pow(gamma)


def _soft_class_sum(
    term: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    logp: torch.Tensor,
    target: torch.Tensor,
    *,
    prob_target: bool,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Expected per-class term under the (smoothed) target distribution, weighted like torch's CE.

    ``term(logp_sub, index)`` maps log-probabilities of a subset of classes to the per-class loss
    (``index`` gives the class of each entry along dim 1, ``None`` = all classes in order).
    With ``q`` the target distribution (one-hot or probabilities, smoothed as
    ``(1 - eps) q + eps / C``) the element loss is ``sum_c q_c w_c term_c``. For class-index targets
    the ``'mean'`` denominator weight is ``w_{y}`` and ignored elements are masked, exactly as in
    :func:`torch.nn.functional.cross_entropy`.

    Returns ``(element_loss, mask, denominator_weight)``.
    """
    num_classes = logp.shape[1]
    wv = None if weight is None else _class_view(weight, logp.dim())
    if prob_target:
        q = target.to(logp.dtype)
        if label_smoothing > 0.0:
            q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
        full = term(logp, None) * q
        if wv is not None:
            full = full * wv
        return full.sum(1), None, None
    if ignore_index is None:  # no entry is ignored: no mask
        mask, safe = None, target.long()
    else:
        mask = target != ignore_index
        safe = torch.where(mask, target, target.new_zeros(())).long()
    idx = safe.unsqueeze(1)
    loss = term(logp.gather(1, idx), idx).squeeze(1)
    w_y = None
    if weight is not None:
        w_y = weight[safe]
        loss = loss * w_y
    if label_smoothing > 0.0:
        full = term(logp, None)
        if wv is not None:
            full = full * wv
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / num_classes) * full.sum(1)
    return loss, mask, w_y


def _alpha_tensor(alpha: AlphaLike, name: str = "alpha") -> float | torch.Tensor:
    """A scalar multiplier (``float``) or a per-class vector (1-D floating tensor), checked."""
    if isinstance(alpha, (list, tuple)):
        alpha = torch.tensor([float(a) for a in alpha])
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        check_floating(name, alpha)
        if alpha.dim() != 1:
            raise LossValueError(
                f"{name} must be a number or a 1-D per-class tensor, got shape {shape_str(alpha.shape)}"
            )
        if can_read_values(alpha) and bool((~torch.isfinite(alpha) | (alpha < 0)).any()):
            raise LossValueError(f"{name} must have finite non-negative entries")
        return alpha
    return float(check_number(name, alpha, low=0.0))


# ============================================================================ cross-entropy


def _cross_entropy_math(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """Element-wise cross-entropy (``'none'``, torch semantics) of compute-dtype logits ``x``."""
    return F.cross_entropy(
        x, target, weight=weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )


def cross_entropy_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Cross-entropy of logits, :func:`torch.nn.functional.cross_entropy` semantics, empty-safe.

    .. math::
        \ell_i = -\sum_c q_{ic}\, w_c \log \operatorname{softmax}(x_i)_c,\qquad
        q_i = (1 - \varepsilon)\,\mathrm{onehot}(y_i) + \varepsilon / C

    (for probability targets ``q_i = (1 - eps) target_i + eps / C``). ``'mean'`` with class-index
    targets is ``sum_i l_i / sum_i w_{y_i}`` over non-ignored elements (torch's weighted mean, also
    with label smoothing); with probability targets it is the plain mean over ``N * d1 * ...``.

    Differences from torch: an empty or all-ignored batch gives a graph-connected zero instead of
    NaN; ``normalizer=`` divides the sum by a given count instead; half inputs run in float32.

    Args:
        input: logits ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``(N, d1, ...)`` (integer) or probabilities of ``input``'s shape.
        weight: optional per-class weight ``(C,)``.
        ignore_index: class-index value that is ignored (leaves the mean's denominator).
        reduction: ``'none' | 'mean' | 'sum'``.
        label_smoothing: ``eps`` in ``[0, 1]``.
        normalizer: with ``'mean'``, divide the (weighted) sum by this instead.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> cross_entropy_loss(logits, torch.tensor([0, 2]))
        tensor(0.8606)
        >>> cross_entropy_loss(logits, torch.tensor([-100, -100]))  # all ignored: 0, not NaN
        tensor(0.)
    """
    eps = _check_common(reduction, normalizer, label_smoothing)
    prob, ignore = _multiclass_target(input, target, ignore_index)
    x = upcast(input)
    w = _prepare_weight("weight", weight, input, x.dtype)
    if prob:
        # ignore_index picks out class-index entries; probability targets have none (torch rejects it)
        loss = _cross_entropy_math(x, target.to(x.dtype), w, -100, eps)
        return _reduce(loss, reduction, normalizer=normalizer)
    if ignore is None and w is None and normalizer is None and reduction == "mean" and target.numel():
        # nothing ignored, no weights: torch's own mean is ours (one op)
        return F.cross_entropy(x, target, reduction="mean", label_smoothing=eps)
    loss = _cross_entropy_math(x, target, w, ignore_index, eps)
    mask = None if ignore is None else target != ignore
    denom = None
    if w is not None:
        denom = w[(target if mask is None else torch.where(mask, target, target.new_zeros(()))).long()]
    return _reduce(loss, reduction, mask=mask, denom=denom, normalizer=normalizer)


def _class_option(name: str, value: torch.Tensor | Sequence[float] | None) -> torch.Tensor | None:
    """A per-class constructor option: ``None`` or a 1-D non-negative floating tensor."""
    if value is not None and not isinstance(value, torch.Tensor):
        value = torch.tensor([float(v) for v in value])
    if value is not None:
        check_floating(name, value)
        if value.dim() != 1:
            raise LossValueError(f"{name} must be a 1-D per-class tensor, got shape {shape_str(value.shape)}")
        if can_read_values(value) and bool((value < 0).any()):
            raise LossValueError(f"{name} must be non-negative")
    return value


class _ClassificationLoss(nn.Module):
    """Base: stores ``reduction`` and optional tensor options as buffers."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def _class_buffer(
        self, name: str, value: torch.Tensor | Sequence[float] | None, arg_name: str | None = None
    ) -> None:
        """Register a per-class option as buffer ``name``; errors name ``arg_name`` (the user's argument)."""
        self.register_buffer(name, _class_option(arg_name or name, value))


class CrossEntropyLoss(_ClassificationLoss):
    """Module form of :func:`cross_entropy_loss` (torch's ``CrossEntropyLoss`` arguments).

    Example:
        >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
        >>> loss_fn(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        self._class_buffer("weight", weight)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.label_smoothing = float(check_number("label_smoothing", label_smoothing, low=0.0, high=1.0))

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None
    ) -> torch.Tensor:
        return cross_entropy_loss(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            normalizer=normalizer,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )


# ============================================================================ softmax focal


def _focal_math(
    logp: torch.Tensor,
    target: torch.Tensor,
    *,
    prob_target: bool,
    alpha: float | torch.Tensor,
    gamma: float,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Softmax focal loss of log-probabilities; returns ``(element_loss, mask, denominator_weight)``."""

    def term(lp: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        out = -lp
        mod = _pow_modulator(-torch.expm1(lp), gamma)  # (1 - p)^gamma, 1 - p without cancellation
        if mod is not None:
            out = out * mod
        if isinstance(alpha, torch.Tensor):
            out = out * (_class_view(alpha, lp.dim()) if index is None else alpha[index])
        return out

    loss, mask, w_y = _soft_class_sum(
        term,
        logp,
        target,
        prob_target=prob_target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    if not isinstance(alpha, torch.Tensor) and alpha != 1.0:
        loss = loss * alpha
    return loss, mask, w_y


def focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: AlphaLike = 1.0,
    gamma: float = 2.0,
    reduction: str = "mean",
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Softmax (multi-class) focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    .. math::
        \ell_i = -\alpha_{y_i}\, w_{y_i}\, (1 - p_{i,y_i})^\gamma \log p_{i,y_i},
        \qquad p_i = \operatorname{softmax}(x_i)

    The factor ``(1 - p_t)^gamma`` down-weights well-classified examples. With label smoothing
    ``eps`` (or probability targets ``q``) the focal term is applied per class of the target
    distribution: ``l_i = -sum_c q_{ic} alpha_c w_c (1 - p_{ic})^gamma log p_{ic}`` with
    ``q = (1 - eps) onehot(y) + eps / C``. At ``gamma = 0, alpha = 1`` this is exactly
    :func:`cross_entropy_loss` (torch's cross-entropy) for every reduction, weight, ``ignore_index`` and
    ``label_smoothing``.

    ``weight`` acts like cross-entropy's class weight, including the ``'mean'`` denominator
    ``sum_i w_{y_i}``. ``alpha`` does not enter the denominator: a number multiplies the loss (the
    seed's ``FocalLoss(alpha=...)``; note RetinaNet's ``alpha=0.25`` is a positive/negative balance of
    the *sigmoid* form, see :func:`sigmoid_focal_loss`), a ``(C,)`` tensor gives ``alpha_y`` per class.

    ``(1 - p)`` is computed as ``-expm1(log p)`` from a float32 ``log_softmax``; for ``gamma < 1`` its
    gradient stays finite at saturation (``p -> 1``).

    Other libraries' "focal loss" differ: kornia's softmax ``focal_loss(reduction='mean')`` averages
    the one-hot-masked ``(N, C)`` tensor (``1/C`` of this mean) and counts ignored elements in the
    denominator; segmentation_models_pytorch's multi-class focal is a per-class *sigmoid* focal.

    Args:
        input: logits ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``(N, d1, ...)`` or probabilities of ``input``'s shape.
        alpha: number ``>= 0`` (multiplier) or per-class ``(C,)`` tensor.
        gamma: focusing parameter ``>= 0``.
        reduction: ``'none' | 'mean' | 'sum'``.
        weight: optional per-class weight ``(C,)`` (cross-entropy semantics).
        ignore_index: ignored class-index value.
        label_smoothing: ``eps`` in ``[0, 1]``.
        normalizer: with ``'mean'``, divide the sum by this instead.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 2])
        >>> focal_loss(logits, target, gamma=2.0)
        tensor(0.4838)
        >>> torch.allclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
        True
    """
    eps = _check_common(reduction, normalizer, label_smoothing)
    g = _check_gamma(gamma)
    a = _alpha_tensor(alpha)
    prob, ignore = _multiclass_target(input, target, ignore_index)
    cdt = compute_dtype(input)
    w = _prepare_weight("weight", weight, input, cdt)
    if isinstance(a, torch.Tensor):
        if a.shape[0] != input.shape[1]:
            raise LossValueError(
                f"alpha has shape {shape_str(a.shape)}, expected ({input.shape[1]},): one entry per class"
            )
        a = a.to(device=input.device, dtype=cdt)
    if not prob and input.dim() == 2 and use_fused_kernel(input.numel()):
        coef: torch.Tensor | float = a if w is None else a * w
        tcoef = coef if isinstance(coef, torch.Tensor) else None
        if softmax_focal_supports(input, target, label_smoothing=eps, coef=tcoef, weight=w):
            if reduction == "mean" and normalizer is None:
                return softmax_focal_mean(input, target, g, ignore_index, coef, w)
            rows = softmax_focal_rows(input, target, g, ignore_index, coef)
            if reduction == "none":
                return rows  # already 0 on ignored rows
            return rows.sum() if normalizer is None else rows.sum() / normalizer
    x = upcast(input)
    if not prob and eps == 0.0 and w is None:
        # class indices, no smoothing or weight: l = alpha_y (1 - p_y)^gamma ce with ce = -log p_y from
        # torch's fused cross-entropy (0 on ignored entries) and 1 - p_y = -expm1(-ce); fewest ops
        ce = F.cross_entropy(x, target, ignore_index=-100 if ignore is None else ignore, reduction="none")
        mod = _pow_modulator(-torch.expm1(-ce), g)  # (1 - p_y)^gamma
        loss = ce if mod is None else ce * mod
        mask = None if ignore is None else target != ignore
        if isinstance(a, torch.Tensor):
            loss = loss * a[(target if mask is None else torch.where(mask, target, 0)).long()]
        elif a != 1.0:
            loss = loss * a
        return _reduce(loss, reduction, mask=mask, normalizer=normalizer)
    logp = F.log_softmax(x, dim=1)
    loss, mask, denom = _focal_math(
        logp,
        target,
        prob_target=prob,
        alpha=a,
        gamma=g,
        weight=w,
        ignore_index=ignore,
        label_smoothing=eps,
    )
    return _reduce(loss, reduction, mask=mask, denom=denom, normalizer=normalizer)


class FocalLoss(_ClassificationLoss):
    """Module form of :func:`focal_loss`; the seed signature ``FocalLoss(alpha=1, gamma=2, reduction='mean')``.

    A number ``alpha`` is stored as a float, a per-class ``alpha`` and ``weight`` as buffers.

    Example:
        >>> loss_fn = FocalLoss(alpha=1, gamma=2)
        >>> loss_fn(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2]))
        tensor(0.4838)
    """

    alpha: float | torch.Tensor
    weight: torch.Tensor | None

    def __init__(
        self,
        alpha: AlphaLike = 1.0,
        gamma: float = 2.0,
        reduction: str = "mean",
        *,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        a = _alpha_tensor(alpha)
        if isinstance(a, torch.Tensor):
            self._class_buffer("alpha", a)
        else:
            self.alpha = a
        self.gamma = _check_gamma(gamma)
        self._class_buffer("weight", weight)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.label_smoothing = float(check_number("label_smoothing", label_smoothing, low=0.0, high=1.0))

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, normalizer: Normalizer = None
    ) -> torch.Tensor:
        return focal_loss(
            inputs,
            targets,
            self.alpha,
            self.gamma,
            self.reduction,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            normalizer=normalizer,
        )

    def extra_repr(self) -> str:
        alpha = "per-class" if isinstance(self.alpha, torch.Tensor) else self.alpha
        return (
            f"alpha={alpha}, gamma={self.gamma}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"
        )


# ============================================================================ PolyLoss


def _poly1_math(
    logp: torch.Tensor,
    target: torch.Tensor,
    *,
    prob_target: bool,
    epsilon: float,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Poly-1 cross-entropy of log-probabilities; returns ``(element_loss, mask, denominator_weight)``."""

    def term(lp: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        return -lp - epsilon * torch.expm1(lp)  # -log p + eps (1 - p)

    return _soft_class_sum(
        term,
        logp,
        target,
        prob_target=prob_target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


def poly1_cross_entropy_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    epsilon: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Poly-1 cross-entropy (Leng et al., ICLR 2022, "PolyLoss: A Polynomial Expansion Perspective").

    .. math::
        \ell_i = \mathrm{CE}_i + \epsilon\,(1 - p_{i,t}),\qquad
        \text{in general } \ell_i = \sum_c q_{ic}\, w_c \big(-\log p_{ic} + \epsilon (1 - p_{ic})\big)

    ``q`` is the (label-smoothed) target distribution, as in :func:`cross_entropy_loss`; without class
    weights the poly term is ``epsilon (1 - sum_c q_c p_c)``, the paper's form with label smoothing.
    Class ``weight`` scales both parts of an element and the ``'mean'`` denominator is
    ``sum_i w_{y_i}`` (cross-entropy's weighted mean). ``epsilon = 0`` is cross-entropy; the paper's
    best ImageNet value is ``epsilon = 2`` and ``epsilon >= -1`` keeps the loss non-negative and
    decreasing in ``p_t``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> poly1_cross_entropy_loss(logits, torch.tensor([0, 2]), epsilon=1.0)
        tensor(1.3327)
    """
    e = float(check_number("epsilon", epsilon, low=-1.0))
    eps = _check_common(reduction, normalizer, label_smoothing)
    prob, ignore = _multiclass_target(input, target, ignore_index)
    x = upcast(input)
    w = _prepare_weight("weight", weight, input, x.dtype)
    loss, mask, denom = _poly1_math(
        F.log_softmax(x, dim=1),
        target,
        prob_target=prob,
        epsilon=e,
        weight=w,
        ignore_index=ignore,
        label_smoothing=eps,
    )
    return _reduce(loss, reduction, mask=mask, denom=denom, normalizer=normalizer)


class Poly1CrossEntropyLoss(_ClassificationLoss):
    """Module form of :func:`poly1_cross_entropy_loss`.

    Example:
        >>> Poly1CrossEntropyLoss(epsilon=1.0)(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(2.1363)
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        epsilon: float = 1.0,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        self.epsilon = float(check_number("epsilon", epsilon, low=-1.0))
        self._class_buffer("weight", weight)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.label_smoothing = float(check_number("label_smoothing", label_smoothing, low=0.0, high=1.0))

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None
    ) -> torch.Tensor:
        return poly1_cross_entropy_loss(
            input,
            target,
            self.epsilon,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            normalizer=normalizer,
        )

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )


# ============================================================================ binary / multi-label


def _binary_check(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    reduction: str,
    normalizer: Normalizer,
    input_name: str = "input",
    target_name: str = "target",
) -> None:
    """Checks for element-wise logits/targets (and the optional weight / mask)."""
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_floating(input_name, input)
    check_tensor(target_name, target)
    check_same_device((input_name, input), (target_name, target), ("weight", weight), ("mask", mask))
    if not (target.is_floating_point() or target.dtype == torch.bool):
        raise LossTypeError(
            f"{target_name} must be a floating-point (or bool) tensor of 0/1 or soft labels in [0, 1], "
            f"got dtype {target.dtype} (class indices: use torch.nn.functional.one_hot(...).float())"
        )
    if target.shape != input.shape:
        raise LossValueError(
            f"{target_name} has shape {shape_str(target.shape)}, expected {shape_str(input.shape)} "
            f"to match {input_name}"
        )
    if target.is_floating_point():
        check_prob_target(target_name, target.detach())
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, input_name, input)
    if mask is not None:
        check_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise LossValueError(f"mask must be a bool tensor (True = counts), got dtype {mask.dtype}")
        check_broadcastable("mask", mask, input_name, input)


def _binary_cast(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked logits and targets in the compute dtype (eager reference path)."""
    x = upcast(input)
    return x, target.to(x.dtype)


def _fused_reduction(reduction: str, normalizer: Normalizer) -> str:
    """Reduction to ask an element-wise kernel for: a ``normalizer`` turns 'mean' into 'sum' / normalizer."""
    return "sum" if normalizer is not None else reduction


def _sigmoid_focal_math(
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    pos_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Element-wise RetinaNet focal loss of compute-dtype logits ``x`` and targets ``t`` in [0, 1]."""
    loss = F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="none")
    if gamma != 0.0:
        # 1 - p_t = t (1 - p) + (1 - t) p with 1 - p = sigmoid(-x): no cancellation near p = 0 or 1.
        mod = _pow_modulator(t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x), gamma)
        assert mod is not None  # gamma != 0
        loss = loss * mod
    if alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return loss


def _check_sigmoid_alpha(alpha: float) -> float:
    a = float(check_number("alpha", alpha))
    if a > 1.0:
        raise LossValueError(f"alpha must be in [0, 1] (or negative to disable the weighting), got {alpha!r}")
    return a


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    pos_weight: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Sigmoid (binary / multi-label) focal loss of RetinaNet (Lin et al. 2017).

    .. math::
        \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(x, y),\quad p = \sigma(x),\quad
        p_t = p\,y + (1 - p)(1 - y),\quad \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    Same arguments, defaults and values as :func:`torchvision.ops.sigmoid_focal_loss`
    (``alpha=0.25, gamma=2, reduction='none'``; ``alpha < 0`` disables the ``alpha_t`` weighting), so
    at ``gamma = 0, alpha < 0`` it is :func:`torch.nn.functional.binary_cross_entropy_with_logits`
    (bit for bit: that is the cross-entropy factor, computed in float32 from log-sigmoid, so fp16
    logits cannot underflow ``log(sigmoid(x))``). ``1 - p_t`` is formed from ``sigmoid(x)`` and
    ``sigmoid(-x)`` (no cancellation near saturation) and the ``gamma < 1`` gradient stays finite.

    Extras: ``pos_weight`` (BCE-with-logits semantics: scales the positive log-likelihood term,
    broadcast over the last dimension), soft targets in ``[0, 1]`` (same formula), an element-wise
    ``weight`` (broadcastable; ``'mean'`` becomes ``sum(w l) / sum(w)`` -- torch's BCE divides by the
    element count instead), a bool ``mask`` (``False`` = ignored, leaves the mean's denominator) and
    ``normalizer`` (e.g. RetinaNet's number of positive anchors).

    Args:
        inputs: logits of any shape.
        targets: same shape, 0/1 or soft labels in ``[0, 1]`` (floating or bool).
        alpha: positive-class weight in ``[0, 1]``, or negative to disable.
        gamma: focusing parameter ``>= 0``.
        reduction: ``'none' | 'mean' | 'sum'`` (default ``'none'`` like torchvision).

    Example:
        >>> x = torch.tensor([3.0, -1.0, 0.5])
        >>> y = torch.tensor([1.0, 0.0, 0.0])
        >>> sigmoid_focal_loss(x, y, reduction="sum")
        tensor(0.3001)
        >>> sigmoid_focal_loss(x, y, reduction="mean", normalizer=1.0)  # divide by #positives
        tensor(0.3001)
    """
    a = _check_sigmoid_alpha(alpha)
    g = _check_gamma(gamma)
    _binary_check(inputs, targets, weight, mask, reduction, normalizer, "inputs", "targets")
    if pos_weight is not None:
        check_floating("pos_weight", pos_weight)
        check_same_device(("inputs", inputs), ("pos_weight", pos_weight))
        check_broadcastable("pos_weight", pos_weight, "inputs", inputs)
    # gamma = 0 without alpha is BCE-with-logits itself: torch's native op (bit for bit) is used then
    plain_bce = g == 0.0 and a < 0
    if weight is None and mask is None and not plain_bce and use_fused_kernel(inputs.numel()):
        red = _fused_reduction(reduction, normalizer)
        if sigmoid_focal_supports(inputs, targets, pos_weight, reduction=red):
            out = _fused_sigmoid_focal(inputs, targets, a, g, pos_weight, red)
            return out if normalizer is None else out / normalizer
    x, t = _binary_cast(inputs, targets)
    pw = None if pos_weight is None else pos_weight.to(device=x.device, dtype=x.dtype)
    loss = _sigmoid_focal_math(x, t, alpha=a, gamma=g, pos_weight=pw)
    w = None if weight is None else weight.to(device=x.device, dtype=x.dtype)
    return reduce_loss(loss, reduction, weight=w, mask=mask, normalizer=normalizer)


class SigmoidFocalLoss(_ClassificationLoss):
    """Module form of :func:`sigmoid_focal_loss`. Default ``reduction='mean'`` (like torch's modules;
    the functional defaults to torchvision's ``'none'``).

    Example:
        >>> loss_fn = SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
        >>> loss_fn(torch.tensor([3.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0]))
        tensor(0.3001)
    """

    pos_weight: torch.Tensor | None

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: str = "mean",
        pos_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(reduction)
        self.alpha = _check_sigmoid_alpha(alpha)
        self.gamma = _check_gamma(gamma)
        if pos_weight is not None:
            check_floating("pos_weight", pos_weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        return sigmoid_focal_loss(
            input,
            target,
            self.alpha,
            self.gamma,
            self.reduction,
            pos_weight=self.pos_weight,
            weight=weight,
            mask=mask,
            normalizer=normalizer,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


def _asymmetric_math(
    x: torch.Tensor, t: torch.Tensor, *, gamma_neg: float, gamma_pos: float, clip: float
) -> torch.Tensor:
    """Element-wise asymmetric loss of compute-dtype logits ``x`` and targets ``t`` in [0, 1]."""
    pos = F.softplus(-x)  # -log p
    q = torch.sigmoid(-x) if (gamma_pos != 0.0 or clip > 0.0) else None  # 1 - p, accurate near p = 1
    mod = None if q is None else _pow_modulator(q, gamma_pos)
    if mod is not None:
        pos = pos * mod
    if clip > 0.0:
        # shifted probability p_m = max(p - clip, 0); log(1 - p_m) >= log(clip) is finite, no eps needed
        p_m = (torch.sigmoid(x) - clip).clamp_min(0.0)
        assert q is not None  # formed when clip > 0
        neg = -torch.log((q + clip).clamp_max(1.0))
    else:
        p_m = torch.sigmoid(x)
        neg = F.softplus(x)  # -log(1 - p)
    mod = _pow_modulator(p_m, gamma_neg)
    if mod is not None:
        neg = neg * mod
    return t * pos + (1.0 - t) * neg


def asymmetric_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    reduction: str = "mean",
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021, "ASL").

    .. math::
        \ell = -y\,(1 - p)^{\gamma_+} \log p \;-\; (1 - y)\, p_m^{\gamma_-} \log(1 - p_m),
        \qquad p = \sigma(x),\quad p_m = \max(p - m, 0)

    Negatives are focused harder (``gamma_neg > gamma_pos``) and *probability shifting* by the margin
    ``m = clip`` discards very easy negatives (``p < clip``) entirely. ``-log p`` is ``softplus(-x)``
    and ``log(1 - p_m) = log(min(sigmoid(-x) + clip, 1)) >= log(clip)``, so no ``eps`` clamp is needed
    (the authors' implementation clamps probabilities at ``1e-8``). ``clip = 0, gamma_pos = gamma_neg =
    gamma`` is the sigmoid focal loss without ``alpha`` (for 0/1 targets); all zero is BCE-with-logits.
    Soft targets in ``[0, 1]`` mix the two terms linearly. Gradients flow through the focusing
    weights (the authors' implementation can detach them).

    ``reduction='mean'`` averages over all elements (the authors' implementation returns the sum:
    use ``reduction='sum'``); ``weight`` / ``mask`` / ``normalizer`` as in :func:`sigmoid_focal_loss`.

    Example:
        >>> x = torch.tensor([[3.0, -1.0, 0.5]])
        >>> y = torch.tensor([[1.0, 0.0, 0.0]])
        >>> asymmetric_loss(x, y, reduction="sum")
        tensor(0.1404)
    """
    gn = _check_gamma(gamma_neg, "gamma_neg")
    gp = _check_gamma(gamma_pos, "gamma_pos")
    m = float(check_number("clip", clip, low=0.0, high=1.0, high_open=True))
    _binary_check(input, target, weight, mask, reduction, normalizer)
    if weight is None and mask is None and use_fused_kernel(input.numel()):
        red = _fused_reduction(reduction, normalizer)
        if asymmetric_supports(input, target, reduction=red):
            out = _fused_asymmetric(input, target, gn, gp, m, red)
            if red == "none":
                out = out + _plus_inf_marker(input)
            elif input.numel():
                # one read-only reduction: NaN when the input holds +inf (or NaN), else 0
                out = out + input.detach().amax().clamp_min(0.0) * 0.0
            return out if normalizer is None else out / normalizer
    x, t = _binary_cast(input, target)
    loss = _asymmetric_math(x, t, gamma_neg=gn, gamma_pos=gp, clip=m) + _plus_inf_marker(x)
    w = None if weight is None else weight.to(device=x.device, dtype=x.dtype)
    return reduce_loss(loss, reduction, weight=w, mask=mask, normalizer=normalizer)


class AsymmetricLoss(_ClassificationLoss):
    """Module form of :func:`asymmetric_loss`.

    Example:
        >>> AsymmetricLoss(reduction="sum")(torch.tensor([[3.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]))
        tensor(0.1404)
    """

    def __init__(
        self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.gamma_neg = _check_gamma(gamma_neg, "gamma_neg")
        self.gamma_pos = _check_gamma(gamma_pos, "gamma_pos")
        self.clip = float(check_number("clip", clip, low=0.0, high=1.0, high_open=True))

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        return asymmetric_loss(
            input,
            target,
            self.gamma_neg,
            self.gamma_pos,
            self.clip,
            self.reduction,
            weight=weight,
            mask=mask,
            normalizer=normalizer,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
            f"reduction={self.reduction!r}"
        )


# ============================================================================ multi-class hinge

_HINGE_MODES = ("multi_margin", "crammer_singer")


def _plus_inf_marker(x: torch.Tensor) -> torch.Tensor:
    """0 where ``x`` is finite or ``-inf``, NaN where it is ``+inf`` or NaN (detached).

    Added to a loss whose formula has a finite limit at ``x = +inf`` (asymmetric loss, the hinge at
    its target score), so that a ``+inf`` input is not hidden behind that limit. ``-inf`` stays a
    legitimate masked logit.
    """
    return torch.relu(x.detach()) * 0.0


def _multiclass_hinge_math(
    x: torch.Tensor, target: torch.Tensor, *, p: int, margin: float, mode: str
) -> torch.Tensor:
    """Per-element multi-class hinge of compute-dtype scores ``x`` and valid (non-ignored) ``target``."""
    idx = target.unsqueeze(1)
    x_y = x.gather(1, idx)
    h = (margin - x_y + x).clamp_min(0.0)
    if p == 2:
        h = h * h
    h = h.scatter(1, idx, 0.0)  # j != y only
    flag = _plus_inf_marker(x_y).squeeze(1)  # the scatter would hide a +inf target score
    if mode == "crammer_singer":
        return h.amax(1) + flag
    return h.sum(1) / x.shape[1] + flag


def multiclass_hinge_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    mode: str = "multi_margin",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Multi-class hinge (margin) loss of scores.

    ``mode='multi_margin'`` is :class:`torch.nn.MultiMarginLoss` (Weston & Watkins 1999 form):

    .. math::
        \ell_i = \frac{w_{y_i}}{C} \sum_{j \ne y_i} \max(0,\ m - x_{i,y_i} + x_{ij})^p

    ``mode='crammer_singer'`` (Crammer & Singer 2001) keeps only the most violating class:
    ``l_i = w_{y_i} max_{j != y_i} max(0, m - x_{i,y_i} + x_{ij})^p``.

    ``reduction='mean'`` is ``sum_i l_i / sum_i w_{y_i}`` over non-ignored elements (torch's
    ``MultiMarginLoss`` divides by ``N`` even with weights; without weights they agree).
    Accepts ``(N, C)`` or ``(N, C, d1, ...)`` scores and class-index targets with ``ignore_index``.

    Example:
        >>> scores = torch.tensor([[0.1, 0.2, 0.4, 0.8]])
        >>> multiclass_hinge_loss(scores, torch.tensor([3]))  # torch's MultiMarginLoss example
        tensor(0.3250)
    """
    check_choice("p", p, (1, 2))
    mg = float(check_number("margin", margin, low=0.0))
    check_choice("mode", mode, _HINGE_MODES)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    if _multiclass_target(input, target, ignore_index)[0]:
        raise LossValueError(
            "multiclass_hinge_loss needs class-index targets (integer tensor), got a floating target"
        )
    x = upcast(input)
    w = _prepare_weight("weight", weight, input, x.dtype)
    mask = target != ignore_index
    safe = torch.where(mask, target, target.new_zeros(())).long()
    loss = _multiclass_hinge_math(x, safe, p=int(p), margin=mg, mode=mode)
    denom = None
    if w is not None:
        denom = w[safe]
        loss = loss * denom
    return _reduce(loss, reduction, mask=mask, denom=denom, normalizer=normalizer)


class MulticlassHingeLoss(_ClassificationLoss):
    """Module form of :func:`multiclass_hinge_loss` (``torch.nn.MultiMarginLoss`` arguments).

    Example:
        >>> MulticlassHingeLoss()(torch.tensor([[0.1, 0.2, 0.4, 0.8]]), torch.tensor([3]))
        tensor(0.3250)
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        p: int = 1,
        margin: float = 1.0,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        *,
        mode: str = "multi_margin",
    ) -> None:
        super().__init__(reduction)
        self.p = check_choice("p", p, (1, 2))
        self.margin = float(check_number("margin", margin, low=0.0))
        self.mode = check_choice("mode", mode, _HINGE_MODES)
        self._class_buffer("weight", weight)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None
    ) -> torch.Tensor:
        return multiclass_hinge_loss(
            input,
            target,
            self.p,
            self.margin,
            self.weight,
            self.ignore_index,
            self.reduction,
            mode=self.mode,
            normalizer=normalizer,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, margin={self.margin}, mode={self.mode!r}, reduction={self.reduction!r}"


# ============================================================================ class weights


_SCHEMES = ("inverse", "inverse_sqrt", "effective_number")


def class_weights(
    targets_or_counts: torch.Tensor | Sequence[float],
    num_classes: int,
    scheme: str = "inverse",
    beta: float = 0.999,
    normalize: bool = True,
    *,
    counts: bool | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Per-class weights from class frequencies, for ``weight=`` of the losses above.

    * ``'inverse'``: ``w_c = 1 / n_c``
    * ``'inverse_sqrt'``: ``w_c = 1 / sqrt(n_c)``
    * ``'effective_number'`` (Cui et al., CVPR 2019, "Class-Balanced Loss Based on Effective Number
      of Samples"): ``w_c = (1 - beta) / (1 - beta^{n_c})``; ``beta = 0`` gives equal weights and
      ``beta -> 1`` approaches ``'inverse'``.

    With ``normalize=True`` the weights are rescaled to sum to ``num_classes`` (Cui et al.).
    **Classes with a zero count get weight 0** (a class absent from the data has no samples to weight;
    ``1 / 0`` would be inf) and are left out of the normalization, so the present classes' weights sum
    to ``num_classes``. If no class has a positive count an error is raised.

    Args:
        targets_or_counts: an integer tensor of class indices (any shape; entries equal to
            ``ignore_index`` are skipped), or per-class counts ``(num_classes,)`` given as a floating
            tensor or a Python sequence. Pass ``counts=True`` to read an integer tensor as counts.
        num_classes: number of classes ``C``.
        scheme: ``'inverse' | 'inverse_sqrt' | 'effective_number'``.
        beta: for ``'effective_number'``, in ``[0, 1)``.
        normalize: rescale to sum to ``num_classes``.

    Returns:
        float32 tensor ``(num_classes,)`` (float64 if float64 counts were given) on the input's device.

    Example:
        >>> class_weights(torch.tensor([0, 0, 0, 1]), num_classes=2)
        tensor([0.5000, 1.5000])
        >>> class_weights([100.0, 10.0, 0.0], num_classes=3, scheme="effective_number", beta=0.9)
        tensor([1.1833, 1.8167, 0.0000])
    """
    check_int("num_classes", num_classes, low=1)
    check_choice("scheme", scheme, _SCHEMES)
    b = float(check_number("beta", beta, low=0.0, high=1.0, high_open=True))
    out_dtype = torch.float32
    if isinstance(targets_or_counts, torch.Tensor) and targets_or_counts.dtype == torch.float64:
        out_dtype = torch.float64
    if not isinstance(targets_or_counts, torch.Tensor):
        targets_or_counts = torch.tensor([float(c) for c in targets_or_counts], dtype=torch.float64)
        counts = True if counts is None else counts
    data = targets_or_counts
    if counts is None:
        counts = data.is_floating_point()
    if counts:
        if data.dim() != 1 or data.shape[0] != num_classes:
            raise LossValueError(
                f"counts has shape {shape_str(data.shape)}, expected ({num_classes},): one count per class"
            )
        n = data.to(torch.float64)
        if bool((n < 0).any()) or not bool(torch.isfinite(n).all()):
            raise LossValueError("counts must be finite and non-negative")
    else:
        check_integer("targets", data)
        flat = data.reshape(-1)
        flat = flat[flat != ignore_index]
        if flat.numel() > 0 and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
            bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
            raise LossValueError(
                f"targets contains class index {bad}, expected values in [0, {num_classes}) "
                f"(or ignore_index={ignore_index})"
            )
        n = torch.bincount(flat.long(), minlength=num_classes).to(torch.float64)
    present = n > 0
    if not bool(present.any()):
        raise LossValueError("class_weights needs at least one class with a positive count")
    safe = torch.where(present, n, torch.ones_like(n))
    if scheme == "inverse":
        w = 1.0 / safe
    elif scheme == "inverse_sqrt":
        w = safe.rsqrt()
    else:
        # (1 - beta) / (1 - beta^n) with 1 - beta^n = -expm1(n log beta), accurate for beta near 1.
        w = torch.ones_like(safe) if b == 0.0 else (1.0 - b) / -torch.expm1(safe * math.log(b))
    w = torch.where(present, w, torch.zeros_like(w))
    if normalize:
        w = w * (num_classes / w.sum())
    return w.to(out_dtype)


class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy with per-class weights; the seed signature ``WeightedCrossEntropyLoss(weights, reduction)``.

    ``forward(preds, targets)`` is :func:`cross_entropy_loss` with ``weight=weights``. Build the weights
    from data with :meth:`from_targets` (see :func:`class_weights`).

    Example:
        >>> loss_fn = WeightedCrossEntropyLoss(weights=torch.tensor([0.1, 0.9]))
        >>> loss_fn(torch.zeros(2, 2), torch.tensor([0, 1]))
        tensor(0.6931)
        >>> WeightedCrossEntropyLoss.from_targets(torch.tensor([0, 0, 0, 1]), num_classes=2).weights
        tensor([0.5000, 1.5000])
    """

    def __init__(
        self,
        weights: torch.Tensor | Sequence[float] | None = None,
        reduction: str = "mean",
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(_class_option("weights", weights), ignore_index, reduction, label_smoothing)

    @property
    def weights(self) -> torch.Tensor | None:
        """The per-class weights (the ``weight`` buffer)."""
        return self.weight

    @weights.setter
    def weights(self, value: torch.Tensor | Sequence[float] | None) -> None:
        self._class_buffer("weight", value, "weights")

    @classmethod
    def from_targets(
        cls,
        targets: torch.Tensor | Sequence[float],
        num_classes: int,
        scheme: str = "inverse",
        beta: float = 0.999,
        normalize: bool = True,
        reduction: str = "mean",
        **kwargs: Any,
    ) -> WeightedCrossEntropyLoss:
        """Weights from class indices (or counts) via :func:`class_weights`."""
        w = class_weights(
            targets,
            num_classes,
            scheme=scheme,
            beta=beta,
            normalize=normalize,
            ignore_index=kwargs.get("ignore_index", -100),
        )
        return cls(weights=w.float(), reduction=reduction, **kwargs)

    def forward(
        self, preds: torch.Tensor, targets: torch.Tensor, normalizer: Normalizer = None
    ) -> torch.Tensor:
        return super().forward(preds, targets, normalizer=normalizer)


# ============================================================================ registry

_FAMILY = "classification"
register(
    "cross_entropy",
    CrossEntropyLoss,
    family=_FAMILY,
    functional=cross_entropy_loss,
    source="torch",
    notes="torch semantics incl. weights / label smoothing / probability targets; all-ignored -> 0",
    aliases=("ce",),
)
register(
    "weighted_cross_entropy",
    WeightedCrossEntropyLoss,
    family=_FAMILY,
    functional=cross_entropy_loss,
    source="-",
    notes="seed signature; `from_targets` + `class_weights` (inverse, sqrt, effective number)",
)
register(
    "focal",
    FocalLoss,
    family=_FAMILY,
    functional=focal_loss,
    source="Lin et al. 2017",
    notes="softmax; gamma=0, alpha=1 == CE; finite grads for gamma<1",
    aliases=("softmax_focal",),
)
register(
    "sigmoid_focal",
    SigmoidFocalLoss,
    family=_FAMILY,
    functional=sigmoid_focal_loss,
    source="Lin et al. 2017 / torchvision",
    notes="RetinaNet form, torchvision args; gamma=0, alpha<0 == BCE-with-logits",
)
register(
    "poly1_cross_entropy",
    Poly1CrossEntropyLoss,
    family=_FAMILY,
    functional=poly1_cross_entropy_loss,
    source="Leng et al. ICLR 2022 (PolyLoss)",
    notes="CE + epsilon (1 - p_t); weights / ignore / label smoothing like CE",
    aliases=("poly1",),
)
register(
    "asymmetric",
    AsymmetricLoss,
    family=_FAMILY,
    functional=asymmetric_loss,
    source="Ridnik et al. ICCV 2021 (ASL)",
    notes="multi-label; gamma_neg=4, gamma_pos=0, clip=0.05; log-space, no eps",
    aliases=("asl",),
)
register(
    "multiclass_hinge",
    MulticlassHingeLoss,
    family=_FAMILY,
    functional=multiclass_hinge_loss,
    source="Weston & Watkins 1999; Crammer & Singer 2001",
    notes="torch MultiMarginLoss semantics (mode='multi_margin') or Crammer-Singer max; weighted mean",
)
