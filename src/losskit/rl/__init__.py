"""Reinforcement-learning policy losses: the GRPO family on per-token log-probs, and advantages.

- :mod:`losskit.rl.policy_gradient`: :func:`policy_gradient_loss` / :class:`PolicyGradientLoss`
  (``grpo``, ``dr_grpo``, ``dapo``, ``bnpo``, ``gspo``, ``cispo``);
- :mod:`losskit.rl.normalizer`: :func:`policy_gradient_normalizer`, the global denominator of one
  optimisation step (gradient accumulation and DDP);
- :mod:`losskit.rl.advantages`: :func:`group_advantages` (GRPO / Dr. GRPO), :func:`rloo_advantages`.

The per-token log-probs (and entropies) come from any model, or from
:func:`losskit.preference.linear_log_probs` (hidden states and the LM head, without the
``(tokens, vocab)`` logits).
"""

from __future__ import annotations

from ..registry import register
from .advantages import group_advantages, rloo_advantages
from .fused import LinearPolicyGradientLoss
from .normalizer import policy_gradient_normalizer
from .policy_gradient import POLICY_GRADIENT_LOSS_TYPES, PolicyGradientLoss, policy_gradient_loss

__all__ = [
    "POLICY_GRADIENT_LOSS_TYPES",
    "LinearPolicyGradientLoss",
    "PolicyGradientLoss",
    "group_advantages",
    "policy_gradient_loss",
    "policy_gradient_normalizer",
    "rloo_advantages",
]

register(
    "policy_gradient",
    PolicyGradientLoss,
    family="rl",
    functional=policy_gradient_loss,
    source="Shao et al. 2024 (GRPO); Liu et al. 2025 (Dr. GRPO); Yu et al. 2025 (DAPO); Zheng et al. 2025 (GSPO); "
    "MiniMax 2025 (CISPO)",
    notes="per-token (B, T) log-probs; loss_type grpo, dr_grpo, dapo, bnpo, gspo, cispo; k3 KL, entropy bonus; "
    "policy_gradient_normalizer makes accumulation and DDP exact",
    aliases=("grpo",),
)
