"""Classification losses: definition-of-done tests against plain float64 references written below."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

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

REDUCTIONS = ["none", "mean", "sum"]

# ---------------------------------------------------------------- independent float64 references


def _rows(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(N, C, d...) logits -> (M, C) rows; targets -> (M,) indices or (M, C) probabilities."""
    c = x.shape[1]
    xr = x.movedim(1, -1).reshape(-1, c)
    prob = y.is_floating_point()
    yr = y.movedim(1, -1).reshape(-1, c) if prob else y.reshape(-1)
    return xr, yr, prob


def _log_softmax_row(row: torch.Tensor) -> list[torch.Tensor]:
    m = row.detach().max()
    lse = m + torch.log(sum(torch.exp(row[c] - m) for c in range(row.shape[0])))
    return [row[c] - lse for c in range(row.shape[0])]


def _finish(vals, num, den, shape, reduction, like):
    if reduction == "none":
        return torch.stack(vals).reshape(shape) if vals else like.new_zeros(shape)
    if reduction == "sum":
        return num
    return num / den if den > 0 else num * 0.0


def ref_focal(
    x, y, alpha=1.0, gamma=0.0, weight=None, ignore_index=-100, reduction="mean", eps=0.0, normalizer=None
):
    """-sum_c q_c alpha_c w_c (1 - p_c)^gamma log p_c per row; gamma=0, alpha=1 is torch's cross-entropy.

    Mean: divide by sum of w_y over non-ignored rows (class indices) or by the row count (probabilities).
    """
    C = x.shape[1]
    xr, yr, prob = _rows(x, y)
    vals, num, den = [], x.new_zeros(()), 0.0
    for i in range(xr.shape[0]):
        if not prob and int(yr[i]) == ignore_index:
            vals.append(x.new_zeros(()))
            continue
        if prob:
            q = [yr[i, c] * (1 - eps) + eps / C for c in range(C)]
        else:
            q = [(1 - eps) * (1.0 if c == int(yr[i]) else 0.0) + eps / C for c in range(C)]
        logp = _log_softmax_row(xr[i])
        loss = x.new_zeros(())
        for c in range(C):
            p = torch.exp(logp[c])
            a = float(alpha[c]) if isinstance(alpha, torch.Tensor) else alpha
            w = 1.0 if weight is None else float(weight[c])
            mod = (1 - p) ** gamma if gamma != 0 else 1.0
            loss = loss + q[c] * a * w * mod * (-logp[c])
        vals.append(loss)
        num = num + loss
        den += 1.0 if (prob or weight is None) else float(weight[int(yr[i])])
    if normalizer is not None and reduction == "mean":
        return num / normalizer
    shape = y.shape[:1] + y.shape[2:] if prob else y.shape
    return _finish(vals, num, den, shape, reduction, x)


def ref_sigmoid_focal(x, t, alpha=0.25, gamma=2.0, reduction="none", pos_weight=None, weight=None, mask=None):
    """RetinaNet focal loss element by element, written from the paper's formula."""
    xf, tf = x.reshape(-1), t.reshape(-1)
    pw = None if pos_weight is None else pos_weight.expand_as(x).reshape(-1)
    wf = None if weight is None else weight.expand_as(x).reshape(-1)
    mf = None if mask is None else mask.expand_as(x).reshape(-1)
    vals, num, den = [], x.new_zeros(()), 0.0
    for i in range(xf.numel()):
        xi, ti = xf[i], tf[i]
        p = 1.0 / (1.0 + torch.exp(-xi))
        pos = ti * torch.log(p) * (1.0 if pw is None else pw[i])
        bce = -(pos + (1 - ti) * torch.log(1 - p))
        pt = p * ti + (1 - p) * (1 - ti)
        loss = bce * (1 - pt) ** gamma if gamma != 0 else bce
        if alpha >= 0:
            loss = loss * (alpha * ti + (1 - alpha) * (1 - ti))
        w = 1.0 if wf is None else float(wf[i])
        if mf is not None and not bool(mf[i]):
            loss, w = loss * 0.0, 0.0
        vals.append(loss * w)
        num = num + loss * w
        den += w
    return _finish(vals, num, den, x.shape, reduction, x)


