"""VICReg and Barlow Twins: the definition of done, single process (DDP runs: test_contrastive_distributed.py).

References are float64 Python loops over samples and features written from the papers (Bardes et al.
2022, eqs. 1-6; Zbontar et al. 2021, eqs. 1-2), independent of the matrix code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
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

DT = torch.float64


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _views(n=6, d=4, seed=0):
    a = rand(n, d, seed=seed) * 0.5
    return a, a + 0.3 * rand(n, d, seed=seed + 1)


# ============================================================================ float64 loop references


def _mean(z, k):
    return sum(z[n, k] for n in range(len(z))) / len(z)


def _cov(z, k, j, denom):
    mk, mj = _mean(z, k), _mean(z, j)
    return sum((z[n, k] - mk) * (z[n, j] - mj) for n in range(len(z))) / denom


def ref_vicreg(za, zb, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    n, d = za.shape
    s = sum((za[i, k] - zb[i, k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def v(z):
        return sum(torch.relu(gamma - torch.sqrt(_cov(z, k, k, n - 1) + eps)) for k in range(d)) / d

    def c(z):
        return sum(_cov(z, k, j, n - 1) ** 2 for k in range(d) for j in range(d) if k != j) / d

    return lam * s + mu * (v(za) + v(zb)) + nu * (c(za) + c(zb))


def ref_vicreg_authors_code(za, zb):
    """The authors' main_vicreg.py: the same terms, but the variance term averaged over the two views."""
    n, d = za.shape
    std = [torch.sqrt(z.var(dim=0) + 1e-4) for z in (za, zb)]
    std_loss = sum(torch.relu(1 - s).mean() for s in std) / 2
    cov = [(z - z.mean(0)).T @ (z - z.mean(0)) / (n - 1) for z in (za, zb)]
    off = sum((m - torch.diag(torch.diag(m))).pow(2).sum() / d for m in cov)
    return 25 * ((za - zb) ** 2).mean() + 25 * std_loss + off


def ref_barlow(za, zb, lambd=5e-3, eps=1e-5):
    n, d = za.shape

    def standardise(z, k, i):  # biased variance, as BatchNorm1d(affine=False)
        return (z[i, k] - _mean(z, k)) / torch.sqrt(_cov(z, k, k, n) + eps)

    loss = torch.zeros((), dtype=DT)
    for k in range(d):
        for j in range(d):
            c = sum(standardise(za, k, i) * standardise(zb, j, i) for i in range(n)) / n
            loss = loss + ((1 - c) ** 2 if k == j else lambd * c**2)
    return loss


LOSSES = {"vicreg": (LF.vicreg_loss, ref_vicreg), "barlow_twins": (LF.barlow_twins_loss, ref_barlow)}


# ============================================================================ 1-2. reference, gradcheck


@pytest.mark.parametrize("name", list(LOSSES))
def test_matches_loop_reference(name):
    fn, ref = LOSSES[name]
    assert_matches_reference(fn, ref, _views(), (0, 1), rtol=1e-9, atol=1e-10)
    za, zb = _views(n=9, d=3, seed=5)
    assert_matches_reference(fn, ref, (za.float() * 3, zb.float() * 3), (0, 1), rtol=1e-5, atol=1e-5)


def test_hyperparameters_match_reference():
    args = _views(n=5, d=3, seed=2)
    assert_matches_reference(
        lambda a, b: LF.vicreg_loss(a, b, 2.0, 3.0, 0.5, gamma=0.7, eps=1e-3),
        lambda a, b: ref_vicreg(a, b, 2.0, 3.0, 0.5, 0.7, 1e-3),
        args,
        (0, 1),
        rtol=1e-9,
        atol=1e-10,
    )
    assert_matches_reference(
        lambda a, b: LF.barlow_twins_loss(a, b, 0.1, eps=1e-3),
        lambda a, b: ref_barlow(a, b, 0.1, 1e-3),
        args,
        (0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_vicreg_std_coeff_half_is_the_authors_code():
    za, zb = _views(n=8, d=5, seed=3)
    torch.testing.assert_close(LF.vicreg_loss(za, zb, std_coeff=12.5), ref_vicreg_authors_code(za, zb))


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck(name):
    fn, _ = LOSSES[name]
    assert_gradcheck(fn, _views(n=5, d=3), (0, 1))


# ============================================================================ 3. properties


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 9), d=st.integers(1, 5))
def test_properties(seed, n, d):
    za, zb = _views(n, d, seed)
    for fn, _ in LOSSES.values():
        assert float(fn(za, zb)) >= 0
    # invariance term: 0 for identical views; the other terms do not depend on the pairing
    torch.testing.assert_close(LF.vicreg_loss(za, za, 1.0, 0.0, 0.0), torch.zeros((), dtype=DT))
    torch.testing.assert_close(LF.vicreg_loss(za, zb, 0.0), LF.vicreg_loss(za, zb.flip(0), 0.0))
    # Barlow Twins is invariant to a per-feature affine map of a view (batch standardisation)
    scale, shift = rand(d, seed=seed + 7).abs() + 0.5, rand(d, seed=seed + 8)
    torch.testing.assert_close(
        LF.barlow_twins_loss(za, zb, eps=1e-12),
        LF.barlow_twins_loss(za * scale + shift, zb, eps=1e-12),
        rtol=1e-6,
        atol=1e-8,
    )


