"""LinearPolicyGradientLoss: the policy-gradient losses from hidden states equal the full-logits form."""

from __future__ import annotations

import pytest
import torch

import losskit.language as language
from losskit import LossTypeError, LossValueError
from losskit.rl import POLICY_GRADIENT_LOSS_TYPES, LinearPolicyGradientLoss, PolicyGradientLoss
from losskit.rl import policy_gradient_loss as pg_loss

B, T, H, V = 3, 5, 4, 11


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()

    hidden, weight, bias = leaf(B, T, H), leaf(V, H), leaf(V)
    target = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.75
    mask[0, :2] = True
    mask[2] = False  # an all-masked sequence
    with torch.no_grad():
        logp = torch.log_softmax(hidden.double() @ weight.double().T + bias.double(), -1)
        lp = logp.gather(2, target[..., None])[..., 0]
    # old / reference log-probs near the policy's, some ratios far outside the clip range
    old = (lp + 0.6 * torch.randn(B, T, generator=g, dtype=torch.float64)).to(dtype)
    old = old.masked_fill(~mask, float("-inf"))  # masked tokens of a sampler: -inf must not leak
    ref = (lp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).to(dtype)
    adv = torch.randn(B, generator=g, dtype=torch.float64).to(dtype)
    return hidden, weight, bias, target, mask, old, ref, adv


def _full_logits(hidden, weight, bias, target, temperature):
    """Per-token log-probs and entropies from the materialised logits, in float64."""
    z = (hidden.double() @ weight.double().T + bias.double()) / temperature
    logp = torch.log_softmax(z, -1)
    ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(2, target[..., None])[..., 0], ent


def _grads(loss, leaves):
    return torch.autograd.grad(loss, leaves)


OPTIONS = {
    "grpo": {"beta": 0.04, "entropy_coef": 0.01},
    "dr_grpo": {"max_len": 8, "beta": 0.1},
    "dapo": {"epsilon_high": 0.28, "entropy_coef": -0.02},
    "bnpo": {"delta": 1.5},
    "gspo": {"epsilon": 3e-4, "epsilon_high": 4e-4},
    "cispo": {"epsilon_high": 2.0, "beta": 0.05},
}


@pytest.mark.parametrize("loss_type", POLICY_GRADIENT_LOSS_TYPES)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_values_gradients_and_metrics_equal_the_full_logits_form(loss_type, chunk_size):
    hidden, weight, bias, target, mask, old, ref, adv = _inputs()
    kw = OPTIONS[loss_type]
    fused = LinearPolicyGradientLoss(loss_type, temperature=0.7, chunk_size=chunk_size, **kw)
    loss = fused(hidden, weight, target, old, adv, mask, bias, ref_logps=ref)
    lp, ent = _full_logits(hidden, weight, bias, target, 0.7)
    plain = PolicyGradientLoss(loss_type, **kw)
    want = plain(lp, old, adv, mask, ref_logps=ref, entropy=ent)
    torch.testing.assert_close(loss, want)
    # every token-local loss type forms its gradients in the forward pass; gspo recomputes the logits
    fused_path = type(loss.grad_fn).__name__.startswith("TokenLocalLinearLoss")
    assert fused_path == (loss_type != "gspo"), type(loss.grad_fn).__name__
    for got, exp in zip(_grads(loss, (hidden, weight, bias)), _grads(want, (hidden, weight, bias))):
        torch.testing.assert_close(got, exp)
    assert set(fused.last_metrics) == set(plain.last_metrics)
    for k, v in plain.last_metrics.items():
        torch.testing.assert_close(fused.last_metrics[k], v, msg=k)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_normalizer_and_grad_output_scale_the_fused_gradients(loss_type, monkeypatch):
    monkeypatch.setattr(language, "_COMPACT_DEVICES", ())  # the masked row plan of accelerators, on CPU
    hidden, weight, bias, target, mask, old, _, adv = _inputs(seed=1)
    fused = LinearPolicyGradientLoss(loss_type, chunk_size=4)(
        hidden, weight, target, old, adv, mask, bias, normalizer=7.0
    )
    lp, _ = _full_logits(hidden, weight, bias, target, 1.0)
    want = pg_loss(lp, old, adv, mask, loss_type=loss_type, normalizer=7.0)
    torch.testing.assert_close(fused, want)
    for got, exp in zip(_grads(2.5 * fused, (hidden, weight)), _grads(2.5 * want, (hidden, weight))):
        torch.testing.assert_close(got, exp)


def test_per_token_advantages_on_policy_and_ignore_index():
    hidden, weight, bias, target, mask, _, _, _ = _inputs(seed=2)
    adv = torch.randn(B, T, dtype=torch.float64)
    target = target.masked_fill(~mask, -100)  # positions outside the completion marked in target only
    loss = LinearPolicyGradientLoss("dapo")(hidden, weight, target, None, adv)
    lp, _ = _full_logits(hidden, weight, bias.detach() * 0, target.clamp_min(0), 1.0)
    want = pg_loss(lp, None, adv, mask, loss_type="dapo")
    torch.testing.assert_close(loss, want)
    for got, exp in zip(_grads(loss, (hidden, weight)), _grads(want, (hidden, weight))):
        torch.testing.assert_close(got, exp)


def test_all_masked_batch_gives_a_connected_zero():
    hidden, weight, bias, target, _, old, _, adv = _inputs(seed=3)
    mask = torch.zeros(B, T, dtype=torch.bool)
    loss = LinearPolicyGradientLoss("dapo")(hidden, weight, target, old, adv, mask, bias)
    assert loss.item() == 0.0
    gh, gw = _grads(loss, (hidden, weight))
    assert torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


def test_no_logits_sized_tensor_is_saved_and_a_second_backward_is_refused():
    hidden, weight, bias, target, mask, old, _, adv = _inputs(seed=4, dtype=torch.float32)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = LinearPolicyGradientLoss("dapo")(hidden, weight, target, old, adv, mask, bias)
    assert all(n < B * T * V for n in saved), saved
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_hidden_states_give_finite_float32_loss_and_grads(dtype):
    hidden, weight, bias, target, mask, old, ref, adv = _inputs(seed=5, dtype=dtype)
    loss = LinearPolicyGradientLoss("grpo", beta=0.04)(
        hidden, weight, target, old.float(), adv.float(), mask, bias, ref_logps=ref.float()
    )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for g in _grads(loss, (hidden, weight, bias)):
        assert g.dtype == dtype and torch.isfinite(g).all()


def test_bad_inputs_name_the_argument():
    hidden, weight, _, target, _, old, _, adv = _inputs(seed=6)
    loss_fn = LinearPolicyGradientLoss("bnpo")
    with pytest.raises(LossTypeError, match=r"hidden must be 3-D \(B, T, H\)"):
        loss_fn(hidden[0], weight, target[0], old[0], adv[:1])
    with pytest.raises(LossValueError, match=r"old_logps has shape \(3, 4\)"):
        loss_fn(hidden, weight, target, old[:, :4], adv)
    with pytest.raises(LossValueError, match=r"advantages has shape \(2,\)"):
        loss_fn(hidden, weight, target, old, adv[:2])
    with pytest.raises(LossValueError, match=r"normalizer cannot be used with loss_type 'bnpo'"):
        loss_fn(hidden, weight, target, old, adv, normalizer=4.0)
    with pytest.raises(LossValueError, match=r"loss_type must be one of"):
        LinearPolicyGradientLoss("ppo")
    with pytest.raises(LossValueError, match=r"temperature"):
        LinearPolicyGradientLoss(temperature=0.0)
