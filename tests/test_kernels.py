"""Fused kernels: values and gradients vs float64 formulas and vs the public eager losses, gradcheck,
low precision, nothing saved for backward beyond the inputs, and the compiled path.

The compiled path is exercised with the cheap ``aot_eager`` backend (it checks that each kernel traces
as one graph with dynamic shapes); ``LOSSKIT_TEST_INDUCTOR=1`` also runs the Inductor (C++) build,
which takes tens of seconds per kernel on a small CPU.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F

import losskit
import losskit.functional as LF
from harness import assert_gradcheck, assert_matches_reference, extreme_logits, value_and_grads
from losskit import LossTypeError, LossValueError
from losskit._kernels import _compile, fused_kernels
from losskit._kernels.asymmetric import asymmetric, asymmetric_supports
from losskit._kernels.distill import distill_supports, jsd_rows, kd_rows
from losskit._kernels.overlap import class_sums, class_sums_supports
from losskit._kernels.sigmoid_focal import sigmoid_focal, sigmoid_focal_supports
from losskit._kernels.softmax_focal import softmax_focal_mean, softmax_focal_rows, softmax_focal_supports


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def eager_path(fn):
    """``fn`` run with the public losses on their eager reference code (fused kernels off)."""

    def run(*args):
        with fused_kernels(False):
            return fn(*args)

    return run


# ----------------------------------------------------------------------------- float64 references


def ref_sigmoid_focal(x, t, alpha, gamma, pos_weight, reduction):
    p = torch.sigmoid(x)
    pw = 1.0 if pos_weight is None else pos_weight
    ce = -(pw * t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def ref_softmax_focal_rows(x, y, gamma, ignore_index, coef):
    rows = []
    for i in range(x.shape[0]):
        if int(y[i]) == ignore_index:
            rows.append(x[i].sum() * 0)
            continue
        c = int(y[i])
        logp = torch.log(torch.exp(x[i]) / torch.exp(x[i]).sum())
        k = 1.0 if coef is None else coef[c] if isinstance(coef, torch.Tensor) else coef
        rows.append(-k * (1 - torch.exp(logp[c])) ** gamma * logp[c])
    return torch.stack(rows)


def ref_kd_rows(s, t, temperature, scale):
    out = []
    for i in range(s.shape[0]):
        pt = torch.softmax(t[i] / temperature, 0)
        ps = torch.softmax(s[i] / temperature, 0)
        out.append(scale * (pt * (torch.log(pt) - torch.log(ps))).sum())
    return torch.stack(out)


def ref_jsd_rows(s, t, beta, temperature):
    out = []
    for i in range(s.shape[0]):
        pt = torch.softmax(t[i] / temperature, 0)
        ps = torch.softmax(s[i] / temperature, 0)
        m = beta * pt + (1 - beta) * ps
        out.append(beta * (pt * torch.log(pt / m)).sum() + (1 - beta) * (ps * torch.log(ps / m)).sum())
    return torch.stack(out)


def ref_class_sums(x, y, ignore_index, squared):
    n, c = x.shape[:2]
    p = torch.softmax(x, 1).reshape(n, c, -1)
    yy = y.reshape(n, -1)
    tp, ps, gs = [], [], []
    for i in range(n):
        valid = torch.ones_like(yy[i], dtype=torch.bool) if ignore_index is None else yy[i] != ignore_index
        for k in range(c):
            pk = p[i, k][valid]
            hit = yy[i][valid] == k
            tp.append(pk[hit].sum())
            ps.append((pk * pk if squared else pk).sum())
            gs.append(hit.sum().to(x.dtype))
    shape = (n, c)
    return torch.stack(tp).view(shape), torch.stack(ps).view(shape), torch.stack(gs).view(shape)


def ref_asymmetric(x, t, gamma_neg, gamma_pos, clip, reduction):
    p = torch.sigmoid(x)
    pm = (p - clip).clamp_min(0)
    loss = -t * (1 - p) ** gamma_pos * torch.log(p) - (1 - t) * pm**gamma_neg * torch.log(1 - pm)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


# ----------------------------------------------------------------------------- sigmoid focal


SF_CASES = [
    (0.25, 2.0, False, "mean"),
    (0.25, 2.0, True, "none"),
    (-1.0, 0.0, False, "sum"),
    (0.6, 0.5, True, "sum"),
    (None, 1.0, False, "mean"),
    (0.25, 3.3, True, "none"),
]


@pytest.mark.parametrize(("alpha", "gamma", "use_pw", "reduction"), SF_CASES)
def test_sigmoid_focal_matches_reference(alpha, gamma, use_pw, reduction):
    x = torch.randn(12, 5, generator=gen(1)) * 3
    t = torch.rand(12, 5, generator=gen(2))
    t[:6] = (t[:6] > 0.5).float()
    pw = torch.rand(5, generator=gen(3)) + 0.5 if use_pw else None

    def fn(x, t, pw=pw):
        return sigmoid_focal(x, t, alpha, gamma, pw, reduction)

    def ref(x, t):
        return ref_sigmoid_focal(x, t, alpha, gamma, None if pw is None else pw.double(), reduction)

    assert_matches_reference(fn, ref, [x, t])
    assert_gradcheck(
        lambda x, t: sigmoid_focal(x, t, alpha, gamma, None if pw is None else pw.double(), reduction), [x, t]
    )


@pytest.mark.parametrize(("alpha", "gamma", "use_pw", "reduction"), SF_CASES)
def test_sigmoid_focal_matches_public(alpha, gamma, use_pw, reduction):
    x = torch.randn(9, 7, generator=gen(4)) * 4
    t = (torch.rand(9, 7, generator=gen(5)) > 0.7).float()
    pw = torch.rand(7, generator=gen(6)) + 0.5 if use_pw else None
    a = -1.0 if alpha is None else alpha
    assert sigmoid_focal_supports(x, t, pw, reduction=reduction)
    assert_matches_reference(
        lambda x: sigmoid_focal(x, t, a, gamma, pw, reduction),
        eager_path(
            lambda x: LF.sigmoid_focal_loss(
                x, t.double(), a, gamma, reduction, pos_weight=None if pw is None else pw.double()
            )
        ),
        [x],
    )


def test_sigmoid_focal_known_reductions():
    x = torch.randn(6, 4, generator=gen(7)) * 5
    t = (torch.rand(6, 4, generator=gen(8)) > 0.5).float()
    pw = torch.tensor([1.0, 2.0, 0.5, 3.0])
    torch.testing.assert_close(
        sigmoid_focal(x, t, -1.0, 0.0, pw, "mean"), F.binary_cross_entropy_with_logits(x, t, pos_weight=pw)
    )
    assert sigmoid_focal(x[:0], t[:0], 0.25, 2.0, None, "mean").item() == 0.0


def test_sigmoid_focal_gamma_below_one_saturated_is_finite():
    x = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0], requires_grad=True)
    t = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    loss = sigmoid_focal(x, t, 0.25, 0.3, None, "sum")
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_bool_targets_match_float_targets():
    x = torch.randn(5, 4, generator=gen(9))
    t = torch.rand(5, 4, generator=gen(10)) > 0.5
    assert sigmoid_focal_supports(x, t) and asymmetric_supports(x, t)
    torch.testing.assert_close(
        sigmoid_focal(x, t, 0.25, 2.0, None, "sum"), sigmoid_focal(x, t.float(), 0.25, 2.0, None, "sum")
    )
    torch.testing.assert_close(asymmetric(x, t, reduction="sum"), asymmetric(x, t.float(), reduction="sum"))


def test_sigmoid_focal_supports():
    x, t = torch.randn(3, 4), torch.rand(3, 4)
    assert sigmoid_focal_supports(x, t)
    assert sigmoid_focal_supports(x, t, torch.ones(4), reduction="none")
    assert not sigmoid_focal_supports(x, t, mask=torch.ones(3, 4, dtype=torch.bool))
    assert not sigmoid_focal_supports(x, t, weight=torch.ones(3, 4))
    assert not sigmoid_focal_supports(x, t, normalizer=2.0)
    assert not sigmoid_focal_supports(x, t[:, :1])
    assert not sigmoid_focal_supports(x, t, torch.ones(5))
    assert not sigmoid_focal_supports(x, t.requires_grad_())
    assert not sigmoid_focal_supports(x, torch.rand(3, 4), reduction="batchmean")
    assert not sigmoid_focal_supports(x.int(), torch.rand(3, 4))


# ----------------------------------------------------------------------------- softmax focal


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
@pytest.mark.parametrize("coef_kind", ["none", "scalar", "tensor"])
def test_softmax_focal_rows_matches_reference(gamma, coef_kind):
    x = torch.randn(10, 6, generator=gen(10)) * 3
    y = torch.randint(0, 6, (10,), generator=gen(11))
    y[[2, 7]] = -100
    coef = {"none": None, "scalar": 0.7, "tensor": torch.rand(6, generator=gen(12)) + 0.1}[coef_kind]

    def ref(x):
        c = coef.double() if isinstance(coef, torch.Tensor) else coef
        return ref_softmax_focal_rows(x, y, gamma, -100, c)

    assert_matches_reference(lambda x: softmax_focal_rows(x, y, gamma, -100, coef), ref, [x])
    c64 = coef.double() if isinstance(coef, torch.Tensor) else coef
    assert_gradcheck(lambda x: softmax_focal_rows(x, y, gamma, -100, c64), [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_weights", [False, True])
def test_softmax_focal_matches_public(reduction, with_weights):
    n, c = 14, 5
    x = torch.randn(n, c, generator=gen(13)) * 2
    y = torch.randint(0, c, (n,), generator=gen(14))
    y[[0, 5]] = 3  # ignore_index that is also a valid class
    ii = 3
    alpha = torch.rand(c, generator=gen(15)) + 0.2 if with_weights else None
    weight = torch.rand(c, generator=gen(16)) + 0.2 if with_weights else None
    assert softmax_focal_supports(x, y, coef=alpha)

    def fn(x):
        coef = None if alpha is None else alpha * weight
        rows = softmax_focal_rows(x, y, 2.0, ii, coef)
        if reduction == "none":
            return rows
        if reduction == "sum":
            return rows.sum()
        valid = y != ii
        den = valid.sum() if weight is None else weight[y.clamp_max(c - 1)][valid].sum()
        return rows.sum() / den

    def public(x):
        a = 1.0 if alpha is None else alpha.double()
        w = None if weight is None else weight.double()
        return LF.focal_loss(x, y, a, 2.0, reduction, weight=w, ignore_index=ii)

    assert_matches_reference(fn, eager_path(public), [x])


@pytest.mark.parametrize("with_weights", [False, True])
def test_softmax_focal_mean_matches_reference(with_weights):
    n, c = 13, 6
    x = torch.randn(n, c, generator=gen(70)) * 3
    y = torch.randint(0, c, (n,), generator=gen(71))
    y[[1, 4]] = -100
    coef = torch.rand(c, generator=gen(72)) + 0.3 if with_weights else None
    w = torch.rand(c, generator=gen(73)) + 0.3 if with_weights else None

    def ref(x):
        rows = ref_softmax_focal_rows(x, y, 2.0, -100, None if coef is None else coef.double())
        valid = y != -100
        den = valid.sum() if w is None else w.double()[y.clamp_min(0)][valid].sum()
        return rows.sum() / den

    assert_matches_reference(lambda x: softmax_focal_mean(x, y, 2.0, -100, coef, w), ref, [x])
    c64 = None if coef is None else coef.double()
    w64 = None if w is None else w.double()
    assert_gradcheck(lambda x: softmax_focal_mean(x, y, 2.0, -100, c64, w64), [x])
    xg = x.clone().requires_grad_()
    zero = softmax_focal_mean(xg, torch.full((n,), -100), 2.0, -100, coef, w)  # all ignored: 0, no NaN
    (g,) = torch.autograd.grad(zero, xg)
    assert float(zero.detach()) == 0.0 and float(g.abs().sum()) == 0.0


def test_softmax_focal_gamma_zero_is_cross_entropy_and_all_ignored_is_zero():
    x = torch.randn(8, 4, generator=gen(17))
    y = torch.randint(0, 4, (8,), generator=gen(18))
    torch.testing.assert_close(softmax_focal_rows(x, y, 0.0).mean(), F.cross_entropy(x, y))
    xg = x.clone().requires_grad_()
    rows = softmax_focal_rows(xg, torch.full((8,), -100), 2.0)
    (g,) = torch.autograd.grad(rows.sum(), xg)
    assert rows.abs().sum() == 0 and g.abs().sum() == 0


def test_softmax_focal_saturated_gamma_below_one_is_finite():
    x = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    rows = softmax_focal_rows(x, torch.tensor([0, 1]), 0.5)
    (g,) = torch.autograd.grad(rows.sum(), x)
    assert torch.isfinite(rows).all() and torch.isfinite(g).all()


def test_softmax_focal_supports():
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    assert softmax_focal_supports(x, y)
    assert not softmax_focal_supports(x, y, label_smoothing=0.1)
    assert not softmax_focal_supports(x, torch.rand(4, 3))
    assert not softmax_focal_supports(torch.randn(4, 3, 2), torch.randint(0, 3, (4, 2)))
    assert not softmax_focal_supports(x, y, coef=torch.ones(4))


# ----------------------------------------------------------------------------- KD / JSD


@pytest.mark.parametrize(("temperature", "scale"), [(1.0, None), (4.0, None), (2.5, 1.0)])
def test_kd_rows_matches_reference(temperature, scale):
    s = torch.randn(7, 9, generator=gen(20)) * 3
    t = torch.randn(7, 9, generator=gen(21)) * 3
    sc = temperature**2 if scale is None else scale
    assert_matches_reference(
        lambda s, t: kd_rows(s, t, temperature, scale),
        lambda s, t: ref_kd_rows(s, t, temperature, sc),
        [s, t],
        wrt=(0, 1),
    )
    assert_gradcheck(lambda s, t: kd_rows(s, t, temperature, scale), [s, t], wrt=(0, 1))


@pytest.mark.parametrize(("beta", "temperature"), [(0.5, 1.0), (0.1, 2.0), (0.9, 0.7)])
def test_jsd_rows_matches_reference(beta, temperature):
    s = torch.randn(6, 8, generator=gen(22)) * 3
    t = torch.randn(6, 8, generator=gen(23)) * 3
    assert_matches_reference(
        lambda s, t: jsd_rows(s, t, beta, temperature),
        lambda s, t: ref_jsd_rows(s, t, beta, temperature),
        [s, t],
        wrt=(0, 1),
    )
    assert_gradcheck(lambda s, t: jsd_rows(s, t, beta, temperature), [s, t], wrt=(0, 1))


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_kd_matches_public(reduction):
    s = torch.randn(11, 6, generator=gen(24)) * 2
    t = torch.randn(11, 6, generator=gen(25)) * 2

    def fn(s, t):
        rows = kd_rows(s, t, 3.0)
        return {"batchmean": rows.sum() / s.shape[0], "sum": rows.sum(), "none": rows}[reduction]

    assert_matches_reference(
        fn, eager_path(lambda s, t: LF.kd_loss(s, t, 3.0, reduction)), [s, t], wrt=(0, 1)
    )


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_jsd_matches_public(beta):
    s = torch.randn(3, 4, 10, generator=gen(26)) * 2
    t = torch.randn(3, 4, 10, generator=gen(27)) * 2

    def fn(s, t):
        s2, t2 = s.reshape(-1, 10), t.reshape(-1, 10)
        if beta == 0.0:
            rows = kd_rows(s2, t2, 1.5, 1.0)
        elif beta == 1.0:
            rows = kd_rows(t2, s2, 1.5, 1.0)  # reverse KL(p_S || p_T)
        else:
            rows = jsd_rows(s2, t2, beta, 1.5)
        return rows.mean()

    assert_matches_reference(fn, eager_path(lambda s, t: LF.jsd_loss(s, t, beta, 1.5)), [s, t], wrt=(0, 1))


def test_distill_supports():
    a = torch.randn(3, 4)
    assert distill_supports(a, a)
    assert not distill_supports(a, a.double())
    assert not distill_supports(a.view(3, 2, 2), a.view(3, 2, 2))


# ----------------------------------------------------------------------------- Dice / Tversky sums


@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("squared", [False, True])
def test_class_sums_matches_reference(ignore_index, squared):
    x = torch.randn(2, 3, 4, 5, generator=gen(30)) * 2
    y = torch.randint(0, 3, (2, 4, 5), generator=gen(31))
    if ignore_index is not None:
        y[0, :2] = ignore_index
        y[1] = ignore_index  # a fully ignored image
    for k in range(2):
        assert_matches_reference(
            lambda x, k=k: class_sums(x, y, ignore_index, squared)[k],
            lambda x, k=k: ref_class_sums(x, y, ignore_index, squared)[k],
            [x],
        )
    torch.testing.assert_close(
        class_sums(x, y, ignore_index, squared)[2],
        ref_class_sums(x.double(), y, ignore_index, squared)[2].float(),
    )

    def combo(x):
        tp, ps, _ = class_sums(x, y, ignore_index, squared)
        return (tp * tp).sum() + (ps * torch.arange(3.0, dtype=x.dtype)).sum()

    assert_gradcheck(combo, [x])


def _dice_from_sums(tp, ps, gs, tp_coef, alpha, beta, eps=1e-7, smooth=0.0, empty_smooth=1.0):
    """The public Dice/Tversky index (segmentation module docstring) written on the sums."""
    fp, fn = ps - tp, gs - tp
    num = tp_coef * tp
    den = num + alpha * fp + beta * fn
    s = torch.where(gs <= 0, torch.full_like(num, empty_smooth), torch.full_like(num, smooth))
    return (1 - (num + s) / (den + s).clamp_min(eps)).mean()


@pytest.mark.parametrize("which", ["dice", "tversky"])
@pytest.mark.parametrize("ignore_index", [None, 0])
def test_class_sums_give_public_dice_and_tversky(which, ignore_index):
    x = torch.randn(3, 4, 6, 6, generator=gen(32)) * 2
    y = torch.randint(0, 4, (3, 6, 6), generator=gen(33))
    y[0, 0] = 3
    y[2] = 1  # classes absent from an image: the empty-mask rule
    assert class_sums_supports(x, y)
    coefs = (2.0, 1.0, 1.0) if which == "dice" else (1.0, 0.3, 0.7)

    def fn(x):
        return _dice_from_sums(*class_sums(x, y, ignore_index), *coefs)

    def public(x):
        if which == "dice":
            return LF.dice_loss(x, y, ignore_index=ignore_index)
        return LF.tversky_loss(x, y, alpha=0.3, beta=0.7, ignore_index=ignore_index)

    assert_matches_reference(fn, public, [x])


def test_class_sums_supports():
    x = torch.randn(2, 3, 4, 4)
    assert class_sums_supports(x, torch.randint(0, 3, (2, 4, 4)))
    assert not class_sums_supports(x, torch.rand(2, 3, 4, 4))
    assert not class_sums_supports(torch.randn(2, 3), torch.randint(0, 3, (2,)))


# ----------------------------------------------------------------------------- ASL


ASL_CASES = [
    (4.0, 0.0, 0.05, "mean"),
    (4.0, 1.0, 0.05, "sum"),
    (0.5, 0.5, 0.0, "none"),
    (2.5, 1.5, 0.2, "none"),
]


@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip", "reduction"), ASL_CASES)
def test_asymmetric_matches_reference_and_public(gamma_neg, gamma_pos, clip, reduction):
    x = torch.randn(9, 6, generator=gen(40)) * 3
    t = torch.rand(9, 6, generator=gen(41))
    t[:5] = (t[:5] > 0.6).float()
    assert asymmetric_supports(x, t, reduction=reduction)

    def fn(x):
        return asymmetric(x, t, gamma_neg, gamma_pos, clip, reduction)

    assert_matches_reference(
        fn, lambda x: ref_asymmetric(x, t.double(), gamma_neg, gamma_pos, clip, reduction), [x]
    )
    assert_matches_reference(
        fn,
        eager_path(lambda x: LF.asymmetric_loss(x, t.double(), gamma_neg, gamma_pos, clip, reduction)),
        [x],
    )
    assert_gradcheck(lambda x: asymmetric(x, t.double(), gamma_neg, gamma_pos, clip, reduction), [x])


# ----------------------------------------------------------------------------- cross-cutting


def _calls():
    """One representative call per kernel: (name, fn(x) -> scalar, x, extra inputs)."""
    g = gen(50)
    x2 = torch.randn(16, 10, generator=g)
    t2 = (torch.rand(16, 10, generator=g) > 0.5).float()
    y1 = torch.randint(0, 10, (16,), generator=g)
    x4 = torch.randn(2, 3, 8, 8, generator=g)
    y3 = torch.randint(0, 3, (2, 8, 8), generator=g)
    te = torch.randn(16, 10, generator=g).bfloat16().float()  # exact in bf16
    return [
        ("sigmoid_focal", lambda x: sigmoid_focal(x, t2.to(x.dtype), 0.25, 2.0, None, "mean"), x2),
        ("softmax_focal", lambda x: softmax_focal_rows(x, y1, 2.0).mean(), x2),
        ("kd", lambda x: kd_rows(x, te.to(x.dtype), 4.0).mean(), x2),
        ("jsd", lambda x: jsd_rows(x, te.to(x.dtype), 0.5).mean(), x2),
        ("asymmetric", lambda x: asymmetric(x, t2.to(x.dtype), reduction="mean"), x2),
        ("class_sums", lambda x: sum(s.sum() for s in class_sums(x, y3)[:2]) / 100, x4),
    ]


@pytest.mark.parametrize("case", range(6))
def test_nothing_saved_beyond_inputs(case):
    name, fn, x = _calls()[case]
    x = x.clone().requires_grad_()
    extra = []

    def pack(t):
        extra.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(x)
    big = [
        t for t in extra if t.numel() > 1 and t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    ]
    # what the kernel saves are its own inputs (the logits and the target/teacher tensors given to it)
    for t in big:
        assert t.shape in (x.shape, x.shape[:1], (x.shape[0], *x.shape[2:])), f"{name} saved {tuple(t.shape)}"
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all()


def test_sigmoid_focal_saves_exactly_its_inputs():
    x = torch.randn(32, 8, requires_grad=True)
    t = torch.rand(32, 8)
    pw = torch.rand(8)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda a: seen.append(a) or a, lambda a: a):
        sigmoid_focal(x, t, 0.25, 2.0, pw, "none")
    inputs = {x.untyped_storage().data_ptr(), t.untyped_storage().data_ptr(), pw.untyped_storage().data_ptr()}
    assert seen and {a.untyped_storage().data_ptr() for a in seen} <= inputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(6))
def test_low_precision_extreme_logits(dtype, case):
    name, fn, x = _calls()[case]
    x = extreme_logits(tuple(x.shape), dtype, seed=case).requires_grad_()
    loss = fn(x)
    assert loss.dtype == torch.float32, name
    (g,) = torch.autograd.grad(loss, x)
    assert g.dtype == dtype and torch.isfinite(loss) and torch.isfinite(g).all(), name


@pytest.mark.parametrize("case", range(6))
def test_half_matches_float32(case):
    name, fn, x = _calls()[case]
    xh = x.to(torch.bfloat16)
    a = fn(xh.clone().requires_grad_())
    b = fn(xh.float().requires_grad_())
    torch.testing.assert_close(a, b, msg=name)


def test_compile_switch_and_threshold(monkeypatch):
    assert _compile.compile_kernels_enabled() == _compile._ENABLED
    monkeypatch.setattr(_compile, "_ENABLED", True)
    monkeypatch.setattr(_compile, "_MIN_NUMEL", 10**9)
    calls = []
    out = _compile.run_kernel(("probe",), lambda: lambda a: calls.append(1) or a + 1, 10, torch.ones(2))
    assert calls and out.tolist() == [2.0, 2.0] and ("probe",) not in _compile.compiled_keys()
    _compile.set_compile_kernels(False)
    try:
        assert not _compile.compile_kernels_enabled()
    finally:
        _compile.set_compile_kernels(True)


def _compiled_path_matches(backend: str, names: tuple[str, ...] | None = None) -> None:
    saved = (_compile._ENABLED, _compile._MIN_NUMEL, _compile._BACKEND)
    _compile.set_compile_kernels(True, min_numel=0, backend=backend)
    try:
        for name, fn, x in _calls():
            if names is not None and name not in names:
                continue
            for shape_scale in (1, 2):  # a second batch size must not need a new kernel
                xs = torch.cat([x] * shape_scale)[: x.shape[0]] if shape_scale == 1 else x
                a, ga = _value_grad(fn, xs)
                _compile.set_compile_kernels(False)
                b, gb = _value_grad(fn, xs)
                _compile.set_compile_kernels(True, min_numel=0, backend=backend)
                torch.testing.assert_close(a, b, msg=name)
                torch.testing.assert_close(ga, gb, msg=name)
        assert _compile.compiled_keys(), "nothing was compiled"
        assert not _compile._FAILED, f"compilation failed for {_compile._FAILED}"
    finally:
        _compile.set_compile_kernels(saved[0], min_numel=saved[1], backend=saved[2])


def _value_grad(fn, x):
    x = x.clone().requires_grad_()
    v = fn(x)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


SLOW_COMPILE = pytest.mark.skipif(
    os.environ.get("LOSSKIT_TEST_INDUCTOR") != "1",
    reason="compiles every kernel: set LOSSKIT_TEST_INDUCTOR=1",
)


def test_compiled_path_traces_fullgraph_dynamic():
    """Kernels trace as one graph with dynamic shapes (aot_eager backend; two kernels by default)."""
    _compiled_path_matches("aot_eager", ("sigmoid_focal", "softmax_focal"))


@SLOW_COMPILE
def test_compiled_path_all_kernels_aot_eager():
    _compiled_path_matches("aot_eager")


@SLOW_COMPILE
def test_compiled_path_inductor():
    _compiled_path_matches("inductor")


def test_kernel_under_outer_compile_runs_eagerly():
    x = torch.randn(6, 5)
    t = (torch.rand(6, 5) > 0.5).float()
    fn = torch.compile(
        lambda x: sigmoid_focal(x, t, 0.25, 2.0, None, "mean"), backend="aot_eager", fullgraph=True
    )
    torch.testing.assert_close(fn(x), sigmoid_focal(x, t, 0.25, 2.0, None, "mean"))
    assert not sigmoid_focal_supports(x, t) or not torch.compiler.is_compiling()
    assert math.isfinite(float(fn(x)))


# ----------------------------------------------------------------------------- public losses use the kernels


def _graph_names(out: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def _public_cases():
    """(name, public call, kernel backward node, float64 reference, args, wrt) for supported calls."""
    g = gen(60)
    n, c = 48, 40
    x = torch.randn(n, c, generator=g) * 4
    t = (torch.rand(n, c, generator=g) > 0.8).float()
    ts = torch.rand(n, c, generator=g)  # soft targets
    pw = torch.rand(c, generator=g) + 0.5
    y = torch.randint(0, c, (n,), generator=g)
    y[:5] = -100
    alpha = torch.rand(c, generator=g) + 0.2
    w = torch.rand(c, generator=g) + 0.2
    s3 = torch.randn(4, 6, c, generator=g) * 3
    t3 = torch.randn(4, 6, c, generator=g) * 3
    tok = torch.randint(0, c, (4, 6), generator=g)
    tok[0, :3] = -100
    v3 = tok != -100

    def ref_focal(x, y):
        rows = ref_softmax_focal_rows(x, y, 2.0, -100, alpha.double() * w.double())
        valid = y != -100
        return rows.sum() / w.double()[y.clamp_min(0)][valid].sum()

    def ref_jsd_tokens(s, t, beta):
        s2, t2 = s.reshape(-1, c), t.reshape(-1, c)
        if beta == 0.0:
            rows = ref_kd_rows(s2, t2, 2.0, 1.0)
        elif beta == 1.0:
            rows = ref_kd_rows(t2, s2, 2.0, 1.0)
        else:
            rows = ref_jsd_rows(s2, t2, beta, 2.0)
        return rows.reshape(4, 6)[v3].sum() / v3.sum()

    return [
        (
            "sigmoid_focal",
            lambda x, t: LF.sigmoid_focal_loss(x, t, 0.25, 2.0, "mean"),
            "_SigmoidFocalBackward",
            lambda x, t: ref_sigmoid_focal(x, t, 0.25, 2.0, None, "mean"),
            [x, t],
            (0,),
        ),
        (
            "sigmoid_focal_pos_weight_normalizer",
            lambda x, t: LF.sigmoid_focal_loss(x, t, 0.4, 1.5, "mean", pos_weight=pw, normalizer=7.0),
            "_SigmoidFocalBackward",
            lambda x, t: ref_sigmoid_focal(x, t, 0.4, 1.5, pw.double(), "sum") / 7.0,
            [x, ts],
            (0,),
        ),
        (
            "focal",
            lambda x, y: LF.focal_loss(x, y, 1.0, 2.0),
            "_SoftmaxFocalMeanBackward",
            lambda x, y: ref_softmax_focal_rows(x, y, 2.0, -100, None).sum() / (y != -100).sum(),
            [x, y],
            (0,),
        ),
        (
            "focal_alpha_weight",
            lambda x, y: LF.focal_loss(x, y, alpha, 2.0, weight=w),
            "_SoftmaxFocalMeanBackward",
            ref_focal,
            [x, y],
            (0,),
        ),
        (
            "kd",
            lambda s, t: LF.kd_loss(s, t, 4.0),
            "_KDRowsBackward",
            lambda s, t: ref_kd_rows(s, t, 4.0, 16.0).sum() / s.shape[0],
            [x, x.flip(0)],
            (0, 1),
        ),
        (
            "kd_tokens_dim_last",
            lambda s, t: LF.kd_loss(s, t, 2.0, "mean", dim=-1),
            "_KDRowsBackward",
            lambda s, t: ref_kd_rows(s.reshape(-1, c), t.reshape(-1, c), 2.0, 4.0).mean(),
            [s3, t3],
            (0, 1),
        ),
        *[
            (
                f"jsd_beta{beta}",
                lambda s, t, beta=beta: LF.jsd_loss(s, t, beta, 2.0, tok),
                "_KDRowsBackward" if beta in (0.0, 1.0) else "_JSDRowsBackward",
                lambda s, t, beta=beta: ref_jsd_tokens(s, t, beta),
                [s3, t3],
                (0, 1),
            )
            for beta in (0.0, 0.4, 1.0)
        ],
        (
            "asymmetric",
            lambda x, t: LF.asymmetric_loss(x, t),
            "_AsymmetricBackward",
            lambda x, t: ref_asymmetric(x, t, 4.0, 0.0, 0.05, "mean"),
            [x, ts],
            (0,),
        ),
    ]


PUBLIC_IDS = [case[0] for case in _public_cases()]


@pytest.mark.parametrize("case", range(len(PUBLIC_IDS)), ids=PUBLIC_IDS)
def test_public_loss_takes_fused_path_and_saves_only_inputs(case):
    name, fn, node, _, args, wrt = _public_cases()[case]
    leaves = [a.clone().requires_grad_(i in wrt) for i, a in enumerate(args)]
    inputs = {a.untyped_storage().data_ptr() for a in leaves}
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda a: seen.append(a) or a, lambda a: a):
        loss = fn(*leaves)
    assert node in _graph_names(loss), name
    # nothing of the logits' size beyond the inputs: at most per-class / per-token vectors (pos_weight,
    # alpha * weight, a token mask) or a scalar denominator
    extra = [a for a in seen if a.untyped_storage().data_ptr() not in inputs]
    assert all(a.numel() <= 48 for a in extra), (name, [tuple(a.shape) for a in extra])
    if name in ("sigmoid_focal", "focal", "asymmetric"):
        assert not extra, (name, [tuple(a.shape) for a in extra])  # the default calls: inputs only
    if name.startswith(("kd", "jsd")):
        # plus per-row float32 (R,) statistics: each tensor's maximum and log1p(rest) (KD), and for
        # the JSD kernel (0 < beta < 1) each tensor's pivot gap and pivoted row sum
        rows = args[0].numel() // args[0].shape[-1]
        stats = [a.dtype for a in extra if a.is_floating_point() and a.dim() == 1]
        assert stats == [torch.float32] * (8 if node == "_JSDRowsBackward" else 4), name
        assert all(a.numel() in (1, rows) for a in extra), name  # besides: a token mask, a denominator
    with fused_kernels(False):
        eager = fn(*leaves)
    assert node not in _graph_names(eager), name
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)


def _max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("case", range(len(PUBLIC_IDS)), ids=PUBLIC_IDS)
def test_public_fused_path_as_precise_as_eager(case):
    """fp32 error of the fused path vs a float64 reference is at most the eager path's plus a little."""
    name, fn, _, ref, args, wrt = _public_cases()[case]
    ref_val, ref_grads = value_and_grads(ref, [a.double() if a.is_floating_point() else a for a in args], wrt)
    fused_val, fused_grads = value_and_grads(fn, args, wrt)
    with fused_kernels(False):
        eager_val, eager_grads = value_and_grads(fn, args, wrt)
    tol = 4 * torch.finfo(torch.float32).eps
    assert _max_err(fused_val, ref_val) <= _max_err(eager_val, ref_val) + tol, name
    for fg, eg, rg in zip(fused_grads, eager_grads, ref_grads):
        assert _max_err(fg, rg) <= _max_err(eg, rg) + tol, name