def _cls_data(shape=(6, 4), seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2
    C = shape[1]
    tshape = (shape[0], *shape[2:])
    y = torch.randint(0, C, tshape, generator=g)
    if ignore:
        y.view(-1)[::3] = -100
    w = torch.rand(C, generator=g) + 0.2
    probs = torch.softmax(torch.randn(*shape, generator=g), dim=1)
    return x, y, w, probs


def _bin_data(shape=(5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2
    t = (torch.rand(*shape, generator=g) > 0.6).float()
    w = torch.rand(shape[-1], generator=g) + 0.1
    m = torch.rand(*shape, generator=g) > 0.25
    return x, t, w, m


# ---------------------------------------------------------------- cross-entropy

CE_CASES = {
    "plain": {},
    "weight": {"weight": True},
    "smooth": {"eps": 0.2},
    "weight_smooth": {"weight": True, "eps": 0.3},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CE_CASES))
@pytest.mark.parametrize("spatial", [False, True])
def test_cross_entropy_matches_reference(case, reduction, spatial):
    shape = (3, 4, 2, 2) if spatial else (7, 4)
    x, y, w, _ = _cls_data(shape)
    kw = CE_CASES[case]
    weight = w if kw.get("weight") else None
    eps = kw.get("eps", 0.0)
    assert_matches_reference(
        lambda a: LF.cross_entropy_loss(a, y, weight=weight, reduction=reduction, label_smoothing=eps),
        lambda a: ref_focal(
            a, y, weight=None if weight is None else weight.double(), reduction=reduction, eps=eps
        ),
        (x,),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets_reference(reduction):
    x, _, w, probs = _cls_data((5, 3, 2))
    for weight, eps in ((None, 0.0), (w, 0.1)):
        assert_matches_reference(
            lambda a, q, weight=weight, eps=eps: LF.cross_entropy_loss(
                a, q, weight=weight, reduction=reduction, label_smoothing=eps
            ),
            lambda a, q, weight=weight, eps=eps: ref_focal(
                a, q, weight=None if weight is None else weight.double(), reduction=reduction, eps=eps
            ),
            (x, probs),
            (0, 1),
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_equals_torch(reduction):
    x, y, w, probs = _cls_data((6, 5, 3), seed=2)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.15}, {"weight": w, "label_smoothing": 0.4}):
        torch.testing.assert_close(
            LF.cross_entropy_loss(x, y, reduction=reduction, **kw),
            F.cross_entropy(x, y, reduction=reduction, **kw),
        )
        torch.testing.assert_close(
            LF.cross_entropy_loss(x, probs, reduction=reduction, **kw),
            F.cross_entropy(x, probs, reduction=reduction, **kw),
        )
    # an ignore_index that is a valid class still sits in the softmax denominator
    y2 = torch.randint(0, 5, (6, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        LF.cross_entropy_loss(x, y2, ignore_index=1, reduction=reduction, label_smoothing=0.1, weight=w),
        F.cross_entropy(x, y2, ignore_index=1, reduction=reduction, label_smoothing=0.1, weight=w),
    )


def test_cross_entropy_gradcheck():
    x, y, w, probs = _cls_data((4, 3, 2), seed=3)
    assert_gradcheck(lambda a: LF.cross_entropy_loss(a, y, weight=w.double(), label_smoothing=0.2), (x,))
    assert_gradcheck(lambda a, q: LF.cross_entropy_loss(a, q, label_smoothing=0.1), (x, probs), (0, 1))


def test_cross_entropy_normalizer_accumulation():
    x, y, w, _ = _cls_data((8, 4), seed=4)
    full = LF.cross_entropy_loss(x, y, weight=w)
    valid = y != -100
    total = float(w[y[valid]].sum())
    parts = [
        LF.cross_entropy_loss(x[s], y[s], weight=w, normalizer=total) for s in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(parts[0] + parts[1], full)


# ---------------------------------------------------------------- softmax focal

FOCAL_CASES = {
    "gamma2": {"gamma": 2.0},
    "gamma05_alpha": {"gamma": 0.5, "alpha": 0.25},
    "alpha_vec": {"gamma": 2.0, "alpha": "vec"},
    "alpha_vec_weight": {"gamma": 1.5, "alpha": "vec", "weight": True},
    "smooth_weight": {"gamma": 2.0, "weight": True, "eps": 0.2, "alpha": "vec"},
}


def _focal_kw(case, w):
    kw = dict(FOCAL_CASES[case])
    alpha = kw.pop("alpha", 1.0)
    if alpha == "vec":
        alpha = torch.linspace(0.25, 1.0, w.shape[0])
    weight = w if kw.pop("weight", False) else None
    return alpha, kw["gamma"], weight, kw.get("eps", 0.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(FOCAL_CASES))
@pytest.mark.parametrize("spatial", [False, True, "plain", "plain-none-ignored"])
def test_focal_matches_reference(case, reduction, spatial):
    # 2-D inputs take the fused kernel in this suite; "plain" runs the eager code on them
    shape = (3, 4, 3) if spatial is True else (7, 4)
    x, y, w, _ = _cls_data(shape, seed=5, ignore=spatial != "plain-none-ignored")
    alpha, gamma, weight, eps = _focal_kw(case, w)
    ref_alpha = alpha.double() if isinstance(alpha, torch.Tensor) else alpha
    with fused_kernels("off" if spatial in ("plain", "plain-none-ignored") else "always"):
        _assert_focal_reference(x, y, alpha, ref_alpha, gamma, weight, eps, reduction)


def _assert_focal_reference(x, y, alpha, ref_alpha, gamma, weight, eps, reduction):
    assert_matches_reference(
        lambda a: LF.focal_loss(a, y, alpha, gamma, reduction, weight=weight, label_smoothing=eps),
        lambda a: ref_focal(
            a,
            y,
            alpha=ref_alpha,
            gamma=gamma,
            weight=None if weight is None else weight.double(),
            reduction=reduction,
            eps=eps,
        ),
        (x,),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_probability_targets_reference(reduction):
    x, _, w, probs = _cls_data((5, 3), seed=6)
    assert_matches_reference(
        lambda a, q: LF.focal_loss(a, q, 0.5, 2.0, reduction, weight=w, label_smoothing=0.1),
        lambda a, q: ref_focal(a, q, 0.5, 2.0, w.double(), reduction=reduction, eps=0.1),
        (x, probs),
        (0, 1),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_gamma0_equals_torch_cross_entropy(reduction):
    x, y, w, probs = _cls_data((6, 5, 2), seed=7)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.1}, {"weight": w, "label_smoothing": 0.3}):
        for target in (y, probs):
            ours = LF.focal_loss(x, target, 1.0, 0.0, reduction, **kw)
            theirs = F.cross_entropy(x, target, reduction=reduction, **kw)
            torch.testing.assert_close(ours, theirs)
            if reduction == "none":  # element-wise the same operations: bit-for-bit equal
                assert torch.equal(ours, theirs)
    y3 = y.clone()
    y3[y3 == -100] = 3
    torch.testing.assert_close(
        LF.focal_loss(x, y3, 1.0, 0.0, reduction, ignore_index=3, weight=w),
        F.cross_entropy(x, y3, ignore_index=3, reduction=reduction, weight=w),
    )


def test_focal_gradcheck():
    x, y, w, probs = _cls_data((4, 3, 2), seed=8)
    alpha = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    for gamma in (0.5, 2.0):
        assert_gradcheck(
            lambda a, gamma=gamma: LF.focal_loss(a, y, alpha, gamma, weight=w.double(), label_smoothing=0.1),
            (x,),
        )
    assert_gradcheck(lambda a, q: LF.focal_loss(a, q, 1.0, 2.0), (x, probs), (0, 1))


@pytest.mark.parametrize("gamma", [0.01, 0.25, 0.5, 0.99])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_finite_gradients_at_saturation(gamma, dtype):
    # p_t == 1 exactly (logit gap 200) and p_t = 1 - tiny; d/dp (1-p)^gamma is infinite there for gamma < 1
    x = torch.tensor(
        [[200.0, 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 30.0, -5.0]], dtype=dtype, requires_grad=True
    )
    y = torch.tensor([0, 0, 1])
    for eps in (0.0, 0.1):
        loss = LF.focal_loss(x, y, 1.0, gamma, "sum", label_smoothing=eps)
        assert_finite_with_grads(loss, x)
    loss = LF.focal_loss(x, y, 1.0, gamma, "none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all()
    # the saturated row: ce = log(1 + 2 e^-200) ~ 2 e^-200 and 1 - p = ce to first order, so the loss is
    # ce^(1 + gamma) (relative error ~e^-200); it underflows to 0 in float32; the gradient is as tiny
    ce0 = 2.0 * math.exp(-200.0)
    want = torch.tensor(ce0 ** (1.0 + gamma), dtype=torch.float64).to(dtype)
    torch.testing.assert_close(loss[0].detach(), want, rtol=1e-6, atol=0.0)
    assert float(g[0].abs().max()) < 1e-30
    # the naive formula produces NaN there
    xn = x.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(xn, y, reduction="none")
    naive = ((1 - torch.exp(-ce)) ** gamma * ce).sum()
    (gn,) = torch.autograd.grad(naive, xn)
    assert not torch.isfinite(gn).all()


@pytest.mark.parametrize("gamma", [0.01, 0.25, 0.5, 0.99])
def test_sigmoid_focal_finite_gradients_at_saturation(gamma):
    x = torch.tensor([200.0, -200.0, 40.0, -40.0, 17.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    assert_finite_with_grads(LF.sigmoid_focal_loss(x, t, 0.25, gamma, "sum"), x)
    assert_finite_with_grads(LF.sigmoid_focal_loss(x, t * 0.9, 0.25, gamma, "sum"), x)


# ---------------------------------------------------------------- sigmoid focal


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_focal_matches_reference(reduction):
    x, t, w, m = _bin_data()
    pw = torch.tensor([1.0, 2.0, 0.5])
    soft = t * 0.8 + 0.1
    cases = [
        ({}, {}),
        ({"alpha": -1.0, "gamma": 0.5}, {"alpha": -1.0, "gamma": 0.5}),
        (
            {"pos_weight": pw, "weight": w, "mask": m},
            {"pos_weight": pw.double(), "weight": w.double(), "mask": m},
        ),
    ]
    for target in (t, soft):
        for kw, rkw in cases:
            assert_matches_reference(
                lambda a, b, kw=kw: LF.sigmoid_focal_loss(a, b, reduction=reduction, **kw),
                lambda a, b, rkw=rkw: ref_sigmoid_focal(a, b, reduction=reduction, **rkw),
                (x, target),
                (0, 1),
            )


def test_sigmoid_focal_torchvision_defaults_and_formula():
    import inspect

    sig = inspect.signature(LF.sigmoid_focal_loss)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:5]] == ["inputs", "targets", "alpha", "gamma", "reduction"]
    assert [p.default for p in params[2:5]] == [0.25, 2.0, "none"]
    # torchvision's composition, re-typed: ce * (1 - p_t)^gamma * alpha_t
    x, t, _, _ = _bin_data((4, 6), seed=9)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    expected = (0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2
    torch.testing.assert_close(LF.sigmoid_focal_loss(x, t), expected)
    torch.testing.assert_close(LF.sigmoid_focal_loss(inputs=x, targets=t, reduction="mean"), expected.mean())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_focal_gamma0_equals_bce_with_logits(reduction):
    x, t, w, _ = _bin_data((4, 3), seed=10)
    pw = torch.tensor([2.0, 1.0, 0.3])
    for target in (t, t * 0.7 + 0.1):
        for kw in ({}, {"pos_weight": pw}):
            ours = LF.sigmoid_focal_loss(x, target, -1.0, 0.0, reduction, **kw)
            theirs = F.binary_cross_entropy_with_logits(x, target, reduction=reduction, **kw)
            torch.testing.assert_close(ours, theirs)
            if reduction == "none":
                assert torch.equal(ours, theirs)
    # element weights: same elements, but our mean is sum(w l) / sum(w) (torch divides by the count)
    bce = F.binary_cross_entropy_with_logits(x, t, weight=w, reduction="sum")
    ours = LF.sigmoid_focal_loss(x, t, -1.0, 0.0, "mean", weight=w)
    torch.testing.assert_close(ours, bce / w.expand_as(x).sum())


def test_sigmoid_focal_gradcheck():
    x, t, w, m = _bin_data((3, 3), seed=11)
    for gamma in (0.5, 2.0):
        assert_gradcheck(
            lambda a, b, gamma=gamma: LF.sigmoid_focal_loss(
                a, b, 0.25, gamma, "mean", pos_weight=w.double(), mask=m
            ),
            (x, t * 0.8 + 0.1),
            (0, 1),
        )


def test_sigmoid_focal_normalizer_and_bool_targets():
    x, t, _, _ = _bin_data((6, 4), seed=12)
    num_pos = float(t.sum())
    torch.testing.assert_close(
        LF.sigmoid_focal_loss(x, t, reduction="mean", normalizer=num_pos),
        LF.sigmoid_focal_loss(x, t, reduction="sum") / num_pos,
    )
    torch.testing.assert_close(LF.sigmoid_focal_loss(x, t.bool()), LF.sigmoid_focal_loss(x, t))


# ---------------------------------------------------------------- properties (hypothesis)

logit = st.floats(-20, 20, allow_nan=False, width=32)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(2, 5),
    st.floats(0.0, 4.0),
    st.floats(0.0, 0.5),
    st.data(),
)
def test_properties_multiclass(n, c, gamma, eps, data):
    x = torch.tensor(data.draw(st.lists(logit, min_size=n * c, max_size=n * c)), dtype=torch.float64)
    x = x.reshape(n, c)
    y = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    w = torch.tensor(data.draw(st.lists(st.floats(0.1, 3.0), min_size=c, max_size=c)), dtype=torch.float64)
    for fn, kw in (
        (LF.cross_entropy_loss, {"label_smoothing": eps, "weight": w}),
        (LF.focal_loss, {"gamma": gamma, "label_smoothing": eps, "weight": w}),
    ):
        none = fn(x, y, reduction="none", **kw)
        assert (none >= -1e-12).all()
        torch.testing.assert_close(fn(x, y, reduction="sum", **kw), none.sum())
        # weighted mean: sum / sum of w_y
        torch.testing.assert_close(fn(x, y, reduction="mean", **kw) * w[y].sum(), none.sum())
    # focal(gamma=0) == CE; focal is non-increasing in gamma
    torch.testing.assert_close(
        LF.focal_loss(x, y, 1.0, 0.0, "none", label_smoothing=eps),
        LF.cross_entropy_loss(x, y, reduction="none", label_smoothing=eps),
    )
    lo = LF.focal_loss(x, y, 1.0, gamma, "none", label_smoothing=eps)
    hi = LF.focal_loss(x, y, 1.0, gamma + 0.5, "none", label_smoothing=eps)
    assert (hi <= lo + 1e-12).all()


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.tuples(logit, st.floats(0.0, 1.0)), min_size=1, max_size=12),
    st.floats(0.0, 4.0),
    st.floats(0.0, 1.0),
)
def test_properties_sigmoid_focal(pairs, gamma, alpha):
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    t = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    none = LF.sigmoid_focal_loss(x, t, alpha, gamma, "none")
    assert (none >= -1e-12).all()
    torch.testing.assert_close(LF.sigmoid_focal_loss(x, t, alpha, gamma, "sum"), none.sum())
    torch.testing.assert_close(LF.sigmoid_focal_loss(x, t, alpha, gamma, "mean") * x.numel(), none.sum())
    torch.testing.assert_close(
        LF.sigmoid_focal_loss(x, t, -1.0, 0.0, "none"),
        F.binary_cross_entropy_with_logits(x, t, reduction="none"),
    )
    hi = LF.sigmoid_focal_loss(x, t, alpha, gamma + 0.5, "none")
    assert (hi <= none + 1e-12).all()


# ---------------------------------------------------------------- degenerate inputs

MULTICLASS_FNS = {
    "cross_entropy": lambda a, y, **kw: LF.cross_entropy_loss(a, y, **kw),
    "focal": lambda a, y, **kw: LF.focal_loss(a, y, **kw),
}


@pytest.mark.parametrize("name", list(MULTICLASS_FNS))
def test_multiclass_empty_and_all_ignored(name):
    fn = MULTICLASS_FNS[name]
    w = torch.rand(4) + 0.1
    x = torch.zeros(0, 4, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.1}):
        assert_connected_zero(fn(x, y, **kw), x)
        assert fn(x, y, reduction="none", **kw).shape == (0,)
    x2 = torch.randn(3, 4, 2, requires_grad=True)
    y2 = torch.full((3, 2), -100)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.2, "weight": w}):
        assert_connected_zero(fn(x2, y2, **kw), x2)
        assert_connected_zero(fn(x2, y2, reduction="sum", **kw), x2)
    # zero-weight targets only: 0 / 0 -> 0
    assert_connected_zero(
        fn(x2, torch.zeros(3, 2, dtype=torch.long), weight=torch.tensor([0.0, 1, 1, 1])), x2
    )


