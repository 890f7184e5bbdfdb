"""RL policy losses (losskit.rl): references from the papers' formulas, gradients, degenerate inputs, errors.

The references below are written plainly from the papers (loops over sequences and tokens, float64):
GRPO (Shao et al. 2024, per-sequence token mean), Dr. GRPO (Liu et al. 2025, sum / (B * max_len)),
DAPO (Yu et al. 2025, token mean over the batch, clip-higher), GSPO (Zheng et al. 2025, sequence
ratio of length-normalised log-ratios, eq. 5-7; GSPO-token eq. 13), CISPO (MiniMax-M1 2025, clipped
detached IS weight times log-prob), the k3 KL estimator (Schulman 2020) and the group / RLOO
advantages (test_rl_advantages.py). Layout invariance (accumulation, DDP) is in test_rl_distributed.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
)
from losskit import LossTypeError, LossValueError
from losskit.rl import (
    POLICY_GRADIENT_LOSS_TYPES,
    PolicyGradientLoss,
    policy_gradient_loss,
)
from losskit.rl.policy_gradient import token_terms, token_weights

DT = torch.float64
TYPES = list(POLICY_GRADIENT_LOSS_TYPES)
PPO_TYPES = ["grpo", "dr_grpo", "dapo", "bnpo", "gspo"]
LENGTHS = [6, 3, 1, 4]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(seed: int = 0, lengths: list[int] = LENGTHS, T: int = 6, noise: float = 0.3) -> dict:
    B = len(lengths)
    g = _g(seed)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    logps = -torch.rand(B, T, generator=g, dtype=DT) * 3 - 0.05
    old = (logps + noise * torch.randn(B, T, generator=g, dtype=DT)).masked_fill(~mask, -math.inf)
    ref = (logps + 0.2 * torch.randn(B, T, generator=g, dtype=DT)).masked_fill(~mask, math.nan)
    adv = torch.randn(B, generator=g, dtype=DT)
    adv_tok = torch.randn(B, T, generator=g, dtype=DT)
    entropy = torch.rand(B, T, generator=g, dtype=DT) * 2
    return {
        "logps": logps,
        "old": old,
        "ref": ref,
        "adv": adv,
        "adv_tok": adv_tok,
        "entropy": entropy,
        "mask": mask,
    }


# ============================================================================ float64 references


def ref_policy_gradient(
    logps,
    old,
    adv,
    mask,
    loss_type,
    *,
    ref=None,
    entropy=None,
    epsilon=0.2,
    epsilon_high=None,
    delta=None,
    beta=0.0,
    entropy_coef=0.0,
    max_len=None,
    normalizer=None,
):
    """The loss of each paper, as a loop over sequences and tokens."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    B, T = logps.shape

    def a(i, t):
        return adv[i] if adv.dim() == 1 else adv[i, t]

    def clip_surrogate(r, A):
        first = r if delta is None else torch.clamp(r, max=delta)
        return -torch.minimum(first * A, torch.clamp(r, 1 - epsilon, 1 + eps_high) * A)

    def policy_term(i, t):
        r = torch.exp(logps[i, t] - old[i, t])
        if loss_type == "cispo":
            w = torch.clamp(r.detach(), max=1 + eps_high)
            return -w * a(i, t) * logps[i, t]
        return clip_surrogate(r, a(i, t))

    def extra(i, t):
        out = logps.new_zeros(())
        if beta:
            x = ref[i, t] - logps[i, t]
            out = out + beta * (torch.exp(x) - x - 1)
        if entropy_coef:
            out = out - entropy_coef * entropy[i, t]
        return out

    valid = [[t for t in range(T) if mask[i, t]] for i in range(B)]
    total = logps.new_zeros(())
    if loss_type in ("grpo", "gspo"):
        for i in range(B):
            n = len(valid[i])
            if n == 0:
                continue
            if loss_type == "gspo":  # paper eq. 5-7: one ratio per sequence, per-sequence advantage
                s = torch.exp(sum(logps[i, t] - old[i, t] for t in valid[i]) / n)
                seq = clip_surrogate(s, adv[i]) + sum(extra(i, t) for t in valid[i]) / n
            else:
                seq = sum(policy_term(i, t) + extra(i, t) for t in valid[i]) / n
            total = total + seq
        return total / (normalizer if normalizer is not None else B)
    count = 0
    for i in range(B):
        for t in valid[i]:
            total = total + policy_term(i, t) + extra(i, t)
            count += 1
    if normalizer is not None:
        return total / normalizer
    if loss_type == "dr_grpo":
        return total / (B * (max_len or T))
    return total / max(count, 1)