@pytest.mark.parametrize("case", range(len(PUBLIC_IDS)), ids=PUBLIC_IDS)
def test_public_gradcheck_float64_on_fused_path(case):
    name, fn, node, _, args, wrt = _public_cases()[case]
    probe = [a.double().requires_grad_(i in wrt) if a.is_floating_point() else a for i, a in enumerate(args)]
    assert node in _graph_names(fn(*probe)), name  # float64 takes the fused path too
    if args[0].dim() == 2:  # (N, C) cases on 6 rows; the token cases' rows are gradchecked above
        assert_gradcheck(fn, [a[:6] for a in args], wrt=wrt)


def test_public_falls_back_to_eager_when_unsupported():
    g = gen(61)
    x = torch.randn(6, 5, generator=g)
    t = (torch.rand(6, 5, generator=g) > 0.5).float()
    y = torch.randint(0, 5, (6,), generator=g)
    x4 = torch.randn(2, 5, 3, generator=g)
    y4 = torch.randint(0, 5, (2, 3), generator=g)
    kernel_nodes = {
        "_SigmoidFocalBackward",
        "_SoftmaxFocalRowsBackward",
        "_KDRowsBackward",
        "_JSDRowsBackward",
    }
    kernel_nodes |= {"_AsymmetricBackward"}
    xg = x.clone().requires_grad_()
    eager_calls = [
        LF.sigmoid_focal_loss(xg, t, weight=torch.rand(6, 5, generator=g)),
        LF.sigmoid_focal_loss(xg, t, mask=t > 0),
        LF.sigmoid_focal_loss(xg, t, -1.0, 0.0),  # plain BCE-with-logits: torch's native op
        LF.sigmoid_focal_loss(xg, t.clone().requires_grad_()),
        LF.sigmoid_focal_loss(xg[:0], t[:0], reduction="mean"),
        LF.asymmetric_loss(xg, t, weight=torch.rand(6, 5, generator=g)),
        LF.focal_loss(xg, y, label_smoothing=0.1),
        LF.focal_loss(xg, torch.softmax(x, 1)),
        LF.focal_loss(x4.clone().requires_grad_(), y4),
        LF.focal_loss(xg, y, weight=torch.rand(5, generator=g).requires_grad_()),
        LF.kd_loss(x4.clone().requires_grad_(), x4.flip(0)),  # classes on dim 1 of a 3-D input
        LF.kd_loss(xg.t(), x.t().contiguous()),  # non-contiguous student
        LF.jsd_loss(xg, x.double()),  # mixed dtypes
    ]
    for i, loss in enumerate(eager_calls):
        assert not (kernel_nodes & _graph_names(loss)), i
        assert torch.isfinite(loss).all()


