"""Preference losses: DPO family, SimPO, CPO, ORPO, KTO, reward model.

References are float64 formulas written from the papers (direct, not log-space: the test inputs keep
them well inside float64's range); none calls the code under test.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import losskit.distributed as D
import losskit.preference as P
from ddp_utils import run_distributed
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
)
from losskit import LossTypeError, LossValueError
from losskit.registry import build, get_spec
from test_distributed import _assert_ranks_agree, _assert_same_run, _grad_gap, _rank_or_none, _rows, _train

DT = torch.float64
RNC = ("none", "mean", "sum")
TYPES = P.DPO_LOSS_TYPES
SMOOTHED = ("sigmoid", "robust", "exo_pair", "aot", "aot_pair")


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logps(n: int, seed: int, scale: float = 3.0, dtype: torch.dtype = DT) -> torch.Tensor:
    """Negative log-probs, distinct values (sorting is stable under the gradcheck's perturbations)."""
    x = -(torch.rand(n, generator=_g(seed), dtype=DT) * scale + 0.1 * torch.arange(n, dtype=DT) / n + 0.05)
    return x.to(dtype)


def _dpo_args(n: int = 6, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, ...]:
    return tuple(_logps(n, seed + i, scale) for i in range(4))


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / max(rows.numel(), 1)


# ---------------------------------------------------------------- float64 references from the papers

sig = torch.sigmoid


def _logsig(x: torch.Tensor) -> torch.Tensor:
    return torch.log(sig(x))


def ref_dpo_rows(pc, pr, rc, rr, beta, loss_type, eps=0.0, tau=0.05, delta=None):
    """One loss type, per pair. h: the DPO margin; rho: the log-ratios to the reference."""
    rho_w, rho_l = pc - rc, pr - rr
    h = (pc - pr) - (rc - rr)
    b = beta
    if loss_type == "sigmoid":  # Rafailov et al. eq. 7; cDPO: expected loss under flipped labels
        return -(1 - eps) * _logsig(b * h) - eps * _logsig(-b * h)
    if loss_type == "robust":  # Chowdhury et al. 2024, eq. for the unbiased loss
        return ((1 - eps) * -_logsig(b * h) - eps * -_logsig(-b * h)) / (1 - 2 * eps)
    if loss_type == "hinge":  # SLiC-HF
        return torch.clamp(1 - b * h, min=0)
    if loss_type == "ipo":  # Azar et al. eq. 17, tau = beta
        return (h - 1 / (2 * b)) ** 2
    if loss_type == "exo_pair":  # EXO: KL(p_theta || p_label), p_label = (1 - e, e)
        e = eps or 1e-3
        p = sig(b * h)
        return p * torch.log(p / (1 - e)) + (1 - p) * torch.log((1 - p) / e)
    if loss_type == "nca_pair":
        return -_logsig(b * rho_w) - 0.5 * _logsig(-b * rho_w) - 0.5 * _logsig(-b * rho_l)
    if loss_type == "bco_pair":
        if delta is None:
            delta = torch.cat([b * rho_w, b * rho_l]).mean().detach()
        return -_logsig(b * rho_w - delta) - _logsig(-(b * rho_l - delta))
    if loss_type == "sppo_hard":  # P(winner) = 1, P(loser) = 0
        return (rho_w - 1 / (2 * b)) ** 2 + (rho_l + 1 / (2 * b)) ** 2
    if loss_type in ("aot", "aot_pair"):
        if loss_type == "aot":
            a, c = torch.sort(pc - pr).values, torch.sort(rc - rr).values
        else:
            a, c = torch.sort(rho_w).values, torch.sort(rho_l).values
        d = a - c
        return -(1 - eps) * _logsig(b * d) - eps * _logsig(-b * d)
    if loss_type == "apo_zero":
        return (1 - sig(b * rho_w)) + sig(b * rho_l)
    if loss_type == "apo_down":
        return sig(b * rho_w) + (1 - sig(b * (rho_w - rho_l)))
    if loss_type == "discopop":
        z = b * h
        m = sig(z / tau)
        return -_logsig(z) * (1 - m) + torch.exp(-z) * m
    raise AssertionError(loss_type)


def ref_kto_rows(p, r, desirable, pk, rk, beta, wd=1.0, wu=1.0, z=None):
    if z is None:
        z = max(0.0, float((pk - rk).mean())) if pk.numel() else 0.0
    rows = []
    for i in range(p.shape[0]):
        reward = p[i] - r[i]
        if desirable[i]:
            rows.append(wd * (1 - sig(beta * (reward - z))))
        else:
            rows.append(wu * (1 - sig(beta * (z - reward))))
    return torch.stack(rows) if rows else p[:0] * 0


def ref_orpo_rows(c, r, beta, nll=None):
    pc, pr = torch.exp(c), torch.exp(r)
    log_or = torch.log(pc / (1 - pc)) - torch.log(pr / (1 - pr))
    return (-c if nll is None else nll) - beta * _logsig(log_or)


# ---------------------------------------------------------------- DPO: values and gradients


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("loss_type", TYPES)
def test_dpo_matches_reference(loss_type, reduction):
    args = _dpo_args()
    for beta, eps in ((0.1, 0.0), (0.7, 0.2)):
        kw = {"beta": beta, "loss_type": loss_type, "label_smoothing": eps, "reduction": reduction}
        use_eps = eps if loss_type in SMOOTHED else 0.0
        assert_matches_reference(
            lambda *a, kw=kw: P.dpo_loss(*a, **kw),
            lambda *a, beta=beta, e=use_eps: _reduce(ref_dpo_rows(*a, beta, loss_type, e), reduction),
            args,
            wrt=(0, 1, 2, 3),
            rtol=1e-9,
            atol=1e-12,
        )


def test_dpo_discopop_tau_and_bco_baseline():
    args = _dpo_args()
    assert_matches_reference(
        lambda *a: P.dpo_loss(*a, beta=0.3, loss_type="discopop", discopop_tau=0.4, reduction="none"),
        lambda *a: ref_dpo_rows(*a, 0.3, "discopop", tau=0.4),
        args,
        wrt=(0, 1),
    )
    for delta in (0.25, torch.tensor([-0.5], dtype=DT)):
        assert_matches_reference(
            lambda *a, d=delta: P.dpo_loss(*a, loss_type="bco_pair", reward_baseline=d, reduction="none"),
            lambda *a, d=delta: ref_dpo_rows(*a, 0.1, "bco_pair", delta=float(d)),
            args,
            wrt=(0, 1, 2, 3),
        )


def test_mpo_weighted_sum_of_loss_types():
    args = _dpo_args()
    types, weights = ["sigmoid", "bco_pair", "ipo"], [0.8, 0.2, 1.5]
    for reduction in RNC:
        got = P.dpo_loss(*args, beta=0.2, loss_type=types, loss_weights=weights, reduction=reduction)
        rows = sum(w * ref_dpo_rows(*args, 0.2, t) for t, w in zip(types, weights))
        torch.testing.assert_close(got, _reduce(rows, reduction))
    # default weights are 1 each; a one-element list is the single loss type
    torch.testing.assert_close(
        P.dpo_loss(*args, loss_type=["sigmoid", "hinge"]),
        P.dpo_loss(*args, loss_type="sigmoid") + P.dpo_loss(*args, loss_type="hinge"),
    )
    torch.testing.assert_close(P.dpo_loss(*args, loss_type=("ipo",)), P.dpo_loss(*args, loss_type="ipo"))


@pytest.mark.parametrize("loss_type", TYPES)
def test_dpo_gradcheck(loss_type):
    args = _dpo_args(5, seed=3)
    kw: dict[str, Any] = {"beta": 0.5, "loss_type": loss_type, "label_smoothing": 0.1}
    if loss_type == "bco_pair":  # the batch-mean baseline is detached: fix it for the finite differences
        kw["reward_baseline"] = 0.1
    assert_gradcheck(lambda *a: P.dpo_loss(*a, reduction="none", **kw), args, (0, 1, 2, 3))


def test_dpo_known_values():
    lp = _logps(4, 1)
    # identical chosen and rejected: h = 0
    torch.testing.assert_close(P.dpo_loss(lp, lp, lp, lp), torch.tensor(math.log(2), dtype=DT))
    torch.testing.assert_close(P.dpo_loss(lp, lp, lp, lp, loss_type="hinge"), torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(
        P.dpo_loss(lp, lp, lp, lp, beta=0.25, loss_type="ipo"), torch.tensor(4.0, dtype=DT)
    )
    # conservative DPO at eps = 0.5 no longer knows which answer was chosen: swapping them changes nothing
    a = _dpo_args()
    pc, pr, rc, rr = a
    torch.testing.assert_close(
        P.dpo_loss(*a, label_smoothing=0.5, reduction="none"),
        P.dpo_loss(pr, pc, rr, rc, label_smoothing=0.5, reduction="none"),
    )
    # robust with eps = 0 and cDPO with eps = 0 are both DPO
    torch.testing.assert_close(P.dpo_loss(*a, loss_type="robust"), P.dpo_loss(*a))


def test_dpo_sigmoid_reference_free_is_cpo_without_nll():
    c, r = _logps(5, 0), _logps(5, 1)
    zero = torch.zeros(5, dtype=DT)
    torch.testing.assert_close(P.dpo_loss(c, r, zero, zero), P.cpo_loss(c, r, alpha=0.0))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 7),
    beta=st.floats(1e-2, 10.0),
    eps=st.floats(0.0, 0.45),
    shift=st.floats(-50.0, 50.0),
    loss_type=st.sampled_from(TYPES),
)
def test_dpo_properties(seed, n, beta, eps, shift, loss_type):
    args = _dpo_args(n, seed, scale=10.0)
    pc, pr, rc, rr = args
    kw = {"beta": beta, "loss_type": loss_type, "label_smoothing": eps}
    rows = P.dpo_loss(*args, reduction="none", **kw)
    torch.testing.assert_close(P.dpo_loss(*args, reduction="sum", **kw), rows.sum())
    torch.testing.assert_close(P.dpo_loss(*args, **kw), rows.sum() / n)
    if loss_type != "robust":  # the unbiased robust loss can be negative
        assert bool((rows >= -1e-12).all())
    # a constant added to a completion's policy and reference log-probs cancels in every type
    torch.testing.assert_close(P.dpo_loss(pc + shift, pr, rc + shift, rr, **kw), P.dpo_loss(*args, **kw))