VARIANTS = {
    "plain": {},
    "clip_higher_delta": {"epsilon_high": 0.28, "delta": 1.3},
    "kl_entropy": {"beta": 0.1, "entropy_coef": 0.02},
    "per_token_advantages": {},
    "normalizer": {"normalizer": 7.0},
    "max_len": {"max_len": 10},
}


def _variant_ok(loss_type: str, variant: str) -> bool:
    if loss_type == "cispo" and variant == "clip_higher_delta":
        return False
    if loss_type == "gspo" and variant == "per_token_advantages":
        return False  # the paper's sequence objective has one advantage per sequence (see below)
    if loss_type == "bnpo" and variant == "normalizer":
        return False
    return not (variant == "max_len" and loss_type != "dr_grpo")


CASES = [(lt, v) for lt in TYPES for v in VARIANTS if _variant_ok(lt, v)]


@pytest.mark.parametrize(("loss_type", "variant"), CASES)
def test_matches_float64_reference(loss_type, variant):
    x = _inputs(1)
    kw = dict(VARIANTS[variant])
    adv = x["adv_tok"] if variant == "per_token_advantages" else x["adv"]

    def fn(logps, entropy):
        return policy_gradient_loss(
            logps, x["old"], adv, x["mask"], ref_logps=x["ref"], entropy=entropy, loss_type=loss_type, **kw
        )

    def ref(logps, entropy):
        return ref_policy_gradient(
            logps, x["old"], adv, x["mask"], loss_type, ref=x["ref"], entropy=entropy, **kw
        )

    assert_matches_reference(fn, ref, (x["logps"], x["entropy"]), (0, 1), rtol=1e-10, atol=1e-12)


def test_reference_inputs_cover_both_sides_of_the_clip_range():
    x = _inputs(1)
    r = (x["logps"] - x["old"]).exp()[x["mask"]]
    assert ((r > 1.28) | (r < 0.8)).any() and ((r > 0.8) & (r < 1.2)).any()
    neg = (x["adv"][:, None] < 0).expand_as(x["mask"])[x["mask"]]
    assert ((r > 1.3) & neg).any()  # delta=1.3 binds somewhere
    assert (x["adv"] > 0).any() and (x["adv"] < 0).any()


@pytest.mark.parametrize("normalizer", [None, 3.0])
def test_gspo_gradient_is_the_papers_sequence_gradient(normalizer):
    """GSPO's gradient (eq. 10): A_i s_i / |y_i| * grad sum_t log pi for unclipped sequences, 0 else."""
    x = _inputs(2, noise=0.05)
    logps = x["logps"].clone().requires_grad_(True)
    loss = policy_gradient_loss(
        logps, x["old"], x["adv"], x["mask"], loss_type="gspo", epsilon=0.03, normalizer=normalizer
    )
    (grad,) = torch.autograd.grad(loss, logps)
    B, T = logps.shape
    want = torch.zeros(B, T, dtype=DT)
    clipped = 0
    for i in range(B):
        valid = [t for t in range(T) if x["mask"][i, t]]
        s = math.exp(sum(float(x["logps"][i, t] - x["old"][i, t]) for t in valid) / len(valid))
        A = float(x["adv"][i])
        if (A > 0 and s > 1.03) or (A < 0 and s < 0.97):
            clipped += 1
            continue
        for t in valid:
            want[i, t] = -A * s / len(valid) / (normalizer or B)
    assert 0 < clipped < B  # both branches are exercised
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-15)


