"""Distillation losses: definition-of-done tests against plain float64 loops and the seed's own formulas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import losskit
import losskit.functional as LF
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    extreme_logits,
)
from losskit import LossTypeError, LossValueError
from losskit._kernels import fused_kernels

# ---------------------------------------------------------------- independent float64 references (loops)


def ref_softmax(z, T):
    """Softmax of a 1-D tensor written out: exp(z_c / T - max) / sum."""
    z = z / T
    e = torch.exp(z - z.max())
    return e / e.sum()


def ref_kl(p, q):
    """KL(p || q) of two 1-D probability vectors, terms with p == 0 dropped."""
    total = p.new_zeros(())
    for c in range(p.numel()):
        if float(p[c].detach()) > 0:
            total = total + p[c] * (torch.log(p[c]) - torch.log(q[c]))
    return total


def ref_rows(s, t, dim):
    """Iterate over the class vectors of s and t along ``dim``: returns lists and the rows' shape."""
    sm = s.movedim(dim, -1)
    tm = t.movedim(dim, -1)
    shape = sm.shape[:-1]
    return sm.reshape(-1, sm.shape[-1]), tm.reshape(-1, tm.shape[-1]), shape


def ref_reduce(rows, reduction, batch):
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if reduction == "batchmean":
        return rows.sum() / max(batch, 1)
    return rows.sum() / max(rows.numel(), 1)


def ref_kd(s, t, T, reduction="batchmean", dim=1):
    S, Tt, shape = ref_rows(s, t, dim)
    vals = [T * T * ref_kl(ref_softmax(Tt[i], T), ref_softmax(S[i], T)) for i in range(S.shape[0])]
    rows = torch.stack(vals).reshape(shape)
    return ref_reduce(rows, reduction, s.shape[0])


def ref_dkd(s, t, y, alpha, beta, T, reduction="batchmean"):
    vals = []
    for i in range(s.shape[0]):
        ps, pt = ref_softmax(s[i], T), ref_softmax(t[i], T)
        k = int(y[i])
        bs = torch.stack([ps[k], 1 - ps[k]])
        bt = torch.stack([pt[k], 1 - pt[k]])
        tckd = ref_kl(bt, bs)
        others = [c for c in range(s.shape[1]) if c != k]
        ns = ref_softmax(s[i][others], T)  # softmax over the non-target classes only
        nt = ref_softmax(t[i][others], T)
        nckd = ref_kl(nt, ns)
        vals.append(T * T * (alpha * tckd + beta * nckd))
    return ref_reduce(torch.stack(vals), reduction, s.shape[0])


def ref_jsd_token(s, t, beta, T):
    ps, pt = ref_softmax(s, T), ref_softmax(t, T)
    if beta == 0:
        return ref_kl(pt, ps)
    if beta == 1:
        return ref_kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * ref_kl(pt, m) + (1 - beta) * ref_kl(ps, m)


def ref_jsd(s, t, beta, T, target=None, ignore_index=-100, reduction="mean", normalizer=None):
    V = s.shape[-1]
    S, Tt = s.reshape(-1, V), t.reshape(-1, V)
    flat_y = None if target is None else target.reshape(-1)
    vals, count = [], 0
    for i in range(S.shape[0]):
        if flat_y is not None and int(flat_y[i]) == ignore_index:
            vals.append(S[i].sum() * 0.0)
            continue
        vals.append(ref_jsd_token(S[i], Tt[i], beta, T))
        count += 1
    rows = torch.stack(vals).reshape(s.shape[:-1]) if vals else s.new_zeros(s.shape[:-1])
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if normalizer is not None:
        return rows.sum() / normalizer
    return rows.sum() / count if count else rows.sum() * 0.0


def ref_cosine_rows(s, t, dim):
    S, Tt, shape = ref_rows(s, t, dim)
    vals = []
    for i in range(S.shape[0]):
        dot = sum(S[i][c] * Tt[i][c] for c in range(S.shape[1]))
        vals.append(1 - dot / (torch.sqrt((S[i] ** 2).sum()) * torch.sqrt((Tt[i] ** 2).sum())))
    return torch.stack(vals).reshape(shape)