def test_known_values():
    # decorrelated, unit-variance features shared by both views: Barlow Twins 0, VICReg 0 (std >= 1)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=DT) * 2
    assert float(LF.barlow_twins_loss(z, z, eps=1e-12)) < 1e-20
    assert float(LF.vicreg_loss(z, z)) == 0.0
    # a collapsed embedding (every sample equal): VICReg's variance hinge gives mu * 2 * (1 - sqrt(eps))
    c = torch.ones(5, 3, dtype=DT)
    torch.testing.assert_close(LF.vicreg_loss(c, c), torch.tensor(25.0 * 2 * (1 - math.sqrt(1e-4)), dtype=DT))


# ============================================================================ 4. degenerate inputs


@pytest.mark.parametrize("name", list(LOSSES))
def test_empty_batch_is_a_connected_zero(name):
    fn, _ = LOSSES[name]
    za = torch.zeros(0, 4, dtype=DT, requires_grad=True)
    zb = torch.zeros(0, 4, dtype=DT, requires_grad=True)
    assert_connected_zero(fn(za, zb), za, zb)


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_sample_and_one_feature_are_finite(name):
    fn, _ = LOSSES[name]
    for shape in ((1, 4), (5, 1)):
        za = rand(*shape, seed=1).requires_grad_(True)
        zb = rand(*shape, seed=2).requires_grad_(True)
        assert_finite_with_grads(fn(za, zb), za, zb)


@pytest.mark.parametrize("name", list(LOSSES))
def test_half_precision_extremes_are_finite(name):
    """Barlow Twins standardises first: any finite scale works. VICReg's covariance term is quartic in
    z: at |z| ~ 1e3 its exact gradient (~1e9) is beyond fp16's range (65504), so fp16 inputs are
    checked up to |z| ~ 30 there; bf16 (float32's range) at 1e4."""
    fn, _ = LOSSES[name]
    fp16_big = 30.0 if name == "vicreg" else 6e4
    for dtype, big in ((torch.float16, fp16_big), (torch.bfloat16, 1e4)):
        za, zb = _views(n=6, d=3)
        za = (za * big / 3).to(dtype).requires_grad_(True)
        zb = (zb * big / 3).to(dtype).requires_grad_(True)
        loss = fn(za, zb)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, za, zb)


# ============================================================================ 6. bad input


def test_bad_inputs_raise_clear_errors():
    za, zb = _views()
    for fn, _ in LOSSES.values():
        with pytest.raises(LossValueError, match=r"z_b has shape \(5, 4\), expected \(6, 4\) to match z_a"):
            fn(za, zb[:5])
        with pytest.raises(LossValueError, match=r"z_a must be \(N, D\), got shape \(6,\)"):
            fn(za[:, 0], zb[:, 0])
        with pytest.raises(LossTypeError, match="z_b must be a floating-point tensor, got dtype torch.int64"):
            fn(za, zb.long())
    with pytest.raises(LossValueError, match="std_coeff must be >= 0.0, got -1"):
        LF.vicreg_loss(za, zb, std_coeff=-1)
    with pytest.raises(LossValueError, match="gamma must be > 0.0, got 0"):
        losskit.VICRegLoss(gamma=0)
    with pytest.raises(LossValueError, match="eps must be > 0.0, got 0"):
        LF.barlow_twins_loss(za, zb, eps=0)
    with pytest.raises(LossTypeError, match="lambd must be a number"):
        losskit.BarlowTwinsLoss(lambd="x")


# ============================================================================ 7. modules, compile, registry


def test_module_equals_functional_and_compiles():
    za, zb = _views()
    za, zb = za.float(), zb.float()
    assert_module_matches(
        losskit.VICRegLoss(1.0, 2.0, 3.0, gamma=0.5), LF.vicreg_loss(za, zb, 1.0, 2.0, 3.0, gamma=0.5), za, zb
    )
    assert_module_matches(losskit.BarlowTwinsLoss(0.2), LF.barlow_twins_loss(za, zb, 0.2), za, zb)
    assert_compiles(LF.vicreg_loss, za, zb)
    assert_compiles(LF.barlow_twins_loss, za, zb)
    assert "lambd=0.2" in repr(losskit.BarlowTwinsLoss(0.2))
    assert {"vicreg", "barlow_twins"} <= set(losskit.available())