def test_gspo_token_with_per_token_advantages_is_eq_13():
    x = _inputs(3, noise=0.05)
    adv = x["adv_tok"]

    def ref(logps):
        B, T = logps.shape
        total = logps.new_zeros(())
        for i in range(B):
            valid = [t for t in range(T) if x["mask"][i, t]]
            seq_lr = sum(logps[i, t] - x["old"][i, t] for t in valid) / len(valid)
            for t in valid:
                s = torch.exp(seq_lr.detach()) * torch.exp(logps[i, t] - logps[i, t].detach())
                surr = torch.minimum(s * adv[i, t], torch.clamp(s, 1 - 0.04, 1 + 0.04) * adv[i, t])
                total = total - surr / len(valid)
        return total / B

    def fn(logps):
        return policy_gradient_loss(logps, x["old"], adv, x["mask"], loss_type="gspo", epsilon=0.04)

    assert_matches_reference(fn, ref, (x["logps"],), (0,), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_type", TYPES)
def test_gradcheck(loss_type):
    x = _inputs(4)
    old = x["old"]
    if loss_type == "cispo":
        # the IS weight is detached by definition: finite differences see it move unless it is capped
        old = (x["logps"] - 1.0).masked_fill(~x["mask"], -math.inf)
    kw = {"beta": 0.1, "entropy_coef": 0.05, "epsilon_high": 0.28}

    def fn(logps, entropy, adv):
        return policy_gradient_loss(
            logps, old, adv, x["mask"], ref_logps=x["ref"], entropy=entropy, loss_type=loss_type, **kw
        )

    assert_gradcheck(fn, (x["logps"], x["entropy"], x["adv"]), (0, 1, 2))


# ============================================================================ structure and properties


@pytest.mark.parametrize("normalizer", [None, 5.0])
@pytest.mark.parametrize("loss_type", TYPES)
def test_weights_times_terms_is_the_loss(loss_type, normalizer):
    if loss_type == "bnpo" and normalizer is not None:
        return
    x = _inputs(5)
    kw = {"beta": 0.1, "entropy_coef": 0.02, "epsilon_high": 0.28}
    loss = policy_gradient_loss(
        x["logps"], x["old"], x["adv"], x["mask"], ref_logps=x["ref"], entropy=x["entropy"],
        loss_type=loss_type, max_len=9, normalizer=normalizer, **kw,
    )  # fmt: skip
    terms = token_terms(
        x["logps"], x["old"], x["adv"], x["mask"], ref_logps=x["ref"], entropy=x["entropy"],
        loss_type=loss_type, **kw,
    )  # fmt: skip
    weights = token_weights(x["mask"], loss_type, max_len=9, normalizer=normalizer, dtype=DT)
    assert terms.shape == weights.shape == x["logps"].shape
    assert (terms[~x["mask"]] == 0).all() and (weights[~x["mask"]] == 0).all()
    torch.testing.assert_close((weights * terms).sum(), loss, rtol=1e-13, atol=1e-14)
    n = float(x["mask"].sum())
    total = {"grpo": 4 / 4, "gspo": 4 / 4, "dr_grpo": n / (4 * 9), "dapo": 1.0, "bnpo": 1.0, "cispo": 1.0}
    want = (
        total[loss_type] if normalizer is None else {"grpo": 4, "gspo": 4, "dr_grpo": n}.get(loss_type, n) / 5
    )
    torch.testing.assert_close(weights.sum(), torch.tensor(want, dtype=DT))


@pytest.mark.parametrize("loss_type", TYPES)
def test_on_policy_gradient_is_the_weighted_policy_gradient(loss_type):
    """old_logps=None: ratio 1, value -sum w A (cispo: -sum w A log pi), gradient -w A."""
    x = _inputs(6)
    logps = x["logps"].clone().requires_grad_(True)
    loss = policy_gradient_loss(logps, None, x["adv"], x["mask"], loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, logps)
    w = token_weights(x["mask"], loss_type, dtype=DT)
    A = x["adv"][:, None].expand_as(w)
    torch.testing.assert_close(grad, -w * A, rtol=1e-13, atol=1e-15)
    want = -(w * A * x["logps"]).sum() if loss_type == "cispo" else -(w * A).sum()
    torch.testing.assert_close(loss.detach(), want)


def test_loss_types_coincide_where_their_definitions_do():
    x = _inputs(7)
    args = (x["logps"], x["old"], x["adv"], x["mask"])
    f = policy_gradient_loss
    torch.testing.assert_close(f(*args, loss_type="bnpo"), f(*args, loss_type="dapo"))
    n = x["mask"].sum()
    torch.testing.assert_close(f(*args, loss_type="dapo", normalizer=n), f(*args, loss_type="dapo"))
    torch.testing.assert_close(f(*args, loss_type="grpo", normalizer=4), f(*args, loss_type="grpo"))
    torch.testing.assert_close(f(*args, loss_type="dr_grpo", max_len=6), f(*args, loss_type="dr_grpo"))
    # equal lengths: per-sequence mean == token mean; a full mask: B * T == token count
    full = _inputs(7, lengths=[6, 6, 6, 6])
    args = (full["logps"], full["old"], full["adv"], full["mask"])
    for lt in ("grpo", "dr_grpo"):
        torch.testing.assert_close(f(*args, loss_type=lt), f(*args, loss_type="dapo"))
    torch.testing.assert_close(f(*args[:3], loss_type="dapo"), f(*args, loss_type="dapo"))  # mask=None
    # a sequence of one token: gspo's ratio is the token ratio
    one = _inputs(8, lengths=[1, 1, 1])
    args = (one["logps"], one["old"], one["adv"], one["mask"])
    torch.testing.assert_close(f(*args, loss_type="gspo"), f(*args, loss_type="grpo"))


def test_delta_bounds_the_ratio_of_negative_advantages_only():
    logps = torch.zeros(2, 1, dtype=DT)
    old = torch.full((2, 1), -2.0, dtype=DT)  # ratio e^2 = 7.39
    adv = torch.tensor([1.0, -1.0], dtype=DT)
    per = [
        policy_gradient_loss(logps[i : i + 1], old[i : i + 1], adv[i : i + 1], delta=3.0) for i in range(2)
    ]
    torch.testing.assert_close(per[0], torch.tensor(-1.2, dtype=DT))  # A > 0: the usual clip
    torch.testing.assert_close(per[1], torch.tensor(3.0, dtype=DT))  # A < 0: bounded by delta
    no_delta = policy_gradient_loss(logps[1:], old[1:], adv[1:])
    torch.testing.assert_close(no_delta, torch.tensor(math.exp(2.0), dtype=DT))


def test_cispo_weight_is_capped_and_keeps_the_gradient_of_clipped_tokens():
    logps = torch.tensor([[-1.0, -2.0]], dtype=DT, requires_grad=True)
    old = torch.tensor([[-3.0, -2.1]], dtype=DT)  # ratios e^2 (capped at 1.3) and e^0.1
    loss = policy_gradient_loss(
        logps, old, torch.tensor([-1.0], dtype=DT), loss_type="cispo", epsilon_high=0.3
    )
    (grad,) = torch.autograd.grad(loss, logps)
    # unlike PPO's clip, a capped token still gets a gradient (-w A / N with w = 1.3)
    torch.testing.assert_close(grad, torch.tensor([[1.3 / 2, math.exp(0.1) / 2]], dtype=DT))


# ============================================================================ degenerate inputs


@pytest.mark.parametrize("loss_type", TYPES)
def test_masked_tokens_contribute_exactly_nothing(loss_type):
    """-inf old log-probs, NaN log-probs / reference / entropy on padding: same value, zero gradient."""
    x = _inputs(9)
    m = x["mask"]
    kw = {"beta": 0.1, "entropy_coef": 0.02, "loss_type": loss_type}

    def run(fill_logps, fill_old, fill_ref, fill_ent):
        logps = x["logps"].masked_fill(~m, fill_logps).requires_grad_(True)
        ent = x["entropy"].masked_fill(~m, fill_ent).requires_grad_(True)
        old = x["old"].masked_fill(~m, fill_old)
        ref = x["ref"].masked_fill(~m, fill_ref)
        loss = policy_gradient_loss(logps, old, x["adv_tok"], m, ref_logps=ref, entropy=ent, **kw)
        return (loss, *torch.autograd.grad(loss, (logps, ent)))

    clean = run(0.0, 0.0, 0.0, 0.0)
    dirty = run(math.nan, -math.inf, math.inf, math.nan)
    assert torch.isfinite(dirty[0])
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)
    assert (dirty[1][~m] == 0).all() and (dirty[2][~m] == 0).all()