def _logits(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _labels(n, c, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randint(0, c, (n,), generator=g)


# ---------------------------------------------------------------- KD


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
@pytest.mark.parametrize(("shape", "dim"), [((5, 4), 1), ((3, 4, 2), 1), ((2, 3, 6), -1)])
def test_kd_matches_loop_reference(reduction, shape, dim):
    s, t = _logits(shape, 0), _logits(shape, 1)
    assert_matches_reference(
        lambda a, b: LF.kd_loss(a, b, 2.5, reduction, dim=dim),
        lambda a, b: ref_kd(a, b, 2.5, reduction, dim),
        (s, t),
        (0, 1),
    )


def test_kd_equals_torch_kl_div_batchmean_times_t2():
    s, t = _logits((6, 5), 2), _logits((6, 5), 3)
    for T in (1.0, 2.0, 4.0):
        torch_value = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
        torch.testing.assert_close(LF.kd_loss(s, t, T), torch_value)
    # 'mean' here is the mean over samples (torch's 'mean' would also divide by C)
    torch.testing.assert_close(LF.kd_loss(s, t, 2.0, "mean"), LF.kd_loss(s, t, 2.0, "batchmean"))


def test_kd_direction_and_t_squared_factor():
    s = torch.tensor([[6.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 2.0, -6.0]], dtype=torch.float64)
    # written by hand: KL(p_T || p_S) at T = 2, times T^2 = 4
    ps = torch.exp(s[0] / 2) / torch.exp(s[0] / 2).sum()
    pt = torch.exp(t[0] / 2) / torch.exp(t[0] / 2).sum()
    forward_kl = float((pt * (pt / ps).log()).sum())
    reverse_kl = float((ps * (ps / pt).log()).sum())
    assert abs(forward_kl - reverse_kl) > 1e-2  # the direction is distinguishable here
    assert abs(float(LF.kd_loss(s, t, 2.0)) - 4.0 * forward_kl) < 1e-12
    assert abs(float(LF.kd_loss(t, s, 2.0)) - 4.0 * reverse_kl) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kd_low_precision_extremes(dtype):
    s = extreme_logits((6, 5), dtype, 0).requires_grad_(True)
    t = extreme_logits((6, 5), dtype, 1).requires_grad_(True)
    for T in (1.0, 4.0):
        loss = LF.kd_loss(s, t, T)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, s, t)


# ---------------------------------------------------------------- KD + CE (seed objective)


def seed_objective(student_output, teacher_output, target, alpha, T):
    """The seed's distillation_step loss, re-typed."""
    criterion = nn.CrossEntropyLoss()
    distillation_loss = nn.KLDivLoss(reduction="batchmean")
    soft_loss = distillation_loss(
        nn.functional.log_softmax(student_output / T, dim=1), nn.functional.softmax(teacher_output / T, dim=1)
    ) * (T * T)
    hard_loss = criterion(student_output, target)
    return soft_loss * alpha + hard_loss * (1 - alpha)


@pytest.mark.parametrize(("alpha", "T"), [(0.1, 3.0), (0.7, 1.0), (0.0, 2.0), (1.0, 5.0)])
def test_distillation_loss_equals_seed_formula(alpha, T):
    s, t, y = _logits((7, 5), 4), _logits((7, 5), 5), _labels(7, 5)
    assert_matches_reference(
        lambda a, b: LF.distillation_loss(a, b, y, alpha, T),
        lambda a, b: seed_objective(a, b, y, alpha, T),
        (s, t),
        (0, 1),
    )
    module = losskit.DistillationLoss(alpha=alpha, temperature=T)
    assert_module_matches(module, LF.distillation_loss(s, t, y, alpha, T), s, t, y)


def test_distillation_loss_ignore_index_and_spatial():
    s, t, y = _logits((6, 4), 6), _logits((6, 4), 7), _labels(6, 4, 1)
    y[[1, 4]] = -100
    keep = y != -100
    expected = 0.3 * ref_kd(s.double(), t.double(), 2.0) + 0.7 * F.cross_entropy(s.double()[keep], y[keep])
    torch.testing.assert_close(LF.distillation_loss(s, t, y, 0.3, 2.0).double(), expected)
    # everything ignored: the CE term is 0, the teacher term remains
    y_all = torch.full((6,), -100)
    torch.testing.assert_close(
        LF.distillation_loss(s, t, y_all, 0.3, 2.0).double(), 0.3 * ref_kd(s.double(), t.double(), 2.0)
    )
    # (N, C, d): KD averaged over samples and positions, like the CE term
    s3, t3 = _logits((2, 4, 3), 8), _logits((2, 4, 3), 9)
    y3 = torch.randint(0, 4, (2, 3), generator=torch.Generator().manual_seed(0))
    expected3 = 0.5 * ref_kd(s3.double(), t3.double(), 2.0, "mean") + 0.5 * F.cross_entropy(s3.double(), y3)
    torch.testing.assert_close(LF.distillation_loss(s3, t3, y3, 0.5, 2.0).double(), expected3)


# ---------------------------------------------------------------- DKD


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
def test_dkd_matches_loop_reference(reduction):
    s, t, y = _logits((5, 6), 10), _logits((5, 6), 11), _labels(5, 6, 2)
    assert_matches_reference(
        lambda a, b: LF.dkd_loss(a, b, y, 1.0, 8.0, 4.0, reduction=reduction),
        lambda a, b: ref_dkd(a, b, y, 1.0, 8.0, 4.0, reduction),
        (s, t),
        (0, 1),
    )
    assert_matches_reference(
        lambda a, b: LF.dkd_loss(a, b, y, 0.5, 2.0, 1.0, reduction=reduction),
        lambda a, b: ref_dkd(a, b, y, 0.5, 2.0, 1.0, reduction),
        (s, t),
        (0, 1),
    )


def test_dkd_decomposes_kd():
    # Zhao et al. eq. (5): KD = TCKD + (1 - p_t^teacher) * NCKD, per sample
    s, t, y = _logits((6, 5), 12).double(), _logits((6, 5), 13).double(), _labels(6, 5, 3)
    T = 2.0
    tckd = LF.dkd_loss(s, t, y, 1.0, 0.0, T, reduction="none")
    nckd = LF.dkd_loss(s, t, y, 0.0, 1.0, T, reduction="none")
    pt_target = F.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tckd + (1 - pt_target) * nckd, LF.kd_loss(s, t, T, "none"))