def test_sigmoid_focal_empty_and_all_masked():
    x = torch.zeros(0, 3, requires_grad=True)
    assert_connected_zero(LF.sigmoid_focal_loss(x, torch.zeros(0, 3), reduction="mean"), x)
    x2 = torch.randn(4, 3, requires_grad=True)
    t2 = torch.zeros(4, 3)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    assert_connected_zero(LF.sigmoid_focal_loss(x2, t2, reduction="mean", mask=mask), x2)
    # no positives at all is an ordinary input: finite, positive
    loss = LF.sigmoid_focal_loss(x2, t2, reduction="mean")
    assert_finite_with_grads(loss, x2)


# ---------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(MULTICLASS_FNS))
def test_multiclass_low_precision_extremes(name, dtype):
    fn = MULTICLASS_FNS[name]
    x = extreme_logits((6, 5, 2), dtype).requires_grad_(True)
    y = torch.randint(0, 5, (6, 2), generator=torch.Generator().manual_seed(0))
    for kw in ({}, {"label_smoothing": 0.1, "weight": torch.rand(5) + 0.1}):
        loss = fn(x, y, **kw)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)
    loss = LF.focal_loss(x, y, 1.0, 0.5, label_smoothing=0.1)
    assert_finite_with_grads(loss, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sigmoid_focal_low_precision_extremes(dtype):
    x = extreme_logits((8, 3), dtype).requires_grad_(True)
    t = (torch.rand(8, 3, generator=torch.Generator().manual_seed(1)) > 0.5).to(dtype)
    for gamma in (0.5, 2.0):
        loss = LF.sigmoid_focal_loss(x, t, 0.25, gamma, "mean")
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)