# ---------------------------------------------------------------- DPO: bco_pair running baseline


def test_bco_functional_baseline_is_the_batch_mean_of_the_rewards():
    args = _dpo_args()
    pc, pr, rc, rr = args
    delta = float(torch.cat([0.1 * (pc - rc), 0.1 * (pr - rr)]).mean())
    torch.testing.assert_close(
        P.dpo_loss(*args, loss_type="bco_pair", reduction="none"),
        ref_dpo_rows(*args, 0.1, "bco_pair", delta=delta),
    )


@pytest.mark.parametrize("momentum", [None, 0.25])
def test_bco_module_running_baseline(momentum):
    m = P.DPOLoss(loss_type="bco_pair", bco_momentum=momentum).double()
    batches = [_dpo_args(4, seed=10 * k, scale=2.0 + k) for k in range(3)]
    means, running = [], None
    for k, batch in enumerate(batches):
        pc, pr, rc, rr = batch
        means.append(float(torch.cat([0.1 * (pc - rc), 0.1 * (pr - rr)]).mean()))
        if momentum is None:
            running = sum(means) / len(means)  # running average of the batch means
        else:
            running = means[0] if k == 0 else (1 - momentum) * running + momentum * means[-1]
        got = m(*batch)
        torch.testing.assert_close(got, ref_dpo_rows(*batch, 0.1, "bco_pair", delta=running).mean())
        assert math.isclose(float(m.reward_baseline), running, rel_tol=1e-12)
        assert math.isclose(float(m.last_metrics["reward_baseline"]), running, rel_tol=1e-12)
    assert int(m.num_baseline_updates) == 3
    # eval mode uses the buffer without updating it; the state dict carries it
    m.eval()
    torch.testing.assert_close(
        m(*batches[0]), ref_dpo_rows(*batches[0], 0.1, "bco_pair", delta=running).mean()
    )
    assert int(m.num_baseline_updates) == 3
    fresh = P.DPOLoss(loss_type="bco_pair", bco_momentum=momentum).double().eval()
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh(*batches[1]), m(*batches[1]))
    # an explicit baseline overrides the buffer and leaves it alone
    torch.testing.assert_close(
        m(*batches[1], reward_baseline=0.3), ref_dpo_rows(*batches[1], 0.1, "bco_pair", delta=0.3).mean()
    )
    # a module that never saw a batch uses the batch mean in eval mode, like the functional
    new = P.DPOLoss(loss_type="bco_pair").double().eval()
    torch.testing.assert_close(new(*batches[2]), P.dpo_loss(*batches[2], loss_type="bco_pair"))
    assert int(new.num_baseline_updates) == 0