def test_dkd_warmup_factor():
    s, t, y = _logits((4, 5), 14), _logits((4, 5), 15), _labels(4, 5, 4)
    full = LF.dkd_loss(s, t, y)
    torch.testing.assert_close(LF.dkd_loss(s, t, y, warmup=20, epoch=5), full * 0.25)
    torch.testing.assert_close(LF.dkd_loss(s, t, y, warmup=20, epoch=40), full)
    m = losskit.DKDLoss(warmup=10)
    torch.testing.assert_close(m(s, t, y, epoch=1), full * 0.1)
    with pytest.raises(LossValueError, match="epoch is required when warmup is given"):
        m(s, t, y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dkd_low_precision_extremes_and_certain_teacher(dtype):
    s = extreme_logits((6, 5), dtype, 2).requires_grad_(True)
    t = extreme_logits((6, 5), dtype, 3).requires_grad_(True)
    y = _labels(6, 5, 5)
    loss = LF.dkd_loss(s, t, y)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, s, t)
    # a teacher that is certain of the target class (p_t == 1 in float32)
    certain = torch.zeros(3, 4)
    certain[torch.arange(3), torch.tensor([0, 1, 2])] = 200.0
    st_ = torch.randn(3, 4, requires_grad=True)
    assert_finite_with_grads(LF.dkd_loss(st_, certain, torch.tensor([0, 1, 2])), st_)


# ---------------------------------------------------------------- generalised JSD


BETAS = [0.0, 1e-3, 0.5, 1 - 1e-3, 1.0]


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_jsd_matches_loop_reference_token_level(beta, reduction):
    s, t = _logits((2, 3, 5), 20), _logits((2, 3, 5), 21)
    y = torch.tensor([[1, -100, 2], [0, 3, -100]])
    assert_matches_reference(
        lambda a, b: LF.jsd_loss(a, b, beta, 1.5, y, reduction=reduction),
        lambda a, b: ref_jsd(a, b, beta, 1.5, y, reduction=reduction),
        (s, t),
        (0, 1),
    )
    # (N, V) without a target
    s2, t2 = _logits((4, 6), 22), _logits((4, 6), 23)
    assert_matches_reference(
        lambda a, b: LF.jsd_loss(a, b, beta, reduction=reduction),
        lambda a, b: ref_jsd(a, b, beta, 1.0, reduction=reduction),
        (s2, t2),
        (0, 1),
    )


def test_jsd_ends_are_kl_and_jump():
    s, t = _logits((4, 6), 24).double(), _logits((4, 6), 25).double()
    torch.testing.assert_close(LF.jsd_loss(s, t, 0.0), LF.kd_loss(s, t, 1.0, "mean"))  # KL(p_T || p_S)
    torch.testing.assert_close(LF.jsd_loss(s, t, 1.0), LF.kd_loss(t, s, 1.0, "mean"))  # KL(p_S || p_T)
    # just inside the ends the mixture is almost one of the two distributions: the value is tiny
    assert float(LF.jsd_loss(s, t, 1e-3)) < 0.01 * float(LF.jsd_loss(s, t, 0.0))
    assert float(LF.jsd_loss(s, t, 1 - 1e-3)) < 0.01 * float(LF.jsd_loss(s, t, 1.0))


def test_jsd_token_mean_and_normalizer():
    s, t = _logits((2, 4, 5), 26), _logits((2, 4, 5), 27)
    y = torch.tensor([[1, 2, -100, -100], [0, 1, 2, 3]])
    per_token = LF.jsd_loss(s, t, target=y, reduction="none")
    assert per_token.shape == (2, 4)
    assert float(per_token[0, 2]) == 0.0
    torch.testing.assert_close(
        LF.jsd_loss(s, t, target=y), per_token.sum() / 6
    )  # 6 counted tokens, not B = 2
    # gradient accumulation: micro-batch sums divided by the window's token count add up to the full loss
    parts = [LF.jsd_loss(s[i : i + 1], t[i : i + 1], target=y[i : i + 1], normalizer=6) for i in range(2)]
    torch.testing.assert_close(parts[0] + parts[1], LF.jsd_loss(s, t, target=y))
    m = losskit.JSDLoss()
    torch.testing.assert_close(m(s, t, y, normalizer=torch.tensor(6.0)), LF.jsd_loss(s, t, target=y))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.95))
def test_jsd_properties(seed, beta):
    s, t = _logits((3, 5), seed).double(), _logits((3, 5), seed + 1).double()
    v = LF.jsd_loss(s, t, beta, reduction="none")
    assert (v >= -1e-12).all()
    assert (v <= -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta)) + 1e-9).all()  # <= H(beta)
    torch.testing.assert_close(LF.jsd_loss(s, t, 0.5), LF.jsd_loss(t, s, 0.5))  # symmetric at 0.5
    torch.testing.assert_close(LF.jsd_loss(s, t, beta), LF.jsd_loss(t, s, 1 - beta))
    assert float(LF.jsd_loss(s, s, beta)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_low_precision_extremes(dtype, beta):
    s = extreme_logits((2, 3, 7), dtype, 4).requires_grad_(True)
    t = extreme_logits((2, 3, 7), dtype, 5).requires_grad_(True)
    loss = LF.jsd_loss(s, t, beta)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, s, t)