# ---------------------------------------------------------------- bad input


def test_multiclass_bad_inputs():
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    for fn in (LF.cross_entropy_loss, LF.focal_loss):
        with pytest.raises(
            LossValueError, match=r"target contains class index 3, expected values in \[0, 3\)"
        ):
            fn(x, torch.tensor([0, 3, 1, 1]))
        with pytest.raises(
            LossValueError, match=r"target contains class index -1, expected values in \[0, 3\)"
        ):
            fn(x, torch.tensor([0, -1, 1, 1]))
        with pytest.raises(LossValueError, match=r"target has shape \(3,\), expected \(4,\) to match input"):
            fn(x, y[:3])
        with pytest.raises(LossValueError, match=r"floating target holds class probabilities and must have"):
            fn(x, y.float())
        with pytest.raises(
            LossTypeError, match="target must be an integer tensor of class indices, got dtype torch.bool"
        ):
            fn(x, y > 0)
        with pytest.raises(LossTypeError, match="input must be a floating-point tensor"):
            fn(x.long(), y)
        with pytest.raises(LossValueError, match=r"input must be \(N, C\) or \(N, C, d1, ...\)"):
            fn(x[0], y[0])
        with pytest.raises(LossValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
            fn(x, y, reduction="avg")
        with pytest.raises(LossValueError, match=r"label_smoothing must be <= 1.0, got 1.5"):
            fn(x, y, label_smoothing=1.5)
        with pytest.raises(LossValueError, match=r"label_smoothing must be >= 0.0, got -0.1"):
            fn(x, y, label_smoothing=-0.1)
        with pytest.raises(
            LossValueError, match=r"weight has shape \(2,\), expected \(3,\): one entry per class"
        ):
            fn(x, y, weight=torch.ones(2))
        with pytest.raises(LossValueError, match="weight must be non-negative"):
            fn(x, y, weight=torch.tensor([1.0, -1.0, 1.0]))
        with pytest.raises(LossValueError, match=r"target must have values in \[0.0, 1.0\]"):
            fn(x, x)
        with pytest.raises(LossValueError, match="normalizer is only used with reduction='mean'"):
            fn(x, y, reduction="sum", normalizer=2)
    with pytest.raises(LossValueError, match=r"gamma must be >= 0.0, got -1"):
        LF.focal_loss(x, y, gamma=-1)
    with pytest.raises(LossValueError, match=r"alpha must be >= 0.0, got -0.5"):
        LF.focal_loss(x, y, alpha=-0.5)
    with pytest.raises(LossValueError, match=r"alpha has shape \(2,\), expected \(3,\): one entry per class"):
        LF.focal_loss(x, y, alpha=torch.tensor([0.5, 0.5]))
    with pytest.raises(LossValueError, match="alpha must have finite non-negative entries"):
        LF.focal_loss(x, y, alpha=torch.tensor([0.5, -0.5, 1.0]))
    with pytest.raises(LossTypeError, match="alpha must be a number"):
        losskit.FocalLoss(alpha="0.25")
    with pytest.raises(LossValueError, match=r"gamma must be >= 0.0"):
        losskit.FocalLoss(gamma=-2)
    with pytest.raises(LossValueError, match="reduction must be one of"):
        losskit.FocalLoss(reduction="batchmean")
    with pytest.raises(LossValueError, match=r"label_smoothing must be <= 1.0"):
        losskit.CrossEntropyLoss(label_smoothing=2.0)


def test_sigmoid_focal_bad_inputs():
    x = torch.randn(4, 3)
    t = torch.zeros(4, 3)
    with pytest.raises(
        LossValueError, match=r"targets has shape \(4, 2\), expected \(4, 3\) to match inputs"
    ):
        LF.sigmoid_focal_loss(x, t[:, :2])
    with pytest.raises(LossTypeError, match="targets must be a floating-point \\(or bool\\) tensor"):
        LF.sigmoid_focal_loss(x, t.long())
    with pytest.raises(LossValueError, match=r"targets must have values in \[0.0, 1.0\], got range \[0, 2\]"):
        LF.sigmoid_focal_loss(x, t + 2 * (x > 0))
    with pytest.raises(LossValueError, match=r"alpha must be in \[0, 1\] \(or negative to disable"):
        LF.sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(LossValueError, match=r"gamma must be >= 0.0, got -0.5"):
        LF.sigmoid_focal_loss(x, t, gamma=-0.5)
    with pytest.raises(LossValueError, match="reduction must be one of"):
        LF.sigmoid_focal_loss(x, t, reduction="elementwise_mean")
    with pytest.raises(LossValueError, match="mask must be a bool tensor"):
        LF.sigmoid_focal_loss(x, t, mask=torch.ones(4, 3))
    with pytest.raises(LossValueError, match=r"pos_weight has shape \(2,\), expected a shape broadcastable"):
        LF.sigmoid_focal_loss(x, t, pos_weight=torch.ones(2))
    with pytest.raises(LossValueError, match=r"alpha must be in \[0, 1\]"):
        losskit.SigmoidFocalLoss(alpha=2.0)


# ---------------------------------------------------------------- module == functional, serialisation, compile


def _module_cases():
    x, y, w, _ = _cls_data((6, 4), seed=13)
    alpha = torch.tensor([0.25, 0.5, 0.75, 1.0])
    xb, tb, wb, _ = _bin_data((5, 4), seed=13)
    return [
        (
            "cross_entropy",
            losskit.CrossEntropyLoss(weight=w, label_smoothing=0.1),
            LF.cross_entropy_loss(x, y, weight=w, label_smoothing=0.1),
            (x, y),
        ),
        (
            "focal_vec",
            losskit.FocalLoss(alpha, 2.0, weight=w, label_smoothing=0.1),
            LF.focal_loss(x, y, alpha, 2.0, weight=w, label_smoothing=0.1),
            (x, y),
        ),
        ("focal_seed", losskit.FocalLoss(0.5, 1.0, "sum"), LF.focal_loss(x, y, 0.5, 1.0, "sum"), (x, y)),
        (
            "sigmoid_focal",
            losskit.SigmoidFocalLoss(0.25, 2.0, pos_weight=wb),
            LF.sigmoid_focal_loss(xb, tb, 0.25, 2.0, "mean", pos_weight=wb),
            (xb, tb),
        ),
    ]


@pytest.mark.parametrize("idx", range(4), ids=["cross_entropy", "focal_vec", "focal_seed", "sigmoid_focal"])
def test_module_functional_roundtrip_compile(idx):
    _, module, value, args = _module_cases()[idx]
    assert_module_matches(module, value, *args)
    assert_compiles(lambda *a: module(*a), *args)


def test_module_buffers_and_device_follow():
    m = losskit.FocalLoss(alpha=[0.25, 0.75], weight=torch.tensor([1.0, 2.0]))
    assert set(dict(m.named_buffers())) == {"alpha", "weight"}
    assert set(m.state_dict()) == {"alpha", "weight"}
    m = m.double()
    assert m.alpha.dtype == torch.float64
    assert "per-class" in repr(m)
    x = torch.randn(3, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    torch.testing.assert_close(m(x, y), LF.focal_loss(x, y, m.alpha, 2.0, weight=m.weight))


# ---------------------------------------------------------------- registry


def test_registry_names():
    names = losskit.available("classification")
    for name in ("cross_entropy", "focal", "sigmoid_focal", "weighted_cross_entropy"):
        assert name in names
    assert isinstance(losskit.build("focal", gamma=1.0), losskit.FocalLoss)
    assert isinstance(losskit.build("ce"), losskit.CrossEntropyLoss)
    assert losskit.build({"name": "sigmoid_focal", "alpha": -1}).alpha == -1.0
    x = torch.randn(4, 3)
    assert torch.isfinite(losskit.build("focal")(x, torch.tensor([0, 1, 2, 0])))


def test_known_values_small():
    # two-class check by hand: logits (0, log 3) -> p = (1/4, 3/4)
    x = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    y = torch.tensor([1])
    torch.testing.assert_close(
        LF.cross_entropy_loss(x, y), torch.tensor(-math.log(0.75), dtype=torch.float64)
    )
    torch.testing.assert_close(
        LF.focal_loss(x, y, 1.0, 2.0), torch.tensor(-(0.25**2) * math.log(0.75), dtype=torch.float64)
    )
    torch.testing.assert_close(
        LF.focal_loss(x, torch.tensor([0]), 0.5, 1.0),
        torch.tensor(-0.5 * 0.75 * math.log(0.25), dtype=torch.float64),
    )


# ================================================================ PolyLoss, ASL, multi-class hinge, class weights


def ref_poly1(x, y, epsilon=1.0, weight=None, ignore_index=-100, reduction="mean", eps=0.0):
    """sum_c q_c w_c (-log p_c + epsilon (1 - p_c)) per row; mean over sum of w_y (indices) or rows."""
    C = x.shape[1]
    xr, yr, prob = _rows(x, y)
    vals, num, den = [], x.new_zeros(()), 0.0
    for i in range(xr.shape[0]):
        if not prob and int(yr[i]) == ignore_index:
            vals.append(x.new_zeros(()))
            continue
        logp = _log_softmax_row(xr[i])
        loss = x.new_zeros(())
        for c in range(C):
            if prob:
                q = yr[i, c] * (1 - eps) + eps / C
            else:
                q = (1 - eps) * (1.0 if c == int(yr[i]) else 0.0) + eps / C
            w = 1.0 if weight is None else float(weight[c])
            loss = loss + q * w * (-logp[c] + epsilon * (1 - torch.exp(logp[c])))
        vals.append(loss)
        num = num + loss
        den += 1.0 if (prob or weight is None) else float(weight[int(yr[i])])
    shape = y.shape[:1] + y.shape[2:] if prob else y.shape
    return _finish(vals, num, den, shape, reduction, x)


def ref_asymmetric(x, t, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, reduction="mean", weight=None, mask=None):
    """ASL element by element from the paper: shifted probability p_m = max(p - clip, 0) for negatives."""
    xf, tf = x.reshape(-1), t.reshape(-1)
    wf = None if weight is None else weight.expand_as(x).reshape(-1)
    mf = None if mask is None else mask.expand_as(x).reshape(-1)
    vals, num, den = [], x.new_zeros(()), 0.0
    for i in range(xf.numel()):
        p = 1.0 / (1.0 + torch.exp(-xf[i]))
        pos = -((1 - p) ** gamma_pos if gamma_pos else 1.0) * torch.log(p)
        if float(p.detach()) > clip:
            pm = p - clip
            neg = -((pm**gamma_neg) if gamma_neg else 1.0) * torch.log(1 - pm)
        else:  # p_m = 0: the negative term vanishes
            neg = p * 0.0
        loss = tf[i] * pos + (1 - tf[i]) * neg
        w = 1.0 if wf is None else float(wf[i])
        if mf is not None and not bool(mf[i]):
            loss, w = loss * 0.0, 0.0
        vals.append(loss * w)
        num = num + loss * w
        den += w
    return _finish(vals, num, den, x.shape, reduction, x)


def ref_multiclass_hinge(
    x, y, p=1, margin=1.0, weight=None, ignore_index=-100, reduction="mean", mode="multi_margin"
):
    C = x.shape[1]
    xr, yr, _ = _rows(x, y)
    vals, num, den = [], x.new_zeros(()), 0.0
    for i in range(xr.shape[0]):
        yi = int(yr[i])
        if yi == ignore_index:
            vals.append(x.new_zeros(()))
            continue
        terms = []
        for j in range(C):
            if j == yi:
                continue
            h = margin - xr[i, yi] + xr[i, j]
            h = h if float(h.detach()) > 0 else h * 0.0
            terms.append(h**p)
        loss = max(terms, key=lambda v: float(v.detach())) if mode == "crammer_singer" else sum(terms) / C
        w = 1.0 if weight is None else float(weight[yi])
        vals.append(loss * w)
        num = num + loss * w
        den += w
    return _finish(vals, num, den, y.shape, reduction, x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("spatial", [False, True])
def test_poly1_matches_reference(reduction, spatial):
    shape = (3, 4, 3) if spatial else (7, 4)
    x, y, w, _ = _cls_data(shape, seed=20)
    for epsilon, weight, eps in ((1.0, None, 0.0), (2.0, w, 0.0), (-0.5, w, 0.2)):
        assert_matches_reference(
            lambda a, epsilon=epsilon, weight=weight, eps=eps: LF.poly1_cross_entropy_loss(
                a, y, epsilon, weight, reduction=reduction, label_smoothing=eps
            ),
            lambda a, epsilon=epsilon, weight=weight, eps=eps: ref_poly1(
                a, y, epsilon, None if weight is None else weight.double(), reduction=reduction, eps=eps
            ),
            (x,),
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_probability_targets_and_paper_form(reduction):
    x, y, w, probs = _cls_data((5, 3), seed=21, ignore=False)
    assert_matches_reference(
        lambda a, q: LF.poly1_cross_entropy_loss(a, q, 1.5, w, reduction=reduction, label_smoothing=0.1),
        lambda a, q: ref_poly1(a, q, 1.5, w.double(), reduction=reduction, eps=0.1),
        (x, probs),
        (0, 1),
    )
    # paper's form without class weights: CE(label-smoothed) + epsilon (1 - sum_c q_c p_c)
    eps, epsilon = 0.1, 2.0
    q = F.one_hot(y, 3).float() * (1 - eps) + eps / 3
    pt = (q * torch.softmax(x, 1)).sum(1)
    ce = F.cross_entropy(x, y, reduction="none", label_smoothing=eps)
    expected = ce + epsilon * (1 - pt)
    expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
    torch.testing.assert_close(
        LF.poly1_cross_entropy_loss(x, y, epsilon, reduction=reduction, label_smoothing=eps), expected
    )
    # epsilon = 0 is cross-entropy
    torch.testing.assert_close(
        LF.poly1_cross_entropy_loss(x, y, 0.0, w, reduction=reduction),
        F.cross_entropy(x, y, weight=w, reduction=reduction),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_asymmetric_matches_reference(reduction):
    x, t, w, m = _bin_data((5, 4), seed=22)
    for kw in ({}, {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.0}, {"gamma_neg": 0.5, "clip": 0.2}):
        for target in (t, t * 0.7 + 0.2):
            assert_matches_reference(
                lambda a, b, kw=kw: LF.asymmetric_loss(a, b, reduction=reduction, **kw),
                lambda a, b, kw=kw: ref_asymmetric(a, b, reduction=reduction, **kw),
                (x, target),
                (0, 1),
            )
    assert_matches_reference(
        lambda a: LF.asymmetric_loss(a, t, reduction=reduction, weight=w, mask=m),
        lambda a: ref_asymmetric(a, t, reduction=reduction, weight=w.double(), mask=m),
        (x,),
    )


def test_asymmetric_matches_reference_implementation_formula_and_limits():
    x, t, _, _ = _bin_data((6, 5), seed=23)
    # the ASL authors' formulation, re-typed (eps clamps inactive at these logits)
    gn, gp, clip, eps = 4.0, 1.0, 0.05, 1e-8
    xs_pos = torch.sigmoid(x)
    xs_neg = (1 - xs_pos + clip).clamp(max=1)
    los = t * torch.log(xs_pos.clamp(min=eps)) + (1 - t) * torch.log(xs_neg.clamp(min=eps))
    pt = xs_pos * t + xs_neg * (1 - t)
    expected = -(los * torch.pow(1 - pt, gp * t + gn * (1 - t))).sum()
    torch.testing.assert_close(LF.asymmetric_loss(x, t, gn, gp, clip, "sum"), expected)
    # clip = 0 and equal gammas: sigmoid focal without alpha; all zero: BCE-with-logits
    torch.testing.assert_close(
        LF.asymmetric_loss(x, t, 2.0, 2.0, 0.0, "none"), LF.sigmoid_focal_loss(x, t, -1.0, 2.0, "none")
    )
    soft = t * 0.6 + 0.2
    torch.testing.assert_close(
        LF.asymmetric_loss(x, soft, 0.0, 0.0, 0.0, "mean"), F.binary_cross_entropy_with_logits(x, soft)
    )
    # probability shifting: negatives with p < clip contribute exactly nothing
    easy = torch.tensor([-5.0, -4.0])
    assert float(LF.asymmetric_loss(easy, torch.zeros(2), clip=0.05, reduction="sum")) == 0.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["multi_margin", "crammer_singer"])
def test_multiclass_hinge_matches_reference(reduction, mode):
    x, y, w, _ = _cls_data((7, 4), seed=24)
    xs, ys, _, _ = _cls_data((2, 4, 3), seed=25)
    for p, margin, weight in ((1, 1.0, None), (2, 0.5, w)):
        for a_, b_ in ((x, y), (xs, ys)):
            assert_matches_reference(
                lambda a, b_=b_, p=p, margin=margin, weight=weight: LF.multiclass_hinge_loss(
                    a, b_, p, margin, weight, reduction=reduction, mode=mode
                ),
                lambda a, b_=b_, p=p, margin=margin, weight=weight: ref_multiclass_hinge(
                    a,
                    b_,
                    p,
                    margin,
                    None if weight is None else weight.double(),
                    reduction=reduction,
                    mode=mode,
                ),
                (a_,),
            )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multiclass_hinge_equals_torch_multi_margin(reduction):
    x, y, w, _ = _cls_data((8, 5), seed=26, ignore=False)
    for p, margin in ((1, 1.0), (2, 0.3)):
        torch.testing.assert_close(
            LF.multiclass_hinge_loss(x, y, p, margin, reduction=reduction),
            F.multi_margin_loss(x, y, p=p, margin=margin, reduction=reduction),
        )
        if reduction != "mean":
            torch.testing.assert_close(
                LF.multiclass_hinge_loss(x, y, p, margin, w, reduction=reduction),
                F.multi_margin_loss(x, y, p=p, margin=margin, weight=w, reduction=reduction),
            )
    # weighted mean: torch divides by N, we divide by sum of w_y
    ours = LF.multiclass_hinge_loss(x, y, weight=w)
    torch.testing.assert_close(ours * w[y].sum(), F.multi_margin_loss(x, y, weight=w, reduction="sum"))


def test_more_gradchecks():
    x, y, w, probs = _cls_data((4, 3, 2), seed=27)
    assert_gradcheck(lambda a: LF.poly1_cross_entropy_loss(a, y, 2.0, w.double(), label_smoothing=0.1), (x,))
    assert_gradcheck(lambda a, q: LF.poly1_cross_entropy_loss(a, q), (x, probs), (0, 1))
    assert_gradcheck(lambda a: LF.multiclass_hinge_loss(a, y, 2, 0.7, w.double()), (x,))
    assert_gradcheck(lambda a: LF.multiclass_hinge_loss(a, y, 1, 1.0, mode="crammer_singer"), (x,))
    xb, tb, wb, mb = _bin_data((3, 4), seed=28)
    for kw in ({}, {"gamma_pos": 0.5, "gamma_neg": 2.0, "clip": 0.0}):
        assert_gradcheck(
            lambda a, b, kw=kw: LF.asymmetric_loss(a, b, weight=wb.double(), mask=mb, **kw),
            (xb, tb * 0.8 + 0.1),
            (0, 1),
        )


@pytest.mark.parametrize("gamma", [0.01, 0.25, 0.5, 0.99])
def test_asymmetric_finite_gradients_at_saturation(gamma):
    # (1 - p) -> 0 for saturated positives, p_m -> 0 for negatives just above the clip
    x = torch.tensor([200.0, 40.0, -200.0, math.log(0.0500001 / 0.9499999), 3.0], requires_grad=True)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    for clip in (0.0, 0.05):
        loss = LF.asymmetric_loss(x, t, gamma, gamma, clip, "sum")
        assert_finite_with_grads(loss, x)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(2, 5), st.floats(-1.0, 3.0), st.data())
def test_properties_poly_hinge(n, c, epsilon, data):
    x = torch.tensor(data.draw(st.lists(logit, min_size=n * c, max_size=n * c)), dtype=torch.float64)
    x = x.reshape(n, c)
    y = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    w = torch.tensor(data.draw(st.lists(st.floats(0.1, 3.0), min_size=c, max_size=c)), dtype=torch.float64)
    for fn, kw in (
        (LF.poly1_cross_entropy_loss, {"epsilon": epsilon, "weight": w}),
        (LF.multiclass_hinge_loss, {"p": 2, "weight": w}),
        (LF.multiclass_hinge_loss, {"mode": "crammer_singer", "weight": w}),
    ):
        none = fn(x, y, reduction="none", **kw)
        assert (none >= -1e-12).all()
        torch.testing.assert_close(fn(x, y, reduction="sum", **kw), none.sum())
        torch.testing.assert_close(fn(x, y, reduction="mean", **kw) * w[y].sum(), none.sum())
    # Crammer-Singer (max) <= C * torch's (sum / C)
    cs = LF.multiclass_hinge_loss(x, y, reduction="none", mode="crammer_singer")
    ww = LF.multiclass_hinge_loss(x, y, reduction="none")
    assert (cs <= c * ww + 1e-12).all()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(logit, st.sampled_from([0.0, 1.0])), min_size=1, max_size=12),
    st.floats(0.0, 5.0),
    st.floats(0.0, 0.3),
)
def test_properties_asymmetric(pairs, gamma_neg, clip):
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    t = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    none = LF.asymmetric_loss(x, t, gamma_neg, 0.0, clip, "none")
    assert (none >= -1e-12).all()
    torch.testing.assert_close(LF.asymmetric_loss(x, t, gamma_neg, 0.0, clip, "sum"), none.sum())
    torch.testing.assert_close(LF.asymmetric_loss(x, t, gamma_neg, 0.0, clip, "mean") * x.numel(), none.sum())
    # more focusing or more shifting never increases a negative's loss
    assert (LF.asymmetric_loss(x, t, gamma_neg + 1, 0.0, clip, "none") <= none + 1e-12).all()
    assert (LF.asymmetric_loss(x, t, gamma_neg, 0.0, clip + 0.1, "none") <= none + 1e-12).all()


MORE_MULTICLASS = {
    "poly1": lambda a, y, **kw: LF.poly1_cross_entropy_loss(a, y, **kw),
    "hinge": lambda a, y, **kw: LF.multiclass_hinge_loss(
        a, y, **{k: v for k, v in kw.items() if k != "label_smoothing"}
    ),
}


@pytest.mark.parametrize("name", list(MORE_MULTICLASS))
def test_more_multiclass_empty_and_all_ignored(name):
    fn = MORE_MULTICLASS[name]
    w = torch.rand(4) + 0.1
    x = torch.zeros(0, 4, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.1}):
        assert_connected_zero(fn(x, y, **kw), x)
        assert fn(x, y, reduction="none", **kw).shape == (0,)
    x2 = torch.randn(3, 4, 2, requires_grad=True)
    y2 = torch.full((3, 2), -100)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.2, "weight": w}):
        assert_connected_zero(fn(x2, y2, **kw), x2)


