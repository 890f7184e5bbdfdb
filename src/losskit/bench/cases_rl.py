"""``losskit bench`` case for the fused policy-gradient loss from hidden states.

* ``linear_policy_gradient``, shape ``(B, T, H, V)``: ``B`` sampled completions of ``T`` tokens (every
  token counted), hidden size ``H``, vocabulary ``V``; GRPO (``epsilon = 0.2``) with sampling-policy
  log-probs near the policy's and one advantage per sequence; the per-token entropy is computed for
  the metrics by both variants.

  - ``losskit``: :class:`losskit.rl.LinearPolicyGradientLoss` (gradients formed chunk by chunk
    during the forward pass);
  - ``eager``: ``hidden @ weight.T``, ``log_softmax``, ``gather``, the entropy under ``no_grad`` and
    :func:`losskit.rl.policy_gradient_loss` on the per-token log-probs (what a trainer computing
    full logits does).
"""

from __future__ import annotations

import torch

from .cases import Case, Inputs, Shape, Variant, register_case

__all__ = ["make_policy_gradient"]


def make_policy_gradient(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(hidden (B, T, H), weight (V, H), target (B, T), old_logps (B, T), advantages (B,))``."""
    b, t, h, v = shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    target = torch.randint(0, v, (b, t), generator=g)
    # random logits give log-probs near -log V; the sampler's differ by a little noise
    old = -float(torch.log(torch.tensor(float(v)))) + 0.1 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    return (hidden, weight, target, old, adv), (0, 1)


def _variants() -> list[Variant]:
    from losskit.rl import LinearPolicyGradientLoss, policy_gradient_loss

    fused = LinearPolicyGradientLoss("grpo")

    def eager(
        hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, old: torch.Tensor, adv: torch.Tensor
    ) -> torch.Tensor:
        logp = torch.log_softmax((hidden @ weight.T).float(), -1)
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)  # reported, as the fused form does
        lp = logp.gather(2, target.unsqueeze(2)).squeeze(2)
        loss = policy_gradient_loss(lp, old, adv, loss_type="grpo")
        return loss + 0.0 * entropy.sum()

    return [
        Variant("losskit.LinearPolicyGradientLoss", "losskit", fused),
        Variant("eager (logits, log_softmax, gather, entropy, policy_gradient_loss)", "eager", eager),
    ]


register_case(
    Case(
        "linear_policy_gradient",
        make_policy_gradient,
        (8, 512, 1024, 32000),
        (2, 8, 32, 128),
        _variants,
        [],
        note="B completions x T tokens, hidden size H, vocabulary V; GRPO, one advantage per sequence",
        max_repeat=10,
    )
)