# ---------------------------------------------------------------- reference-free losses


@pytest.mark.parametrize("reduction", RNC)
def test_simpo_matches_reference(reduction):
    c, r = _logps(6, 0, 1.5), _logps(6, 1, 1.5)
    for beta, gamma, eps in ((2.0, 0.5, 0.0), (2.5, 1.4, 0.1)):
        assert_matches_reference(
            lambda a, b, kw=(beta, gamma, eps): P.simpo_loss(a, b, *kw, reduction=reduction),
            lambda a, b, beta=beta, gamma=gamma, eps=eps: _reduce(
                -(1 - eps) * _logsig(beta * (a - b) - gamma) - eps * _logsig(-(beta * (a - b) - gamma)),
                reduction,
            ),
            (c, r),
            wrt=(0, 1),
            rtol=1e-9,
            atol=1e-12,
        )


@pytest.mark.parametrize("reduction", RNC)
def test_cpo_matches_reference(reduction):
    c, r = _logps(6, 2, 20.0), _logps(6, 3, 20.0)
    nll = torch.rand(6, generator=_g(4), dtype=DT)
    for beta, alpha, eps in ((0.1, 1.0, 0.0), (0.5, 0.3, 0.2)):
        assert_matches_reference(
            lambda a, b, kw=(beta, eps), alpha=alpha: P.cpo_loss(a, b, *kw, alpha=alpha, reduction=reduction),
            lambda a, b, beta=beta, alpha=alpha, eps=eps: _reduce(
                -(1 - eps) * _logsig(beta * (a - b)) - eps * _logsig(-beta * (a - b)) - alpha * a, reduction
            ),
            (c, r),
            wrt=(0, 1),
            rtol=1e-9,
            atol=1e-12,
        )
        assert_matches_reference(
            lambda a, b, n, beta=beta, alpha=alpha: P.cpo_loss(
                a, b, beta, alpha=alpha, chosen_nll=n, reduction=reduction
            ),
            lambda a, b, n, beta=beta, alpha=alpha: _reduce(-_logsig(beta * (a - b)) + alpha * n, reduction),
            (c, r, nll),
            wrt=(0, 1, 2),
        )


@pytest.mark.parametrize("reduction", RNC)
def test_orpo_matches_reference(reduction):
    c, r = _logps(6, 5, 2.0), _logps(6, 6, 2.0)
    nll = torch.rand(6, generator=_g(7), dtype=DT)
    for beta in (0.1, 1.0):
        assert_matches_reference(
            lambda a, b, beta=beta: P.orpo_loss(a, b, beta, reduction=reduction),
            lambda a, b, beta=beta: _reduce(ref_orpo_rows(a, b, beta), reduction),
            (c, r),
            wrt=(0, 1),
            rtol=1e-9,
            atol=1e-12,
        )
        assert_matches_reference(
            lambda a, b, n, beta=beta: P.orpo_loss(a, b, beta, chosen_nll=n, reduction=reduction),
            lambda a, b, n, beta=beta: _reduce(ref_orpo_rows(a, b, beta, n), reduction),
            (c, r, nll),
            wrt=(0, 1, 2),
        )


def test_orpo_log_odds_stable_near_zero_and_far_below():
    # log(1 - p) with p = exp(x): x near 0 (p -> 1) and x very negative (p -> 0)
    c = torch.tensor([-1e-10, -1e-5, -50.0, -0.6931], dtype=DT, requires_grad=True)
    r = torch.tensor([-3.0, -1e-4, -60.0, -0.7], dtype=DT)
    rows = P.orpo_loss(c, r, 1.0, reduction="none")
    want = []
    for x, y in zip(c.tolist(), r.tolist()):
        lo = (x - math.log(-math.expm1(x))) - (y - math.log(-math.expm1(y)))
        want.append(-x - math.log(1 / (1 + math.exp(-lo))))
    torch.testing.assert_close(rows, torch.tensor(want, dtype=DT), rtol=1e-9, atol=1e-12)
    (g,) = torch.autograd.grad(rows.sum(), c)
    assert torch.isfinite(g).all()
    # an average log-prob of exactly 0 (p = 1, fp32 rounding) stays finite with finite gradients
    c32 = torch.tensor([0.0, -0.5], requires_grad=True)
    out = P.orpo_loss(c32, torch.tensor([-0.5, -0.5]))
    assert_finite_with_grads(out, c32)


@pytest.mark.parametrize("reduction", RNC)
def test_reward_model_matches_reference(reduction):
    rc, rr = torch.randn(6, generator=_g(8), dtype=DT) * 2, torch.randn(6, generator=_g(9), dtype=DT) * 2
    margin = torch.rand(6, generator=_g(10), dtype=DT)
    for m, coef in ((None, None), (margin, 0.01), (0.5, 0.0), (margin, 1.0)):

        def ref(a, b, m=m, coef=coef):
            d = a - b - (0.0 if m is None else m)
            return _reduce(-_logsig(d) + (coef or 0.0) * (a + b) ** 2, reduction)

        assert_matches_reference(
            lambda a, b, m=m, coef=coef: P.reward_model_loss(
                a, b, m, center_rewards_coefficient=coef, reduction=reduction
            ),
            ref,
            (rc, rr),
            wrt=(0, 1),
            rtol=1e-9,
            atol=1e-12,
        )
    # 'mean' is TRL's mean(-logsigmoid) + c * mean((r_w + r_l)^2)
    torch.testing.assert_close(
        P.reward_model_loss(rc, rr, center_rewards_coefficient=0.01),
        -_logsig(rc - rr).mean() + 0.01 * ((rc + rr) ** 2).mean(),
    )


def test_reference_free_gradchecks():
    c, r = _logps(5, 11, 1.5), _logps(5, 12, 1.5)
    nll = torch.rand(5, generator=_g(13), dtype=DT)
    assert_gradcheck(lambda a, b: P.simpo_loss(a, b, 2.5, 0.7, 0.1, reduction="none"), (c, r), (0, 1))
    assert_gradcheck(
        lambda a, b, n: P.cpo_loss(a, b, 0.4, 0.1, chosen_nll=n, reduction="none"), (c, r, nll), (0, 1, 2)
    )
    assert_gradcheck(lambda a, b: P.cpo_loss(a, b, 0.4, reduction="none"), (c, r), (0, 1))
    assert_gradcheck(lambda a, b: P.orpo_loss(a, b, 0.5, reduction="none"), (c, r), (0, 1))
    assert_gradcheck(
        lambda a, b, m: P.reward_model_loss(a, b, m, center_rewards_coefficient=0.1), (c, r, nll), (0, 1, 2)
    )


