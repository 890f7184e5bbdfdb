"""Robust M-estimators and Barron's general robust loss against plain float64 formulas.

The references evaluate the paper's formula and its limits directly (no expm1/log1p rearrangement,
no clamping), element by element, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
import losskit.functional as LF
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    roundtrip_modules,
)
from losskit import LossTypeError, LossValueError

INF = math.inf


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(shape=(6, 5), seed=0, scale=2.0, dtype=torch.float64):
    x = torch.randn(*shape, generator=_g(seed), dtype=torch.float64) * scale
    y = torch.randn(*shape, generator=_g(seed + 1), dtype=torch.float64) * scale
    return x.to(dtype), y.to(dtype)


# ----------------------------------------------------------------------------- plain references


def ref_rho(d, alpha, c):
    """Barron (2019) eq. 1 and its limits, for one residual ``d`` (a 0-d float64 tensor)."""
    z = (d / c) ** 2
    if alpha == 2:
        return 0.5 * z
    if alpha == 0:
        return torch.log(0.5 * z + 1)
    if alpha == -INF:
        return 1 - torch.exp(-0.5 * z)
    b = abs(alpha - 2)
    return b / alpha * ((z / b + 1) ** (alpha / 2) - 1)


def ref_loss(alpha, c=1.0):
    """Elementwise reference with weight / mask / reduction as the library's regression losses."""

    def ref(x, y, weight=None, mask=None, reduction="mean"):
        flat_x, flat_y = x.reshape(-1), y.reshape(-1)
        w = None if weight is None else weight.expand_as(x).reshape(-1)
        m = None if mask is None else mask.expand_as(x).reshape(-1)
        a = alpha.expand_as(x).reshape(-1) if isinstance(alpha, torch.Tensor) else None
        cc = c.expand_as(x).reshape(-1) if isinstance(c, torch.Tensor) else None
        terms, denom = [], 0.0
        for i in range(flat_x.numel()):
            if m is not None and not bool(m[i]):
                terms.append(flat_x.new_zeros(()))
                continue
            ai = float(a[i]) if a is not None else alpha
            ci = cc[i] if cc is not None else c
            v = ref_rho(flat_x[i] - flat_y[i], ai, ci)
            wi = 1.0 if w is None else w[i]
            terms.append(v * wi)
            denom = denom + wi
        out = torch.stack(terms).reshape(x.shape)
        if reduction == "none":
            return out
        if reduction == "sum":
            return out.sum()
        return out.sum() / denom

    return ref


NAMED = {"welsch": -INF, "cauchy": 0.0, "geman_mcclure": -2.0}


def _named(name):
    return getattr(LF, f"{name}_loss")


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_losses_match_plain_formulas(name, reduction):
    x, y = _pair(seed=1)
    fn = _named(name)
    for c in (1.0, 0.4):
        assert_matches_reference(
            lambda a, b, c=c: fn(a, b, c, reduction=reduction),
            lambda a, b, c=c: ref_loss(NAMED[name], c)(a, b, reduction=reduction),
            (x, y),
            wrt=(0, 1),
            rtol=1e-10,
            atol=1e-12,
        )


ALPHAS = [-INF, -50.0, -8.0, -2.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 1.5, 2 - 1e-3, 2.0, 2 + 1e-3, 4.0, 10.0]


