r"""Preference losses on sequence log-probs: DPO family, SimPO, CPO, ORPO, KTO, reward models.

Every input is a 1-D tensor of shape ``(B,)`` holding one number per completion: the log-probability
of the completion under the policy (``policy_*_logps``) or the frozen reference model
(``ref_*_logps``), or a scalar reward (:func:`reward_model_loss`). Computing those sequence
log-probs from logits or hidden states is :mod:`losskit.preference.log_probs`' job; which form a loss
expects (summed over the completion's tokens, or averaged over them) is stated per loss:

==================  ===========================================================================
loss                log-probs it expects
==================  ===========================================================================
DPO family          summed over the completion (``sum_t log pi(y_t | x, y_<t)``); IPO's paper
                    uses length-averaged ones (pass those for ``loss_type='ipo'``)
SimPO, ORPO         length-averaged (``sum / num_tokens``), no reference model
CPO                 summed (its NLL term is the chosen answer's NLL, summed unless you pass one)
KTO                 summed, one completion per row, each labelled desirable or not
==================  ===========================================================================

Conventions shared by every loss here:

- the *implicit reward* of a completion is ``beta * (log pi(y|x) - log pi_ref(y|x))`` (DPO, KTO) or
  ``beta * log pi(y|x)`` (the reference-free losses); ``beta`` scales that log-ratio;
- ``reduction`` is ``'none' | 'mean' | 'sum'`` over the ``B`` rows (``'mean'`` of an empty batch is
  a zero still connected to the graph); ``normalizer=`` replaces the ``'mean'`` denominator, as in
  :mod:`losskit._reduction`;
- half-precision inputs are computed in float32; every term is a log-space form (``logsigmoid``,
  ``softplus``, ``log1mexp``), finite for any finite input and any ``beta`` > 0;
- the functionals return the loss only; each module also keeps the metrics trainers log (mean chosen
  and rejected rewards, reward accuracy and margin, and the loss's own quantities such as KTO's KL
  estimate) as detached 0-d tensors in ``last_metrics``, computed from the same intermediate values
  (no extra pass over the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_choice,
    check_floating,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from .._reduction import Normalizer, check_normalizer, compute_dtype, reduce_loss
from ..distributed import Group, global_sum
from ..registry import register

__all__ = [
    "DPO_LOSS_TYPES",
    "CPOLoss",
    "DPOLoss",
    "KTOLoss",
    "ORPOLoss",
    "RewardModelLoss",
    "SimPOLoss",
    "cpo_loss",
    "dpo_loss",
    "kto_loss",
    "orpo_loss",
    "reward_model_loss",
    "simpo_loss",
]

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

Baseline = Union[float, torch.Tensor, None]
Metrics = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- shared pieces


def _check_beta(beta: Any) -> float:
    return float(check_number("beta", beta, low=0.0, high=math.inf, low_open=True, high_open=True))


def _check_label_smoothing(label_smoothing: Any, loss_types: Sequence[str] = ("sigmoid",)) -> float:
    eps = float(check_number("label_smoothing", label_smoothing, low=0.0, high=0.5))
    if eps == 0.5 and "robust" in loss_types:
        raise LossValueError(
            "label_smoothing must be < 0.5 for loss_type 'robust' (it divides by 1 - 2 * label_smoothing), "
            f"got {label_smoothing!r}"
        )
    return eps


def _check_sequences(*named: tuple[str, Any]) -> list[torch.Tensor]:
    """1-D floating tensors of one shape and device, upcast to one compute dtype (float32 for half)."""
    for name, t in named:
        check_floating(name, t)
        check_ndim(name, t, 1, "1-D (one value per sequence)")
    first_name, first = named[0]
    for name, t in named[1:]:
        check_same_shape(name, t, first_name, first)
    check_same_device(*named)
    dtype = compute_dtype(first)
    for _, t in named[1:]:
        dtype = torch.promote_types(dtype, compute_dtype(t))
    return [t.to(dtype) for _, t in named]


def _check_optional_sequence(name: str, value: Any, ref_name: str, ref: torch.Tensor) -> torch.Tensor | None:
    """An optional ``(B,)`` companion of ``ref`` (a per-pair margin, an NLL), in ``ref``'s dtype."""
    if value is None:
        return None
    check_floating(name, value)
    check_same_shape(name, value, ref_name, ref)
    check_same_device((ref_name, ref), (name, value))
    return value.to(ref.dtype)


