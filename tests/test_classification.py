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
@pytest.mark.parametrize("spatial", [False, True])
def test_focal_matches_reference(case, reduction, spatial):
    shape = (3, 4, 3) if spatial else (7, 4)
    x, y, w, _ = _cls_data(shape, seed=5)
    alpha, gamma, weight, eps = _focal_kw(case, w)
    ref_alpha = alpha.double() if isinstance(alpha, torch.Tensor) else alpha
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
            torch.testing.assert_close(ours, F.cross_entropy(x, target, reduction=reduction, **kw))
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


@pytest.mark.parametrize("gamma", [0.25, 0.5])
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
    # the saturated row has (numerically) zero loss and gradient, as the limit says
    assert float(loss[0].detach()) == 0.0 and float(g[0].abs().max()) < 1e-30
    # the naive formula produces NaN there
    xn = x.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(xn, y, reduction="none")
    naive = ((1 - torch.exp(-ce)) ** gamma * ce).sum()
    (gn,) = torch.autograd.grad(naive, xn)
    assert not torch.isfinite(gn).all()


@pytest.mark.parametrize("gamma", [0.25, 0.5])
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
            torch.testing.assert_close(
                LF.sigmoid_focal_loss(x, target, -1.0, 0.0, reduction, **kw),
                F.binary_cross_entropy_with_logits(x, target, reduction=reduction, **kw),
            )
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


@settings(max_examples=30, deadline=None)
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


@settings(max_examples=30, deadline=None)
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
