"""Advantage helpers and the step normaliser of losskit.rl, against plain float64 loops."""

from __future__ import annotations

import math

import pytest
import torch

from losskit import LossTypeError, LossValueError
from losskit.rl import group_advantages, policy_gradient_normalizer, rloo_advantages

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ============================================================================ advantages


def _ref_group(rewards, G, scale, eps):
    out = []
    for k in range(0, len(rewards), G):
        grp = [float(r) for r in rewards[k : k + G]]
        mean = sum(grp) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (G - 1)) if G > 1 else 0.0
        for r in grp:
            if max(grp) == min(grp):
                out.append(0.0)
            else:
                out.append((r - mean) / (std + eps) if scale == "std" else r - mean)
    return torch.tensor(out, dtype=DT)


def _ref_rloo(rewards, G):
    out = []
    for k in range(0, len(rewards), G):
        grp = [float(r) for r in rewards[k : k + G]]
        out += [grp[i] - sum(grp[j] for j in range(G) if j != i) / (G - 1) for i in range(G)]
    return torch.tensor(out, dtype=DT)


@pytest.mark.parametrize("scale", ["std", "none"])
@pytest.mark.parametrize("G", [2, 3, 4])
def test_group_advantages_match_reference(G, scale):
    rewards = torch.randn(4 * G, generator=_g(G), dtype=DT)
    rewards[:G] = 0.7  # one all-equal group
    got = group_advantages(rewards, G, scale=scale, eps=1e-4)
    torch.testing.assert_close(got, _ref_group(rewards, G, scale, 1e-4))
    assert (got[:G] == 0).all()
    # each group sums to 0; with 'std' (eps=0) its unbiased std is 1
    torch.testing.assert_close(got.view(-1, G).sum(1), torch.zeros(4, dtype=DT), atol=1e-12, rtol=0)
    if scale == "std":
        std = group_advantages(rewards, G, eps=0.0).view(-1, G)[1:].std(1)
        torch.testing.assert_close(std, torch.ones(3, dtype=DT))


@pytest.mark.parametrize("G", [2, 3, 5])
def test_rloo_advantages_match_reference(G):
    rewards = torch.randn(3 * G, generator=_g(10 + G), dtype=DT)
    rewards[G : 2 * G] = -1.25
    got = rloo_advantages(rewards, G)
    torch.testing.assert_close(got, _ref_rloo(rewards, G))
    assert (got[G : 2 * G] == 0).all()
    torch.testing.assert_close(got, group_advantages(rewards, G, scale="none") * G / (G - 1))


def test_equal_rewards_give_exact_zeros_not_nan():
    for r in (0.1, 1e-30, 3.0):
        rewards = torch.full((6,), r)
        for eps in (0.0, 1e-6):
            assert (group_advantages(rewards, 3, eps=eps) == 0).all()
        assert (rloo_advantages(rewards, 3) == 0).all()
    assert (group_advantages(torch.tensor([1.0, 2.0]), 1) == 0).all()  # groups of one completion
    ints = group_advantages(torch.tensor([1, 0, 1, 1]), 2)  # integer / bool rewards are floats
    torch.testing.assert_close(ints, torch.tensor([0.7071063, -0.7071063, 0.0, 0.0]))
    assert rloo_advantages(torch.tensor([True, False]), 2).dtype == torch.float32
    assert group_advantages(torch.zeros(0), 4).shape == (0,)
    nan = group_advantages(torch.tensor([1.0, math.nan, 2.0, 3.0]), 2)
    assert nan[:2].isnan().all() and torch.isfinite(nan[2:]).all()


def test_advantage_errors():
    with pytest.raises(
        LossValueError,
        match=r"rewards has shape \(10,\): the batch \(10\) must be a multiple of group_size=4",
    ):
        group_advantages(torch.zeros(10), 4)
    with pytest.raises(LossValueError, match=r"rewards has shape \(5,\).*group_size=2"):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(LossValueError, match="group_size must be >= 2, got 1"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(LossValueError, match="group_size must be >= 1, got 0"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(LossTypeError, match="group_size must be an int"):
        group_advantages(torch.zeros(4), 2.0)
    with pytest.raises(LossValueError, match="scale must be one of 'std', 'none', got 'batch'"):
        group_advantages(torch.zeros(4), 2, scale="batch")
    with pytest.raises(LossValueError, match="eps must be >= 0.0"):
        group_advantages(torch.zeros(4), 2, eps=-1.0)
    with pytest.raises(LossValueError, match=r"rewards must be 1-D .*got shape \(2, 2\)"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(LossTypeError, match="rewards must be a torch.Tensor"):
        group_advantages([1.0, 0.0], 2)


# ============================================================================ the step normaliser


def test_policy_gradient_normalizer_values_and_errors():
    masks = [torch.tensor([[True, True, False]]), torch.tensor([[True, False], [True, True], [False, False]])]
    f = policy_gradient_normalizer
    assert float(f(masks, "dapo")) == 5.0 and float(f(masks, "cispo")) == 5.0
    assert float(f(masks, "grpo")) == 4.0 and float(f(masks, "gspo")) == 4.0
    assert float(f(masks, "dr_grpo", max_len=7)) == 28.0
    assert float(f(masks[0], "dapo")) == 2.0
    assert float(f(None, "grpo", num_sequences=6)) == 6.0
    assert float(f(masks, "dr_grpo", max_len=2, num_sequences=3)) == 6.0
    assert float(f([torch.zeros(2, 3, dtype=torch.bool)], "dapo")) == 1.0  # nothing valid: 1, loss 0
    assert float(f([torch.tensor([[1, 0, 1]])], "dapo")) == 2.0  # 0/1 masks
    with pytest.raises(LossValueError, match="loss_type 'bnpo' fixes its own denominator"):
        f(masks, "bnpo")
    with pytest.raises(LossValueError, match="max_len is required for loss_type 'dr_grpo'"):
        f(masks, "dr_grpo")
    with pytest.raises(LossValueError, match="mask is required for loss_type 'dapo'"):
        f(None, "dapo", num_sequences=3)
    with pytest.raises(LossValueError, match="mask or num_sequences is required"):
        f(None, "grpo")
    with pytest.raises(LossValueError, match="mask is an empty sequence"):
        f([], "dapo")
    with pytest.raises(LossValueError, match=r"mask\[1\] must be 2-D \(B, T\), got shape \(3,\)"):
        f([masks[0], torch.ones(3, dtype=torch.bool)], "dapo")
    with pytest.raises(LossValueError, match="loss_type must be one of"):
        f(masks, "ppo")