def test_asymmetric_empty_and_all_masked():
    x = torch.zeros(0, 3, requires_grad=True)
    assert_connected_zero(LF.asymmetric_loss(x, torch.zeros(0, 3)), x)
    x2 = torch.randn(4, 3, requires_grad=True)
    assert_connected_zero(
        LF.asymmetric_loss(x2, torch.zeros(4, 3), mask=torch.zeros(4, 3, dtype=torch.bool)), x2
    )
    assert_finite_with_grads(LF.asymmetric_loss(x2, torch.zeros(4, 3)), x2)  # no positives


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_more_low_precision_extremes(dtype):
    x = extreme_logits((6, 5, 2), dtype).requires_grad_(True)
    y = torch.randint(0, 5, (6, 2), generator=torch.Generator().manual_seed(0))
    w = torch.rand(5) + 0.1
    for loss in (
        LF.poly1_cross_entropy_loss(x, y, 1.0, w, label_smoothing=0.1),
        LF.multiclass_hinge_loss(x, y, 2, 1.0, w),
        LF.multiclass_hinge_loss(x, y, 1, 1.0, mode="crammer_singer"),
    ):
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)
    xb = extreme_logits((8, 3), dtype).requires_grad_(True)
    tb = (torch.rand(8, 3, generator=torch.Generator().manual_seed(1)) > 0.5).to(dtype)
    for kw in ({}, {"gamma_pos": 0.5, "gamma_neg": 0.5, "clip": 0.0}):
        loss = LF.asymmetric_loss(xb, tb, **kw)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, xb)