@pytest.mark.parametrize("loss_type", TYPES)
def test_all_masked_sequence(loss_type):
    x = _inputs(10, lengths=[4, 0, 2])
    logps = x["logps"].clone().requires_grad_(True)
    loss = policy_gradient_loss(logps, x["old"], x["adv"], x["mask"], loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.isfinite(loss) and (grad[1] == 0).all() and torch.isfinite(grad).all()
    keep = [0, 2]
    without = policy_gradient_loss(
        x["logps"][keep], x["old"][keep], x["adv"][keep], x["mask"][keep], loss_type=loss_type,
        normalizer=3 if loss_type in ("grpo", "gspo") else (3 * 6 if loss_type == "dr_grpo" else None),
    )  # fmt: skip
    # the empty row still counts in grpo's / dr_grpo's B (TRL's convention), not in a token count
    torch.testing.assert_close(loss.detach(), without)


@pytest.mark.parametrize("loss_type", TYPES)
@pytest.mark.parametrize("shape", [(3, 4), (0, 4), (3, 0)])
def test_nothing_valid_gives_a_connected_zero(loss_type, shape):
    logps = torch.randn(shape, dtype=DT).requires_grad_(True)
    ent = torch.rand(shape, dtype=DT).requires_grad_(True)
    mask = torch.zeros(shape, dtype=torch.bool)
    old = torch.full(shape, -math.inf, dtype=DT)
    loss = policy_gradient_loss(
        logps, old, torch.ones(shape[0], dtype=DT), mask, ref_logps=old, entropy=ent, beta=0.1,
        entropy_coef=0.1, loss_type=loss_type,
    )  # fmt: skip
    assert_connected_zero(loss, logps, ent)
    module = PolicyGradientLoss(loss_type)
    module(logps, old, torch.ones(shape[0], dtype=DT), mask)
    assert all(torch.isfinite(v) and v == 0 for v in module.last_metrics.values())


@pytest.mark.parametrize("loss_type", TYPES)
def test_zero_advantages_give_zero_loss_and_gradient(loss_type):
    x = _inputs(11)
    logps = x["logps"].clone().requires_grad_(True)
    loss = policy_gradient_loss(logps, x["old"], torch.zeros(4, dtype=DT), x["mask"], loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, logps)
    assert float(loss.detach()) == 0.0 and (grad == 0).all()


@pytest.mark.parametrize("loss_type", TYPES)
@pytest.mark.parametrize("shift", [-1e4, -60.0, 60.0, 1e4])
def test_ratio_far_outside_the_clip_range_is_finite(loss_type, shift):
    x = _inputs(12)
    logps = x["logps"].clone().requires_grad_(True)
    old = x["old"] + shift  # ratios e^-shift: overflow without the clamp
    ref = x["ref"] - shift
    loss = policy_gradient_loss(
        logps, old, x["adv"], x["mask"], ref_logps=ref, beta=0.1, loss_type=loss_type, delta=None
    )
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if loss_type != "cispo" and shift < 0:  # ratio ~0: positive advantages stop at 1 - eps
        y = policy_gradient_loss(logps, old, x["adv"].clamp_min(0.1), x["mask"], loss_type=loss_type)
        (g,) = torch.autograd.grad(y, logps)
        assert (g == 0).all()


@pytest.mark.parametrize("loss_type", PPO_TYPES)
def test_no_gradient_through_a_clamped_log_ratio(loss_type):
    """A log-ratio beyond +-20 is clamped: the ratio is a constant there (token or sequence level)."""
    x = _inputs(18)
    logps = x["logps"].clone().requires_grad_(True)
    old = x["old"] - 60.0  # ratios e^60: clamped at e^20
    loss = policy_gradient_loss(logps, old, -x["adv"].abs(), x["mask"], loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.isfinite(loss) and float(loss.detach()) > 0 and (grad == 0).all()


def test_kl_is_the_k3_estimator_and_finite_for_any_input():
    logps = torch.tensor([[-1.0, -2.0, -3.0]], dtype=DT)
    ref = torch.tensor([[-1.5, -2.0, 1e5]], dtype=DT)
    m = PolicyGradientLoss(beta=0.5)
    loss = m(logps, None, torch.zeros(1, dtype=DT), ref_logps=ref)
    x = [-0.5, 0.0, 20.0]  # the last log-ratio is clamped at 20
    k3 = [math.exp(v) - v - 1 for v in x]
    torch.testing.assert_close(loss, torch.tensor(0.5 * sum(k3) / 3, dtype=DT))
    torch.testing.assert_close(m.last_metrics["kl_mean"], torch.tensor(sum(k3) / 3, dtype=DT))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_type", TYPES)
def test_half_inputs(loss_type, dtype):
    x = _inputs(13)
    half = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in x.items()}
    logps = half["logps"].clone().requires_grad_(True)
    kw = {"beta": 0.1, "entropy_coef": 0.02, "loss_type": loss_type}
    loss = policy_gradient_loss(
        logps, half["old"], half["adv"], half["mask"], ref_logps=half["ref"], entropy=half["entropy"], **kw
    )
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, logps)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    f32 = {k: (v.float() if v.is_floating_point() else v) for k, v in half.items()}
    want = policy_gradient_loss(
        f32["logps"], f32["old"], f32["adv"], f32["mask"], ref_logps=f32["ref"], entropy=f32["entropy"], **kw
    )
    torch.testing.assert_close(loss, want)
    # extreme log-probs (bf16's range) stay finite
    big = (half["logps"].float() * 1e3).to(dtype).requires_grad_(True)
    out = policy_gradient_loss(
        big, half["old"], half["adv"], half["mask"], ref_logps=half["ref"], beta=0.1, loss_type=loss_type
    )
    assert torch.isfinite(out) and torch.isfinite(torch.autograd.grad(out, big)[0]).all()