@pytest.mark.parametrize("alpha", ALPHAS, ids=str)
def test_general_matches_paper_formula(alpha):
    x, y = _pair(seed=2)
    assert_matches_reference(
        lambda a, b: LF.general_robust_loss(a, b, alpha, 0.8, reduction="none"),
        lambda a, b: ref_loss(alpha, 0.8)(a, b, reduction="none"),
        (x, y),
        wrt=(0, 1),
        rtol=1e-8,
        atol=1e-12,
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_general_with_weight_mask_and_tensor_alpha_scale(reduction):
    x, y = _pair((4, 4), seed=3)
    alpha = torch.tensor([-INF, 0.0, 1.0, 2.0], dtype=torch.float64)  # per column, exact limits included
    scale = torch.tensor([[0.5], [1.0], [2.0], [1.5]], dtype=torch.float64)
    weight = torch.rand(4, 4, generator=_g(4), dtype=torch.float64)
    mask = torch.rand(4, 4, generator=_g(5)) > 0.3
    kw = {"weight": weight, "mask": mask, "reduction": reduction}
    assert_matches_reference(
        lambda a, b: LF.general_robust_loss(a, b, alpha, scale, **kw),
        lambda a, b: ref_loss(alpha, scale)(a, b, **kw),
        (x, y),
        wrt=(0, 1),
        rtol=1e-10,
        atol=1e-12,
    )


def test_special_alphas_are_the_named_and_existing_losses():
    x, y = _pair(seed=6)
    d = x - y
    gr = LF.general_robust_loss
    for name, alpha in NAMED.items():
        torch.testing.assert_close(gr(x, y, alpha, 0.7), _named(name)(x, y, 0.7))
    torch.testing.assert_close(gr(x, y, 2.0, 0.5), 0.5 * ((d / 0.5) ** 2).mean())  # L2
    torch.testing.assert_close(gr(x, y, 1.0), LF.charbonnier_loss(x, y, eps=1.0))  # pseudo-Huber
    torch.testing.assert_close(gr(x, y, 1.0, 2.0), LF.charbonnier_loss(x, y, eps=2.0) / 2.0)
    for alpha in (-INF, -2.0, 0.0, 1.0, 2.0):  # tensor alpha gives the same values
        t = torch.tensor(alpha, dtype=torch.float64)
        torch.testing.assert_close(gr(x, y, t, reduction="none"), gr(x, y, alpha, reduction="none"))


# ----------------------------------------------------------------------------- stability near special alphas


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("special", [0.0, 2.0])
@pytest.mark.parametrize("offset", [1e-9, 1e-7, 1e-5, -1e-9, -1e-7, -1e-5])
def test_continuous_and_accurate_near_special_alphas(special, offset, dtype):
    x, y = _pair((50,), seed=7, scale=5.0, dtype=dtype)
    alpha = special + offset
    near = LF.general_robust_loss(x, y, alpha, reduction="none")
    want = ref_loss(special)(x.double(), y.double(), reduction="none")
    # the true value moves by O(|offset| * (1 + log|x|)); float32 rounds to ~1e-6 of the value
    tol = 1e-5 if dtype == torch.float32 else 1e-7
    torch.testing.assert_close(near.double(), want, rtol=tol + 20 * abs(offset), atol=1e-12)
    t = torch.tensor(alpha, dtype=dtype)
    torch.testing.assert_close(LF.general_robust_loss(x, y, t, reduction="none"), near)


def test_very_negative_alpha_tends_to_welsch():
    x, y = _pair(seed=8)
    torch.testing.assert_close(
        LF.general_robust_loss(x, y, -1e9, reduction="none"),
        LF.welsch_loss(x, y, reduction="none"),
        rtol=1e-7,
        atol=1e-9,
    )


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("alpha", [-INF, -2.0, 0.0, 1.0, 2.0, 4.0], ids=str)
def test_gradcheck_float_alpha(alpha):
    x, y = _pair((3, 4), seed=9)
    assert_gradcheck(
        lambda a, b, c: LF.general_robust_loss(a, b, alpha, c, reduction="sum"),
        (x, y, torch.tensor(0.7)),
        (0, 1, 2),
    )


@pytest.mark.parametrize("alpha", [-2.0, -1e-3, 0.0, 1e-3, 0.7, 2 - 1e-3, 2 + 1e-3, 5.0], ids=str)
def test_gradcheck_wrt_alpha_at_and_near_special_points(alpha):
    """Including alpha = 0 exactly: the value is the closed form, the alpha-gradient its first-order term."""
    x, y = _pair((3, 4), seed=10)
    a = torch.full((4,), alpha, dtype=torch.float64)
    assert_gradcheck(
        lambda u, v, al, c: LF.general_robust_loss(u, v, al, c, reduction="sum"),
        (x, y, a, torch.tensor(1.3, dtype=torch.float64)),
        (0, 1, 2, 3),
    )


def test_gradcheck_tensor_alpha_at_two_and_minus_inf_wrt_residual_and_scale():
    x, y = _pair((3, 4), seed=11)
    alpha = torch.tensor([-INF, 2.0, 0.0, -2.0], dtype=torch.float64)
    assert_gradcheck(
        lambda u, v, c: LF.general_robust_loss(u, v, alpha, c, reduction="none"),
        (x, y, torch.tensor(0.9, dtype=torch.float64)),
        (0, 1, 2),
    )


@pytest.mark.parametrize("name", sorted(NAMED))
def test_gradcheck_named(name):
    x, y = _pair((3, 4), seed=12)
    assert_gradcheck(lambda a, b: _named(name)(a, b, 0.6), (x, y), (0, 1))


def test_alpha_gradient_at_zero_matches_finite_difference():
    x, y = _pair((20,), seed=13)
    a = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(LF.general_robust_loss(x, y, a), a)
    h = 1e-6
    fd = (LF.general_robust_loss(x, y, h) - LF.general_robust_loss(x, y, -h)) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    assert float(g) != 0.0


def test_tensor_alpha_gradients_have_no_nan_from_unselected_branches():
    x, y = _pair((5, 4), seed=14, scale=30.0)  # large residuals: the general branch's powers are large
    alpha = torch.tensor([-INF, 0.0, 2.0, -2.0], dtype=torch.float64, requires_grad=True)
    xx = x.clone().requires_grad_()
    loss = LF.general_robust_loss(xx, y, alpha, 0.01)
    gx, ga = torch.autograd.grad(loss, (xx, alpha))
    assert torch.isfinite(gx).all() and torch.isfinite(ga).all()


# ----------------------------------------------------------------------------- properties


def test_properties():
    d = torch.linspace(-50, 50, 201, dtype=torch.float64)
    zero = torch.zeros_like(d)
    prev = None
    for alpha in [-INF, -4.0, -2.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]:
        rho = LF.general_robust_loss(d, zero, alpha, 2.0, reduction="none")
        assert bool((rho >= 0).all()) and float(rho[100]) == 0.0
        # even and non-decreasing in |d|
        torch.testing.assert_close(rho, rho.flip(0))
        assert bool((rho[101:].diff() >= 0).all())
        # ~ (d/c)^2 / 2 for small residuals
        small = LF.general_robust_loss(torch.tensor([1e-4], dtype=torch.float64), torch.zeros(1), alpha, 2.0)
        torch.testing.assert_close(
            small, torch.tensor(0.5 * (1e-4 / 2) ** 2, dtype=torch.float64), rtol=1e-6, atol=0
        )
        if prev is not None:  # non-decreasing in alpha
            assert bool((rho >= prev - 1e-12).all())
        prev = rho
        # scale equivariance: rho(k d, alpha, k c) == rho(d, alpha, c)
        torch.testing.assert_close(LF.general_robust_loss(3 * d, zero, alpha, 6.0, reduction="none"), rho)
    assert float(LF.welsch_loss(d, zero).max()) <= 1.0
    assert float(LF.geman_mcclure_loss(d * 1e6, zero, reduction="none").max()) <= 2.0
    # bounded losses: the gradient of an outlier vanishes
    big = torch.tensor([1e4], dtype=torch.float64, requires_grad=True)
    for fn in (LF.welsch_loss, LF.geman_mcclure_loss):
        (g,) = torch.autograd.grad(fn(big, torch.zeros(1)), big)
        assert abs(float(g)) < 1e-6


def test_reduction_consistency_and_normalizer():
    x, y = _pair(seed=15)
    for fn in (LF.welsch_loss, LF.cauchy_loss, LF.geman_mcclure_loss, LF.general_robust_loss):
        none = fn(x, y, reduction="none")
        torch.testing.assert_close(fn(x, y, reduction="sum"), none.sum())
        torch.testing.assert_close(fn(x, y), none.mean())
        torch.testing.assert_close(fn(x, y, normalizer=7), none.sum() / 7)


# ----------------------------------------------------------------------------- degenerate, precision, errors


@pytest.mark.parametrize(
    "fn", [LF.welsch_loss, LF.cauchy_loss, LF.geman_mcclure_loss, LF.general_robust_loss]
)
def test_empty_and_all_masked_give_connected_zero(fn):
    x = torch.zeros(0, 3, requires_grad=True)
    assert_connected_zero(fn(x, torch.zeros(0, 3)), x)
    x = torch.randn(4, 3, requires_grad=True)
    assert_connected_zero(fn(x, torch.zeros(4, 3), mask=torch.zeros(4, 3, dtype=torch.bool)), x)


def test_tensor_alpha_empty_input():
    x = torch.zeros(0, 3, requires_grad=True)
    a = torch.tensor([0.0, 1.0, -INF], requires_grad=True)
    assert_connected_zero(LF.general_robust_loss(x, torch.zeros(0, 3), a), x, a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_with_extreme_residuals(dtype):
    big = 6e4 if dtype == torch.float16 else 1e4
    x = (torch.tensor([[0.0, 1.0, -big, big]] * 3)).to(dtype).requires_grad_()
    y = torch.zeros(3, 4, dtype=dtype)
    for fn in (LF.welsch_loss, LF.cauchy_loss, LF.geman_mcclure_loss):
        loss = fn(x, y)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)
    for alpha in (0.5, 1.0, 1.999, torch.tensor([-INF, 0.0, 2.0, 1.0])):
        loss = LF.general_robust_loss(x, y, alpha)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)