def test_more_bad_inputs():
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    with pytest.raises(LossValueError, match=r"epsilon must be >= -1.0, got -2"):
        LF.poly1_cross_entropy_loss(x, y, epsilon=-2)
    with pytest.raises(LossValueError, match=r"target contains class index 5, expected values in \[0, 3\)"):
        LF.poly1_cross_entropy_loss(x, torch.tensor([0, 5, 1, 1]))
    with pytest.raises(LossValueError, match=r"label_smoothing must be <= 1.0"):
        LF.poly1_cross_entropy_loss(x, y, label_smoothing=3.0)
    with pytest.raises(LossValueError, match=r"weight has shape \(4,\), expected \(3,\)"):
        losskit.Poly1CrossEntropyLoss(weight=torch.ones(4))(x, y)
    with pytest.raises(LossValueError, match="p must be one of 1, 2, got 3"):
        LF.multiclass_hinge_loss(x, y, p=3)
    with pytest.raises(
        LossValueError, match="mode must be one of 'multi_margin', 'crammer_singer', got 'max'"
    ):
        LF.multiclass_hinge_loss(x, y, mode="max")
    with pytest.raises(LossValueError, match=r"margin must be >= 0.0, got -1"):
        losskit.MulticlassHingeLoss(margin=-1)
    with pytest.raises(LossValueError, match="needs class-index targets"):
        LF.multiclass_hinge_loss(x, torch.softmax(x, 1))
    with pytest.raises(LossValueError, match=r"target contains class index 3, expected values in \[0, 3\)"):
        LF.multiclass_hinge_loss(x, torch.tensor([0, 3, 1, 1]))
    with pytest.raises(LossValueError, match=r"clip must be < 1.0, got 1.0"):
        LF.asymmetric_loss(x, torch.zeros(4, 3), clip=1.0)
    with pytest.raises(LossValueError, match=r"gamma_neg must be >= 0.0, got -4"):
        losskit.AsymmetricLoss(gamma_neg=-4)
    with pytest.raises(LossValueError, match=r"target has shape \(4,\), expected \(4, 3\) to match input"):
        LF.asymmetric_loss(x, torch.zeros(4))
    with pytest.raises(LossTypeError, match="target must be a floating-point \\(or bool\\) tensor"):
        LF.asymmetric_loss(x, torch.zeros(4, 3, dtype=torch.long))


