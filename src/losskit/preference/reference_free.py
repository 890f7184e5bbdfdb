"""Reference-free pairwise losses: SimPO and ORPO on length-averaged log-probs, CPO on summed ones."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import (
    LossValueError,
    can_read_values,
    check_number,
)
from .._reduction import Normalizer, check_normalizer, reduce_loss
from ._common import (
    Metrics,
    _check_beta,
    _check_label_smoothing,
    _check_optional_sequence,
    _check_reduction_args,
    _check_sequences,
    _log1mexp,
    _mean,
    _non_finite_guard,
    _pair_metrics,
    _PreferenceLoss,
    _sigmoid_loss,
    _Terms,
)


def _chosen_nll(chosen: torch.Tensor, chosen_nll: torch.Tensor | None) -> torch.Tensor:
    """The NLL term of CPO / ORPO: ``chosen_nll`` if given, else ``-chosen`` (the chosen log-probs)."""
    nll = _check_optional_sequence("chosen_nll", chosen_nll, "policy_chosen_logps", chosen)
    return -chosen if nll is None else nll


def _reference_free_metrics(beta: float, chosen: torch.Tensor, rejected: torch.Tensor) -> Metrics:
    out = _pair_metrics(beta * chosen, beta * rejected)
    out["chosen_logps"] = _mean(chosen)
    out["rejected_logps"] = _mean(rejected)
    return out


def _simpo_terms(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> _Terms:
    c, r = _check_sequences(
        ("policy_chosen_logps", policy_chosen_logps), ("policy_rejected_logps", policy_rejected_logps)
    )
    loss = _non_finite_guard(_sigmoid_loss(beta * (c - r) - gamma, label_smoothing), c, r)
    return _Terms(loss, lambda: _reference_free_metrics(beta, c, r))


def _check_simpo_options(beta: Any, gamma: Any, label_smoothing: Any) -> tuple[float, float, float]:
    b = _check_beta(beta)
    g = float(check_number("gamma", gamma, low=0.0, high=math.inf, high_open=True))
    return b, g, _check_label_smoothing(label_smoothing)


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    *,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""SimPO: simple preference optimisation with a reference-free reward (Meng et al. 2024).

    .. math::
        \ell = -\log\sigma\big(\beta\,(\bar{\ell}_w - \bar{\ell}_l) - \gamma\big),\qquad
        \bar{\ell} = \tfrac{1}{|y|}\textstyle\sum_t \log\pi(y_t|x, y_{<t})

    (with ``label_smoothing = eps``: :math:`-(1-\epsilon)\log\sigma(z) - \epsilon\log\sigma(-z)`).

    Conventions: the inputs are **length-averaged** log-probs (no reference model); the implicit
    reward is :math:`\beta\bar{\ell}` and ``gamma`` is the target reward margin, absolute (the paper's
    recipes state it as ``gamma / beta`` ratios of 0.3-0.8 with ``beta`` of 2-10; TRL's CPOTrainer
    with ``loss_type='simpo'`` takes ``simpo_gamma``, the same absolute :math:`\gamma`, with its CPO
    default ``beta = 0.1``). Defaults here are the paper's ``beta = 2``, ``gamma = 0.5``.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` length-averaged log-probs.
        beta: ``> 0``. gamma: ``>= 0``. label_smoothing: in ``[0, 0.5]``.
        reduction: ``'none' | 'mean' | 'sum'``. normalizer: see :mod:`losskit._reduction`.

    Example:
        >>> avg = torch.tensor([-1.0, -2.0])
        >>> simpo_loss(avg, avg, beta=2.0, gamma=0.0)  # log 2
        tensor(0.6931)
    """
    b, g, eps = _check_simpo_options(beta, gamma, label_smoothing)
    _check_reduction_args(reduction, normalizer)
    terms = _simpo_terms(policy_chosen_logps, policy_rejected_logps, b, g, eps)
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class SimPOLoss(_PreferenceLoss):
    r"""Module form of :func:`simpo_loss`; :attr:`last_metrics` holds ``chosen_rewards`` /
    ``rejected_rewards`` (means of :math:`\beta\bar{\ell}`), ``reward_accuracy``, ``reward_margin``,
    ``chosen_logps`` / ``rejected_logps``.

    Example:
        >>> loss_fn = SimPOLoss(beta=2.0, gamma=0.0)
        >>> loss_fn(torch.tensor([-1.0]), torch.tensor([-1.0]))
        tensor(0.6931)
    """

    def __init__(
        self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, *, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.beta, self.gamma, self.label_smoothing = _check_simpo_options(beta, gamma, label_smoothing)

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        *,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _simpo_terms(
            policy_chosen_logps, policy_rejected_logps, self.beta, self.gamma, self.label_smoothing
        )
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, gamma={self.gamma}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
        )