def test_non_finite_valid_inputs_give_a_non_finite_loss():
    x = _inputs(14)
    for key, value in (("logps", math.inf), ("old", math.inf), ("old", -math.inf), ("adv", math.nan)):
        for lt in TYPES:
            bad = dict(x)
            bad[key] = x[key].clone()
            bad[key].view(-1)[0] = value  # row 0, token 0 is valid
            loss = policy_gradient_loss(bad["logps"], bad["old"], bad["adv"], x["mask"], loss_type=lt)
            assert not torch.isfinite(loss), (key, value, lt)
    for key in ("ref", "entropy"):
        bad = x[key].clone()
        bad[0, 0] = math.inf
        kw = {"ref_logps": bad, "beta": 0.1} if key == "ref" else {"entropy": bad, "entropy_coef": 0.1}
        assert not torch.isfinite(policy_gradient_loss(x["logps"], x["old"], x["adv"], x["mask"], **kw))


# ============================================================================ module, metrics, compile


def test_module_equals_functional_and_round_trips():
    x = _inputs(15)
    kw = {"loss_type": "dapo", "epsilon": 0.1, "epsilon_high": 0.3, "delta": 2.0, "beta": 0.05,
          "entropy_coef": 0.01}  # fmt: skip
    want = policy_gradient_loss(
        x["logps"],
        x["old"],
        x["adv"],
        x["mask"],
        ref_logps=x["ref"],
        entropy=x["entropy"],
        normalizer=9,
        **kw,
    )
    module = PolicyGradientLoss(**kw)
    assert_module_matches(
        module, want, x["logps"], x["old"], x["adv"], x["mask"], ref_logps=x["ref"], entropy=x["entropy"],
        normalizer=9,
    )  # fmt: skip
    assert type(losskit.build("grpo")) is PolicyGradientLoss
    assert losskit.build({"name": "policy_gradient", "loss_type": "gspo"}).loss_type == "gspo"
    assert module.state_dict() == {}
    assert "loss_type='dapo'" in repr(module)