def _more_module_cases():
    x, y, w, _ = _cls_data((6, 4), seed=30)
    xb, tb, _, mb = _bin_data((5, 4), seed=30)
    return [
        (
            losskit.Poly1CrossEntropyLoss(2.0, w, label_smoothing=0.1),
            LF.poly1_cross_entropy_loss(x, y, 2.0, w, label_smoothing=0.1),
            (x, y),
            {},
        ),
        (
            losskit.MulticlassHingeLoss(2, 0.5, w, mode="crammer_singer"),
            LF.multiclass_hinge_loss(x, y, 2, 0.5, w, mode="crammer_singer"),
            (x, y),
            {},
        ),
        (
            losskit.AsymmetricLoss(3.0, 1.0, 0.1),
            LF.asymmetric_loss(xb, tb, 3.0, 1.0, 0.1, mask=mb),
            (xb, tb),
            {"mask": mb},
        ),
        (
            losskit.WeightedCrossEntropyLoss(w, "sum"),
            F.cross_entropy(x, y, weight=w, reduction="sum"),
            (x, y),
            {},
        ),
    ]


@pytest.mark.parametrize("idx", range(4), ids=["poly1", "hinge", "asymmetric", "weighted_ce"])
def test_more_module_functional_roundtrip_compile(idx):
    module, value, args, kw = _more_module_cases()[idx]
    assert_module_matches(module, value, *args, **kw)
    assert_compiles(lambda *a: module(*a, **kw), *args)


def test_more_registry_names():
    names = losskit.available("classification")
    for name in ("poly1_cross_entropy", "asymmetric", "multiclass_hinge"):
        assert name in names
        assert losskit.registry.get_spec(name).family == "classification"
    assert isinstance(losskit.build("poly1", epsilon=2.0), losskit.Poly1CrossEntropyLoss)
    assert isinstance(losskit.build("asl"), losskit.AsymmetricLoss)
    assert losskit.build({"name": "multiclass_hinge", "p": 2}).p == 2


# ---------------------------------------------------------------- class weights


def test_class_weights_schemes_against_plain_formulas():
    counts = [50.0, 5.0, 1.0, 200.0]
    C = len(counts)
    for scheme, beta in (("inverse", 0.0), ("inverse_sqrt", 0.0), ("effective_number", 0.99)):
        if scheme == "inverse":
            raw = [1.0 / n for n in counts]
        elif scheme == "inverse_sqrt":
            raw = [1.0 / math.sqrt(n) for n in counts]
        else:
            raw = [(1 - beta) / (1 - beta**n) for n in counts]
        expected = torch.tensor([r * C / sum(raw) for r in raw])
        got = losskit.class_weights(torch.tensor(counts), C, scheme=scheme, beta=beta)
        torch.testing.assert_close(got, expected)
        assert abs(float(got.sum()) - C) < 1e-5
        unnorm = losskit.class_weights(counts, C, scheme=scheme, beta=beta, normalize=False)
        torch.testing.assert_close(unnorm, torch.tensor(raw, dtype=torch.float32))


