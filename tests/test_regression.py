"""Regression losses: definition-of-done tests against plain float64 formulas."""

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
)
from losskit import LossTypeError, LossValueError

# ---------------------------------------------------------------- independent float64 references


def ref_huber_elem(d: float, delta: float) -> float:
    a = abs(d)
    return 0.5 * d * d if a <= delta else delta * (a - 0.5 * delta)


def ref_smooth_l1_elem(d: float, beta: float) -> float:
    a = abs(d)
    if beta == 0:
        return a
    return 0.5 * d * d / beta if a < beta else a - 0.5 * beta


def ref_log_cosh_elem(d: float) -> float:
    a = abs(d)
    # log(cosh(a)) = a + log(1 + exp(-2a)) - log 2, exact in float64 for any a
    return a + math.log1p(math.exp(-2 * a)) - math.log(2.0)


def ref_charbonnier_elem(d: float, eps: float) -> float:
    return math.sqrt(d * d + eps * eps) - eps


def ref_quantile_elem(d_target_minus_pred: float, q: float) -> float:
    u = d_target_minus_pred
    return q * u if u >= 0 else (q - 1) * u


def elementwise_ref(elem, *params):
    """Reference loss from a scalar formula, looping over elements: x, y, weight, mask, reduction."""

    def ref(x, y, weight=None, mask=None, reduction="mean"):
        w = None if weight is None else weight.expand_as(x).reshape(-1)
        m = None if mask is None else mask.expand_as(x).reshape(-1)
        vals, num, den = [], x.new_zeros(()), 0.0
        for i in range(x.numel()):
            v = _elem_autograd(elem, x.reshape(-1)[i] - y.reshape(-1)[i], *params)
            wi = 1.0 if w is None else w[i]
            if m is not None and not bool(m[i]):
                v, wi = v * 0.0, 0.0
            vals.append(v * wi)
            num = num + v * wi
            den += float(wi)
        if reduction == "none":
            return torch.stack(vals).reshape(x.shape) if vals else x.new_zeros(x.shape)
        if reduction == "sum":
            return num
        return num / den if den > 0 else num * 0.0

    return ref


def _elem_autograd(elem, d, *params):
    """Scalar formulas above rewritten in torch ops so gradients flow (float64)."""
    name = elem.__name__
    a = d.abs()
    if name == "ref_huber_elem":
        (delta,) = params
        return 0.5 * d * d if float(a.detach()) <= delta else delta * (a - 0.5 * delta)
    if name == "ref_smooth_l1_elem":
        (beta,) = params
        if beta == 0:
            return a
        return 0.5 * d * d / beta if float(a.detach()) < beta else a - 0.5 * beta
    if name == "ref_log_cosh_elem":
        return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)
    if name == "ref_charbonnier_elem":
        (eps,) = params
        return torch.sqrt(d * d + eps * eps) - eps
    if name == "ref_quantile_elem":
        (q,) = params
        u = -d
        return q * u if float(u.detach()) >= 0 else (q - 1) * u
    raise AssertionError(name)


CASES = [
    ("huber", LF.huber_loss, {"delta": 0.7}, ref_huber_elem, (0.7,)),
    ("smooth_l1", LF.smooth_l1_loss, {"beta": 0.7}, ref_smooth_l1_elem, (0.7,)),
    ("log_cosh", LF.log_cosh_loss, {}, ref_log_cosh_elem, ()),
    ("charbonnier", LF.charbonnier_loss, {"eps": 0.3}, ref_charbonnier_elem, (0.3,)),
    ("quantile", LF.quantile_loss, {"quantile": 0.8}, ref_quantile_elem, (0.8,)),
]
IDS = [c[0] for c in CASES]


