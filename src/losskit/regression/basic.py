"""Regression losses: Huber, Smooth L1, log-cosh, quantile (pinball), Charbonnier (pseudo-Huber).

All take ``input`` and ``target`` of the same shape, an optional element-wise ``weight`` (broadcastable),
an optional boolean ``mask`` (``True`` = counts) and ``reduction`` / ``normalizer`` as described in
:mod:`losskit._reduction`. Half-precision inputs are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    LossValueError,
    check_broadcastable,
    check_floating,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from .._reduction import Normalizer, check_normalizer, reduce_loss, upcast
from ..registry import register

__all__ = [
    "CharbonnierLoss",
    "HuberLoss",
    "LogCoshLoss",
    "QuantileLoss",
    "SmoothL1Loss",
    "charbonnier_loss",
    "huber_loss",
    "log_cosh_loss",
    "quantile_loss",
    "smooth_l1_loss",
]


def _prepare(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    reduction: str,
    normalizer: Normalizer,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared argument checks; returns ``(input, target)`` upcast to the compute dtype."""
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_same_shape("target", target, "input", input)
    check_same_device(("input", input), ("target", target), ("weight", weight), ("mask", mask))
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, "input", input)
    if mask is not None:
        check_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise LossValueError(f"mask must be a bool tensor (True = counts), got dtype {mask.dtype}")
        check_broadcastable("mask", mask, "input", input)
    return upcast(input), upcast(target)


def _finish(
    loss: torch.Tensor,
    reduction: str,
    weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    normalizer: Normalizer,
) -> torch.Tensor:
    w = None if weight is None else weight.to(loss.dtype)
    return reduce_loss(loss, reduction, weight=w, mask=mask, normalizer=normalizer)


def huber_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    delta: float = 1.0,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Huber loss (Huber 1964), equal to :func:`torch.nn.functional.huber_loss`.

    .. math::
        \ell(x, y) = \begin{cases} \tfrac12 (x - y)^2 & |x - y| \le \delta \\
        \delta\,(|x - y| - \tfrac12 \delta) & \text{otherwise} \end{cases}

    Quadratic near zero, linear (slope ``delta``) for large errors, so outliers pull with a bounded
    force. As ``delta -> inf`` it becomes ``MSE / 2``. Note ``smooth_l1_loss(beta=delta)`` is
    ``huber_loss(delta) / delta``: using Smooth L1 as "Huber" (a common recipe) scales the loss and its
    gradient by ``1 / delta``.

    Args:
        input, target: tensors of the same shape.
        delta: threshold between the quadratic and linear parts, ``> 0``.
        weight: optional element-wise weights broadcastable to ``input``.
        mask: optional bool tensor, ``False`` entries are ignored.
        reduction: ``'none' | 'mean' | 'sum'``.
        normalizer: with ``'mean'``, divide the sum by this instead of the element count.

    Example:
        >>> huber_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), delta=1.0)
        tensor(1.3125)
    """
    check_number("delta", delta, low=0.0, low_open=True)
    x, y = _prepare(input, target, weight, mask, reduction, normalizer)
    loss = F.huber_loss(x, y, reduction="none", delta=float(delta))
    return _finish(loss, reduction, weight, mask, normalizer)


def smooth_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    beta: float = 1.0,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Smooth L1 loss (Girshick 2015, Fast R-CNN), equal to :func:`torch.nn.functional.smooth_l1_loss`.

    .. math::
        \ell(x, y) = \begin{cases} 0.5 (x - y)^2 / \beta & |x - y| < \beta \\
        |x - y| - 0.5 \beta & \text{otherwise} \end{cases}

    ``smooth_l1 = huber(delta=beta) / beta``; ``beta = 0`` is the L1 loss.

    Example:
        >>> smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), beta=1.0)
        tensor(1.3125)
    """
    check_number("beta", beta, low=0.0)
    x, y = _prepare(input, target, weight, mask, reduction, normalizer)
    loss = F.smooth_l1_loss(x, y, reduction="none", beta=float(beta))
    return _finish(loss, reduction, weight, mask, normalizer)