def test_public_fused_path_compiled_kernels(monkeypatch):
    """Above the size threshold the public loss runs the compiled kernel (cheap aot_eager backend)."""
    saved = (_compile._ENABLED, _compile._MIN_NUMEL, _compile._BACKEND)
    _compile.set_compile_kernels(True, min_numel=0, backend="aot_eager")
    try:
        x = (torch.randn(10, 7, generator=gen(62)) * 3).requires_grad_()
        t = (torch.rand(10, 7, generator=gen(63)) > 0.7).float()
        loss = LF.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum")
        (gx,) = torch.autograd.grad(loss, x)
        assert any(k[0] == "sigmoid_focal.fwd" for k in _compile.compiled_keys())
        assert any(k[0] == "sigmoid_focal.bwd" for k in _compile.compiled_keys())
    finally:
        _compile.set_compile_kernels(saved[0], min_numel=saved[1], backend=saved[2])
    with fused_kernels(False):
        ref = LF.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum")
        (gr,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gx, gr)


def test_fused_switch_restores_setting():
    assert _compile.fused_kernels_enabled()
    with fused_kernels(False):
        assert not _compile.fused_kernels_enabled()
        with fused_kernels(True):
            assert _compile.fused_kernels_enabled()
        assert not _compile.fused_kernels_enabled()
    assert _compile.fused_kernels_enabled()