# ---------------------------------------------------------------- KTO


def _kto_args(n: int = 8, m: int = 6, seed: int = 20):
    p, r = _logps(n, seed, 6.0), _logps(n, seed + 1, 6.0)
    desirable = torch.rand(n, generator=_g(seed + 2)) > 0.4
    pk, rk = _logps(m, seed + 3, 2.0), _logps(m, seed + 4, 8.0)  # KL mean > 0
    return p, r, desirable, pk, rk


@pytest.mark.parametrize("reduction", RNC)
def test_kto_matches_reference(reduction):
    p, r, d, pk, rk = _kto_args()
    assert float((pk - rk).mean()) > 0
    for beta, wd, wu in ((0.1, 1.0, 1.0), (0.5, 1.33, 0.7)):
        kw = {"desirable_weight": wd, "undesirable_weight": wu, "reduction": reduction}
        assert_matches_reference(
            lambda a, b, beta=beta, kw=kw: P.kto_loss(a, b, d, pk, rk, beta, **kw),
            lambda a, b, beta=beta, wd=wd, wu=wu: _reduce(
                ref_kto_rows(a, b, d, pk, rk, beta, wd, wu), reduction
            ),
            (p, r),
            wrt=(0, 1),
            rtol=1e-9,
            atol=1e-12,
        )
    # a KL estimate below zero is clamped at 0
    neg = P.kto_loss(p, r, d, rk, pk, reduction=reduction)
    torch.testing.assert_close(neg, _reduce(ref_kto_rows(p, r, d, rk, pk, 0.1, z=0.0), reduction))


def test_kto_kl_is_detached_and_can_be_passed():
    p, r, d, pk, rk = _kto_args()
    pk = pk.clone().requires_grad_(True)
    loss = P.kto_loss(p, r, d, pk, rk)
    assert not loss.requires_grad  # nothing else needs a gradient here: the KL term is detached
    z = float((pk - rk).mean().detach())
    torch.testing.assert_close(P.kto_loss(p, r, d, kl=z), P.kto_loss(p, r, d, pk.detach(), rk))
    torch.testing.assert_close(
        P.kto_loss(p, r, d, kl=torch.tensor(z, dtype=DT)), P.kto_loss(p, r, d, pk.detach(), rk)
    )
    torch.testing.assert_close(P.kto_loss(p, r, d, kl=-1.0), P.kto_loss(p, r, d, kl=0.0))  # clamped
    assert_gradcheck(lambda a, b: P.kto_loss(a, b, d, pk.detach(), rk, 0.7, reduction="none"), (p, r), (0, 1))


def test_kto_all_desirable_or_undesirable_and_empty_kl_batch():
    p, r, _, pk, rk = _kto_args()
    for d in (torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)):
        m = P.KTOLoss()
        torch.testing.assert_close(m(p, r, d, pk, rk), ref_kto_rows(p, r, d, pk, rk, 0.1).mean())
        assert all(torch.isfinite(v) for v in m.last_metrics.values())
    d = torch.ones(8, dtype=torch.bool)
    torch.testing.assert_close(P.kto_loss(p, r, d, pk[:0], rk[:0]), P.kto_loss(p, r, d, kl=0.0))


# ---------------------------------------------------------------- metrics of the modules


def test_dpo_module_metrics():
    args = _dpo_args()
    pc, pr, rc, rr = args
    m = P.DPOLoss(beta=0.2, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.1])
    value = m(*args)
    torch.testing.assert_close(
        value, P.dpo_loss(*args, beta=0.2, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.1])
    )
    cw, rw = 0.2 * (pc - rc), 0.2 * (pr - rr)
    want = {
        "chosen_rewards": cw.mean(),
        "rejected_rewards": rw.mean(),
        "reward_accuracy": (cw > rw).double().mean(),
        "reward_margin": (cw - rw).mean(),
        "chosen_logps": pc.mean(),
        "rejected_logps": pr.mean(),
    }
    assert set(m.last_metrics) == set(want)
    for k, v in want.items():
        got = m.last_metrics[k]
        assert got.dim() == 0 and not got.requires_grad
        torch.testing.assert_close(got, v, msg=k)


def test_reference_free_and_reward_model_metrics():
    c, r = _logps(6, 30, 1.5), _logps(6, 31, 1.5)
    for module, extra in (
        (P.SimPOLoss(beta=2.0), {}),
        (P.CPOLoss(beta=2.0), {"nll": (-c).mean()}),
        (P.ORPOLoss(beta=2.0), {"nll": (-c).mean()}),
    ):
        cl, rl = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
        module(cl, rl).backward()
        mt = module.last_metrics
        torch.testing.assert_close(mt["chosen_rewards"], 2.0 * c.mean())
        torch.testing.assert_close(mt["rejected_rewards"], 2.0 * r.mean())
        torch.testing.assert_close(mt["reward_accuracy"], (c > r).double().mean())
        torch.testing.assert_close(mt["reward_margin"], 2.0 * (c - r).mean())
        for k, v in extra.items():
            torch.testing.assert_close(mt[k], v)
        assert all(v.dim() == 0 and not v.requires_grad for v in mt.values())
    orpo = P.ORPOLoss(beta=2.0)
    orpo(c, r)
    log_or = torch.log(torch.exp(c) / (1 - torch.exp(c))) - torch.log(torch.exp(r) / (1 - torch.exp(r)))
    torch.testing.assert_close(orpo.last_metrics["log_odds_chosen"], log_or.mean())
    torch.testing.assert_close(orpo.last_metrics["log_odds_ratio"], _logsig(log_or).mean())
    rm = P.RewardModelLoss()
    rm(c, r)
    torch.testing.assert_close(rm.last_metrics["reward_margin"], (c - r).mean())
    torch.testing.assert_close(rm.last_metrics["reward_accuracy"], (c > r).double().mean())


