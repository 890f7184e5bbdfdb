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

from ..registry import register
from .dpo import DPO_LOSS_TYPES, DPOLoss, dpo_loss
from .kto import KTOLoss, kto_loss
from .reference_free import CPOLoss, ORPOLoss, SimPOLoss, cpo_loss, orpo_loss, simpo_loss
from .reward_model import RewardModelLoss, reward_model_loss

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