def _data(shape=(5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2
    y = torch.randn(*shape, generator=g) * 2
    w = torch.rand(shape[-1], generator=g) + 0.1
    m = torch.rand(*shape, generator=g) > 0.3
    return x, y, w, m


# ---------------------------------------------------------------- 1. references, values and gradients


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("name", "fn", "kw", "elem", "params"), CASES, ids=IDS)
def test_matches_reference(name, fn, kw, elem, params, reduction):
    x, y, w, m = _data()
    ref = elementwise_ref(elem, *params)
    assert_matches_reference(
        lambda a, b: fn(a, b, reduction=reduction, **kw),
        lambda a, b: ref(a, b, reduction=reduction),
        (x, y),
        (0, 1),
    )
    # with weights and a mask
    assert_matches_reference(
        lambda a, b: fn(a, b, reduction=reduction, weight=w, mask=m, **kw),
        lambda a, b: ref(a, b, weight=w.double(), mask=m, reduction=reduction),
        (x, y),
        (0, 1),
    )


@pytest.mark.parametrize(("name", "fn", "kw", "elem", "params"), CASES, ids=IDS)
def test_gradcheck(name, fn, kw, elem, params):
    x, y, w, m = _data((4, 3), seed=1)
    assert_gradcheck(lambda a, b: fn(a, b, weight=w.double(), mask=m, **kw), (x, y), (0, 1))


def test_huber_equals_torch_and_seed_correction():
    x, y, _, _ = _data()
    for delta in (0.1, 1.0, 3.0):
        torch.testing.assert_close(LF.huber_loss(x, y, delta), F.huber_loss(x, y, delta=delta))
        # the seed recipe smooth_l1(beta=delta) is huber/delta, not huber
        seed_value = F.smooth_l1_loss(x, y, beta=delta)
        torch.testing.assert_close(seed_value * delta, LF.huber_loss(x, y, delta))
        if delta != 1.0:
            assert not torch.allclose(seed_value, LF.huber_loss(x, y, delta))


def test_smooth_l1_equals_torch():
    x, y, _, _ = _data()
    for beta in (0.0, 0.5, 2.0):
        torch.testing.assert_close(LF.smooth_l1_loss(x, y, beta), F.smooth_l1_loss(x, y, beta=beta))


def test_multi_quantile_matches_loop():
    g = torch.Generator().manual_seed(3)
    qs = [0.1, 0.5, 0.9]
    pred = torch.randn(6, 3, generator=g, dtype=torch.float64)
    target = torch.randn(6, generator=g, dtype=torch.float64)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for i in range(6):
        for k, q in enumerate(qs):
            expected[i, k] = ref_quantile_elem(float(target[i] - pred[i, k]), q)
    torch.testing.assert_close(LF.quantile_loss(pred, target, qs, reduction="none"), expected)
    torch.testing.assert_close(LF.quantile_loss(pred, target[:, None], qs), expected.mean())


# ---------------------------------------------------------------- 3. properties


finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=20), st.floats(0.05, 5.0))
def test_properties_nonneg_and_reduction_consistency(pairs, param):
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    for fn, kw in (
        (LF.huber_loss, {"delta": param}),
        (LF.smooth_l1_loss, {"beta": param}),
        (LF.log_cosh_loss, {}),
        (LF.charbonnier_loss, {"eps": param}),
        (LF.quantile_loss, {"quantile": min(max(param / 5.0, 0.01), 0.99)}),
    ):
        none = fn(x, y, reduction="none", **kw)
        assert (none >= -1e-12).all()
        torch.testing.assert_close(fn(x, y, reduction="sum", **kw), none.sum())
        torch.testing.assert_close(fn(x, y, reduction="mean", **kw) * x.numel(), none.sum())
        torch.testing.assert_close(fn(x, x, reduction="sum", **kw), torch.zeros((), dtype=torch.float64))