# ---------------------------------------------------------------- feature distillation


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("shape", "dim"), [((4, 6), 1), ((2, 3, 2, 2), 1), ((2, 3, 4), -1)])
def test_feature_matches_reference(reduction, shape, dim):
    s, t = _logits(shape, 30), _logits(shape, 31)
    assert_matches_reference(
        lambda a, b: LF.feature_distillation_loss(a, b, "mse", reduction),
        lambda a, b: getattr(
            F.mse_loss(a, b, reduction="none"), {"none": "clone"}.get(reduction, reduction)
        )(),
        (s, t),
        (0, 1),
    )
    assert_matches_reference(
        lambda a, b: LF.feature_distillation_loss(a, b, "cosine", reduction, dim=dim),
        lambda a, b: ref_reduce(ref_cosine_rows(a, b, dim), reduction, a.shape[0]),
        (s, t),
        (0, 1),
    )


def test_feature_projector_linear_and_1x1_conv():
    torch.manual_seed(0)
    m2 = losskit.FeatureDistillationLoss(student_dim=3, teacher_dim=5)
    s2, t2 = torch.randn(4, 3), torch.randn(4, 5)
    expected = F.mse_loss(s2 @ m2.projector.weight.T + m2.projector.bias, t2)
    torch.testing.assert_close(m2(s2, t2), expected)
    m4 = losskit.FeatureDistillationLoss(student_dim=3, teacher_dim=5, kind="cosine")
    s4, t4 = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    conv = F.conv2d(s4, m4.projector.weight[:, :, None, None], m4.projector.bias)
    expected4 = (1 - F.cosine_similarity(conv, t4, dim=1)).mean()
    torch.testing.assert_close(m4(s4, t4), expected4)
    # the projector learns: its parameters receive gradients
    m4(s4, t4).backward()
    assert m4.projector.weight.grad is not None and m4.projector.weight.grad.abs().sum() > 0
    # same widths: no projector, equal to the functional
    same = losskit.FeatureDistillationLoss(student_dim=5, teacher_dim=5)
    assert same.projector is None and len(list(same.parameters())) == 0
    with pytest.raises(LossValueError, match=r"expected size 3 \(student_dim\) along dim 1"):
        m2(torch.randn(4, 4), t2)
    with pytest.raises(LossValueError, match="give both student_dim and teacher_dim"):
        losskit.FeatureDistillationLoss(student_dim=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_low_precision_extremes(dtype, kind):
    s = extreme_logits((4, 6), dtype, 6).requires_grad_(True)
    t = extreme_logits((4, 6), dtype, 7).requires_grad_(True)
    loss = LF.feature_distillation_loss(s, t, kind)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, s, t)


# ---------------------------------------------------------------- gradcheck, degenerate, properties


def test_gradcheck_all():
    s, t, y = _logits((3, 4), 40), _logits((3, 4), 41), _labels(3, 4, 6)
    assert_gradcheck(lambda a, b: LF.kd_loss(a, b, 2.0), (s, t), (0, 1))
    assert_gradcheck(lambda a, b: LF.distillation_loss(a, b, y, 0.3, 2.0), (s, t), (0, 1))
    assert_gradcheck(lambda a, b: LF.dkd_loss(a, b, y, 1.0, 8.0, 2.0), (s, t), (0, 1))
    for beta in (0.0, 0.3, 1.0):
        assert_gradcheck(lambda a, b, beta=beta: LF.jsd_loss(a, b, beta, 1.5), (s, t), (0, 1))
    for kind in ("mse", "cosine"):
        assert_gradcheck(lambda a, b, kind=kind: LF.feature_distillation_loss(a, b, kind), (s, t), (0, 1))


def test_empty_and_all_ignored():
    s = torch.zeros(0, 5, requires_grad=True)
    t = torch.zeros(0, 5)
    y = torch.zeros(0, dtype=torch.long)
    for reduction in ("batchmean", "mean", "sum"):
        assert_connected_zero(LF.kd_loss(s, t, reduction=reduction), s)
        assert_connected_zero(LF.dkd_loss(s, t, y, reduction=reduction), s)
    assert LF.kd_loss(s, t, reduction="none").shape == (0,)
    assert_connected_zero(LF.distillation_loss(s, t, y), s)
    assert_connected_zero(LF.jsd_loss(s, t), s)
    assert_connected_zero(LF.feature_distillation_loss(s, t, "cosine"), s)
    assert_connected_zero(LF.feature_distillation_loss(s, t, "mse"), s)
    s3 = torch.randn(2, 3, 5, requires_grad=True)
    assert_connected_zero(LF.jsd_loss(s3, torch.randn(2, 3, 5), target=torch.full((2, 3), -100)), s3)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 8.0))