def _cpo_terms(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float,
    alpha: float,
    chosen_nll: torch.Tensor | None,
) -> _Terms:
    c, r = _check_sequences(
        ("policy_chosen_logps", policy_chosen_logps), ("policy_rejected_logps", policy_rejected_logps)
    )
    nll = _chosen_nll(c, chosen_nll)
    loss = _non_finite_guard(_sigmoid_loss(beta * (c - r), label_smoothing) + alpha * nll, c, r, nll)

    def metrics() -> Metrics:
        out = _reference_free_metrics(beta, c, r)
        out["nll"] = _mean(nll)
        return out

    return _Terms(loss, metrics)


def _check_cpo_options(beta: Any, label_smoothing: Any, alpha: Any) -> tuple[float, float, float]:
    b = _check_beta(beta)
    eps = _check_label_smoothing(label_smoothing)
    a = float(check_number("alpha", alpha, low=0.0, high=math.inf, high_open=True))
    return b, eps, a


def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    *,
    alpha: float = 1.0,
    chosen_nll: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Contrastive Preference Optimization (Xu et al. 2024): DPO without the reference, plus NLL.

    .. math::
        \ell = -\log\sigma\big(\beta\,(\log\pi(y_w|x) - \log\pi(y_l|x))\big)
            + \alpha\,\mathrm{NLL}(y_w),\qquad \mathrm{NLL}(y_w) = -\log\pi(y_w|x)

    (with ``label_smoothing = eps`` the first term is smoothed as in :func:`dpo_loss`).

    Conventions: the inputs are **summed** completion log-probs (the paper's
    :math:`\log\pi_\theta(y|x)`); ``beta`` scales the implicit reward :math:`\beta\log\pi`;
    ``alpha`` weighs the NLL term (1 in the paper, TRL's ``cpo_alpha``). By default the NLL is
    ``-policy_chosen_logps`` per pair. TRL instead uses the token-mean cross-entropy of the chosen
    completions over the whole batch; to reproduce it (or any other NLL) pass ``chosen_nll``, a
    ``(B,)`` tensor whose mean is the term you want (e.g. per-pair summed NLL times ``B / total
    chosen tokens``).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` summed log-probs under the policy.
        beta: ``> 0``. label_smoothing: in ``[0, 0.5]``. alpha: NLL weight ``>= 0``.
        chosen_nll: optional ``(B,)`` NLL term replacing ``-policy_chosen_logps``.
        reduction: ``'none' | 'mean' | 'sum'``. normalizer: see :mod:`losskit._reduction`.

    Example:
        >>> lp = torch.tensor([-3.0])
        >>> cpo_loss(lp, lp, alpha=0.0)  # log 2
        tensor(0.6931)
        >>> cpo_loss(lp, lp, alpha=1.0)  # log 2 + 3
        tensor(3.6931)
    """
    b, eps, a = _check_cpo_options(beta, label_smoothing, alpha)
    _check_reduction_args(reduction, normalizer)
    terms = _cpo_terms(policy_chosen_logps, policy_rejected_logps, b, eps, a, chosen_nll)
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class CPOLoss(_PreferenceLoss):
    r"""Module form of :func:`cpo_loss`; :attr:`last_metrics` holds the reward metrics of
    :class:`SimPOLoss` (rewards :math:`\beta\log\pi`) and ``nll`` (mean NLL term).

    Example:
        >>> CPOLoss(alpha=0.0)(torch.tensor([-3.0]), torch.tensor([-3.0]))
        tensor(0.6931)
    """

    def __init__(
        self, beta: float = 0.1, label_smoothing: float = 0.0, *, alpha: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.beta, self.label_smoothing, self.alpha = _check_cpo_options(beta, label_smoothing, alpha)

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        *,
        chosen_nll: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _cpo_terms(
            policy_chosen_logps,
            policy_rejected_logps,
            self.beta,
            self.label_smoothing,
            self.alpha,
            chosen_nll,
        )
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, label_smoothing={self.label_smoothing}, alpha={self.alpha}, "
            f"reduction={self.reduction!r}"
        )


def _check_log_probs(name: str, x: torch.Tensor) -> None:
    """A value check: log-probabilities are ``<= 0`` (a NaN passes and propagates)."""
    if x.numel() > 0 and can_read_values(x):
        hi = float(x.detach().max())
        if hi > 0:
            raise LossValueError(f"{name} must be log-probabilities (<= 0), got a maximum of {hi:g}")


def _orpo_terms(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    chosen_nll: torch.Tensor | None,
) -> _Terms:
    c, r = _check_sequences(
        ("policy_chosen_logps", policy_chosen_logps), ("policy_rejected_logps", policy_rejected_logps)
    )
    _check_log_probs("policy_chosen_logps", c)
    _check_log_probs("policy_rejected_logps", r)
    nll = _chosen_nll(c, chosen_nll)
    # log odds(p) = log p - log(1 - p); an average log-prob of exactly 0 (p = 1) is moved to -eps so
    # that log(1 - p) and its gradient stay finite
    top = -torch.finfo(c.dtype).eps
    cc, rc = c.clamp(max=top), r.clamp(max=top)
    log_odds = (cc - rc) - (_log1mexp(cc) - _log1mexp(rc))
    ratio = F.logsigmoid(log_odds)
    loss = _non_finite_guard(nll - beta * ratio, c, r)

    def metrics() -> Metrics:
        out = _reference_free_metrics(beta, c, r)
        out["nll"] = _mean(nll)
        out["log_odds_ratio"] = _mean(ratio)
        out["log_odds_chosen"] = _mean(log_odds)
        return out

    return _Terms(loss, metrics)


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    reduction: str = "mean",
    *,
    chosen_nll: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""ORPO: monolithic preference optimisation with an odds ratio (Hong et al. 2024).

    .. math::
        \ell = \mathrm{NLL}(y_w) - \beta\log\sigma\Big(\log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)}\Big),
        \qquad \log\mathrm{odds}(y) = \bar{\ell}(y) - \log\big(1 - e^{\bar{\ell}(y)}\big)

    with :math:`\bar{\ell}` the **length-averaged** log-prob (the paper's
    :math:`P_\theta(y|x) = \exp \bar{\ell}`) and :math:`\mathrm{NLL}(y_w) = -\bar{\ell}(y_w)` by
    default. ``log(1 - e^x)`` is computed as ``log1mexp`` (accurate for x near 0 and for very negative
    x); an average log-prob of exactly 0 is treated as ``-eps`` of its dtype. Inputs above 0 are an
    error (value check).

    Conventions: ``beta`` is the paper's :math:`\lambda` weighing the odds-ratio term (TRL's
    ``beta``, default 0.1); the implicit rewards reported are :math:`\beta\bar{\ell}` (as TRL logs
    them). TRL's NLL is the token-mean cross-entropy of the chosen completions over the whole batch,
    the paper's (and the default here) the per-pair average; pass ``chosen_nll`` (``(B,)``) to use
    another.

    Example:
        >>> avg = torch.tensor([-0.5, -1.0])
        >>> orpo_loss(avg, avg, beta=1.0)  # equal odds: NLL + log 2 = 0.75 + 0.6931
        tensor(1.4431)
    """
    b = _check_beta(beta)
    _check_reduction_args(reduction, normalizer)
    terms = _orpo_terms(policy_chosen_logps, policy_rejected_logps, b, chosen_nll)
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class ORPOLoss(_PreferenceLoss):
    r"""Module form of :func:`orpo_loss`; :attr:`last_metrics` holds the reward metrics of
    :class:`SimPOLoss`, ``nll``, ``log_odds_ratio`` (mean of :math:`\log\sigma(\log OR)`) and
    ``log_odds_chosen`` (mean log odds ratio).

    Example:
        >>> ORPOLoss(beta=1.0)(torch.tensor([-0.5]), torch.tensor([-0.5]))  # 0.5 + log 2
        tensor(1.1931)
    """

    def __init__(self, beta: float = 0.1, *, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = _check_beta(beta)

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        *,
        chosen_nll: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _orpo_terms(policy_chosen_logps, policy_rejected_logps, self.beta, chosen_nll)
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"
