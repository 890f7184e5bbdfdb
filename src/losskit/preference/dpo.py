"""DPO family on summed sequence log-probs (Rafailov et al. 2023) and its variants: conservative, robust,
hinge, IPO, EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP, and MPO-style weighted sums."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import (
    LossTypeError,
    LossValueError,
    check_choice,
    check_number,
)
from .._reduction import Normalizer, check_normalizer, reduce_loss
from ..distributed import Group
from ._common import (
    Baseline,
    Metrics,
    _as_scalar,
    _batch_mean,
    _check_beta,
    _check_label_smoothing,
    _check_reduction_args,
    _check_sequences,
    _mean,
    _non_finite_guard,
    _pair_metrics,
    _PreferenceLoss,
    _sigmoid_loss,
    _Terms,
)

#: The ``loss_type`` values :func:`dpo_loss` accepts (alone or as a list, for MPO-style sums).
DPO_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "apo_zero",
    "apo_down",
    "discopop",
)
# loss types whose value uses label_smoothing (the others ignore it)
_SMOOTHED = ("sigmoid", "robust", "exo_pair", "aot", "aot_pair")
_EXO_DEFAULT_EPS = 1e-3


def _parse_loss_types(loss_type: Any, loss_weights: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``loss_type`` (a name or a list of names) and ``loss_weights`` as two tuples of equal length."""
    if isinstance(loss_type, str):
        types: tuple[str, ...] = (check_choice("loss_type", loss_type, DPO_LOSS_TYPES),)
    elif isinstance(loss_type, (list, tuple)):
        if len(loss_type) == 0:
            raise LossValueError(f"loss_type must name at least one of {', '.join(DPO_LOSS_TYPES)}, got []")
        for i, t in enumerate(loss_type):
            if not isinstance(t, str):
                raise LossTypeError(f"loss_type[{i}] must be a string, got {type(t).__name__} {t!r}")
            check_choice(f"loss_type[{i}]", t, DPO_LOSS_TYPES)
        types = tuple(loss_type)
    else:
        raise LossTypeError(
            f"loss_type must be a string or a list of strings, got {type(loss_type).__name__} {loss_type!r}"
        )
    if loss_weights is None:
        return types, (1.0,) * len(types)
    if isinstance(loss_weights, torch.Tensor):
        loss_weights = loss_weights.reshape(-1).tolist()
    if not isinstance(loss_weights, (list, tuple)):
        raise LossTypeError(
            f"loss_weights must be a list of numbers (one per loss_type), got {type(loss_weights).__name__}"
        )
    if len(loss_weights) != len(types):
        raise LossValueError(
            f"loss_weights has {len(loss_weights)} entries, expected {len(types)} (one per loss_type "
            f"{list(types)})"
        )
    weights = tuple(
        float(check_number(f"loss_weights[{i}]", w, low=0.0, high=math.inf, high_open=True))
        for i, w in enumerate(loss_weights)
    )
    return types, weights


@dataclass
class _DPOInputs:
    chosen_logratios: torch.Tensor  # log pi(y_w|x) - log pi_ref(y_w|x)
    rejected_logratios: torch.Tensor  # log pi(y_l|x) - log pi_ref(y_l|x)
    policy_logratios: torch.Tensor  # log pi(y_w|x) - log pi(y_l|x)
    ref_logratios: torch.Tensor  # log pi_ref(y_w|x) - log pi_ref(y_l|x)
    beta: float
    label_smoothing: float
    discopop_tau: float
    baseline: Callable[[], torch.Tensor]  # bco_pair's reward baseline delta (computed on demand)

    @property
    def logits(self) -> torch.Tensor:
        """``h = (log pi_w - log pi_l) - (log ref_w - log ref_l)``, the DPO margin (unscaled)."""
        return self.policy_logratios - self.ref_logratios


def _dpo_sigmoid(t: _DPOInputs) -> torch.Tensor:
    return _sigmoid_loss(t.beta * t.logits, t.label_smoothing)