def test_kd_dkd_properties(seed, T):
    s, t = _logits((4, 5), seed).double(), _logits((4, 5), seed + 1).double()
    y = _labels(4, 5, seed)
    kd = LF.kd_loss(s, t, T, "none")
    assert (kd >= -1e-12).all()
    torch.testing.assert_close(LF.kd_loss(s, t, T, "sum"), kd.sum())
    torch.testing.assert_close(LF.kd_loss(s, t, T, "mean") * 4, kd.sum())
    assert float(LF.kd_loss(s, s, T)) == pytest.approx(0.0, abs=1e-12)
    assert (LF.dkd_loss(s, t, y, 1.0, 8.0, T, reduction="none") >= -1e-12).all()
    assert float(LF.dkd_loss(s, s, y, 1.0, 8.0, T)) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- Distiller and distillation_step


def _bn_teacher():
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))


def test_distiller_keeps_teacher_frozen_and_in_eval():
    torch.manual_seed(0)
    teacher, student = _bn_teacher(), nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    teacher.train()  # a teacher handed over in train mode
    distiller = losskit.Distiller(student, teacher, losskit.DistillationLoss(alpha=0.5, temperature=2.0))
    distiller.train()
    assert not distiller.teacher.training and all(not m.training for m in distiller.teacher.modules())
    assert distiller.student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    bn = teacher[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    student_bn_before = student[1].running_mean.clone()
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    teacher_out_first = None
    for _ in range(3):
        loss = distiller(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if teacher_out_first is None:
            teacher_out_first = distiller.last_teacher_output.clone()
        distiller.train()
    torch.testing.assert_close(bn.running_mean, stats[0], rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, stats[1], rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == int(stats[2])
    assert not torch.equal(student[1].running_mean, student_bn_before)  # the student does train
    assert all(p.grad is None for p in teacher.parameters())
    # dropout off: the teacher is deterministic across calls
    torch.testing.assert_close(distiller.last_teacher_output, teacher_out_first)
    assert distiller.last_student_output.shape == (16, 4) and not distiller.last_student_output.requires_grad
    # without a target the loss gets two arguments
    kd = losskit.Distiller(student, teacher, losskit.KDLoss(temperature=2.0))
    torch.testing.assert_close(kd(x), LF.kd_loss(student(x), teacher(x), 2.0))
    # teacher.train() called directly is undone at the next forward
    teacher.train()
    distiller(x, y)
    assert not teacher.training


def test_distiller_with_feature_projector_trains_projector():
    torch.manual_seed(1)
    teacher = nn.Linear(5, 12)
    student = nn.Linear(5, 4)
    distiller = losskit.Distiller(student, teacher, losskit.FeatureDistillationLoss(4, 12))
    trainable = [n for n, p in distiller.named_parameters() if p.requires_grad]
    assert sorted(trainable) == [
        "loss.projector.bias",
        "loss.projector.weight",
        "student.bias",
        "student.weight",
    ]
    distiller(torch.randn(3, 5)).backward()
    assert distiller.loss.projector.weight.grad is not None


class SeedTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )

    def forward(self, x):
        return self.fc(x)


class SeedStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.fc(x)


def test_distillation_step_equals_seed_step():
    torch.manual_seed(0)
    teacher, student = SeedTeacher(), SeedStudent()
    seed_student = copy.deepcopy(student)
    data, target = torch.randn(8, 784), torch.randint(0, 10, (8,))

    # the seed's step, re-typed (optimizer was a global there)
    seed_optimizer = torch.optim.SGD(seed_student.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    distillation_loss = nn.KLDivLoss(reduction="batchmean")
    alpha, T = 0.1, 3
    seed_losses = []
    for _ in range(2):
        student_output = seed_student(data)
        teacher_output = teacher(data).detach()
        soft_loss = distillation_loss(
            nn.functional.log_softmax(student_output / T, dim=1),
            nn.functional.softmax(teacher_output / T, dim=1),
        ) * (T * T)
        hard_loss = criterion(student_output, target)
        loss = soft_loss * alpha + hard_loss * (1 - alpha)
        seed_losses.append(loss.detach())
        seed_optimizer.zero_grad()
        loss.backward()
        seed_optimizer.step()

    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    ours = [losskit.distillation_step(student, teacher, data, target, optimizer) for _ in range(2)]
    for a, b in zip(ours, seed_losses):
        torch.testing.assert_close(a, b)
    for p, q in zip(student.parameters(), seed_student.parameters()):
        torch.testing.assert_close(p, q)
    assert teacher.training  # the teacher's mode is restored
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(LossTypeError, match="distillation_step needs the optimizer"):
        losskit.distillation_step(student, teacher, data, target)


def test_distillation_step_leaves_teacher_bn_alone():
    torch.manual_seed(2)
    teacher, student = _bn_teacher(), nn.Linear(6, 4)
    before = teacher[1].running_mean.clone()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    losskit.distillation_step(student, teacher, torch.randn(8, 6), torch.randint(0, 4, (8,)), opt)
    torch.testing.assert_close(teacher[1].running_mean, before, rtol=0, atol=0)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_have_clear_messages():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    with pytest.raises(LossValueError, match=r"teacher_logits has shape \(4, 3\), expected \(4, 5\)"):
        LF.kd_loss(s, torch.randn(4, 3))
    with pytest.raises(LossValueError, match="temperature must be > 0.0, got 0"):
        LF.kd_loss(s, t, 0)
    with pytest.raises(LossValueError, match="reduction must be one of 'batchmean', 'mean', 'sum', 'none'"):
        LF.kd_loss(s, t, reduction="avg")
    with pytest.raises(LossTypeError, match="student_logits must be a floating-point tensor"):
        LF.kd_loss(y, t)
    with pytest.raises(LossValueError, match=r"student_logits must be at least 2-D, got shape \(5,\)"):
        LF.kd_loss(s[0], t[0])
    with pytest.raises(LossValueError, match=r"dim must be in \[-2, 1\] for a 2-D input, got 2"):
        LF.kd_loss(s, t, dim=2)
    with pytest.raises(LossValueError, match=r"alpha must be <= 1.0, got 1.5"):
        losskit.DistillationLoss(alpha=1.5)
    with pytest.raises(LossValueError, match=r"target contains class index 7, expected values in \[0, 5\)"):
        LF.distillation_loss(s, t, torch.tensor([0, 1, 7, 2]))
    with pytest.raises(LossValueError, match=r"target has shape \(3,\), expected \(4,\)"):
        LF.dkd_loss(s, t, y[:3])
    with pytest.raises(LossValueError, match="student_logits must be 2-D"):
        LF.dkd_loss(torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(LossValueError, match="expected at least 2 classes"):
        LF.dkd_loss(s[:, :1], t[:, :1], torch.zeros(4, dtype=torch.long))
    with pytest.raises(LossValueError, match=r"beta must be >= 0.0"):
        losskit.DKDLoss(beta=-1)
    with pytest.raises(LossValueError, match=r"beta must be <= 1.0, got 2"):
        LF.jsd_loss(s, t, beta=2)
    with pytest.raises(
        LossValueError, match=r"target has shape \(4, 5\), expected \(4,\) .*vocabulary is the last"
    ):
        LF.jsd_loss(s, t, target=torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(LossTypeError, match="target must be an integer tensor"):
        LF.jsd_loss(s, t, target=torch.zeros(4))
    with pytest.raises(LossValueError, match="normalizer is only used with reduction='mean'"):
        LF.jsd_loss(s, t, reduction="sum", normalizer=3)
    with pytest.raises(LossValueError, match="kind must be one of 'mse', 'cosine', got 'l2'"):
        LF.feature_distillation_loss(s, t, "l2")
    with pytest.raises(LossTypeError, match="teacher must be an nn.Module"):
        losskit.Distiller(nn.Linear(2, 2), "teacher", losskit.KDLoss())


# ---------------------------------------------------------------- modules, serialisation, compile, registry


def test_modules_match_functionals_roundtrip_and_compile():
    s, t, y = _logits((4, 5), 50), _logits((4, 5), 51), _labels(4, 5, 7)
    cases = [
        (losskit.KDLoss(temperature=2.0), LF.kd_loss(s, t, 2.0), (s, t)),
        (losskit.KDLoss(2.0, "none"), LF.kd_loss(s, t, 2.0, "none"), (s, t)),
        (losskit.DistillationLoss(0.3, 2.0), LF.distillation_loss(s, t, y, 0.3, 2.0), (s, t, y)),
        (losskit.DKDLoss(1.0, 4.0, 2.0), LF.dkd_loss(s, t, y, 1.0, 4.0, 2.0), (s, t, y)),
        (losskit.JSDLoss(0.3, 2.0), LF.jsd_loss(s, t, 0.3, 2.0), (s, t)),
        (losskit.JSDLoss(1.0), LF.jsd_loss(s, t, 1.0), (s, t)),
        (
            losskit.FeatureDistillationLoss(kind="cosine"),
            LF.feature_distillation_loss(s, t, "cosine"),
            (s, t),
        ),
    ]
    for i, (module, value, args) in enumerate(cases):
        assert_module_matches(module, value, *args)
        if i in (0, 3, 4):  # compile is slow on CPU: KD, DKD and JSD (the other paths share their pieces)
            assert_compiles(lambda *a, module=module: module(*a), *args)
    proj = losskit.FeatureDistillationLoss(5, 3)
    t3 = _logits((4, 3), 52)
    assert_module_matches(proj, proj(s, t3), s, t3)
    assert_compiles(lambda a, b: proj(a, b), s, t3)


def test_registry():
    for name, cls in (
        ("kd", losskit.KDLoss),
        ("distillation", losskit.DistillationLoss),
        ("dkd", losskit.DKDLoss),
        ("jsd", losskit.JSDLoss),
        ("feature_distillation", losskit.FeatureDistillationLoss),
    ):
        assert name in losskit.available("distillation")
        assert isinstance(losskit.build(name), cls)
    assert losskit.build("dkd", beta=2.0).beta == 2.0
    assert losskit.build({"name": "jsd", "beta": 0.1}).beta == 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_distillation_loss_low_precision_extremes(dtype):
    s = extreme_logits((6, 5), dtype, 8).requires_grad_(True)
    t = extreme_logits((6, 5), dtype, 9)
    y = _labels(6, 5, 9)
    for module in (losskit.DistillationLoss(), losskit.KDLoss(), losskit.DKDLoss()):
        loss = module(s, t, y) if not isinstance(module, losskit.KDLoss) else module(s, t)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, s)
    proj = losskit.FeatureDistillationLoss(5, 3)
    loss = proj(s, extreme_logits((6, 3), dtype, 10))
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, s)


def test_teacher_with_minus_inf_logits():
    # padded / banned classes masked with -inf in both models (common for LM vocabularies)
    s = _logits((3, 6), 60)
    t = _logits((3, 6), 61)
    s[:, 4:] = float("-inf")
    t[:, 4:] = float("-inf")
    s.requires_grad_(True)
    t.requires_grad_(True)
    ref_s, ref_t = s.detach()[:, :4].double(), t.detach()[:, :4].double()
    for beta in (0.0, 0.5, 1.0):
        for T in (1.0, 0.5):
            v = LF.jsd_loss(s, t, beta, T)
            torch.testing.assert_close(v.double(), LF.jsd_loss(ref_s, ref_t, beta, T))
            assert_finite_with_grads(v, s, t)
    v = LF.kd_loss(s, t, 2.0)
    torch.testing.assert_close(v.double(), LF.kd_loss(ref_s, ref_t, 2.0))
    assert_finite_with_grads(v, s, t)
    y = torch.tensor([0, 3, 1])
    v = LF.dkd_loss(s, t, y)
    torch.testing.assert_close(v.double(), ref_dkd(ref_s, ref_t, y, 1.0, 8.0, 4.0))
    assert_finite_with_grads(v, s, t)
    v = LF.distillation_loss(s, t, y)
    torch.testing.assert_close(v.double(), seed_objective(ref_s, ref_t, y, 0.1, 3.0))
    assert_finite_with_grads(v, s, t)
    # only the teacher masks a class: still finite, equal to the KL with p_T = 0 there
    s2 = _logits((3, 6), 62).requires_grad_(True)
    t2 = _logits((3, 6), 63)
    t2[:, 0] = float("-inf")
    ref = ref_kd(s2.detach().double(), t2.double(), 1.0)
    torch.testing.assert_close(LF.kd_loss(s2, t2, 1.0).double(), ref)
    assert_finite_with_grads(LF.kd_loss(s2, t2, 1.0), s2)


# ---------------------------------------------------------------- half inputs mean the float32 values


def ref_log_softmax(z, T):
    """log softmax(z / T) of a 1-D tensor: z / T - logsumexp (finite where the softmax underflows)."""
    z = z / T
    return z - torch.logsumexp(z, 0)


def ref_kl_log(lp, lq):
    """KL(p || q) from log-probabilities: sum_c p_c (log p_c - log q_c), terms with p_c == 0 dropped."""
    return sum(lp[c].exp() * (lp[c] - lq[c]) for c in range(lp.numel()) if float(lp[c].detach().exp()) > 0)


def ref_log_space_losses(s, t, y, T, alpha=0.1):
    """Per-row KD, JSD_beta (beta 0, 0.5, 1), DKD and the seed objective in float64 log-space (loops),
    so logits ~1e5 apart (where a probability underflows to 0) have a finite reference."""
    out = {"kd": 0.0, "jsd0": 0.0, "jsd": 0.0, "jsd1": 0.0, "dkd": 0.0, "ce": 0.0}
    n = s.shape[0]
    for i in range(n):
        ls, lt = ref_log_softmax(s[i], T), ref_log_softmax(t[i], T)
        out["kd"] = out["kd"] + T * T * ref_kl_log(lt, ls) / n
        out["jsd0"] = out["jsd0"] + ref_kl_log(lt, ls) / n
        out["jsd1"] = out["jsd1"] + ref_kl_log(ls, lt) / n
        lm = torch.logaddexp(lt + math.log(0.5), ls + math.log(0.5))
        out["jsd"] = out["jsd"] + (0.5 * ref_kl_log(lt, lm) + 0.5 * ref_kl_log(ls, lm)) / n
        k = int(y[i])
        others = [c for c in range(s.shape[1]) if c != k]
        bin_s = torch.stack([ls[k], torch.logsumexp(ls[others], 0)])
        bin_t = torch.stack([lt[k], torch.logsumexp(lt[others], 0)])
        nckd = ref_kl_log(ref_log_softmax(t[i][others], T), ref_log_softmax(s[i][others], T))
        out["dkd"] = out["dkd"] + T * T * (ref_kl_log(bin_t, bin_s) + 8.0 * nckd) / n
        out["ce"] = out["ce"] - ref_log_softmax(s[i], 1.0)[k] / n
    out["distillation"] = alpha * out["kd"] + (1 - alpha) * out.pop("ce")
    return out


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_at_a_low_temperature_mean_their_float32_values(dtype, fused):
    """A finite logit far below the others (-1e4) is the same number in fp16 / bf16 and float32: the
    -inf guard must not move it (it clamped at finfo(fp16).min * T = -6550 in the input's dtype)."""
    s = torch.tensor([[-10000.0, 0.0, 1.0], [3.0, -10000.0, 10000.0]]).to(dtype)
    t = torch.tensor([[0.0, 0.0, 1.0], [-10000.0, 2.0, 0.0]]).to(dtype)
    y = torch.tensor([2, 1])
    T = 0.1
    losses = {
        "kd": lambda s, t: LF.kd_loss(s, t, T),
        "jsd0": lambda s, t: LF.jsd_loss(s, t, 0.0, T),
        "jsd": lambda s, t: LF.jsd_loss(s, t, 0.5, T),
        "jsd1": lambda s, t: LF.jsd_loss(s, t, 1.0, T),
        "dkd": lambda s, t: LF.dkd_loss(s, t, y, temperature=T),
        "distillation": lambda s, t: LF.distillation_loss(s, t, y, 0.1, T),
    }
    with fused_kernels("always" if fused else False):
        for name, fn in losses.items():
            sd, td = s.double().requires_grad_(True), t.double().requires_grad_(True)
            expected = ref_log_space_losses(sd, td, y, T)[name]
            e_gs, e_gt = torch.autograd.grad(expected, (sd, td))
            sh, th = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
            value = fn(sh, th)
            gs, gt = torch.autograd.grad(value, (sh, th))
            torch.testing.assert_close(value.double(), expected.detach(), rtol=1e-5, atol=1e-6, msg=name)
            for g, e in ((gs, e_gs), (gt, e_gt)):
                tol = 2 * torch.finfo(dtype).eps * float(e.abs().max()) + 1e-6
                assert float((g.double() - e).abs().max()) <= tol, name


# ---------------------------------------------------------------- devices and dtypes: errors name the argument


def _distill_calls():
    """(function, its tensor arguments by name, keywords) for every tensor-taking function of the module."""
    s, t, y = _logits((4, 5), 70), _logits((4, 5), 71), _labels(4, 5, 70)
    return [
        (LF.kd_loss, {"student_logits": s, "teacher_logits": t}, {}),
        (LF.distillation_loss, {"student_logits": s, "teacher_logits": t, "target": y}, {}),
        (LF.dkd_loss, {"student_logits": s, "teacher_logits": t, "target": y}, {}),
        (LF.jsd_loss, {"student_logits": s, "teacher_logits": t, "target": y}, {}),
        (LF.feature_distillation_loss, {"student_feat": s, "teacher_feat": t}, {}),
        (LF.feature_distillation_loss, {"student_feat": s, "teacher_feat": t}, {"kind": "cosine"}),
    ]


@pytest.mark.parametrize("index", range(6))
def test_an_argument_on_another_device_is_a_clear_error(index):
    fn, tensors, kw = _distill_calls()[index]
    names = list(tensors)
    for moved in names:
        args = {n: (v.to("meta") if n == moved else v) for n, v in tensors.items()}
        first = names[0] if moved != names[0] else names[1]
        expected = (
            rf"{moved} is on meta, expected cpu like {first}"
            if moved != names[0]
            else rf"{first} is on cpu, expected meta like {moved}"
        )
        with pytest.raises(LossValueError, match=expected):
            fn(**args, **kw)
    # everything on 'meta': shape checks run, value checks skip, the result is a 'meta' scalar
    out = fn(**{n: v.to("meta") for n, v in tensors.items()}, **kw)
    assert out.is_meta and out.dim() == 0


def test_kd_with_the_student_on_meta_names_the_argument():
    s, t = _logits((4, 5), 72), _logits((4, 5), 73)
    with pytest.raises(LossValueError, match="teacher_logits is on cpu, expected meta like student_logits"):
        LF.kd_loss(s.to("meta"), t)


def test_feature_projector_on_another_device_is_a_clear_error():
    proj = losskit.FeatureDistillationLoss(5, 3)
    s, t = _logits((4, 5), 74), _logits((4, 3), 75)
    with pytest.raises(
        LossValueError, match="student_feat is on meta, expected cpu like the projector's weight"
    ):
        proj(s.to("meta"), t.to("meta"))
    assert proj.to("meta")(s.to("meta"), t.to("meta")).is_meta


@pytest.mark.parametrize("index", range(6))
def test_a_complex_argument_is_a_type_error_naming_it(index):
    fn, tensors, kw = _distill_calls()[index]
    for name, value in tensors.items():
        if not value.is_floating_point():
            continue
        args = {n: (v.to(torch.complex64) if n == name else v) for n, v in tensors.items()}
        with pytest.raises(
            LossTypeError, match=rf"{name} must be a floating-point tensor, got dtype torch.complex64"
        ):
            fn(**args, **kw)
    y = tensors.get("target")
    if y is not None:
        args = {**tensors, "target": y.to(torch.complex64)}
        with pytest.raises(LossTypeError, match="target must be an integer tensor"):
            fn(**args, **kw)


def test_distillation_step_names_its_own_arguments():
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(LossValueError, match="T must be > 0.0, got 0"):
        losskit.distillation_step(student, teacher, x, y, opt, T=0)
    with pytest.raises(LossValueError, match="alpha must be <= 1.0, got 2"):
        losskit.distillation_step(student, teacher, x, y, opt, alpha=2)