def test_known_limits():
    x, y, _, _ = _data()
    x, y = x.double(), y.double()
    # Huber with a huge delta is MSE / 2
    torch.testing.assert_close(LF.huber_loss(x, y, delta=1e6), 0.5 * F.mse_loss(x, y))
    # smooth_l1 with beta -> 0 is L1, Huber -> 0
    torch.testing.assert_close(LF.smooth_l1_loss(x, y, beta=1e-9), F.l1_loss(x, y), atol=1e-8, rtol=1e-8)
    assert LF.huber_loss(x, y, delta=1e-9) < 1e-8
    # quantile 0.5 is L1 / 2
    torch.testing.assert_close(LF.quantile_loss(x, y, 0.5), 0.5 * F.l1_loss(x, y))
    # log-cosh ~ d^2/2 for small d and ~ |d| - log 2 for large d
    small = torch.tensor([1e-3], dtype=torch.float64)
    torch.testing.assert_close(LF.log_cosh_loss(small, small * 0), small[0] ** 2 / 2, rtol=1e-5, atol=0)
    big = torch.tensor([1e4], dtype=torch.float64)
    torch.testing.assert_close(LF.log_cosh_loss(big, big * 0), big[0] - math.log(2.0))


def test_log_cosh_stable_for_huge_errors():
    x = torch.tensor([1e4, -3e4, 1e6, 88.0, 100.0], requires_grad=True)
    loss = LF.log_cosh_loss(x, torch.zeros(5), reduction="none")
    expected = torch.tensor([ref_log_cosh_elem(float(v)) for v in x.detach()], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-3)
    (g,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(g, torch.tanh(x.detach()))
    # the naive formula overflows there
    assert not torch.isfinite(torch.log(torch.cosh(x.detach()))).all()


def test_normalizer_makes_accumulation_exact():
    x, y, _, m = _data((8, 3), seed=5)
    full = LF.huber_loss(x, y, mask=m)
    total_valid = int(m.sum())
    parts = [LF.huber_loss(x[s], y[s], mask=m[s], normalizer=total_valid) for s in (slice(0, 3), slice(3, 8))]
    torch.testing.assert_close(parts[0] + parts[1], full)
    # the mean of per-micro-batch means is a different (wrong) number here
    naive = (LF.huber_loss(x[:3], y[:3], mask=m[:3]) + LF.huber_loss(x[3:], y[3:], mask=m[3:])) / 2
    assert not torch.allclose(naive, full)
    # tensor normalizer
    torch.testing.assert_close(LF.huber_loss(x, y, mask=m, normalizer=torch.tensor(float(total_valid))), full)


# ---------------------------------------------------------------- 4. degenerate inputs


@pytest.mark.parametrize(("name", "fn", "kw", "elem", "params"), CASES, ids=IDS)
def test_empty_and_all_masked(name, fn, kw, elem, params):
    x = torch.zeros(0, 3, requires_grad=True)
    assert_connected_zero(fn(x, torch.zeros(0, 3), **kw), x)
    x2 = torch.randn(4, 3, requires_grad=True)
    assert_connected_zero(fn(x2, torch.randn(4, 3), mask=torch.zeros(4, 3, dtype=torch.bool), **kw), x2)
    assert fn(x, torch.zeros(0, 3), reduction="none", **kw).shape == (0, 3)


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("name", "fn", "kw", "elem", "params"), CASES, ids=IDS)
def test_low_precision_extremes(name, fn, kw, elem, params, dtype):
    big = 6e4 if dtype == torch.float16 else 1e4
    x = torch.tensor([big, -big, 0.5, 0.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([-big, big, 0.0, 0.0], dtype=dtype)
    loss = fn(x, y, **kw)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)


# ---------------------------------------------------------------- 6. bad input


def test_bad_inputs_have_clear_messages():
    x = torch.randn(4, 3)
    with pytest.raises(LossValueError, match=r"target has shape \(4, 2\), expected \(4, 3\) to match input"):
        LF.huber_loss(x, torch.randn(4, 2))
    with pytest.raises(LossValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
        LF.huber_loss(x, x, reduction="avg")
    with pytest.raises(LossTypeError, match="input must be a floating-point tensor, got dtype torch.int64"):
        LF.huber_loss(x.long(), x)
    with pytest.raises(LossValueError, match=r"delta must be > 0.0, got -1"):
        LF.huber_loss(x, x, delta=-1)
    with pytest.raises(LossValueError, match=r"delta must be > 0.0"):
        losskit.HuberLoss(delta=0.0)
    with pytest.raises(LossTypeError, match="beta must be a number"):
        losskit.SmoothL1Loss(beta="1")
    with pytest.raises(LossValueError, match=r"quantile must be < 1.0, got 1.5"):
        LF.quantile_loss(x, x, 1.5)
    with pytest.raises(LossValueError, match="expected a last dimension of size 2"):
        LF.quantile_loss(x, x[:, 0], [0.1, 0.9])
    with pytest.raises(LossValueError, match="mask must be a bool tensor"):
        LF.huber_loss(x, x, mask=torch.ones(4, 3))
    with pytest.raises(
        LossValueError, match=r"weight has shape \(2,\), expected a shape broadcastable to \(4, 3\)"
    ):
        LF.huber_loss(x, x, weight=torch.ones(2))
    with pytest.raises(LossValueError, match="normalizer is only used with reduction='mean'"):
        LF.huber_loss(x, x, reduction="sum", normalizer=3)
    with pytest.raises(LossValueError, match="normalizer must be > 0"):
        LF.huber_loss(x, x, normalizer=0)


# ---------------------------------------------------------------- 7. module == functional, serialisation, compile

MODULES = [
    (losskit.HuberLoss(delta=0.7), LF.huber_loss, {"delta": 0.7}),
    (losskit.SmoothL1Loss(beta=0.7), LF.smooth_l1_loss, {"beta": 0.7}),
    (losskit.LogCoshLoss(), LF.log_cosh_loss, {}),
    (losskit.CharbonnierLoss(eps=0.3), LF.charbonnier_loss, {"eps": 0.3}),
    (losskit.QuantileLoss(quantile=0.8), LF.quantile_loss, {"quantile": 0.8}),
]


@pytest.mark.parametrize(("module", "fn", "kw"), MODULES, ids=[type(m[0]).__name__ for m in MODULES])
def test_module_functional_roundtrip_compile(module, fn, kw):
    x, y, _, m = _data()
    assert_module_matches(module, fn(x, y, **kw), x, y)
    assert_module_matches(module, fn(x, y, mask=m, **kw), x, y, mask=m)
    assert_compiles(lambda a, b: module(a, b), x, y)


# ---------------------------------------------------------------- 8. registry and seed compatibility


def test_registry_names():
    for name in ("huber", "smooth_l1", "log_cosh", "quantile", "charbonnier", "mse", "l1"):
        assert name in losskit.available()
    assert isinstance(losskit.build("huber", delta=2.0), losskit.HuberLoss)
    assert losskit.build({"name": "quantile", "quantile": 0.9}).quantile == 0.9
    with pytest.raises(LossValueError, match="did you mean 'huber'"):
        losskit.build("hubber")


def test_seed_huber_example_runs_and_is_true_huber():
    # seed example with only the import changed
    from losskit import HuberLoss

    preds = torch.randn(16, 1)
    targets = torch.randn(16, 1)
    loss_fn = HuberLoss()
    loss = loss_fn(preds, targets)
    d = (preds - targets).double().reshape(-1)
    expected = sum(ref_huber_elem(float(v), 1.0) for v in d) / 16
    assert abs(float(loss) - expected) < 1e-6
    # a delta != 1: the seed's smooth_l1 recipe would be off by 1/delta
    loss2 = HuberLoss(delta=2.0, reduction="sum")(preds * 3, targets)
    d2 = (preds * 3 - targets).double().reshape(-1)
    assert abs(float(loss2) - sum(ref_huber_elem(float(v), 2.0) for v in d2)) < 1e-4