def log_cosh_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Log-cosh loss, computed stably for any error size.

    .. math::
        \ell(x, y) = \log\cosh(x - y) = |d| + \operatorname{softplus}(-2|d|) - \log 2,\quad d = x - y

    Behaves like ``d^2 / 2`` near zero and like ``|d| - log 2`` far away; the gradient is ``tanh(d)``.
    ``log(cosh(d))`` written directly overflows for ``|d| > ~89`` in float32; this form does not.

    Example:
        >>> log_cosh_loss(torch.tensor([0.0, 1e4]), torch.zeros(2), reduction="none")
        tensor([   0.0000, 9999.3066])
    """
    x, y = _prepare(input, target, weight, mask, reduction, normalizer)
    d = (x - y).abs()
    loss = d + F.softplus(-2.0 * d) - math.log(2.0)
    return _finish(loss, reduction, weight, mask, normalizer)


def charbonnier_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-3,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Charbonnier / pseudo-Huber loss (Charbonnier et al. 1994), a smooth L1.

    .. math::
        \ell(x, y) = \sqrt{(x - y)^2 + \epsilon^2} - \epsilon

    Zero at ``x == y``, ``~ d^2 / (2 eps)`` near zero and ``~ |d|`` far away; smooth everywhere. (The
    common image-restoration variant without ``- eps`` differs by a constant.)

    Example:
        >>> charbonnier_loss(torch.tensor([0.0, 4.0]), torch.zeros(2), eps=3.0, reduction="none")
        tensor([0., 2.])
    """
    check_number("eps", eps, low=0.0, low_open=True)
    x, y = _prepare(input, target, weight, mask, reduction, normalizer)
    e = float(eps)
    d = x - y
    loss = torch.sqrt(d * d + e * e) - e
    return _finish(loss, reduction, weight, mask, normalizer)