def _dpo_robust(t: _DPOInputs) -> torch.Tensor:
    z, eps = t.beta * t.logits, t.label_smoothing
    return ((1.0 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def _dpo_hinge(t: _DPOInputs) -> torch.Tensor:
    return torch.relu(1.0 - t.beta * t.logits)


def _dpo_ipo(t: _DPOInputs) -> torch.Tensor:
    return (t.logits - 1.0 / (2.0 * t.beta)) ** 2


def _dpo_exo_pair(t: _DPOInputs) -> torch.Tensor:
    # KL(p_theta || p_eps) between the policy's pairwise preference sigmoid(z) and the labels (1-eps, eps)
    z, eps = t.beta * t.logits, t.label_smoothing or _EXO_DEFAULT_EPS
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )


def _dpo_nca_pair(t: _DPOInputs) -> torch.Tensor:
    rc, rr = t.beta * t.chosen_logratios, t.beta * t.rejected_logratios
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


def _dpo_bco_pair(t: _DPOInputs) -> torch.Tensor:
    delta = t.baseline()
    rc, rr = t.beta * t.chosen_logratios, t.beta * t.rejected_logratios
    return -F.logsigmoid(rc - delta) - F.logsigmoid(delta - rr)


def _dpo_sppo_hard(t: _DPOInputs) -> torch.Tensor:
    half = 0.5 / t.beta
    return (t.chosen_logratios - half) ** 2 + (t.rejected_logratios + half) ** 2


def _dpo_aot(t: _DPOInputs) -> torch.Tensor:
    delta = torch.sort(t.policy_logratios).values - torch.sort(t.ref_logratios).values
    return _sigmoid_loss(t.beta * delta, t.label_smoothing)


def _dpo_aot_pair(t: _DPOInputs) -> torch.Tensor:
    delta = torch.sort(t.chosen_logratios).values - torch.sort(t.rejected_logratios).values
    return _sigmoid_loss(t.beta * delta, t.label_smoothing)


def _dpo_apo_zero(t: _DPOInputs) -> torch.Tensor:
    # 1 - sigmoid(x) == sigmoid(-x)
    return torch.sigmoid(-t.beta * t.chosen_logratios) + torch.sigmoid(t.beta * t.rejected_logratios)


def _dpo_apo_down(t: _DPOInputs) -> torch.Tensor:
    return torch.sigmoid(t.beta * t.chosen_logratios) + torch.sigmoid(-t.beta * t.logits)


def _dpo_discopop(t: _DPOInputs) -> torch.Tensor:
    z = t.beta * t.logits
    m = torch.sigmoid(z / t.discopop_tau)
    # exp(-z) * m written as exp(-z + log m): no inf * 0 when z is very negative
    return -F.logsigmoid(z) * (1.0 - m) + torch.exp(F.logsigmoid(z / t.discopop_tau) - z)


_DPO_LOSSES: dict[str, Callable[[_DPOInputs], torch.Tensor]] = {
    "sigmoid": _dpo_sigmoid,
    "robust": _dpo_robust,
    "hinge": _dpo_hinge,
    "ipo": _dpo_ipo,
    "exo_pair": _dpo_exo_pair,
    "nca_pair": _dpo_nca_pair,
    "bco_pair": _dpo_bco_pair,
    "sppo_hard": _dpo_sppo_hard,
    "aot": _dpo_aot,
    "aot_pair": _dpo_aot_pair,
    "apo_zero": _dpo_apo_zero,
    "apo_down": _dpo_apo_down,
    "discopop": _dpo_discopop,
}


def _dpo_terms(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_types: tuple[str, ...],
    loss_weights: tuple[float, ...],
    label_smoothing: float,
    discopop_tau: float,
    reward_baseline: Baseline,
    gather_distributed: bool,
    group: Group,
    update_baseline: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> _Terms:
    pc, pr, rc, rr = _check_sequences(
        ("policy_chosen_logps", policy_chosen_logps),
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    )
    chosen_lr, rejected_lr = pc - rc, pr - rr
    metrics_extra: Metrics = {}

    def baseline() -> torch.Tensor:
        if reward_baseline is not None:
            delta = _as_scalar("reward_baseline", reward_baseline, pc)
        else:
            rewards = torch.cat([chosen_lr, rejected_lr]) * beta
            delta = _batch_mean(rewards, gather_distributed, group)
            if update_baseline is not None:
                delta = update_baseline(delta)
        metrics_extra["reward_baseline"] = delta.detach()
        return delta.detach()

    inputs = _DPOInputs(
        chosen_lr, rejected_lr, pc - pr, rc - rr, beta, label_smoothing, discopop_tau, baseline
    )
    loss: torch.Tensor | None = None
    for name, w in zip(loss_types, loss_weights):
        term = _DPO_LOSSES[name](inputs)
        term = term if w == 1.0 else w * term
        loss = term if loss is None else loss + term

    def metrics() -> Metrics:
        out = _pair_metrics(beta * chosen_lr, beta * rejected_lr)
        out["chosen_logps"] = _mean(pc)
        out["rejected_logps"] = _mean(pr)
        out.update(metrics_extra)
        return out

    assert loss is not None  # _parse_loss_types returns at least one type
    return _Terms(_non_finite_guard(loss, pc, pr, rc, rr), metrics)


def _check_dpo_options(
    beta: Any, loss_type: Any, loss_weights: Any, label_smoothing: Any, discopop_tau: Any
) -> tuple[float, tuple[str, ...], tuple[float, ...], float, float]:
    b = _check_beta(beta)
    types, weights = _parse_loss_types(loss_type, loss_weights)
    eps = _check_label_smoothing(label_smoothing, types)
    tau = float(check_number("discopop_tau", discopop_tau, low=0.0, low_open=True))
    return b, types, weights, eps, tau


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    *,
    loss_weights: Sequence[float] | None = None,
    discopop_tau: float = 0.05,
    reward_baseline: Baseline = None,
    gather_distributed: bool = False,
    group: Group = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Direct Preference Optimization (Rafailov et al. 2023) and its pairwise variants.

    With the log-ratios of the policy to the reference on the chosen (``w``) and rejected (``l``)
    completions, :math:`\rho_w = \log\pi(y_w|x) - \log\pi_{ref}(y_w|x)`, :math:`\rho_l` likewise, and
    the DPO margin :math:`h = \rho_w - \rho_l`, ``loss_type`` selects (``eps = label_smoothing``):

    .. math::
        \begin{aligned}
        \text{sigmoid} &: -(1-\epsilon)\log\sigma(\beta h) - \epsilon\log\sigma(-\beta h)
            &&\text{DPO; } \epsilon > 0 \text{ is conservative DPO (cDPO)}\\
        \text{robust} &: \frac{-(1-\epsilon)\log\sigma(\beta h) + \epsilon\log\sigma(-\beta h)}{1 - 2\epsilon}
            &&\text{Chowdhury et al. 2024 (unbiased under label flips)}\\
        \text{hinge} &: \max(0,\ 1 - \beta h) &&\text{SLiC (Zhao et al. 2023)}\\
        \text{ipo} &: (h - \tfrac{1}{2\beta})^2 &&\text{Azar et al. 2023 (}\beta = \tau\text{)}\\
        \text{exo\_pair} &: \sigma(\beta h)\,[\log\sigma(\beta h) - \log(1-\epsilon)]
            + \sigma(-\beta h)\,[\log\sigma(-\beta h) - \log\epsilon]
            &&\text{EXO (Ji et al. 2024), } \epsilon = 10^{-3} \text{ when 0}\\
        \text{nca\_pair} &: -\log\sigma(\beta\rho_w) - \tfrac12\log\sigma(-\beta\rho_w)
            - \tfrac12\log\sigma(-\beta\rho_l) &&\text{NCA (Chen et al. 2024)}\\
        \text{bco\_pair} &: -\log\sigma(\beta\rho_w - \delta) - \log\sigma(\delta - \beta\rho_l)
            &&\text{BCO (Jung et al. 2024)}\\
        \text{sppo\_hard} &: (\rho_w - \tfrac{1}{2\beta})^2 + (\rho_l + \tfrac{1}{2\beta})^2
            &&\text{SPPO with hard labels (Wu et al. 2024)}\\
        \text{aot} &: \text{sigmoid on } \operatorname{sort}(\log\pi_w - \log\pi_l)
            - \operatorname{sort}(\log\pi^{ref}_w - \log\pi^{ref}_l) &&\text{AOT (Melnyk et al. 2024)}\\
        \text{aot\_pair} &: \text{sigmoid on } \operatorname{sort}(\rho_w) - \operatorname{sort}(\rho_l)\\
        \text{apo\_zero} &: 1 - \sigma(\beta\rho_w) + \sigma(\beta\rho_l)
            &&\text{APO (D'Oosterlinck et al. 2024), eq. 7}\\
        \text{apo\_down} &: \sigma(\beta\rho_w) + 1 - \sigma(\beta h) &&\text{APO, eq. 8}\\
        \text{discopop} &: -\log\sigma(\beta h)\,(1 - m) + e^{-\beta h} m,\quad m = \sigma(\beta h/\tau)
            &&\text{DiscoPOP (Lu et al. 2024)}
        \end{aligned}

    A list ``loss_type=['sigmoid', 'bco_pair', ...]`` sums the listed losses with ``loss_weights``
    (default 1 each): the MPO combination (Wang et al. 2024 use sigmoid + bco_pair + an SFT term,
    which you add yourself). ``reduction='none'`` returns that weighted sum per pair.

    Conventions. The log-probs are the completions' **summed** token log-probs, as in the DPO paper
    and in TRL, OpenRLHF and LLaMA-Factory, except for IPO: its paper uses **length-averaged**
    log-probs (TRL's DPOTrainer and LLaMA-Factory divide by the lengths themselves for ``ipo``);
    pass averaged ones for ``loss_type='ipo'``
    (``sum / num_tokens`` of each completion, policy and reference alike). ``beta`` multiplies the
    log-ratios everywhere (the implicit reward is :math:`\beta\rho`), except in ``ipo`` and
    ``sppo_hard`` where :math:`1/(2\beta)` is the target margin. ``label_smoothing`` is used by
    sigmoid, robust, exo_pair, aot and aot_pair and ignored by the others (as in TRL).

    Batch-level types. ``aot`` / ``aot_pair`` compare the *sorted* batch, so their ``'none'`` rows
    are ranks, not pairs, and the value depends on how the batch is split. ``bco_pair``'s
    :math:`\delta` is a reward baseline: ``reward_baseline`` if given, else the (detached) mean of
    the ``2B`` implicit rewards :math:`\beta\rho_w, \beta\rho_l` of this batch, over every DDP rank
    with ``gather_distributed=True``. :class:`DPOLoss` keeps a running mean instead, as the paper
    and TRL do.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` log-probs of the chosen / rejected
            completions under the policy (differentiable).
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` the same under the reference model (usually
            computed under ``torch.no_grad``).
        beta: ``> 0``; scale of the implicit reward (TRL's default 0.1).
        loss_type: one of :data:`DPO_LOSS_TYPES` or a list of them.
        label_smoothing: ``eps`` in ``[0, 0.5]`` (``< 0.5`` for ``robust``).
        loss_weights: weights of the listed loss types (non-negative).
        discopop_tau: DiscoPOP's temperature ``tau > 0``.
        reward_baseline: bco_pair's :math:`\delta` (number or one-element tensor, detached).
        gather_distributed: with ``bco_pair`` and no ``reward_baseline``, average the rewards over
            every rank (a collective: call it on every rank).
        group: process group for ``gather_distributed``.
        reduction: ``'none' | 'mean' | 'sum'``.
        normalizer: with ``'mean'``, divide the sum by this instead of ``B``.

    Example:
        >>> lp = torch.tensor([-5.0, -7.0])  # chosen == rejected: every pair at h = 0
        >>> dpo_loss(lp, lp, lp, lp)  # log 2
        tensor(0.6931)
        >>> dpo_loss(lp, lp, lp, lp, beta=0.5, loss_type="ipo")  # (0 - 1)^2
        tensor(1.)
        >>> dpo_loss(lp, lp, lp, lp, loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 0.5])
        tensor(1.1931)
    """
    b, types, weights, eps, tau = _check_dpo_options(
        beta, loss_type, loss_weights, label_smoothing, discopop_tau
    )
    _check_reduction_args(reduction, normalizer)
    terms = _dpo_terms(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        b,
        types,
        weights,
        eps,
        tau,
        reward_baseline,
        bool(gather_distributed),
        group,
    )
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class DPOLoss(_PreferenceLoss):
    r"""Module form of :func:`dpo_loss`; the last call's metrics are in :attr:`last_metrics`.

    ``last_metrics``: ``chosen_rewards`` / ``rejected_rewards`` (batch means of :math:`\beta\rho_w`,
    :math:`\beta\rho_l`), ``reward_accuracy`` (fraction of pairs with :math:`\rho_w > \rho_l`),
    ``reward_margin`` (mean of :math:`\beta h`), ``chosen_logps`` / ``rejected_logps`` (policy means)
    and, with ``bco_pair``, ``reward_baseline`` (the :math:`\delta` used).

    With ``bco_pair`` the module keeps :math:`\delta` in the buffer ``reward_baseline`` (saved in the
    ``state_dict``), updated in training mode on every call *before* it is used: with
    ``bco_momentum=None`` it is the running average of the per-batch mean rewards (TRL's convention);
    with a momentum ``m`` in ``(0, 1]`` it is the moving average ``(1 - m) delta + m batch_mean``. The
    first batch sets it to its own mean, so the first call equals :func:`dpo_loss`. In eval mode the
    buffer is used as is (the batch mean while it has never been updated). An explicit
    ``reward_baseline=`` in ``forward`` overrides it.

    Example:
        >>> loss_fn = DPOLoss(beta=0.1)
        >>> lp = torch.tensor([-5.0, -7.0])
        >>> loss_fn(lp, lp - 1.0, lp, lp)  # h = 1 for both pairs: -log sigmoid(0.1)
        tensor(0.6444)
        >>> loss_fn.last_metrics["reward_accuracy"], loss_fn.last_metrics["reward_margin"]
        (tensor(1.), tensor(0.1000))
    """

    # registered only with a "bco_pair" term: the running reward mean and its update count
    reward_baseline: torch.Tensor
    num_baseline_updates: torch.Tensor

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str | Sequence[str] = "sigmoid",
        label_smoothing: float = 0.0,
        *,
        loss_weights: Sequence[float] | None = None,
        discopop_tau: float = 0.05,
        bco_momentum: float | None = None,
        gather_distributed: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        b, types, weights, eps, tau = _check_dpo_options(
            beta, loss_type, loss_weights, label_smoothing, discopop_tau
        )
        self.beta, self.label_smoothing, self.discopop_tau = b, eps, tau
        self.loss_type = types[0] if isinstance(loss_type, str) else list(types)
        self.loss_weights = None if loss_weights is None else list(weights)
        self._types, self._weights = types, weights
        check_number("bco_momentum", bco_momentum, low=0.0, high=1.0, low_open=True, allow_none=True)
        self.bco_momentum = None if bco_momentum is None else float(bco_momentum)
        self.gather_distributed = bool(gather_distributed)
        if "bco_pair" in types:
            self.register_buffer("reward_baseline", torch.zeros(()))
            self.register_buffer("num_baseline_updates", torch.zeros((), dtype=torch.int64))

    def _update_baseline(self, batch_mean: torch.Tensor) -> torch.Tensor:
        count, current = self.num_baseline_updates, self.reward_baseline
        mean = batch_mean.to(current.dtype)
        if not self.training:
            return torch.where(count == 0, mean, current).to(batch_mean.dtype)
        if self.bco_momentum is None:
            new = current + (mean - current) / (count + 1).to(current.dtype)
        else:
            new = torch.where(
                count == 0, mean, (1.0 - self.bco_momentum) * current + self.bco_momentum * mean
            )
        self.reward_baseline.copy_(new)
        self.num_baseline_updates.add_(1)
        return new.to(batch_mean.dtype)

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        *,
        reward_baseline: Baseline = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _dpo_terms(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            self.beta,
            self._types,
            self._weights,
            self.label_smoothing,
            self.discopop_tau,
            reward_baseline,
            self.gather_distributed,
            None,
            self._update_baseline if "bco_pair" in self._types else None,
        )
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        extra = f", loss_weights={self.loss_weights}" if self.loss_weights is not None else ""
        return (
            f"beta={self.beta}, loss_type={self.loss_type!r}, label_smoothing={self.label_smoothing}"
            f"{extra}, reduction={self.reduction!r}"
        )