def _dispatch_calls():
    x, t = torch.randn(16, 8), (torch.rand(16, 8) < 0.3).float()
    y = torch.randint(0, 8, (16,))
    seg, mask = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    return [
        ("_SigmoidFocalBackward", lambda a: LF.sigmoid_focal_loss(a, t, reduction="mean"), x),
        ("_SoftmaxFocalMeanBackward", lambda a: LF.focal_loss(a, y), x),
        ("_AsymmetricBackward", lambda a: LF.asymmetric_loss(a, t), x),
        ("_KDRowsBackward", lambda a: LF.kd_loss(a, x.flip(0)), x),
        ("_JSDRowsBackward", lambda a: LF.jsd_loss(a, x.flip(0), 0.5), x),
        ("_ClassSumsBackward", lambda a: LF.dice_loss(a, mask), seg),
    ]


@pytest.mark.parametrize("mode", ["auto", "always", "off"])
def test_default_dispatch_takes_kernels_only_where_they_run_compiled(mode, monkeypatch):
    """'auto' (the default): kernels for inputs of at least the compile threshold with compilation
    on, the plain code otherwise (faster there); 'always': kernels at every size; 'off': never."""
    # which graph is built does not depend on the compiled code: "compile" to the function itself
    monkeypatch.setattr(_compile.torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(_compile, "_CACHE", {})
    for node, fn, x in _dispatch_calls():
        with fused_kernels(mode):
            for threshold, compiling, expected in (
                (x.numel() + 1, True, mode == "always"),  # below the threshold
                (x.numel(), True, mode != "off"),  # at the threshold, compiled
                (0, False, mode == "always"),  # compilation switched off
            ):
                monkeypatch.setattr(_compile, "_MIN_NUMEL", threshold)
                monkeypatch.setattr(_compile, "_ENABLED", compiling)
                assert _compile.use_fused_kernel(x.numel()) == expected
                out = fn(x.clone().requires_grad_())
                assert (node in _graph_names(out)) == expected, (node, mode, threshold, compiling)


def test_fused_setting_values():
    previous = _compile.set_fused_kernels("auto")
    try:
        assert _compile.fused_kernels_enabled() and not _compile.use_fused_kernel(0)
        _compile.set_fused_kernels(False)
        assert not _compile.fused_kernels_enabled()
        with pytest.raises(ValueError, match="must be True, False, 'auto' or 'always', got 'sometimes'"):
            _compile.set_fused_kernels("sometimes")
    finally:
        _compile.set_fused_kernels(previous)


# ----------------------------------------------------------------------------- tails: relative precision
#
# Every kernel term keeps its relative precision in both tails of the logits: float32 kernels on
# x in [-80, 80] against values and derivatives evaluated exactly (mpmath, 60 digits, written out
# below). Where the exact value is below ``TAIL_FLOOR`` (close to float32's smallest normal number)
# only ``|out| <= TAIL_FLOOR`` is asked.

TAIL_RTOL = 2e-5
TAIL_FLOOR = 1e-30
TAIL_X = torch.linspace(-80.0, 80.0, 161)  # step 1


def _mp():
    import mpmath

    mpmath.mp.dps = 60
    return mpmath


def _mp_sigmoid(mp, x):
    return 1 / (1 + mp.exp(-x))


def _assert_tail_close(out: torch.Tensor, ref: list, what: str) -> None:
    got = out.detach().double().reshape(-1).tolist()
    ref = [float(r) for r in ref]
    assert len(got) == len(ref), what
    bad = []
    for i, (g, r) in enumerate(zip(got, ref)):
        if abs(r) < TAIL_FLOOR:
            ok = abs(g) <= TAIL_FLOOR
        else:
            ok = math.isfinite(g) and abs(g - r) <= TAIL_RTOL * abs(r)
        if not ok:
            bad.append((i, g, r))
    assert not bad, f"{what}: {len(bad)} elements off, e.g. (index, got, exact) {bad[:4]}"


def _rows_value_grad(fn, *tensors):
    """Value of ``fn`` and the gradients of ``sum(value)`` w.r.t. each tensor (float32)."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves)
    return out, grads


@pytest.mark.parametrize("target", [0.0, 1.0])
@pytest.mark.parametrize(("alpha", "gamma"), [(None, 2.0), (0.25, 0.0), (0.25, 0.5), (None, 3.0)])
def test_sigmoid_focal_kernel_tails_relative_precision(target, alpha, gamma):
    mp = _mp()
    x = TAIL_X
    t = torch.full_like(x, target)
    out, (gx,) = _rows_value_grad(lambda a: sigmoid_focal(a, t, alpha, gamma, None, "none"), x)

    def f(v):
        p = _mp_sigmoid(mp, v)
        ce = -(target * mp.log(p) + (1 - target) * mp.log(1 - p))
        q = target * (1 - p) + (1 - target) * p
        at = 1 if alpha is None else alpha * target + (1 - alpha) * (1 - target)
        return at * ce * q**gamma

    xs = [mp.mpf(float(v)) for v in x]
    _assert_tail_close(out, [f(v) for v in xs], "value")
    _assert_tail_close(gx, [mp.diff(f, v) for v in xs], "gradient")


def test_sigmoid_focal_confident_positives_keep_their_loss():
    """``softplus(-x)`` for large ``x`` is ``~exp(-x)``, not a difference rounded to 0."""
    x = torch.tensor([5.0, 10.0, 15.0, 20.0])
    out = LF.sigmoid_focal_loss(x, torch.ones(4), alpha=-1, gamma=2, reduction="none")
    exact = [math.log1p(math.exp(-v)) * (1 / (1 + math.exp(v))) ** 2 for v in x.tolist()]
    torch.testing.assert_close(out.double(), torch.tensor(exact, dtype=torch.float64), rtol=1e-5, atol=0)
    asl = LF.asymmetric_loss(torch.tensor([[15.0]]), torch.tensor([[1.0]]), reduction="sum")
    torch.testing.assert_close(asl.double(), torch.tensor(math.log1p(math.exp(-15.0)), dtype=torch.float64))


@pytest.mark.parametrize("target", [0.0, 1.0])
@pytest.mark.parametrize(
    ("gamma_neg", "gamma_pos", "clip"), [(4.0, 0.0, 0.05), (4.0, 1.0, 0.0), (2.0, 1.0, 0.05)]
)
def test_asymmetric_kernel_tails_relative_precision(target, gamma_neg, gamma_pos, clip):
    mp = _mp()
    x = TAIL_X.view(1, -1)
    t = torch.full_like(x, target)
    out, (gx,) = _rows_value_grad(lambda a: asymmetric(a, t, gamma_neg, gamma_pos, clip, "none"), x)

    def f(v):
        p = _mp_sigmoid(mp, v)
        pm = max(p - clip, mp.mpf(0))
        pos = -((1 - p) ** gamma_pos) * mp.log(p)
        neg = -(pm**gamma_neg) * mp.log(1 - pm) if pm > 0 else mp.mpf(0)
        return target * pos + (1 - target) * neg

    xs = [mp.mpf(float(v)) for v in x.view(-1)]
    _assert_tail_close(out, [f(v) for v in xs], "value")
    _assert_tail_close(gx, [mp.diff(f, v) for v in xs], "gradient")


def _tail_rows(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Rows ``scale * [x, 0, -x / 2]``: one class takes almost all the mass at either end."""
    return torch.stack([x, torch.zeros_like(x), -x / 2], 1) * scale


def _mp_log_softmax(mp, row, temperature=1):
    z = [v / temperature for v in row]
    lse = mp.log(mp.fsum(mp.exp(v) for v in z))
    return [v - lse for v in z]


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_softmax_focal_kernel_tails_relative_precision(gamma, target):
    mp = _mp()
    x = _tail_rows(TAIL_X)
    y = torch.full((x.shape[0],), target)
    out, (gx,) = _rows_value_grad(lambda a: softmax_focal_rows(a, y, gamma), x)

    def f(*row):
        lp = _mp_log_softmax(mp, row)[target]
        return -((1 - mp.exp(lp)) ** gamma) * lp

    rows = [[mp.mpf(float(v)) for v in r] for r in x.tolist()]
    _assert_tail_close(out, [f(*r) for r in rows], "value")
    ref_g = [mp.diff(f, r, tuple(int(j == k) for j in range(3))) for r in rows for k in range(3)]
    _assert_tail_close(gx, ref_g, "gradient")


def _distill_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher rows that agree on the dominant class at both ends, with different tails
    (and never the same distribution, where a divergence is a difference of equal numbers)."""
    return _tail_rows(TAIL_X), _tail_rows(TAIL_X, 0.5) + torch.tensor([0.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("kind", "param", "temperature"),
    [("kd", None, 1.0), ("kd", None, 4.0), ("jsd", 0.5, 1.0), ("jsd", 0.1, 2.0)],
)
def test_distill_kernels_tails_relative_precision(kind, param, temperature):
    mp = _mp()
    s, t = _distill_pairs()
    if kind == "kd":
        out, (gs, gt) = _rows_value_grad(lambda a, b: kd_rows(a, b, temperature, 1.0), s, t)
    else:
        out, (gs, gt) = _rows_value_grad(lambda a, b: jsd_rows(a, b, param, temperature), s, t)

    def f(*v):
        ls = _mp_log_softmax(mp, v[:3], temperature)
        lt = _mp_log_softmax(mp, v[3:], temperature)
        if kind == "kd":
            return mp.fsum(mp.exp(b) * (b - a) for a, b in zip(ls, lt))
        beta = param
        lm = [mp.log(beta * mp.exp(b) + (1 - beta) * mp.exp(a)) for a, b in zip(ls, lt)]
        kl_t = mp.fsum(mp.exp(b) * (b - m) for b, m in zip(lt, lm))
        kl_s = mp.fsum(mp.exp(a) * (a - m) for a, m in zip(ls, lm))
        return beta * kl_t + (1 - beta) * kl_s

    rows = [[mp.mpf(float(v)) for v in a + b] for a, b in zip(s.tolist(), t.tolist())]
    _assert_tail_close(out, [f(*r) for r in rows], "value")

    def partials(offset):
        return [mp.diff(f, r, tuple(int(j == offset + k) for j in range(6))) for r in rows for k in range(3)]

    _assert_tail_close(gs, partials(0), "student gradient")
    _assert_tail_close(gt, partials(3), "teacher gradient")


@pytest.mark.parametrize("squared", [False, True])
def test_class_sums_kernel_tails_relative_precision(squared):
    mp = _mp()
    n_pos = TAIL_X.numel()
    x = _tail_rows(TAIL_X).t().reshape(1, 3, n_pos).repeat(1, 1, 3)  # every position with each label
    y = torch.arange(3).repeat_interleave(n_pos).view(1, -1)
    gtp = torch.tensor([[-0.7, -1.3, -0.4]])
    gps = torch.tensor([[0.5, 0.2, 0.9]])
    leaf = x.clone().requires_grad_()
    tp, ps, _ = class_sums(leaf, y, None, squared)
    (gx,) = torch.autograd.grad((tp * gtp).sum() + (ps * gps).sum(), leaf)
    k = 2 if squared else 1

    def f(label, *row):
        p = [mp.exp(v) for v in _mp_log_softmax(mp, row)]
        return mp.fsum(
            float(gtp[0, c]) * p[c] * (c == label) + float(gps[0, c]) * p[c] ** k for c in range(3)
        )

    ref = [[None] * x.shape[2] for _ in range(3)]
    for i in range(x.shape[2]):
        row = [mp.mpf(float(v)) for v in x[0, :, i]]
        label = int(y[0, i])
        for c in range(3):
            ref[c][i] = mp.diff(lambda *r, lb=label: f(lb, *r), row, tuple(int(j == c) for j in range(3)))
    _assert_tail_close(gx, [r for per_class in ref for r in per_class], "gradient")


def test_default_dispatch_compiled_kernel_keeps_tails():
    """The default dispatch at 512 x 512 (the compiled kernel, Inductor) keeps the loss and gradient of
    confident positives (one compile of each direction: tens of seconds on a small CPU)."""
    saved = (_compile._ENABLED, _compile._MIN_NUMEL, _compile._BACKEND)
    _compile.set_compile_kernels(True, min_numel=1 << 18, backend="inductor")
    try:
        x = torch.randn(512, 512, generator=gen(90))
        x[0, :4] = torch.tensor([5.0, 10.0, 15.0, 20.0])
        x = x.requires_grad_()
        t = torch.ones(512, 512)
        with fused_kernels("auto"):
            out = LF.sigmoid_focal_loss(x, t, alpha=-1, gamma=2, reduction="none")
            (gx,) = torch.autograd.grad(out.sum(), x)
        assert "_SigmoidFocalBackward" in _graph_names(out)
        assert any(k[0] == "sigmoid_focal.fwd" for k in _compile.compiled_keys())
    finally:
        _compile.set_compile_kernels(saved[0], min_numel=saved[1], backend=saved[2])
    v = x[0, :4].detach().double()
    q = torch.sigmoid(-v)  # 1 - p, exact in float64 here
    sp = torch.log1p(torch.exp(-v))  # -log p
    torch.testing.assert_close(out[0, :4].double(), sp * q**2, rtol=2e-5, atol=0)
    # d/dx [sp q^2] = -q^3 - 2 sp q^2 p
    torch.testing.assert_close(gx[0, :4].double(), -(q**3) - 2 * sp * q**2 * (1 - q), rtol=2e-5, atol=0)


# ----------------------------------------------------------------------------- compile log and warmup


def _info_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "losskit" and r.levelno == logging.INFO]


def test_each_compile_logs_one_info_line_and_warmup_compiles_ahead(caplog):
    saved = (_compile._ENABLED, _compile._MIN_NUMEL, _compile._BACKEND)
    _compile.set_compile_kernels(True, min_numel=64, backend="aot_eager")  # a new backend: empty cache
    try:
        with fused_kernels("auto"), caplog.at_level(logging.INFO, logger="losskit"):
            opts = {"alpha": 0.4, "gamma": 1.0, "reduction": "sum"}
            assert losskit.warmup({"sigmoid_focal": opts}) == ["sigmoid_focal.fwd", "sigmoid_focal.bwd"]
            lines = _info_lines(caplog)
            assert len(lines) == 2, lines
            assert lines[0].startswith(
                "losskit: compiling fused kernel sigmoid_focal.fwd(0.4, 1.0, 'sum', False) for "
                "float32 cpu 2-D, float32 cpu 2-D with torch.compile (backend 'aot_eager')"
            ), lines[0]
            assert "sigmoid_focal.bwd" in lines[1] and "losskit.warmup" in lines[1]
            caplog.clear()
            # a training call of another batch size reuses the warmed kernels: nothing compiled or logged
            x = torch.randn(9, 13, generator=gen(70), requires_grad=True)
            t = (torch.rand(9, 13, generator=gen(71)) < 0.3).float()
            LF.sigmoid_focal_loss(x, t, **opts).backward()
            assert _info_lines(caplog) == []
            assert losskit.warmup({"sigmoid_focal": opts}) == []
            # other hyperparameters are another kernel
            assert losskit.warmup(["sigmoid_focal"], backward=False) == ["sigmoid_focal.fwd"]
            assert len(_info_lines(caplog)) == 1
    finally:
        _compile.set_compile_kernels(saved[0], min_numel=saved[1], backend=saved[2])


def test_warmup_does_nothing_without_compiled_kernels_and_checks_names():
    with fused_kernels(False):
        assert losskit.warmup() == []
    saved = _compile._ENABLED
    _compile.set_compile_kernels(False)
    try:
        with fused_kernels("auto"):
            assert losskit.warmup(["focal", "dice"]) == []
    finally:
        _compile.set_compile_kernels(saved)
    with pytest.raises(LossValueError, match=r"losses names 'dicee', expected one of \['asymmetric', "):
        losskit.warmup(["dicee"])
    with pytest.raises(
        LossTypeError, match="losses must be a list of loss names or a mapping, got the string 'dice'"
    ):
        losskit.warmup("dice")