def test_class_weights_from_targets_limits_and_zero_counts():
    targets = torch.tensor([[0, 0, 0, 2], [2, 0, -100, 0]])  # counts 5, 0, 2 (ignore skipped)
    w = losskit.class_weights(targets, 3)
    assert w.dtype == torch.float32
    assert torch.isfinite(w).all()
    assert float(w[1]) == 0.0  # absent class: weight 0, no inf
    torch.testing.assert_close(w, torch.tensor([1 / 5, 0.0, 1 / 2]) * (3 / (1 / 5 + 1 / 2)))
    # effective number: beta = 0 -> equal weights (over present classes), beta -> 1 -> inverse
    torch.testing.assert_close(
        losskit.class_weights(targets, 3, "effective_number", beta=0.0), torch.tensor([1.5, 0.0, 1.5])
    )
    torch.testing.assert_close(
        losskit.class_weights(targets, 3, "effective_number", beta=1 - 1e-7), w, rtol=1e-5, atol=1e-5
    )
    # integer counts need counts=True
    torch.testing.assert_close(losskit.class_weights(torch.tensor([5, 0, 2]), 3, counts=True), w)
    torch.testing.assert_close(losskit.class_weights([5, 0, 2], 3), w)
    # float64 counts keep float64
    assert losskit.class_weights(torch.tensor([5.0, 1.0], dtype=torch.float64), 2).dtype == torch.float64


def test_class_weights_bad_inputs():
    with pytest.raises(LossValueError, match=r"targets contains class index 4, expected values in \[0, 3\)"):
        losskit.class_weights(torch.tensor([0, 4, 1]), 3)
    with pytest.raises(LossValueError, match=r"counts has shape \(2,\), expected \(3,\)"):
        losskit.class_weights([1.0, 2.0], 3)
    with pytest.raises(LossValueError, match="at least one class with a positive count"):
        losskit.class_weights([0.0, 0.0], 2)
    with pytest.raises(LossValueError, match="counts must be finite and non-negative"):
        losskit.class_weights([1.0, -2.0], 2)
    with pytest.raises(LossValueError, match="scheme must be one of"):
        losskit.class_weights([1.0, 2.0], 2, scheme="log")
    with pytest.raises(LossValueError, match=r"beta must be < 1.0, got 1.0"):
        losskit.class_weights([1.0, 2.0], 2, scheme="effective_number", beta=1.0)
    with pytest.raises(LossValueError, match=r"num_classes must be >= 1, got 0"):
        losskit.class_weights([1.0], 0)


def test_weighted_cross_entropy_from_targets():
    g = torch.Generator().manual_seed(31)
    targets = torch.cat(
        [torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long), torch.tensor([2])]
    )
    loss_fn = losskit.WeightedCrossEntropyLoss.from_targets(
        targets, 3, scheme="effective_number", beta=0.9, label_smoothing=0.1
    )
    expected_w = losskit.class_weights(targets, 3, "effective_number", 0.9)
    torch.testing.assert_close(loss_fn.weights, expected_w)
    assert loss_fn.label_smoothing == 0.1
    x = torch.randn(8, 3, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    torch.testing.assert_close(loss_fn(x, y), F.cross_entropy(x, y, weight=expected_w, label_smoothing=0.1))
    assert "weight" in loss_fn.state_dict()


def test_from_targets_respects_ignore_index_and_normalizer_for_focal():
    targets = torch.tensor([0, 0, 255, 1, 255])
    loss_fn = losskit.WeightedCrossEntropyLoss.from_targets(targets, 2, ignore_index=255)
    torch.testing.assert_close(loss_fn.weights, torch.tensor([2 / 3, 4 / 3]))
    x = torch.randn(5, 2)
    torch.testing.assert_close(
        loss_fn(x, targets), F.cross_entropy(x, targets, weight=loss_fn.weights, ignore_index=255)
    )
    # focal: normalizer (number or scalar tensor) replaces the weighted count
    xf, yf, w, _ = _cls_data((8, 4), seed=40)
    full = LF.focal_loss(xf, yf, 1.0, 2.0, weight=w)
    total = w[yf[yf != -100]].sum()
    parts = [
        LF.focal_loss(xf[s], yf[s], 1.0, 2.0, weight=w, normalizer=total) for s in (slice(0, 5), slice(5, 8))
    ]
    torch.testing.assert_close(parts[0] + parts[1], full)
    torch.testing.assert_close(
        LF.sigmoid_focal_loss(xf, (xf > 0).float(), reduction="mean", normalizer=torch.tensor(4.0)),
        LF.sigmoid_focal_loss(xf, (xf > 0).float(), reduction="sum") / 4,
    )


# ---------------------------------------------------------------- argument names and devices in errors


def test_cross_entropy_probability_targets_accept_any_ignore_index():
    # ignore_index selects class-index entries; probability targets have none, so it has no effect
    x = torch.randn(4, 3, dtype=torch.float64)
    q = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    want = -(q * torch.log_softmax(x, 1)).sum(1).mean()
    for ignore_index in (0, 2, -100):
        torch.testing.assert_close(LF.cross_entropy_loss(x, q, ignore_index=ignore_index), want)
        torch.testing.assert_close(losskit.CrossEntropyLoss(ignore_index=ignore_index)(x, q), want)


def test_weighted_cross_entropy_errors_name_weights():
    with pytest.raises(LossValueError, match=r"^weights must be non-negative"):
        losskit.WeightedCrossEntropyLoss(weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(LossValueError, match=r"^weights must be a 1-D"):
        losskit.WeightedCrossEntropyLoss(weights=torch.ones(2, 2))


@pytest.mark.parametrize(
    "call",
    [
        lambda x, t: LF.cross_entropy_loss(x, t),
        lambda x, t: LF.focal_loss(x, t),
        lambda x, t: LF.poly1_cross_entropy_loss(x, t),
        lambda x, t: LF.multiclass_hinge_loss(x, t),
    ],
)
def test_multiclass_losses_name_the_argument_on_another_device(call):
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(LossValueError, match=r"target is on meta, expected cpu like input"):
        call(x, t.to("meta"))
    with pytest.raises(LossValueError, match=r"target is on cpu, expected meta like input"):
        call(x.to("meta"), t)
    assert call(x.to("meta"), t.to("meta")).is_meta  # value checks skip meta tensors


def test_class_weight_on_another_device_is_named():
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(LossValueError, match=r"weight is on meta, expected cpu like input"):
        LF.cross_entropy_loss(x, t, weight=torch.ones(3, device="meta"))


@pytest.mark.parametrize(
    "fn",
    [lambda x, t, **k: LF.sigmoid_focal_loss(x, t, **k), lambda x, t, **k: LF.asymmetric_loss(x, t, **k)],
)
def test_binary_losses_name_the_argument_on_another_device(fn):
    x, t = torch.randn(4, 3), torch.ones(4, 3)
    with pytest.raises(LossValueError, match=r"on meta, expected cpu like input"):
        fn(x, t.to("meta"))
    with pytest.raises(LossValueError, match=r"weight is on meta"):
        fn(x, t, weight=torch.ones(4, 3, device="meta"))
    assert fn(x.to("meta"), t.to("meta")).is_meta


def test_plus_inf_logits_are_not_hidden_behind_a_finite_limit():
    # asymmetric loss tends to a finite value as x -> +inf (0 for positives, -log(clip) terms for
    # negatives) and the hinge's target score is dropped: a +inf input must still show
    x = torch.tensor([[math.inf, 0.0, 1.0]])
    for t in (torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]])):
        for reduction in ("none", "mean", "sum"):
            out = LF.asymmetric_loss(x, t, reduction=reduction)
            assert not torch.isfinite(out).all()
    assert not torch.isfinite(LF.multiclass_hinge_loss(x, torch.tensor([0]))).all()
    assert not torch.isfinite(LF.multiclass_hinge_loss(x, torch.tensor([0]), mode="crammer_singer")).all()
    # -inf stays a masked class score for the hinge: finite loss and gradient
    xm = torch.tensor([[-math.inf, 0.0, 1.0]], requires_grad=True)
    out = LF.multiclass_hinge_loss(xm, torch.tensor([2]))
    (g,) = torch.autograd.grad(out, xm)
    assert torch.isfinite(out) and torch.isfinite(g).all()