def _as_quantiles(quantiles: float | Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    if isinstance(quantiles, torch.Tensor):
        values = tuple(float(q) for q in quantiles.reshape(-1).tolist())
    elif isinstance(quantiles, (int, float)) and not isinstance(quantiles, bool):
        values = (float(quantiles),)
    else:  # a sequence; a bool reaches tuple() too, which rejects it with a TypeError
        values = tuple(cast("Sequence[float]", quantiles))
    if len(values) == 0:
        raise LossValueError("quantile must hold at least one value in (0, 1)")
    for q in values:
        check_number("quantile", q, low=0.0, high=1.0, low_open=True, high_open=True)
    return tuple(float(q) for q in values)


def quantile_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    quantile: float | Sequence[float] = 0.5,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Quantile (pinball) loss (Koenker & Bassett 1978).

    .. math::
        \ell_q(x, y) = \max\big(q\,(y - x),\ (q - 1)(y - x)\big)

    Minimised when ``x`` is the ``q``-quantile of ``y``; ``q = 0.5`` is half the L1 loss.

    One quantile: ``input`` and ``target`` have the same shape. Several quantiles ``(q_1..q_K)``:
    ``input`` has a trailing dimension of size K (one prediction per quantile) and ``target`` is
    ``input.shape[:-1]`` (or the same shape with a trailing 1); ``reduction='none'`` returns the
    per-quantile losses of ``input``'s shape.

    Example:
        >>> quantile_loss(torch.tensor([0.0]), torch.tensor([2.0]), quantile=0.9)
        tensor(1.8000)
        >>> pred = torch.zeros(3, 2)  # two quantiles per sample
        >>> quantile_loss(pred, torch.ones(3), quantile=[0.1, 0.9], reduction="none")
        tensor([[0.1000, 0.9000],
                [0.1000, 0.9000],
                [0.1000, 0.9000]])
    """
    qs = _as_quantiles(quantile)
    multi = not (isinstance(quantile, (int, float)) and not isinstance(quantile, bool))
    if multi:
        check_floating("input", input)
        check_tensor("target", target)
        if input.dim() == 0 or input.shape[-1] != len(qs):
            raise LossValueError(
                f"input has shape {shape_str(input.shape)}, expected a last dimension of size {len(qs)} "
                f"(one prediction per quantile)"
            )
        if target.dim() == input.dim() and target.shape[-1] == 1:
            target = target.squeeze(-1)
        if tuple(target.shape) != tuple(input.shape[:-1]):
            raise LossValueError(
                f"target has shape {shape_str(target.shape)}, expected {shape_str(input.shape[:-1])} "
                f"to match input of shape {shape_str(input.shape)} without its quantile dimension"
            )
        target = target.unsqueeze(-1).expand_as(input)
    x, y = _prepare(input, target, weight, mask, reduction, normalizer)
    q = torch.tensor(qs, dtype=x.dtype, device=x.device)
    diff = y - x
    loss = torch.maximum(q * diff, (q - 1.0) * diff)
    return _finish(loss, reduction, weight, mask, normalizer)


class _RegressionLoss(nn.Module):
    """Base class: stores ``reduction`` and passes it, with the call's extras, to the functional."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class HuberLoss(_RegressionLoss):
    """Module form of :func:`huber_loss` (seed signature ``HuberLoss(delta=1.0, reduction='mean')``).

    Example:
        >>> loss_fn = HuberLoss(delta=1.0)
        >>> loss_fn(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(1.3125)
    """

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.delta = float(check_number("delta", delta, low=0.0, low_open=True))

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return huber_loss(input, target, self.delta, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, {super().extra_repr()}"


class SmoothL1Loss(_RegressionLoss):
    """Module form of :func:`smooth_l1_loss`.

    Example:
        >>> SmoothL1Loss(beta=1.0)(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(1.3125)
    """

    def __init__(self, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = float(check_number("beta", beta, low=0.0))

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return smooth_l1_loss(input, target, self.beta, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"


class LogCoshLoss(_RegressionLoss):
    """Module form of :func:`log_cosh_loss`.

    Example:
        >>> LogCoshLoss()(torch.zeros(3), torch.zeros(3))
        tensor(0.)
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return log_cosh_loss(input, target, reduction=self.reduction, **kwargs)


class CharbonnierLoss(_RegressionLoss):
    """Module form of :func:`charbonnier_loss`.

    Example:
        >>> CharbonnierLoss(eps=3.0)(torch.tensor([4.0]), torch.zeros(1))
        tensor(2.)
    """

    def __init__(self, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return charbonnier_loss(input, target, self.eps, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"


class QuantileLoss(_RegressionLoss):
    """Module form of :func:`quantile_loss` (one quantile or several).

    Example:
        >>> QuantileLoss(quantile=0.9)(torch.tensor([0.0]), torch.tensor([2.0]))
        tensor(1.8000)
    """

    def __init__(self, quantile: float | Sequence[float] = 0.5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        qs = _as_quantiles(quantile)
        self.quantile: float | list[float] = (
            qs[0] if isinstance(quantile, (int, float)) and not isinstance(quantile, bool) else list(qs)
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return quantile_loss(input, target, self.quantile, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"quantile={self.quantile}, {super().extra_repr()}"


_FAMILY = "regression"
register(
    "huber",
    HuberLoss,
    family=_FAMILY,
    functional=huber_loss,
    source="Huber 1964",
    notes="true Huber; `smooth_l1(beta=d)` is Huber/d",
)
register(
    "smooth_l1",
    SmoothL1Loss,
    family=_FAMILY,
    functional=smooth_l1_loss,
    source="Girshick 2015 (Fast R-CNN)",
    notes="beta=0 is L1",
)
register(
    "log_cosh",
    LogCoshLoss,
    family=_FAMILY,
    functional=log_cosh_loss,
    source="-",
    notes="overflow-free for any error size",
)
register(
    "charbonnier",
    CharbonnierLoss,
    family=_FAMILY,
    functional=charbonnier_loss,
    source="Charbonnier et al. 1994",
    notes="pseudo-Huber, zero at 0",
    aliases=("pseudo_huber",),
)
register(
    "quantile",
    QuantileLoss,
    family=_FAMILY,
    functional=quantile_loss,
    source="Koenker & Bassett 1978",
    notes="pinball; one or several quantiles",
    aliases=("pinball",),
)
