r"""Robust M-estimators: Welsch, Cauchy, Geman-McClure and Barron's general robust loss.

All are the special cases of one family (Barron 2019, "A General and Adaptive Robust Loss Function"):

.. math::
    \rho(x, \alpha, c) = \frac{|\alpha - 2|}{\alpha}
    \left(\Big(\frac{(x/c)^2}{|\alpha - 2|} + 1\Big)^{\alpha/2} - 1\right)

with the limits ``alpha = 2``: :math:`\tfrac12 (x/c)^2` (L2), ``alpha = 0``:
:math:`\log(\tfrac12 (x/c)^2 + 1)` (Cauchy / Lorentzian), ``alpha = -inf``:
:math:`1 - \exp(-\tfrac12 (x/c)^2)` (Welsch / Leclerc); ``alpha = 1`` is the pseudo-Huber /
Charbonnier loss :math:`\sqrt{(x/c)^2 + 1} - 1`, ``alpha = -2`` Geman-McClure
:math:`2 (x/c)^2 / ((x/c)^2 + 4)`. Every member is ``~ (x/c)^2 / 2`` for small residuals; the
classic forms with a ``c^2 / 2`` prefactor (e.g. Welsch ``c^2/2 (1 - exp(-(x/c)^2))``) are
``c'^2 * loss`` with ``c' = c / sqrt(2)``. For ``alpha < 0`` the loss is bounded: outliers get a
vanishing gradient.

``x = input - target``. Arguments, reductions, ``weight`` / ``mask`` / ``normalizer`` as the other
regression losses; half-precision inputs are computed in float32.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import nn

from .._checks import LossValueError, can_read_values, check_floating, check_number
from .._reduction import Normalizer
from ..registry import register
from .basic import _finish, _prepare, _RegressionLoss

__all__ = [
    "CauchyLoss",
    "GemanMcClureLoss",
    "GeneralRobustLoss",
    "WelschLoss",
    "cauchy_loss",
    "geman_mcclure_loss",
    "general_robust_loss",
    "welsch_loss",
]

Scalar = Union[float, torch.Tensor]


def _check_alpha(alpha: Scalar) -> None:
    if isinstance(alpha, torch.Tensor):
        check_floating("alpha", alpha)
        if can_read_values(alpha) and alpha.numel() and bool((alpha.detach() == math.inf).any()):
            raise LossValueError(
                "alpha must be < inf (alpha = +inf is not supported), got a tensor holding inf"
            )
        return
    check_number("alpha", alpha)
    if float(alpha) == math.inf:
        raise LossValueError("alpha must be < inf (alpha = +inf is not supported), got inf")


def _check_scale(scale: Scalar) -> None:
    if isinstance(scale, torch.Tensor):
        check_floating("scale", scale)
        if can_read_values(scale) and scale.numel() and not bool((scale.detach() > 0).all()):
            raise LossValueError("scale must be > 0 everywhere")
        return
    check_number("scale", scale, low=0.0, low_open=True)


def _rho_float(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """``rho`` for a Python ``alpha``: only the formula of that ``alpha`` is evaluated."""
    if alpha == 2.0:
        return 0.5 * s
    if alpha == 0.0:
        return torch.log1p(0.5 * s)
    if alpha == -math.inf:
        return -torch.expm1(-0.5 * s)
    if alpha == -2.0:
        return 2.0 * s / (s + 4.0)
    eps = torch.finfo(s.dtype).eps
    beta = max(abs(alpha - 2.0), eps)
    a = math.copysign(max(abs(alpha), eps), alpha)
    # (1 + s/beta)^(a/2) - 1 as expm1(a/2 log1p(s/beta)): no cancellation near alpha = 0
    return (beta / a) * torch.expm1(0.5 * a * torch.log1p(s / beta))


def _rho_tensor(s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``rho`` for a tensor ``alpha`` (broadcastable to ``s``, possibly learnable).

    Every branch is finite wherever it is not selected (its gradient there is then exactly zero), so
    no NaN from an unselected branch leaks into the gradients. At ``alpha = 0`` the value is the
    closed form and the ``alpha``-gradient its exact first-order term.
    """
    alpha = alpha.to(s.dtype)
    eps = torch.finfo(s.dtype).eps
    is_zero, is_two, is_neginf = alpha == 0, alpha == 2, alpha == -math.inf
    special = is_zero | is_two | is_neginf
    a_ok = torch.where(special, torch.ones_like(alpha), alpha)
    beta = (a_ok - 2.0).abs().clamp_min(eps)
    a = torch.where(a_ok >= 0, a_ok.abs().clamp_min(eps), -a_ok.abs().clamp_min(eps))
    general = (beta / a) * torch.expm1(0.5 * a * torch.log1p(s / beta))
    log_term = torch.log1p(0.5 * s)
    # d rho / d alpha at alpha = 0: -L/2 + L^2/4 + s / (2 (2 + s)), L = log(1 + s/2)
    slope = -0.5 * log_term + 0.25 * log_term * log_term + s / (2.0 * (2.0 + s))
    a0 = torch.where(is_zero, alpha, torch.zeros_like(alpha))
    zero = log_term + (a0 - a0.detach()) * slope
    out = torch.where(is_two, 0.5 * s, general)
    out = torch.where(is_zero, zero, out)
    return torch.where(is_neginf, -torch.expm1(-0.5 * s), out)