def test_kto_module_metrics():
    p, r, d, pk, rk = _kto_args()
    m = P.KTOLoss(beta=0.3)
    m(p, r, d, pk, rk)
    z = (pk - rk).mean()
    rw = 0.3 * (p - r)
    mt = m.last_metrics
    torch.testing.assert_close(mt["kl"], z)
    torch.testing.assert_close(mt["chosen_rewards"], rw[d].mean())
    torch.testing.assert_close(mt["rejected_rewards"], rw[~d].mean())
    torch.testing.assert_close(mt["reward_margin"], rw[d].mean() - rw[~d].mean())
    correct = [
        (bool(di) and float(p[i] - r[i]) > float(z)) or (not di and float(p[i] - r[i]) < float(z))
        for i, di in enumerate(d)
    ]
    torch.testing.assert_close(mt["reward_accuracy"], torch.tensor(sum(correct) / 8, dtype=DT))
    assert float(mt["num_desirable"]) == int(d.sum()) and float(mt["num_undesirable"]) == int((~d).sum())


# ---------------------------------------------------------------- degenerate inputs


def _all_calls():
    """name -> (functional, args, module) for every loss (and every DPO loss type)."""
    calls = {
        f"dpo:{t}": (
            lambda *a, t=t, **kw: P.dpo_loss(*a, loss_type=t, **kw),
            _dpo_args(),
            P.DPOLoss(loss_type=t),
        )
        for t in TYPES
    }
    c, r = _logps(6, 40, 1.5), _logps(6, 41, 1.5)
    calls["simpo"] = (P.simpo_loss, (c, r), P.SimPOLoss())
    calls["cpo"] = (P.cpo_loss, (c, r), P.CPOLoss())
    calls["orpo"] = (P.orpo_loss, (c, r), P.ORPOLoss())
    calls["kto"] = (P.kto_loss, _kto_args(), P.KTOLoss())
    calls["reward_model"] = (
        lambda a, b, **kw: P.reward_model_loss(a, b, center_rewards_coefficient=0.01, **kw),
        (c * 3, r * 3),
        P.RewardModelLoss(center_rewards_coefficient=0.01),
    )
    return calls


CALLS = sorted(_all_calls())


@pytest.mark.parametrize("name", CALLS)
def test_empty_batch_gives_connected_zero(name):
    fn, args, module = _all_calls()[name]
    empty = [a[:0].clone() for a in args]
    leaves = [a.requires_grad_(True) for a in empty if a.is_floating_point()]
    for reduction in ("mean", "sum"):
        assert_connected_zero(fn(*empty, reduction=reduction), *leaves)
    assert fn(*empty, reduction="none").shape == (0,)
    assert_connected_zero(module.double()(*empty), *leaves)
    assert all(torch.isfinite(v) for v in module.last_metrics.values())


@pytest.mark.parametrize("loss_type", TYPES)
def test_identical_chosen_and_rejected(loss_type):
    lp = _logps(5, 50)
    z = torch.zeros((), dtype=DT)
    got = P.dpo_loss(lp, lp, lp, lp, loss_type=loss_type)
    want = ref_dpo_rows(lp, lp, lp, lp, 0.1, loss_type).mean()
    torch.testing.assert_close(got, want)
    # with h = rho = 0 every type has a closed form
    closed = {
        "sigmoid": math.log(2),
        "robust": math.log(2),
        "hinge": 1.0,
        "ipo": 25.0,
        "nca_pair": 2 * math.log(2),
        "bco_pair": 2 * math.log(2),
        "sppo_hard": 50.0,
        "aot": math.log(2),
        "aot_pair": math.log(2),
        "apo_zero": 1.0,
        "apo_down": 1.0,
        "discopop": 0.5 * math.log(2) + 0.5,
        "exo_pair": math.log(0.5 / (1 - 1e-3)) * 0.5 + math.log(0.5 / 1e-3) * 0.5,
    }
    torch.testing.assert_close(got, z + closed[loss_type])


@pytest.mark.parametrize("beta", [1e-3, 1e3])
@pytest.mark.parametrize("name", CALLS)
def test_beta_extremes_and_large_margins_stay_finite(name, beta):
    fn, args, _ = _all_calls()[name]
    if name == "reward_model":
        args = (args[0] * 1e3, args[1] * 1e3)  # no beta: large rewards instead
        kw = {}
    else:
        kw = {"beta": beta}
    # large log-prob gaps: summed log-probs of long completions (+- hundreds)
    scaled = [a * (1.0 if name in ("orpo", "simpo") else 100.0) if a.is_floating_point() else a for a in args]
    for dtype in (torch.float32, DT):
        call = [a.to(dtype) if a.is_floating_point() else a for a in scaled]
        leaves = [a.requires_grad_(True) for a in call if a.is_floating_point()]
        if name == "kto":
            leaves = leaves[:2]  # the KL estimate is detached: its log-probs get no gradient
        assert_finite_with_grads(fn(*call, **kw), *leaves)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", CALLS)
def test_half_inputs_equal_float32_on_rounded_values(name, dtype):
    fn, args, _ = _all_calls()[name]
    half = [a.to(dtype) if a.is_floating_point() else a for a in args]
    f32 = [a.float() if a.is_floating_point() else a for a in half]
    hl = [a.clone().requires_grad_(True) if a.is_floating_point() else a for a in half]
    fl = [a.clone().requires_grad_(True) if a.is_floating_point() else a for a in f32]
    for reduction in RNC:
        out, ref = fn(*hl, reduction=reduction), fn(*fl, reduction=reduction)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    gh = torch.autograd.grad(
        fn(*hl).sum(), [a for a in hl if a.is_floating_point() and a.requires_grad][:2], allow_unused=True
    )
    gf = torch.autograd.grad(
        fn(*fl).sum(), [a for a in fl if a.is_floating_point() and a.requires_grad][:2], allow_unused=True
    )
    for a, b in zip(gh, gf):
        if b is None:
            continue
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.to(dtype).float())


# ---------------------------------------------------------------- non-finite inputs


@pytest.mark.parametrize("name", CALLS)
def test_nan_in_any_input_gives_non_finite_loss(name):
    fn, args, module = _all_calls()[name]
    for i, a in enumerate(args):
        if not a.is_floating_point():
            continue
        bad = list(args)
        bad[i] = a.clone()
        bad[i][1] = float("nan")
        for reduction in ("mean", "sum"):
            assert not torch.isfinite(fn(*bad, reduction=reduction)), f"input {i}, {reduction}"
        assert not torch.isfinite(module.double()(*bad)), f"module, input {i}"
    if name == "kto":
        p, r, d, _, _ = args
        assert not torch.isfinite(P.kto_loss(p, r, d, kl=torch.tensor(float("nan"), dtype=DT)))
    if name == "reward_model":
        assert not torch.isfinite(P.reward_model_loss(*args, torch.full((6,), float("nan"), dtype=DT)))
    if name in ("cpo", "orpo"):
        nll = torch.zeros(6, dtype=DT)
        nll[2] = float("nan")
        assert not torch.isfinite(fn(*args, chosen_nll=nll))