def test_last_metrics():
    logps = torch.zeros(2, 3, dtype=DT)
    old = torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, -math.inf]], dtype=DT)  # ratios e, 1, 1/e
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = torch.tensor([1.0, -1.0], dtype=DT)
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], dtype=DT)
    m = PolicyGradientLoss("dapo", epsilon_high=0.28)
    m(logps, old, adv, mask, ref_logps=logps, entropy=entropy)
    got = {k: float(v) for k, v in m.last_metrics.items()}
    # low: ratio 1/e < 0.8 with A < 0: none (row 1's 1/e is masked); high: row 0's e with A > 0
    assert got["clip_ratio/low_mean"] == 0.0
    assert got["clip_ratio/high_mean"] == pytest.approx(1 / 5)
    assert got["clip_ratio/region_mean"] == pytest.approx(1 / 5)
    assert got["ratio_mean"] == pytest.approx((math.e + 1 + 1 / math.e + math.e + 1) / 5)
    assert got["kl_mean"] == 0.0 and got["entropy_mean"] == pytest.approx(15 / 5)
    old2 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=DT)  # ratio 1/e < 0.8
    m(logps, old2, adv, mask)
    assert float(m.last_metrics["clip_ratio/low_mean"]) == pytest.approx(2 / 5)
    assert "kl_mean" not in m.last_metrics and "entropy_mean" not in m.last_metrics
    c = PolicyGradientLoss("cispo", epsilon_high=0.5)
    c(logps, old, adv, mask)  # e > 1.5 is capped whatever the sign of A
    assert float(c.last_metrics["clip_ratio/high_mean"]) == pytest.approx(2 / 5)