def _robust(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: Scalar,
    scale: Scalar,
    weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    reduction: str,
    normalizer: Normalizer,
) -> torch.Tensor:
    _check_alpha(alpha)
    _check_scale(scale)
    x, y = _prepare(input, target, weight, mask, reduction, normalizer)
    for name, t in (("alpha", alpha), ("scale", scale)):
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise LossValueError(f"{name} is on {t.device}, expected {x.device} like input")
    d = x - y
    c = scale.to(d.dtype) if isinstance(scale, torch.Tensor) else float(scale)
    s = (d / c) ** 2
    if isinstance(alpha, torch.Tensor):
        loss = _rho_tensor(s, alpha)
        bounded = True
    else:
        loss = _rho_float(s, float(alpha))
        bounded = float(alpha) < 0
    if bounded:
        # a bounded loss maps inf residuals to a finite value: keep them non-finite (0 * inf = nan)
        loss = loss + 0.0 * d
    if loss.shape != d.shape:
        raise LossValueError(
            f"alpha / scale broadcast the loss to shape {tuple(loss.shape)}, expected input's {tuple(d.shape)}"
        )
    return _finish(loss, reduction, weight, mask, normalizer)


def general_robust_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: Scalar = 1.0,
    scale: Scalar = 1.0,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Barron's general robust loss :math:`\rho(x, \alpha, c)` (Barron, CVPR 2019).

    .. math::
        \rho(x, \alpha, c) = \frac{|\alpha - 2|}{\alpha}
        \left(\Big(\frac{(x/c)^2}{|\alpha - 2|} + 1\Big)^{\alpha/2} - 1\right),\quad x = \text{input} - \text{target}

    ``alpha`` sets the shape (2: L2, 1: pseudo-Huber, 0: Cauchy, -2: Geman-McClure, -inf: Welsch;
    any value in ``[-inf, inf)``), ``scale`` (``c > 0``) the size of the quadratic bowl. Both may be
    tensors broadcastable to ``input`` (per-dimension shapes, learnable: see
    :class:`GeneralRobustLoss`). ``alpha = 0``, ``2`` and ``-inf`` take their exact limits; elsewhere the
    formula is evaluated as ``(b/a) expm1(a/2 log1p((x/c)^2 / b))`` with ``b = |alpha - 2|`` and
    ``a = alpha`` kept at least machine epsilon away from zero (the paper's reference formulation),
    which is accurate right up to the special points. The ``alpha``-gradient is exact everywhere
    except at ``alpha = 2`` (where it has a logarithmic singularity) and ``-inf`` (zero).
    ``alpha = +inf`` (``exp((x/c)^2 / 2) - 1``) is not supported.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 10.0])
        >>> general_robust_loss(x, torch.zeros(3), alpha=2.0, reduction="none")
        tensor([ 0.0000,  0.5000, 50.0000])
        >>> general_robust_loss(x, torch.zeros(3), alpha=1.0, reduction="none")  # sqrt(x^2 + 1) - 1
        tensor([0.0000, 0.4142, 9.0499])
    """
    return _robust(input, target, alpha, scale, weight, mask, reduction, normalizer)


def welsch_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    scale: Scalar = 1.0,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Welsch (Leclerc) loss :math:`1 - \exp(-\tfrac12 (x/c)^2)` (Dennis & Welsch 1978), bounded by 1.

    :func:`general_robust_loss` at ``alpha = -inf``; the classic ``c^2/2 (1 - exp(-(x/c)^2))`` is
    ``c^2 / 2 * welsch_loss(x, scale=c / sqrt(2))``.

    Example:
        >>> welsch_loss(torch.tensor([0.0, 1.0, 100.0]), torch.zeros(3), reduction="none")
        tensor([0.0000, 0.3935, 1.0000])
    """
    return _robust(input, target, -math.inf, scale, weight, mask, reduction, normalizer)