@pytest.mark.parametrize("value", [math.inf, -math.inf])
@pytest.mark.parametrize("name", CALLS)
def test_inf_in_any_input_gives_non_finite_loss_or_error(name, value):
    """An infinite log-prob or reward is never a valid input: the loss is non-finite (or a value check
    raises), where the formula alone would saturate to a finite limit (-log sigmoid(+inf) = 0)."""
    fn, args, _ = _all_calls()[name]
    for i, a in enumerate(args):
        if not a.is_floating_point():
            continue
        bad = list(args)
        bad[i] = a.clone()
        bad[i][1] = value
        try:
            out = fn(*bad, reduction="none")
        except LossValueError:
            continue
        assert not torch.isfinite(fn(*bad)), f"input {i}"
        if name in ("dpo:aot", "dpo:aot_pair"):  # rows are ranks of the sorted batch
            assert not torch.isfinite(out).all(), f"input {i}"
        elif a.shape == out.shape:
            assert not torch.isfinite(out[1]), f"input {i}, reduction='none'"
        else:  # KTO's mismatched rows enter every row through the KL estimate
            assert not torch.isfinite(out).any(), f"input {i}"


# ---------------------------------------------------------------- errors


def test_bad_shapes_and_dtypes():
    pc, pr, rc, rr = _dpo_args()
    with pytest.raises(
        LossValueError,
        match=r"policy_rejected_logps has shape \(5,\), expected \(6,\) to match policy_chosen_logps",
    ):
        P.dpo_loss(pc, pr[:5], rc, rr)
    with pytest.raises(LossValueError, match=r"ref_rejected_logps has shape \(5,\), expected \(6,\)"):
        P.DPOLoss()(pc, pr, rc, rr[:5])
    with pytest.raises(
        LossValueError,
        match=r"policy_chosen_logps must be 1-D \(one value per sequence\), got shape \(6, 1\)",
    ):
        P.dpo_loss(pc[:, None], pr, rc, rr)
    with pytest.raises(
        LossTypeError, match="ref_chosen_logps must be a floating-point tensor, got dtype torch.int64"
    ):
        P.dpo_loss(pc, pr, rc.long(), rr)
    with pytest.raises(LossTypeError, match="policy_chosen_logps must be a torch.Tensor, got list"):
        P.simpo_loss([-1.0], pr)
    with pytest.raises(LossValueError, match=r"policy_rejected_logps has shape \(4,\), expected \(6,\)"):
        P.simpo_loss(pc, pr[:4])
    with pytest.raises(
        LossTypeError, match="policy_rejected_logps must be a floating-point tensor, got dtype torch.int32"
    ):
        P.cpo_loss(pc, pr.int())
    with pytest.raises(
        LossValueError, match=r"chosen_nll has shape \(3,\), expected \(6,\) to match policy_chosen_logps"
    ):
        P.cpo_loss(pc, pr, chosen_nll=pc[:3])
    with pytest.raises(LossValueError, match=r"chosen_rewards must be 1-D"):
        P.reward_model_loss(pc[None], pr[None])
    with pytest.raises(
        LossValueError, match=r"margin has shape \(2,\), expected \(6,\) to match chosen_rewards"
    ):
        P.reward_model_loss(pc, pr, pc[:2])
    with pytest.raises(LossTypeError, match="margin must be a floating-point tensor"):
        P.reward_model_loss(pc, pr, torch.ones(6, dtype=torch.long))
    with pytest.raises(
        LossValueError, match=r"reward_baseline must be a number or a one-element tensor, got shape \(2,\)"
    ):
        P.dpo_loss(pc, pr, rc, rr, loss_type="bco_pair", reward_baseline=torch.zeros(2, dtype=DT))


def test_orpo_rejects_positive_log_probs():
    with pytest.raises(
        LossValueError,
        match=r"policy_rejected_logps must be log-probabilities \(<= 0\), got a maximum of 0.5",
    ):
        P.orpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, 0.5]))


def test_kto_errors():
    p, r, d, pk, rk = _kto_args()
    with pytest.raises(LossTypeError, match="desirable must be a bool tensor .*got dtype torch.int64"):
        P.kto_loss(p, r, d.long(), pk, rk)
    with pytest.raises(
        LossValueError, match=r"desirable has shape \(7,\), expected \(8,\) to match policy_logps"
    ):
        P.kto_loss(p, r, d[:7], pk, rk)
    with pytest.raises(
        LossValueError, match=r"ref_logps has shape \(7,\), expected \(8,\) to match policy_logps"
    ):
        P.KTOLoss()(p, r[:7], d, pk, rk)
    with pytest.raises(
        LossValueError, match=r"ref_kl_logps has shape \(5,\), expected \(6,\) to match policy_kl_logps"
    ):
        P.kto_loss(p, r, d, pk, rk[:5])
    with pytest.raises(
        LossValueError, match="ref_kl_logps is None: KTO needs the log-probs of mismatched completions"
    ):
        P.kto_loss(p, r, d, pk)
    with pytest.raises(LossValueError, match="kl is given, so policy_kl_logps and ref_kl_logps must be None"):
        P.kto_loss(p, r, d, pk, rk, kl=0.1)
    with pytest.raises(LossValueError, match="kl must not be NaN"):
        P.kto_loss(p, r, d, kl=float("nan"))
    with pytest.raises(LossValueError, match="desirable_weight must be >= 0.0, got -1"):
        P.KTOLoss(desirable_weight=-1)
    with pytest.raises(LossTypeError, match="undesirable_weight must be a number, got str"):
        P.kto_loss(p, r, d, pk, rk, undesirable_weight="1")


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, float("inf")])
def test_beta_must_be_positive_and_finite(bad):
    args = _dpo_args()
    pattern = r"beta must be (> 0.0|< inf), got"
    for call in (
        lambda: P.dpo_loss(*args, beta=bad),
        lambda: P.DPOLoss(beta=bad),
        lambda: P.simpo_loss(args[0], args[1], beta=bad),
        lambda: P.CPOLoss(beta=bad),
        lambda: P.orpo_loss(args[0], args[1], beta=bad),
        lambda: P.KTOLoss(beta=bad),
    ):
        with pytest.raises(LossValueError, match=pattern):
            call()
    with pytest.raises(LossTypeError, match="beta must be a number, got NoneType"):
        P.DPOLoss(beta=None)