def test_non_finite_residuals_stay_non_finite_with_tensor_alpha():
    x = torch.tensor([[0.0, INF, math.nan, 1.0]])
    out = LF.general_robust_loss(x, torch.zeros(1, 4), torch.tensor([-INF, -INF, 0.0, 1.0]), reduction="none")
    assert torch.isfinite(out[0, [0, 3]]).all() and not torch.isfinite(out[0, [1, 2]]).any()


def test_bad_arguments_name_them():
    x = torch.randn(4, 3)
    with pytest.raises(LossValueError, match=r"scale must be > 0.0, got 0"):
        LF.welsch_loss(x, x, 0)
    with pytest.raises(LossValueError, match=r"scale must be > 0.0, got -1"):
        losskit.CauchyLoss(scale=-1)
    with pytest.raises(LossValueError, match=r"scale must be > 0 everywhere"):
        LF.general_robust_loss(x, x, 1.0, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(LossValueError, match=r"alpha must be < inf \(alpha = \+inf is not supported\)"):
        LF.general_robust_loss(x, x, INF)
    with pytest.raises(LossValueError, match=r"alpha must be < inf"):
        LF.general_robust_loss(x, x, torch.tensor([1.0, INF, 0.0]))
    with pytest.raises(LossTypeError, match=r"alpha must be a number, got str"):
        losskit.GeneralRobustLoss(alpha="cauchy")
    with pytest.raises(LossTypeError, match=r"alpha must be a floating-point tensor, got dtype torch.int64"):
        LF.general_robust_loss(x, x, torch.tensor([1, 0, 2]))
    with pytest.raises(LossValueError, match=r"target has shape \(4, 2\), expected \(4, 3\) to match input"):
        LF.geman_mcclure_loss(x, x[:, :2])
    with pytest.raises(LossValueError, match=r"alpha / scale broadcast the loss to shape \(2, 4, 3\)"):
        LF.general_robust_loss(x, x, torch.zeros(2, 1, 1))
    with pytest.raises(LossValueError, match=r"alpha_range must be finite \(low, high\) with low < high"):
        losskit.GeneralRobustLoss(learn_alpha=True, alpha_range=(1.0, 0.0))
    with pytest.raises(LossValueError, match=r"alpha must lie inside alpha_range \(0.001, 1.999\)"):
        losskit.GeneralRobustLoss(alpha=2.0, learn_alpha=True)


# ----------------------------------------------------------------------------- modules, learnable, compile


MODULES = [
    (losskit.WelschLoss(0.5), lambda a, b: LF.welsch_loss(a, b, 0.5)),
    (losskit.CauchyLoss(2.0, reduction="sum"), lambda a, b: LF.cauchy_loss(a, b, 2.0, reduction="sum")),
    (losskit.GemanMcClureLoss(), lambda a, b: LF.geman_mcclure_loss(a, b)),
    (losskit.GeneralRobustLoss(-0.5, 1.5), lambda a, b: LF.general_robust_loss(a, b, -0.5, 1.5)),
    (
        losskit.GeneralRobustLoss(torch.tensor([-INF, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.5])),
        lambda a, b: LF.general_robust_loss(
            a, b, torch.tensor([-INF, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.5])
        ),
    ),
    (
        losskit.GeneralRobustLoss(0.5, 2.0, learn_alpha=True, learn_scale=True),
        lambda a, b: LF.general_robust_loss(a, b, 0.5, 2.0),
    ),
]


@pytest.mark.parametrize("index", range(len(MODULES)))
def test_module_equals_functional_round_trips_and_compiles(index):
    module, fn = MODULES[index]
    x, y = _pair((4, 3), seed=16, dtype=torch.float32)
    want = fn(x, y)
    assert_module_matches(module, want.detach(), x, y) if not module_has_params(module) else None
    if module_has_params(module):
        torch.testing.assert_close(module(x, y), want, rtol=1e-6, atol=1e-7)
        for m in roundtrip_modules(module):
            torch.testing.assert_close(m(x, y), want, rtol=1e-6, atol=1e-7)
    assert_compiles(lambda a, b: module(a, b), x, y)


def module_has_params(module):
    return any(True for _ in module.parameters())


def test_learnable_alpha_and_scale_get_gradients_and_stay_in_range():
    module = losskit.GeneralRobustLoss(1.0, 1.0, learn_alpha=True, learn_scale=True, alpha_range=(0.0, 2.0))
    x, y = _pair((16,), seed=17)
    opt = torch.optim.SGD(module.parameters(), lr=5.0)
    for _ in range(20):
        opt.zero_grad()
        loss = module(x.float(), y.float())
        loss.backward()
        assert module.alpha_latent.grad is not None and float(module.alpha_latent.grad) != 0.0
        assert module.log_scale.grad is not None
        opt.step()
    assert 0.0 < float(module.alpha.detach()) < 2.0
    assert set(dict(module.named_parameters())) == {"alpha_latent", "log_scale"}
    assert "alpha=learned" in repr(module)


def test_registered_by_name():
    for name in ("welsch", "cauchy", "geman_mcclure", "general_robust"):
        assert name in losskit.available("regression")
    assert isinstance(losskit.build("barron", alpha=0.0), losskit.GeneralRobustLoss)
    assert isinstance(losskit.build("lorentzian"), losskit.CauchyLoss)