@pytest.mark.parametrize("loss_type", ["grpo", "gspo", "cispo"])
def test_compile_fullgraph_equals_eager(loss_type):
    x = {k: v.float() if v.is_floating_point() else v for k, v in _inputs(16).items()}

    def fn(logps, old, adv, mask, ref, ent, norm):
        return policy_gradient_loss(
            logps, old, adv, mask, ref_logps=ref, entropy=ent, beta=0.1, entropy_coef=0.01,
            loss_type=loss_type, normalizer=norm,
        )  # fmt: skip

    assert_compiles(fn, x["logps"], x["old"], x["adv"], x["mask"], x["ref"], x["entropy"], torch.tensor(3.0))


# ============================================================================ errors


def test_errors_name_the_argument():
    x = _inputs(17)
    lp, old, adv, mask = x["logps"], x["old"], x["adv"], x["mask"]
    f = policy_gradient_loss
    with pytest.raises(
        LossValueError, match=r"old_logps has shape \(4, 5\), expected \(4, 6\) to match logps"
    ):
        f(lp, old[:, :5], adv, mask)
    with pytest.raises(LossValueError, match=r"mask has shape \(3, 6\), expected \(4, 6\) to match logps"):
        f(lp, old, adv, mask[:3])
    with pytest.raises(LossValueError, match=r"ref_logps has shape \(4, 1\), expected \(4, 6\)"):
        f(lp, old, adv, mask, ref_logps=lp[:, :1], beta=0.1)
    with pytest.raises(
        LossValueError, match=r"advantages has shape \(3,\), expected \(4,\) \(one per sequence\) or \(4, 6\)"
    ):
        f(lp, old, adv[:3], mask)
    with pytest.raises(LossValueError, match=r"logps must be 2-D \(B, T\)"):
        f(lp[0], old[0], adv, mask[0])
    with pytest.raises(LossTypeError, match="logps must be a floating-point tensor, got dtype torch.int64"):
        f(lp.long(), old, adv, mask)
    with pytest.raises(LossTypeError, match="mask must be a bool"):
        f(lp, old, adv, mask.to(torch.complex64))
    valid = "'grpo', 'dr_grpo', 'dapo', 'bnpo', 'gspo', 'cispo'"
    with pytest.raises(LossValueError, match=f"loss_type must be one of {valid}, got 'ppo'"):
        f(lp, old, adv, mask, loss_type="ppo")
    with pytest.raises(LossValueError, match=f"loss_type must be one of {valid}, got 'ppo'"):
        PolicyGradientLoss("ppo")
    with pytest.raises(LossTypeError, match="loss_type must be a string"):
        PolicyGradientLoss(["grpo"])
    for eps in (-0.1, 1.5):
        with pytest.raises(LossValueError, match=f"epsilon must be .*, got {eps}"):
            PolicyGradientLoss(epsilon=eps)
    with pytest.raises(LossValueError, match="epsilon_high must be >= 0.0, got -0.2"):
        f(lp, old, adv, mask, epsilon_high=-0.2)
    with pytest.raises(LossValueError, match=r"delta must be >= 1 \+ epsilon_high = 1.28 .*got 1.1"):
        PolicyGradientLoss("dapo", epsilon_high=0.28, delta=1.1)
    with pytest.raises(LossValueError, match="delta must be None for loss_type 'cispo'"):
        PolicyGradientLoss("cispo", delta=2.0)
    with pytest.raises(LossValueError, match="beta must be >= 0.0, got -1"):
        PolicyGradientLoss(beta=-1)
    with pytest.raises(LossValueError, match="ref_logps is required when beta > 0"):
        f(lp, old, adv, mask, beta=0.1)
    with pytest.raises(LossValueError, match="entropy is required when entropy_coef != 0"):
        f(lp, old, adv, mask, entropy_coef=0.1)
    with pytest.raises(LossValueError, match="max_len must be >= 1, got 0"):
        PolicyGradientLoss("dr_grpo", max_len=0)
    with pytest.raises(
        LossValueError, match="normalizer cannot be used with loss_type 'bnpo': it fixes its own"
    ):
        f(lp, old, adv, mask, loss_type="bnpo", normalizer=10.0)
    with pytest.raises(LossValueError, match="normalizer cannot be used with loss_type 'bnpo'"):
        PolicyGradientLoss("bnpo")(lp, old, adv, mask, normalizer=10.0)
    with pytest.raises(LossValueError, match="normalizer must be > 0, got 0"):
        f(lp, old, adv, mask, loss_type="dapo", normalizer=0)
    with pytest.raises(LossValueError, match=r"normalizer must be a scalar tensor, got shape \(2,\)"):
        f(lp, old, adv, mask, normalizer=torch.ones(2))
    with pytest.raises(LossValueError, match="advantages is on meta, expected cpu like logps"):
        f(lp, old, adv.to("meta"), mask)
