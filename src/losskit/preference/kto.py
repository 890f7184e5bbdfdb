"""KTO (Ethayarajh et al. 2024): unpaired desirable / undesirable completions, batch KL reference point."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import (
    LossTypeError,
    LossValueError,
    check_number,
    check_same_device,
    check_same_shape,
    check_tensor,
)
from .._reduction import Normalizer, check_normalizer, reduce_loss
from ..distributed import Group
from ._common import (
    Baseline,
    Metrics,
    _as_scalar,
    _batch_mean,
    _check_beta,
    _check_reduction_args,
    _check_sequences,
    _mean,
    _non_finite_guard,
    _PreferenceLoss,
    _Terms,
)


def _kto_kl(
    ref_like: torch.Tensor,
    policy_kl_logps: torch.Tensor | None,
    ref_kl_logps: torch.Tensor | None,
    kl: Baseline,
    gather_distributed: bool,
    group: Group,
) -> torch.Tensor:
    """KTO's reference point ``z``: detached, clamped at 0, a 0-d tensor in ``ref_like``'s dtype."""
    if kl is not None:
        if policy_kl_logps is not None or ref_kl_logps is not None:
            raise LossValueError("kl is given, so policy_kl_logps and ref_kl_logps must be None")
        raw = _as_scalar("kl", kl, ref_like)
        return _non_finite_guard(raw.clamp_min(0.0), raw)
    if policy_kl_logps is None or ref_kl_logps is None:
        missing = "policy_kl_logps" if policy_kl_logps is None else "ref_kl_logps"
        raise LossValueError(
            f"{missing} is None: KTO needs the log-probs of mismatched completions under the policy and the "
            "reference (policy_kl_logps, ref_kl_logps) or a precomputed kl="
        )
    pk, rk = _check_sequences(("policy_kl_logps", policy_kl_logps), ("ref_kl_logps", ref_kl_logps))
    check_same_device(("policy_logps", ref_like), ("policy_kl_logps", pk))
    raw = _batch_mean(pk - rk, gather_distributed, group).to(ref_like.dtype)
    return _non_finite_guard(raw.clamp_min(0.0), raw)  # a -inf mean is not a KL of 0


def _kto_terms(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    policy_kl_logps: torch.Tensor | None,
    ref_kl_logps: torch.Tensor | None,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    kl: Baseline,
    gather_distributed: bool,
    group: Group,
) -> _Terms:
    p, r = _check_sequences(("policy_logps", policy_logps), ("ref_logps", ref_logps))
    check_tensor("desirable", desirable)
    if desirable.dtype != torch.bool:
        raise LossTypeError(
            f"desirable must be a bool tensor (True = desirable completion), got dtype {desirable.dtype}"
        )
    check_same_shape("desirable", desirable, "policy_logps", policy_logps)
    check_same_device(("policy_logps", policy_logps), ("desirable", desirable))
    z = _kto_kl(p, policy_kl_logps, ref_kl_logps, kl, gather_distributed, group)
    rewards = beta * (p - r)
    x = rewards - beta * z
    # desirable: w_D (1 - sigmoid(x)) = w_D sigmoid(-x); undesirable: w_U (1 - sigmoid(-x)) = w_U sigmoid(x)
    loss = torch.where(desirable, desirable_weight * torch.sigmoid(-x), undesirable_weight * torch.sigmoid(x))
    loss = _non_finite_guard(loss, p, r, z)

    def metrics() -> Metrics:
        rw, d = rewards.detach(), desirable
        nd, nu = d.sum(), (~d).sum()
        one = torch.ones((), dtype=rw.dtype, device=rw.device)
        chosen = torch.where(d, rw, 0.0).sum() / torch.maximum(nd.to(rw.dtype), one)
        rejected = torch.where(d, 0.0, rw).sum() / torch.maximum(nu.to(rw.dtype), one)
        correct = torch.where(d, x.detach() > 0, x.detach() < 0)
        return {
            "chosen_rewards": chosen,
            "rejected_rewards": rejected,
            "reward_accuracy": _mean(correct.to(rw.dtype)),
            "reward_margin": chosen - rejected,
            "kl": z.detach(),
            "num_desirable": nd.to(rw.dtype),
            "num_undesirable": nu.to(rw.dtype),
        }

    return _Terms(loss, metrics)


def _check_kto_options(
    beta: Any, desirable_weight: Any, undesirable_weight: Any
) -> tuple[float, float, float]:
    b = _check_beta(beta)
    wd = float(check_number("desirable_weight", desirable_weight, low=0.0, high=math.inf, high_open=True))
    wu = float(check_number("undesirable_weight", undesirable_weight, low=0.0, high=math.inf, high_open=True))
    return b, wd, wu


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    policy_kl_logps: torch.Tensor | None = None,
    ref_kl_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    reduction: str = "mean",
    *,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: Baseline = None,
    gather_distributed: bool = False,
    group: Group = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on unpaired, labelled completions.

    With :math:`r = \log\pi(y|x) - \log\pi_{ref}(y|x)` and the reference point
    :math:`z = \max\big(0, \operatorname{mean}_j [\log\pi(y'_j|x_j) - \log\pi_{ref}(y'_j|x_j)]\big)`,
    a batch estimate of :math:`\mathrm{KL}(\pi\,\|\,\pi_{ref})` from *mismatched* pairs (each prompt
    with another row's completion), detached:

    .. math::
        \ell(x, y) = \begin{cases}
            \lambda_D\,\big(1 - \sigma(\beta (r - z))\big) & y \text{ desirable} \\
            \lambda_U\,\big(1 - \sigma(\beta (z - r))\big) & y \text{ undesirable}
        \end{cases}

    Conventions: **summed** completion log-probs; ``beta`` scales :math:`r - z` (implicit reward
    :math:`\beta r`). ``'mean'`` is the plain mean over all ``B`` rows (TRL's). The paper suggests
    weights with :math:`\lambda_D n_D / (\lambda_U n_U) \in [1, 4/3]`.

    The KL estimate is a batch-level quantity. Under DDP either pass ``gather_distributed=True``
    (``z`` is then the mean over every rank's mismatched rows, one all-reduce: exactly the
    single-process value on the concatenated batch; TRL averages the per-rank means, the same only
    for equal per-rank sizes), or compute it yourself and pass ``kl=`` (a number or a one-element
    tensor; it is detached and clamped at 0), in which case the KL log-probs are not needed.

    Args:
        policy_logps, ref_logps: ``(B,)`` summed log-probs of each completion under the policy
            (differentiable) and the reference.
        desirable: ``(B,)`` bool, ``True`` for desirable completions.
        policy_kl_logps, ref_kl_logps: ``(M,)`` log-probs of the mismatched completions (``M`` may
            differ from ``B``; an empty KL batch gives ``z = 0``).
        beta: ``> 0``. desirable_weight, undesirable_weight: :math:`\lambda_D, \lambda_U \ge 0`.
        kl: precomputed reference point instead of the KL log-probs.
        gather_distributed: average the KL estimate over every rank (a collective).
        group: process group for ``gather_distributed``.
        reduction: ``'none' | 'mean' | 'sum'``. normalizer: see :mod:`losskit._reduction`.

    Example:
        >>> lp = torch.tensor([-4.0, -6.0])
        >>> kto_loss(lp, lp, torch.tensor([True, False]), lp, lp)  # r = z = 0: 1 - sigmoid(0)
        tensor(0.5000)
        >>> kto_loss(lp, lp, torch.tensor([True, False]), kl=0.0, desirable_weight=2.0, reduction="none")
        tensor([1.0000, 0.5000])
    """
    b, wd, wu = _check_kto_options(beta, desirable_weight, undesirable_weight)
    _check_reduction_args(reduction, normalizer)
    terms = _kto_terms(
        policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, b, wd, wu, kl,
        bool(gather_distributed), group,
    )  # fmt: skip
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class KTOLoss(_PreferenceLoss):
    r"""Module form of :func:`kto_loss`; :attr:`last_metrics` holds ``chosen_rewards`` /
    ``rejected_rewards`` (means of :math:`\beta r` over the desirable / undesirable rows, 0 if there
    are none), ``reward_margin`` (their difference), ``reward_accuracy`` (fraction of rows on the
    right side of the reference point: :math:`r > z` when desirable, :math:`r < z` otherwise),
    ``kl`` (the :math:`z` used), ``num_desirable`` and ``num_undesirable``.

    Example:
        >>> loss_fn = KTOLoss(beta=0.1)
        >>> lp = torch.tensor([-4.0, -6.0])
        >>> loss_fn(lp, lp, torch.tensor([True, False]), lp, lp)
        tensor(0.5000)
        >>> loss_fn.last_metrics["kl"]
        tensor(0.)
    """

    def __init__(
        self,
        beta: float = 0.1,
        *,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        gather_distributed: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.beta, self.desirable_weight, self.undesirable_weight = _check_kto_options(
            beta, desirable_weight, undesirable_weight
        )
        self.gather_distributed = bool(gather_distributed)

    def forward(
        self,
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor,
        desirable: torch.Tensor,
        policy_kl_logps: torch.Tensor | None = None,
        ref_kl_logps: torch.Tensor | None = None,
        *,
        kl: Baseline = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _kto_terms(
            policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, self.beta,
            self.desirable_weight, self.undesirable_weight, kl, self.gather_distributed, None,
        )  # fmt: skip
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, desirable_weight={self.desirable_weight}, "
            f"undesirable_weight={self.undesirable_weight}, reduction={self.reduction!r}"
        )