def _check_reduction_args(reduction: str, normalizer: Normalizer) -> None:
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)


def _sigmoid_loss(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``: the logistic loss with smoothed labels."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def _non_finite_guard(loss: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``loss`` plus ``x - x`` of every input: unchanged (``+ 0``, no gradient) for finite inputs, NaN
    where an input is NaN or infinite.

    A log-prob or reward of ``+-inf`` is never valid, but the saturating forms would turn it into a
    finite limit (``-log sigmoid(+inf) = 0``); this keeps it visible without a device sync. Inputs
    are ``(B,)`` rows of ``loss`` or 0-d (batch-level quantities such as KTO's KL estimate).
    """
    for x in inputs:
        loss = loss + (x - x)
    return loss


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Detached mean; 0 for an empty tensor (a metric, never NaN for lack of rows)."""
    x = x.detach()
    return x.sum() / max(x.numel(), 1)


def _batch_mean(values: torch.Tensor, gather_distributed: bool, group: Group) -> torch.Tensor:
    """Detached mean of ``values`` over the batch, over every DDP rank's rows with ``gather_distributed``.

    With the flag the mean is ``(sum over ranks of the sums) / (sum over ranks of the counts)`` (one
    all-reduce), the mean one process would compute on the concatenated batch; 0 when no rank has a row.
    """
    values = values.detach()
    if not gather_distributed:
        return _mean(values)
    stats = torch.stack([values.sum(), values.new_tensor(float(values.numel()))])
    total, count = global_sum(stats, group=group).unbind()
    return total / count.clamp_min(1.0)


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    """Trainer metrics of paired implicit rewards: means, accuracy (chosen > rejected) and margin."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "chosen_rewards": _mean(c),
        "rejected_rewards": _mean(r),
        "reward_accuracy": _mean((c > r).to(c.dtype)),
        "reward_margin": _mean(c - r),
    }


@dataclass
class _Terms:
    """What a loss computes on the way: the per-row loss and the detached metrics' raw material."""

    loss: torch.Tensor
    metrics: Callable[[], Metrics]


class _PreferenceLoss(nn.Module):
    """Base of the modules: ``reduction`` and ``last_metrics`` (detached 0-d tensors of the last call)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.last_metrics: Metrics = {}

    def _finish(self, terms: _Terms, normalizer: Normalizer) -> torch.Tensor:
        with torch.no_grad():
            self.last_metrics = terms.metrics()
        return reduce_loss(terms.loss, self.reduction, normalizer=normalizer)


# ----------------------------------------------------------------------------- DPO family


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


def _as_scalar(name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    """A Python number or a one-element tensor as a detached 0-d tensor in ``like``'s dtype."""
    if isinstance(value, torch.Tensor):
        check_floating(name, value)
        if value.numel() != 1:
            raise LossValueError(
                f"{name} must be a number or a one-element tensor, got shape {shape_str(value.shape)}"
            )
        check_same_device(("policy log-probs", like), (name, value))
        return value.detach().reshape(()).to(like.dtype)
    check_number(name, value)
    return like.new_tensor(float(value))


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


# ----------------------------------------------------------------------------- reference-free losses


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


# ----------------------------------------------------------------------------- KTO


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


# ----------------------------------------------------------------------------- reward model


def _reward_terms(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None,
    center_rewards_coefficient: float | None,
) -> _Terms:
    c, r = _check_sequences(("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards))
    diff = c - r
    if isinstance(margin, torch.Tensor):
        m = _check_optional_sequence("margin", margin, "chosen_rewards", c)
        diff = diff - m
    else:
        m = c.new_zeros(())
        if margin is not None:
            diff = diff - float(check_number("margin", margin))
    loss = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (c + r) ** 2
    loss = _non_finite_guard(loss, c, r, m)
    return _Terms(loss, lambda: _pair_metrics(c, r))


def _check_center(coefficient: Any) -> float | None:
    check_number(
        "center_rewards_coefficient", coefficient, low=0.0, high=math.inf, high_open=True, allow_none=True
    )
    return None if coefficient is None else float(coefficient)


def reward_model_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    reduction: str = "mean",
    *,
    center_rewards_coefficient: float | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Bradley-Terry reward-model loss (Ouyang et al. 2022, InstructGPT; Bradley & Terry 1952).

    .. math::
        \ell = -\log\sigma(r_w - r_l - m) + c\,(r_w + r_l)^2

    ``margin`` :math:`m` is an optional per-pair margin (Llama 2's graded preferences: larger for
    clearly better answers), a ``(B,)`` tensor or a number. ``center_rewards_coefficient`` :math:`c`
    pulls the rewards towards zero mean (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``,
    e.g. ``0.01``); ``None`` or 0 leaves it out. ``'mean'`` of the per-pair sum equals TRL's
    ``mean(-logsigmoid) + c * mean((r_w + r_l)^2)``.

    Args:
        chosen_rewards, rejected_rewards: ``(B,)`` scalar rewards of the chosen / rejected answers
            (squeeze a reward head's ``(B, 1)`` output).
        margin: optional ``(B,)`` tensor or number. center_rewards_coefficient: ``>= 0`` or ``None``.
        reduction: ``'none' | 'mean' | 'sum'``. normalizer: see :mod:`losskit._reduction`.

    Example:
        >>> reward_model_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))  # log 2
        tensor(0.6931)
        >>> reward_model_loss(torch.tensor([1.0]), torch.tensor([-1.0]), margin=2.0)  # log 2
        tensor(0.6931)
    """
    coef = _check_center(center_rewards_coefficient)
    _check_reduction_args(reduction, normalizer)
    terms = _reward_terms(chosen_rewards, rejected_rewards, margin, coef)
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class RewardModelLoss(_PreferenceLoss):
    """Module form of :func:`reward_model_loss`; :attr:`last_metrics` holds ``chosen_rewards`` /
    ``rejected_rewards`` (batch means), ``reward_accuracy`` (fraction with ``r_w > r_l``) and
    ``reward_margin`` (mean ``r_w - r_l``).

    Example:
        >>> loss_fn = RewardModelLoss()
        >>> loss_fn(torch.tensor([1.0]), torch.tensor([1.0]))
        tensor(0.6931)
        >>> loss_fn.last_metrics["reward_accuracy"]
        tensor(0.)
    """

    def __init__(self, *, center_rewards_coefficient: float | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.center_rewards_coefficient = _check_center(center_rewards_coefficient)

    def forward(
        self,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        margin: torch.Tensor | float | None = None,
        *,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _reward_terms(chosen_rewards, rejected_rewards, margin, self.center_rewards_coefficient)
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        return f"center_rewards_coefficient={self.center_rewards_coefficient}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------- registry

_FAMILY = "preference"
register(
    "dpo",
    DPOLoss,
    family=_FAMILY,
    functional=dpo_loss,
    source="Rafailov et al. 2023 (+ IPO, robust, SLiC, EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP)",
    notes="13 loss types on summed log-probs; a list of types with loss_weights is MPO",
)
register(
    "simpo",
    SimPOLoss,
    family=_FAMILY,
    functional=simpo_loss,
    source="Meng et al. 2024",
    notes="length-averaged log-probs, no reference, margin gamma",
)
register(
    "cpo",
    CPOLoss,
    family=_FAMILY,
    functional=cpo_loss,
    source="Xu et al. 2024",
    notes="reference-free DPO + alpha * NLL of the chosen answer",
)
register(
    "orpo",
    ORPOLoss,
    family=_FAMILY,
    functional=orpo_loss,
    source="Hong et al. 2024",
    notes="NLL + beta * odds-ratio term on averaged log-probs (log1mexp)",
)
register(
    "kto",
    KTOLoss,
    family=_FAMILY,
    functional=kto_loss,
    source="Ethayarajh et al. 2024",
    notes="unpaired; detached batch KL reference point, DDP-global with gather_distributed",
)
register(
    "reward_model",
    RewardModelLoss,
    family=_FAMILY,
    functional=reward_model_loss,
    source="Ouyang et al. 2022 (Bradley-Terry)",
    notes="optional per-pair margin and reward centering",
    aliases=("bradley_terry",),
)