def test_loss_type_and_weight_errors():
    args = _dpo_args()
    valid = r"'sigmoid', 'robust', 'hinge', 'ipo', 'exo_pair', 'nca_pair', 'bco_pair', 'sppo_hard', 'aot', 'aot_pair', 'apo_zero', 'apo_down', 'discopop'"
    with pytest.raises(LossValueError, match=rf"loss_type must be one of {valid}, got 'kto_pair'"):
        P.dpo_loss(*args, loss_type="kto_pair")
    with pytest.raises(LossValueError, match=r"loss_type\[1\] must be one of 'sigmoid'.*got 'dpo'"):
        P.DPOLoss(loss_type=["sigmoid", "dpo"])
    with pytest.raises(LossValueError, match="loss_type must name at least one of sigmoid"):
        P.DPOLoss(loss_type=[])
    with pytest.raises(LossTypeError, match="loss_type must be a string or a list of strings, got int 3"):
        P.DPOLoss(loss_type=3)
    with pytest.raises(LossTypeError, match=r"loss_type\[0\] must be a string, got int"):
        P.DPOLoss(loss_type=[1])
    with pytest.raises(
        LossValueError,
        match=r"loss_weights has 1 entries, expected 2 \(one per loss_type \['sigmoid', 'bco_pair'\]\)",
    ):
        P.DPOLoss(loss_type=["sigmoid", "bco_pair"], loss_weights=[1.0])
    with pytest.raises(LossValueError, match=r"loss_weights\[1\] must be >= 0.0, got -0.5"):
        P.dpo_loss(*args, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, -0.5])
    with pytest.raises(LossValueError, match=r"loss_weights\[0\] must not be NaN"):
        P.dpo_loss(*args, loss_type=["sigmoid"], loss_weights=[float("nan")])
    with pytest.raises(LossTypeError, match="loss_weights must be a list of numbers"):
        P.DPOLoss(loss_type=["sigmoid"], loss_weights=1.0)
    with pytest.raises(LossValueError, match="label_smoothing must be <= 0.5, got 0.6"):
        P.DPOLoss(label_smoothing=0.6)
    with pytest.raises(LossValueError, match="label_smoothing must be < 0.5 for loss_type 'robust'"):
        P.dpo_loss(*args, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(LossValueError, match="discopop_tau must be > 0.0, got 0"):
        P.DPOLoss(loss_type="discopop", discopop_tau=0)
    with pytest.raises(LossValueError, match="bco_momentum must be > 0.0, got 0"):
        P.DPOLoss(loss_type="bco_pair", bco_momentum=0)
    with pytest.raises(LossValueError, match="gamma must be >= 0.0, got -1"):
        P.SimPOLoss(gamma=-1)
    with pytest.raises(LossValueError, match="alpha must be >= 0.0, got -1"):
        P.cpo_loss(args[0], args[1], alpha=-1)
    with pytest.raises(LossValueError, match="center_rewards_coefficient must be >= 0.0, got -0.1"):
        P.RewardModelLoss(center_rewards_coefficient=-0.1)
    with pytest.raises(LossValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
        P.dpo_loss(*args, reduction="avg")
    with pytest.raises(LossValueError, match="normalizer is only used with reduction='mean'"):
        P.dpo_loss(*args, reduction="sum", normalizer=3.0)


def test_reduction_follows_the_hyperparameters_positionally():
    args = _dpo_args()
    c, r = args[0], args[1]
    torch.testing.assert_close(
        P.dpo_loss(*args, 0.2, "ipo", 0.0, "sum"),
        P.dpo_loss(*args, beta=0.2, loss_type="ipo", reduction="sum"),
    )
    torch.testing.assert_close(
        P.simpo_loss(c, r, 2.0, 0.5, 0.0, "none"), P.simpo_loss(c, r, reduction="none")
    )
    torch.testing.assert_close(P.orpo_loss(c, r, 0.1, "sum"), P.orpo_loss(c, r, reduction="sum"))
    torch.testing.assert_close(
        P.reward_model_loss(c, r, None, "sum"), P.reward_model_loss(c, r, reduction="sum")
    )


def test_normalizer_replaces_the_mean_denominator():
    args = _dpo_args()
    torch.testing.assert_close(P.dpo_loss(*args, normalizer=4.0), P.dpo_loss(*args, reduction="sum") / 4.0)
    m = P.KTOLoss()
    kto = _kto_args()
    torch.testing.assert_close(m(*kto, normalizer=torch.tensor(2.0)), P.kto_loss(*kto, reduction="sum") / 2.0)


# ---------------------------------------------------------------- module == functional, round trips, compile


def _module_cases():
    args = _dpo_args()
    c, r = _logps(6, 60, 1.5), _logps(6, 61, 1.5)
    kto = _kto_args()
    return [
        (
            P.DPOLoss(beta=0.3, loss_type="ipo", reduction="sum"),
            P.dpo_loss(*args, beta=0.3, loss_type="ipo", reduction="sum"),
            args,
        ),
        (
            P.DPOLoss(loss_type=["sigmoid", "bco_pair"], loss_weights=[0.8, 0.2], label_smoothing=0.1),
            P.dpo_loss(
                *args, loss_type=["sigmoid", "bco_pair"], loss_weights=[0.8, 0.2], label_smoothing=0.1
            ),
            args,
        ),
        (P.SimPOLoss(2.5, 1.0, reduction="none"), P.simpo_loss(c, r, 2.5, 1.0, reduction="none"), (c, r)),
        (P.CPOLoss(0.2, alpha=0.5), P.cpo_loss(c, r, 0.2, alpha=0.5), (c, r)),
        (P.ORPOLoss(0.25), P.orpo_loss(c, r, 0.25), (c, r)),
        (P.KTOLoss(0.2, desirable_weight=1.3), P.kto_loss(*kto, beta=0.2, desirable_weight=1.3), kto),
        (
            P.RewardModelLoss(center_rewards_coefficient=0.01),
            P.reward_model_loss(c, r, center_rewards_coefficient=0.01),
            (c, r),
        ),
    ]


@pytest.mark.parametrize("index", range(7))
def test_module_equals_functional_and_round_trips(index):
    module, value, args = _module_cases()[index]
    module = module.double()
    if "bco_pair" in getattr(module, "_types", ()):
        module.eval()  # round trips would otherwise keep updating the running baseline
        module.reward_baseline.fill_(
            float(torch.cat([0.1 * (args[0] - args[2]), 0.1 * (args[1] - args[3])]).mean())
        )
        module.num_baseline_updates.fill_(1)
    assert_module_matches(module, value, *args)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    assert pickle.loads(pickle.dumps(module)).last_metrics.keys() == module.last_metrics.keys()
    assert copy.deepcopy(module)(*args).dtype == DT


def test_registry_names_build_the_modules():
    for name, cls in (
        ("dpo", P.DPOLoss),
        ("simpo", P.SimPOLoss),
        ("cpo", P.CPOLoss),
        ("orpo", P.ORPOLoss),
        ("kto", P.KTOLoss),
        ("reward_model", P.RewardModelLoss),
        ("bradley_terry", P.RewardModelLoss),
    ):
        assert isinstance(build(name), cls)
        assert get_spec(name).family == "preference"
    m = build({"name": "dpo", "loss_type": ["sigmoid", "bco_pair"], "loss_weights": [1.0, 0.5]})
    assert m.loss_type == ["sigmoid", "bco_pair"] and "bco_pair" in repr(m)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "discopop", ["sigmoid", "hinge", "aot"]])