def cauchy_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    scale: Scalar = 1.0,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Cauchy (Lorentzian) loss :math:`\log(1 + \tfrac12 (x/c)^2)`, which grows like ``log |x|``.

    :func:`general_robust_loss` at ``alpha = 0``; the classic ``c^2/2 log(1 + (x/c)^2)`` is
    ``c^2 / 2 * cauchy_loss(x, scale=c / sqrt(2))``.

    Example:
        >>> cauchy_loss(torch.tensor([0.0, 2.0]), torch.zeros(2), reduction="none")  # log(3)
        tensor([0.0000, 1.0986])
    """
    return _robust(input, target, 0.0, scale, weight, mask, reduction, normalizer)


def geman_mcclure_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    scale: Scalar = 1.0,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Geman-McClure loss :math:`2 (x/c)^2 / ((x/c)^2 + 4)` (Geman & McClure 1985), bounded by 2.

    :func:`general_robust_loss` at ``alpha = -2``.

    Example:
        >>> geman_mcclure_loss(torch.tensor([0.0, 2.0]), torch.zeros(2), reduction="none")
        tensor([0., 1.])
    """
    return _robust(input, target, -2.0, scale, weight, mask, reduction, normalizer)


class _ScaledLoss(_RegressionLoss):
    _fn = staticmethod(welsch_loss)

    def __init__(self, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.scale = float(check_number("scale", scale, low=0.0, low_open=True))

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return type(self)._fn(input, target, self.scale, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, {super().extra_repr()}"


class WelschLoss(_ScaledLoss):
    """Module form of :func:`welsch_loss`.

    Example:
        >>> WelschLoss(scale=2.0)(torch.tensor([0.0]), torch.zeros(1))
        tensor(0.)
    """

    _fn = staticmethod(welsch_loss)


class CauchyLoss(_ScaledLoss):
    """Module form of :func:`cauchy_loss`.

    Example:
        >>> CauchyLoss()(torch.tensor([2.0]), torch.zeros(1))
        tensor(1.0986)
    """

    _fn = staticmethod(cauchy_loss)


class GemanMcClureLoss(_ScaledLoss):
    """Module form of :func:`geman_mcclure_loss`.

    Example:
        >>> GemanMcClureLoss()(torch.tensor([2.0]), torch.zeros(1))
        tensor(1.)
    """

    _fn = staticmethod(geman_mcclure_loss)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class GeneralRobustLoss(_RegressionLoss):
    """Module form of :func:`general_robust_loss`, with an optionally learnable shape and scale.

    Fixed: ``alpha`` and ``scale`` are stored (floats, or tensors as buffers). With
    ``learn_alpha=True``, ``alpha = lo + (hi - lo) * sigmoid(latent)`` is a parameter kept inside
    ``alpha_range`` (default ``(0.001, 1.999)``, Barron's adaptive range); ``learn_scale=True`` learns
    ``log(scale)``. Learned this way the loss alone drives ``alpha`` to its lower end (a smaller
    ``alpha`` never increases ``rho``): train ``alpha`` against a likelihood, or fix it.

    Example:
        >>> loss_fn = GeneralRobustLoss(alpha=0.0, scale=2.0)
        >>> loss_fn(torch.tensor([2.0]), torch.zeros(1))  # log(1 + 0.5 * (2 / 2)^2)
        tensor(0.4055)
        >>> learn = GeneralRobustLoss(alpha=1.0, learn_alpha=True)
        >>> round(float(learn.alpha.detach()), 4)
        1.0
    """

    # buffers, registered only for tensor values that are not learned
    alpha_value: torch.Tensor
    scale_value: torch.Tensor

    def __init__(
        self,
        alpha: Scalar = 1.0,
        scale: Scalar = 1.0,
        reduction: str = "mean",
        *,
        learn_alpha: bool = False,
        learn_scale: bool = False,
        alpha_range: tuple[float, float] = (0.001, 1.999),
    ) -> None:
        super().__init__(reduction)
        _check_alpha(alpha)
        _check_scale(scale)
        self.learn_alpha, self.learn_scale = bool(learn_alpha), bool(learn_scale)
        lo, hi = (float(v) for v in alpha_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise LossValueError(
                f"alpha_range must be finite (low, high) with low < high, got {alpha_range!r}"
            )
        self.alpha_range = (lo, hi)
        a = torch.as_tensor(alpha, dtype=torch.get_default_dtype()).clone()
        c = torch.as_tensor(scale, dtype=torch.get_default_dtype()).clone()
        if self.learn_alpha:
            if not bool(((a > lo) & (a < hi)).all()):
                raise LossValueError(
                    f"alpha must lie inside alpha_range {alpha_range!r} to be learned, got {alpha!r}"
                )
            self.alpha_latent = nn.Parameter(torch.logit((a - lo) / (hi - lo)))
        elif isinstance(alpha, torch.Tensor):
            self.register_buffer("alpha_value", a)
        else:
            self._alpha_float = float(alpha)
        if self.learn_scale:
            self.log_scale = nn.Parameter(c.log())
        elif isinstance(scale, torch.Tensor):
            self.register_buffer("scale_value", c)
        else:
            self._scale_float = float(scale)

    @property
    def alpha(self) -> Scalar:
        if self.learn_alpha:
            lo, hi = self.alpha_range
            return lo + (hi - lo) * torch.sigmoid(self.alpha_latent)
        return self.alpha_value if hasattr(self, "alpha_value") else self._alpha_float

    @property
    def scale(self) -> Scalar:
        if self.learn_scale:
            return self.log_scale.exp()
        return self.scale_value if hasattr(self, "scale_value") else self._scale_float

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return general_robust_loss(input, target, self.alpha, self.scale, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        alpha = (
            "learned"
            if self.learn_alpha
            else ("tensor" if hasattr(self, "alpha_value") else self._alpha_float)
        )
        scale = (
            "learned"
            if self.learn_scale
            else ("tensor" if hasattr(self, "scale_value") else self._scale_float)
        )
        return f"alpha={alpha}, scale={scale}, {super().extra_repr()}"


_FAMILY = "regression"
register(
    "welsch",
    WelschLoss,
    family=_FAMILY,
    functional=welsch_loss,
    source="Dennis & Welsch 1978; Barron 2019",
    notes="1 - exp(-(x/c)^2 / 2), bounded; general_robust at alpha=-inf",
)
register(
    "cauchy",
    CauchyLoss,
    family=_FAMILY,
    functional=cauchy_loss,
    source="Black & Anandan 1996; Barron 2019",
    notes="log(1 + (x/c)^2 / 2); general_robust at alpha=0",
    aliases=("lorentzian",),
)
register(
    "geman_mcclure",
    GemanMcClureLoss,
    family=_FAMILY,
    functional=geman_mcclure_loss,
    source="Geman & McClure 1985; Barron 2019",
    notes="2 (x/c)^2 / ((x/c)^2 + 4), bounded; general_robust at alpha=-2",
)
register(
    "general_robust",
    GeneralRobustLoss,
    family=_FAMILY,
    functional=general_robust_loss,
    source="Barron CVPR 2019",
    notes="shape alpha in [-inf, inf), scale c; exact limits at 0, 2, -inf; learnable alpha / scale",
    aliases=("barron",),
)