def test_dpo_compile_fullgraph_equals_eager(loss_type):
    args = tuple(a.float() for a in _dpo_args())
    assert_compiles(lambda *a: P.dpo_loss(*a, loss_type=loss_type), *args)
    module = P.DPOLoss(loss_type=loss_type)
    assert_compiles(lambda *a: module(*a), *args)
    assert set(module.last_metrics) >= {"chosen_rewards", "reward_accuracy"}


def test_other_losses_compile_fullgraph_equals_eager():
    c, r = _logps(6, 70, 1.5, torch.float32), _logps(6, 71, 1.5, torch.float32)
    kto = [a.float() if a.is_floating_point() else a for a in _kto_args()]
    assert_compiles(lambda a, b: P.simpo_loss(a, b), c, r)
    assert_compiles(lambda a, b: P.cpo_loss(a, b, 0.3), c, r)
    assert_compiles(lambda a, b: P.orpo_loss(a, b, 0.3), c, r)  # value checks are skipped while tracing
    assert_compiles(lambda *a: P.kto_loss(*a), *kto)
    assert_compiles(lambda a, b: P.reward_model_loss(a, b, center_rewards_coefficient=0.01), c, r)
    for module, args in ((P.KTOLoss(), kto), (P.ORPOLoss(), (c, r)), (P.RewardModelLoss(), (c, r))):
        assert_compiles(lambda *a, m=module: m(*a), *args)


# ---------------------------------------------------------------- DDP: KTO's KL and BCO's baseline


def _kto_model() -> nn.Module:
    return nn.Linear(3, 1).to(DT)


def kto_batch(step: int) -> dict[str, torch.Tensor]:
    """8 rows of (features, reference log-prob, desirable) and 8 mismatched rows for the KL estimate.

    The mismatched rows 0-5 have a small reference gap, rows 6-7 a large one, so the per-rank KL
    means differ from the global mean under any split.
    """
    g = _g(500 + step)
    ref_kl = -torch.rand(8, generator=g, dtype=DT) * 2 - 1.0
    ref_kl[6:] -= 6.0
    return {
        "x": torch.randn(8, 3, generator=g, dtype=DT),
        "ref": -torch.rand(8, generator=g, dtype=DT) * 3,
        "desirable": torch.tensor([True, False, True, True, False, True, False, False]),
        "x_kl": torch.randn(8, 3, generator=g, dtype=DT),
        "ref_kl": ref_kl,
    }


def _kto_run(variant: str, kl_sizes: list[int] | None) -> dict[str, Any]:
    rank = _rank_or_none()
    rows, kl_rows = _rows(8, None, rank), _rows(8, kl_sizes, rank)
    module = P.KTOLoss(beta=0.5, gather_distributed=True)

    def step_loss(model: nn.Module, step: int) -> None:
        b = kto_batch(step)
        logps = -nn.functional.softplus(model(b["x"][rows])).squeeze(-1)
        kl_logps = -nn.functional.softplus(model(b["x_kl"][kl_rows])).squeeze(-1)
        args = (logps, b["ref"][rows], b["desirable"][rows], kl_logps, b["ref_kl"][kl_rows])
        if variant == "module":
            loss = module(*args)
        else:
            loss = P.kto_loss(*args, beta=0.5, gather_distributed=variant == "function")
        loss.backward()

    return _train(_kto_model, step_loss)


def _kto_worker(rank: int, world: int, kl_sizes: list[int] | None) -> dict[str, Any]:
    out = {v: _kto_run(v, kl_sizes) for v in ("function", "module", "local")}
    # BCO's batch-mean baseline over uneven ranks: the global mean of the 2B rewards
    b = kto_batch(0)
    rows = _rows(8, kl_sizes or [4, 4], rank)
    args = (b["ref"][rows], b["ref_kl"][rows], b["ref"][rows] * 0.5, b["ref_kl"][rows] * 0.5)
    out["bco"] = P.dpo_loss(*args, loss_type="bco_pair", gather_distributed=True, reduction="sum")
    return out


@pytest.mark.parametrize("kl_sizes", [None, [6, 2]])
def test_ddp_kto_kl_estimate_matches_single_process(kl_sizes):
    results = run_distributed(_kto_worker, kl_sizes)
    ref = _kto_run("local", None)  # one process: the KL estimate over all 8 mismatched rows
    _assert_ranks_agree([r["function"] for r in results])
    _assert_same_run(results[0]["function"], ref)
    _assert_same_run(results[0]["module"], ref)
    assert _grad_gap(results[0]["local"], ref) > 1e-3  # each rank using its own KL estimate
    b = kto_batch(0)
    whole = (b["ref"], b["ref_kl"], b["ref"] * 0.5, b["ref_kl"] * 0.5)
    torch.testing.assert_close(
        sum(r["bco"] for r in results), P.dpo_loss(*whole, loss_type="bco_pair", reduction="sum")
    )


def test_flags_without_process_group_change_nothing():
    assert not D.is_initialized()
    kto = _kto_args()
    torch.testing.assert_close(P.kto_loss(*kto, gather_distributed=True), P.kto_loss(*kto))
    args = _dpo_args()
    torch.testing.assert_close(
        P.dpo_loss(*args, loss_type="bco_pair", gather_distributed=True),
        P.dpo_loss(*args, loss_type="bco_pair"),
    )
