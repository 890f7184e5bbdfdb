"""Image-quality losses: SSIM, MS-SSIM, PSNR and total variation against plain float64 references.

The SSIM reference below slides the full 2-D (or 3-D) Gaussian window over every valid position with
explicit loops and weighted sums (no convolution, no separable filtering); MS-SSIM downsamples by
averaging 2x2 blocks in loops. scikit-image's ``structural_similarity`` and (when installed)
pytorch-msssim are checked on the same images.
"""

from __future__ import annotations

import itertools
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
)
from losskit import LossTypeError, LossValueError

WEIGHTS5 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(shape, seed=0, noise=0.2, dtype=torch.float64):
    x = torch.rand(*shape, generator=_g(seed), dtype=torch.float64)
    y = (x + noise * torch.randn(*shape, generator=_g(seed + 1), dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


# ----------------------------------------------------------------------------- plain references


def ref_window(size: int, sigma: float, nd: int) -> torch.Tensor:
    """The full nd-D Gaussian window, normalised, built tap by tap."""
    r = (size - 1) // 2
    w = torch.zeros((size,) * nd, dtype=torch.float64)
    for idx in itertools.product(range(size), repeat=nd):
        w[idx] = math.exp(-sum((i - r) ** 2 for i in idx) / (2 * sigma**2))
    return w / w.sum()


def ref_ssim_terms(x, y, data_range=1.0, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Per-sample, per-channel mean SSIM and mean contrast-structure, ``(N, C)`` each."""
    nd = x.dim() - 2
    w = ref_window(size, sigma, nd)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    out_sides = [s - size + 1 for s in x.shape[2:]]
    ssim_sum, cs_sum = 0.0, 0.0
    for pos in itertools.product(*(range(s) for s in out_sides)):
        sl = (slice(None), slice(None), *(slice(p, p + size) for p in pos))
        px, py = x[sl], y[sl]
        dims = tuple(range(2, 2 + nd))
        mx, my = (w * px).sum(dims), (w * py).sum(dims)
        vx = (w * (px - mx[(...,) + (None,) * nd]) ** 2).sum(dims)
        vy = (w * (py - my[(...,) + (None,) * nd]) ** 2).sum(dims)
        cxy = (w * (px - mx[(...,) + (None,) * nd]) * (py - my[(...,) + (None,) * nd])).sum(dims)
        lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        cs = (2 * cxy + c2) / (vx + vy + c2)
        ssim_sum = ssim_sum + lum * cs
        cs_sum = cs_sum + cs
    n = math.prod(out_sides)
    return ssim_sum / n, cs_sum / n


def ref_ssim_loss(x, y, data_range=1.0, size=11, sigma=1.5):
    return 1 - ref_ssim_terms(x, y, data_range, size, sigma)[0].mean(1)


def ref_downsample(x):
    """Means of 2x2 (2x2x2) blocks; a block cut by an odd side averages the pixels it holds."""
    sides = [math.ceil(s / 2) for s in x.shape[2:]]
    out = []
    for pos in itertools.product(*(range(s) for s in sides)):
        sl = (slice(None), slice(None), *(slice(2 * p, 2 * p + 2) for p in pos))
        block = x[sl]
        out.append(block.flatten(2).mean(-1))
    return torch.stack(out, -1).reshape(*x.shape[:2], *sides)


def ref_ms_ssim_loss(x, y, weights=WEIGHTS5, data_range=1.0, size=11, sigma=1.5):
    value = 1.0
    for j, beta in enumerate(weights):
        ssim, cs = ref_ssim_terms(x, y, data_range, size, sigma)
        term = ssim if j == len(weights) - 1 else cs
        value = value * term.clamp_min(0) ** beta
        x, y = ref_downsample(x), ref_downsample(y)
    return 1 - value.mean(1)


def ref_tv(x, isotropic=False):
    """Per-sample total variation with explicit loops over pixels (2-D images)."""
    n, c, h, w = x.shape
    out = []
    for b in range(n):
        total = x.new_zeros(())
        for ch, i, j in itertools.product(range(c), range(h), range(w)):
            dy = x[b, ch, i + 1, j] - x[b, ch, i, j] if i + 1 < h else x.new_zeros(())
            dx = x[b, ch, i, j + 1] - x[b, ch, i, j] if j + 1 < w else x.new_zeros(())
            if isotropic:
                sq = dx * dx + dy * dy
                total = total + (torch.sqrt(sq) if float(sq.detach()) > 0 else sq)
            else:
                total = total + dx.abs() + dy.abs()
        out.append(total)
    return torch.stack(out)


def _reduce(per, reduction):
    return {"none": per, "mean": per.mean(), "sum": per.sum()}[reduction]


# ----------------------------------------------------------------------------- SSIM references


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_ssim_matches_plain_reference_2d(reduction):
    x, y = _images((2, 2, 14, 13), seed=1)
    assert_matches_reference(
        lambda a, b: LF.ssim_loss(a, b, win_size=7, sigma=1.2, reduction=reduction),
        lambda a, b: _reduce(ref_ssim_loss(a, b, size=7, sigma=1.2), reduction),
        (x, y),
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_ssim_matches_plain_reference_defaults_and_data_range():
    x, y = _images((1, 3, 16, 17), seed=2)
    x, y = x * 255, y * 255
    assert_matches_reference(
        lambda a, b: LF.ssim_loss(a, b, data_range=255.0),
        lambda a, b: ref_ssim_loss(a, b, data_range=255.0).mean(),
        (x, y),
        wrt=(0, 1),
        rtol=1e-8,
        atol=1e-10,
    )


def test_ssim_matches_plain_reference_3d():
    x, y = _images((2, 1, 7, 8, 7), seed=3)
    assert_matches_reference(
        lambda a, b: LF.ssim_loss(a, b, win_size=5, reduction="none"),
        lambda a, b: ref_ssim_loss(a, b, size=5),
        (x, y),
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_ssim_float32_close_to_float64_reference():
    x, y = _images((2, 3, 20, 20), seed=4, dtype=torch.float32)
    got = LF.ssim_loss(x, y, reduction="none")
    torch.testing.assert_close(got.double(), ref_ssim_loss(x.double(), y.double()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_ms_ssim_matches_plain_reference(reduction):
    # odd sides at several scales: 23 -> 12 -> 6, 20 -> 10 -> 5
    x, y = _images((2, 2, 23, 20), seed=5)
    w = (0.2, 0.3, 0.5)
    assert_matches_reference(
        lambda a, b: LF.ms_ssim_loss(a, b, weights=w, win_size=5, reduction=reduction),
        lambda a, b: _reduce(ref_ms_ssim_loss(a, b, w, size=5), reduction),
        (x, y),
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_ms_ssim_default_weights_match_plain_reference():
    x, y = _images((1, 1, 161, 164), seed=6, noise=0.1)
    got = LF.ms_ssim_loss(x, y, reduction="none")
    torch.testing.assert_close(got, ref_ms_ssim_loss_fast(x, y), rtol=1e-9, atol=1e-10)


def ref_ms_ssim_loss_fast(x, y):
    """The default five scales with the same plain formulas; positions summed with unfold (the
    loop reference above is too slow at 161 pixels)."""
    w2 = ref_window(11, 1.5, 2)
    c1, c2 = 0.01**2, 0.03**2
    value = 1.0
    for j, beta in enumerate(WEIGHTS5):
        px = x.unfold(2, 11, 1).unfold(3, 11, 1)  # (N, C, H', W', 11, 11)
        py = y.unfold(2, 11, 1).unfold(3, 11, 1)
        mx, my = (w2 * px).sum((-2, -1)), (w2 * py).sum((-2, -1))
        dx, dy = px - mx[..., None, None], py - my[..., None, None]
        vx, vy, cxy = (w2 * dx * dx).sum((-2, -1)), (w2 * dy * dy).sum((-2, -1)), (w2 * dx * dy).sum((-2, -1))
        cs = (2 * cxy + c2) / (vx + vy + c2)
        if j == len(WEIGHTS5) - 1:
            term = ((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs).mean((2, 3))
        else:
            term = cs.mean((2, 3))
        value = value * term.clamp_min(0) ** beta
        x, y = ref_downsample(x), ref_downsample(y)
    return 1 - value.mean(1)


# ----------------------------------------------------------------------------- peers on the same images


def _skimage_ssim(x, y, data_range):
    metrics = pytest.importorskip("skimage.metrics")
    return torch.tensor(
        [
            metrics.structural_similarity(
                x[i].numpy(),
                y[i].numpy(),
                channel_axis=0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=data_range,
            )
            for i in range(x.shape[0])
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize(
    ("shape", "data_range"),
    [((3, 3, 32, 29), 1.0), ((2, 1, 24, 24), 255.0), ((2, 2, 12, 13, 14), 1.0)],
    ids=["rgb", "8bit", "volume"],
)
def test_ssim_equals_scikit_image(shape, data_range):
    x, y = _images(shape, seed=7)
    x, y = x * data_range, y * data_range
    want = _skimage_ssim(x, y, data_range)
    got = 1 - LF.ssim_loss(x, y, data_range=data_range, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got32 = 1 - LF.ssim_loss(x.float(), y.float(), data_range=data_range, reduction="none")
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-5)


def test_ms_ssim_equals_pytorch_msssim_on_even_sides():
    """pytorch-msssim pads odd sides with zeros before pooling; on even sides at every scale the two agree
    (to float32 rounding: its Gaussian window is built in float32)."""
    pm = pytest.importorskip("pytorch_msssim")
    x, y = _images((2, 3, 176, 192), seed=8)
    want = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(1 - LF.ms_ssim_loss(x, y, reduction="none"), want, rtol=1e-5, atol=1e-7)
    want = pm.ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(1 - LF.ssim_loss(x, y, reduction="none"), want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- PSNR, TV references


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_psnr_matches_plain_formula(reduction):
    x, y = _images((3, 2, 5, 4), seed=9)

    def ref(a, b):
        per = []
        for i in range(a.shape[0]):
            mse = ((a[i] - b[i]) ** 2).sum() / a[i].numel()
            per.append(-10 * torch.log10(2.0**2 / mse))
        return _reduce(torch.stack(per), reduction)

    assert_matches_reference(
        lambda a, b: LF.psnr_loss(a * 2, b * 2, data_range=2.0, reduction=reduction),
        lambda a, b: ref(a * 2, b * 2),
        (x, y),
        wrt=(0, 1),
        rtol=1e-8,
    )


def test_psnr_known_value_and_identical_images():
    x = torch.zeros(2, 1, 4, 4)
    torch.testing.assert_close(LF.psnr_loss(x + 0.1, x), torch.tensor(-20.0))
    torch.testing.assert_close(LF.psnr_loss(x + 25.5, x, data_range=255.0), torch.tensor(-20.0))
    a = x.clone().requires_grad_()
    loss = LF.psnr_loss(a, x)  # capped at 100 dB, zero gradient
    torch.testing.assert_close(loss, torch.tensor(-100.0))
    (g,) = torch.autograd.grad(loss, a)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("isotropic", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_total_variation_matches_loops(isotropic, reduction):
    x = torch.randn(2, 2, 4, 5, generator=_g(10), dtype=torch.float64)
    x[0, 0, 1:3, 1:3] = 0.3  # a flat patch: zero differences, zero isotropic (sub)gradient there
    assert_matches_reference(
        lambda a: LF.total_variation_loss(a, isotropic=isotropic, reduction=reduction),
        lambda a: _reduce(ref_tv(a, isotropic), reduction),
        (x,),
        rtol=1e-10,
    )


def test_total_variation_weight_normalize_and_volumes():
    x = torch.randn(3, 2, 4, 5, generator=_g(11), dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    per = ref_tv(x)
    torch.testing.assert_close(LF.total_variation_loss(x, w), (w * per).sum() / w.sum())
    torch.testing.assert_close(LF.total_variation_loss(x, normalize=True, reduction="none"), per / 40)
    v = torch.randn(2, 1, 3, 4, 5, generator=_g(12), dtype=torch.float64)
    want = sum((v.diff(dim=a)).abs().sum((1, 2, 3, 4)) for a in (2, 3, 4))
    torch.testing.assert_close(LF.total_variation_loss(v, reduction="none"), want)
    s = torch.randn(2, 3, 7, generator=_g(13), dtype=torch.float64)  # 1-D signals: both forms agree
    torch.testing.assert_close(LF.total_variation_loss(s, isotropic=True), LF.total_variation_loss(s))


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: LF.ssim_loss(a, b, win_size=5, reduction="none")[1],
        lambda a, b: LF.ssim_loss(a, b, win_size=3, data_range=2.0),
        lambda a, b: LF.ms_ssim_loss(a, b, weights=(0.3, 0.7), win_size=3),
        lambda a, b: LF.psnr_loss(a, b, reduction="none"),
        lambda a, b: LF.total_variation_loss(a - b, isotropic=True),
        lambda a, b: LF.total_variation_loss(a - b, reduction="sum"),
    ],
    ids=["ssim", "ssim_range", "ms_ssim", "psnr", "tv_iso", "tv_aniso"],
)
def test_gradcheck(fn):
    x, y = _images((2, 1, 7, 6), seed=14)
    assert_gradcheck(fn, (x, y), (0, 1))


def test_gradcheck_ssim_3d():
    x, y = _images((1, 1, 4, 5, 4), seed=15)
    assert_gradcheck(lambda a, b: LF.ssim_loss(a, b, win_size=3), (x, y), (0, 1))


# ----------------------------------------------------------------------------- properties


def test_ssim_properties():
    x, y = _images((3, 2, 16, 16), seed=16)
    for fn in (LF.ssim_loss, lambda a, b, **k: LF.ms_ssim_loss(a, b, weights=(0.5, 0.5), win_size=7, **k)):
        assert torch.equal(fn(x, x, reduction="none"), torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(fn(x, y), fn(y, x))  # symmetric
        per = fn(x, y, reduction="none")
        assert bool(((per >= 0) & (per <= 2)).all())
        torch.testing.assert_close(fn(x, y, reduction="sum"), per.sum())
        # more noise, lower similarity
        _, y_far = _images((3, 2, 16, 16), seed=16, noise=0.6)
        assert bool((fn(x, y_far, reduction="none") > per).all())
    # an image against its contrast-inverted copy: structure term ~ -1, so SSIM < 0 and the loss > 1
    z = torch.rand(1, 1, 16, 16, generator=_g(17), dtype=torch.float64)
    assert float(LF.ssim_loss(z, 1 - z)) > 1.0


def test_ssim_is_scale_free_with_data_range():
    x, y = _images((2, 1, 16, 16), seed=18)
    torch.testing.assert_close(LF.ssim_loss(x, y), LF.ssim_loss(255 * x, 255 * y, data_range=255.0))
    torch.testing.assert_close(
        LF.ms_ssim_loss(x, y, weights=(1, 1), win_size=5),
        LF.ms_ssim_loss(10 * x, 10 * y, data_range=10.0, weights=(1, 1), win_size=5),
    )


def test_one_weight_ms_ssim_is_ssim():
    x, y = _images((2, 3, 12, 12), seed=19)
    torch.testing.assert_close(
        LF.ms_ssim_loss(x, y, weights=(1.0,), win_size=5), LF.ssim_loss(x, y, win_size=5)
    )


def test_ms_ssim_negative_contrast_is_clamped_not_nan():
    x = torch.rand(1, 1, 20, 20, generator=_g(20), dtype=torch.float64)
    y = (1 - x).requires_grad_()  # anti-correlated: cs < 0 at the fine scale
    loss = LF.ms_ssim_loss(x, y, weights=(0.5, 0.5), win_size=5)
    assert_finite_with_grads(loss, y)
    torch.testing.assert_close(loss, torch.tensor(1.0, dtype=torch.float64))


def test_total_variation_properties():
    x = torch.randn(2, 3, 6, 6, generator=_g(21), dtype=torch.float64)
    torch.testing.assert_close(LF.total_variation_loss(x + 5.0), LF.total_variation_loss(x))
    iso = LF.total_variation_loss(x, isotropic=True, reduction="none")
    aniso = LF.total_variation_loss(x, reduction="none")
    assert bool((iso <= aniso).all()) and bool((aniso <= math.sqrt(2) * iso + 1e-12).all())
    torch.testing.assert_close(LF.total_variation_loss(3 * x), 3 * LF.total_variation_loss(x))


# ----------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: LF.ssim_loss(a, b),
        lambda a, b: LF.ms_ssim_loss(a, b, weights=(0.5, 0.5), win_size=5),
        lambda a, b: LF.psnr_loss(a, b),
        lambda a, b: LF.total_variation_loss(a),
        lambda a, b: LF.total_variation_loss(a, isotropic=True, reduction="sum"),
    ],
    ids=["ssim", "ms_ssim", "psnr", "tv", "tv_iso"],
)
def test_empty_batch_gives_connected_zero(fn):
    a = torch.zeros(0, 2, 16, 16, requires_grad=True)
    assert_connected_zero(fn(a, torch.zeros(0, 2, 16, 16)), a)


def test_flat_images_are_finite_with_gradients():
    flat = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    a = flat.clone().requires_grad_()
    for loss in (LF.ssim_loss(a, flat), LF.ms_ssim_loss(a, flat, weights=(0.5, 0.5), win_size=5)):
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
        assert_finite_with_grads(loss, a)
    zero = torch.zeros(1, 1, 16, 16, requires_grad=True)
    assert_finite_with_grads(LF.ssim_loss(zero, torch.ones(1, 1, 16, 16)), zero)
    tv = LF.total_variation_loss(a, isotropic=True)
    assert float(tv.detach()) == 0.0
    assert_finite_with_grads(tv, a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_losses_and_finite_grads(dtype):
    x, y = _images((2, 3, 24, 24), seed=22, dtype=dtype)
    x = x.requires_grad_()
    for loss in (
        LF.ssim_loss(x, y),
        LF.ms_ssim_loss(x, y, weights=(0.5, 0.5), win_size=7),
        LF.psnr_loss(x, y),
        LF.total_variation_loss(x, isotropic=True),
    ):
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)
    want = LF.ssim_loss(x.detach().float(), y.float())
    torch.testing.assert_close(LF.ssim_loss(x.detach(), y), want)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_argument():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(LossValueError, match=r"win_size must be odd, got 4"):
        LF.ssim_loss(x, x, win_size=4)
    with pytest.raises(LossValueError, match=r"sigma must be > 0.0, got 0"):
        losskit.SSIMLoss(sigma=0)
    with pytest.raises(LossValueError, match=r"data_range must be > 0.0, got -1"):
        LF.ms_ssim_loss(x, x, data_range=-1)
    with pytest.raises(LossTypeError, match=r"win_size must be an int, got float 7.0"):
        losskit.MSSSIMLoss(win_size=7.0)
    with pytest.raises(
        LossValueError, match=r"input has spatial shape \(16, 16\), expected every side >= 17"
    ):
        LF.ssim_loss(x, x, win_size=17)
    with pytest.raises(
        LossValueError,
        match=r"input has spatial shape \(16, 16\), expected every side >= 161 for 5 scales with win_size 11 "
        r"\(use fewer weights",
    ):
        LF.ms_ssim_loss(x, x)
    with pytest.raises(LossValueError, match=r"input has shape \(3, 16, 16\), expected \(N, C, H, W\)"):
        LF.ssim_loss(x[0], x[0])
    with pytest.raises(LossValueError, match=r"target has shape \(2, 1, 16, 16\), expected \(2, 3, 16, 16\)"):
        LF.ssim_loss(x, x[:, :1])
    with pytest.raises(LossTypeError, match=r"target must be a floating-point tensor, got dtype torch.uint8"):
        LF.ssim_loss(x, (x * 255).to(torch.uint8))
    with pytest.raises(LossValueError, match=r"weights must hold at least one scale weight"):
        losskit.MSSSIMLoss(weights=())
    with pytest.raises(LossValueError, match=r"weights must be >= 0.0, got -0.5"):
        LF.ms_ssim_loss(x, x, weights=(1.0, -0.5))
    with pytest.raises(LossValueError, match=r"eps must be > 0.0, got 0"):
        losskit.PSNRLoss(eps=0)
    with pytest.raises(LossValueError, match=r"input has shape \(4,\), expected \(N, ...\)"):
        LF.psnr_loss(torch.rand(4), torch.rand(4))
    with pytest.raises(LossValueError, match=r"weight has shape \(3,\), expected \(2,\): one per sample"):
        LF.total_variation_loss(x, torch.ones(3))
    with pytest.raises(LossValueError, match=r"input has shape \(16, 16\), expected \(N, C, \*spatial\)"):
        LF.total_variation_loss(x[0, 0])


# ----------------------------------------------------------------------------- module, round trips, compile


MODULES = [
    (losskit.SSIMLoss(data_range=2.0, win_size=5), lambda a, b: LF.ssim_loss(a, b, 2.0, win_size=5)),
    (
        losskit.MSSSIMLoss(weights=(0.4, 0.6), win_size=3, reduction="sum"),
        lambda a, b: LF.ms_ssim_loss(a, b, weights=(0.4, 0.6), win_size=3, reduction="sum"),
    ),
    (losskit.PSNRLoss(data_range=2.0), lambda a, b: LF.psnr_loss(a, b, 2.0)),
    (losskit.TotalVariationLoss(isotropic=True), lambda a, b: LF.total_variation_loss(a, isotropic=True)),
]


@pytest.mark.parametrize("index", range(len(MODULES)))
def test_module_equals_functional_round_trips_and_compiles(index):
    module, fn = MODULES[index]
    x, y = _images((2, 2, 12, 12), seed=23, dtype=torch.float32)
    args = (x, y) if not isinstance(module, losskit.TotalVariationLoss) else (x,)
    assert_module_matches(module, fn(x, y), *args)
    assert_compiles(lambda *a: module(*a), *args)


def test_registered_by_name():
    for name in ("ssim", "ms_ssim", "psnr", "total_variation"):
        assert name in losskit.available("image")
    assert isinstance(losskit.build("tv"), losskit.TotalVariationLoss)
    assert "win_size=5" in repr(losskit.build("ssim", win_size=5))


# ----------------------------------------------------------------------------- the separable filter kernel


def _saved_bytes(fn, *args):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total


@pytest.mark.parametrize("shape", [(2, 3, 20, 19), (1, 2, 9, 8, 10)], ids=["2d", "3d"])
def test_filter_kernel_equals_plain_autograd_and_holds_less(shape):
    from losskit._kernels import fused_kernels

    x, y = _images(shape, seed=24)
    fn = lambda a, b: LF.ms_ssim_loss(a, b, weights=(0.5, 0.5), win_size=3)  # noqa: E731
    with fused_kernels(False):
        want = fn(x, y)
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        want_grads = torch.autograd.grad(fn(xr, yr), (xr, yr))
        plain_held = _saved_bytes(fn, xr, yr)
    xk, yk = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = fn(xk, yk)
    grads = torch.autograd.grad(got, (xk, yk))
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)
    assert _saved_bytes(fn, xk, yk) < plain_held


def test_double_backward_through_the_filter_kernel():
    x, y = _images((1, 1, 6, 7), seed=25)
    fn = lambda a: LF.ssim_loss(a, y, win_size=3)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("bands", [True, False], ids=["banded", "convolutions"])
@pytest.mark.parametrize("shape", [(2, 3, 20, 19), (1, 2, 9, 8, 10), (1, 1, 140, 12)], ids=["2d", "3d", "long"])
def test_filter_kernel_paths_equal_the_plain_filter(shape, bands, monkeypatch):
    """Banded matrix products (short sides) and grouped convolutions (long sides) give the plain
    filter's values and, through the adjoint, its gradients."""
    import losskit._kernels.gaussian as gauss

    monkeypatch.setattr(gauss, "_BAND_MAX_SIDE", 10**6 if bands else 0)
    g = torch.Generator().manual_seed(26)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    window = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = gauss.separable_filter(xr, window), gauss.separable_filter_plain(xp, window)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    upstream = torch.randn(got.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(got, xr, upstream)
    (gp,) = torch.autograd.grad(want, xp, upstream)
    torch.testing.assert_close(gx, gp, rtol=1e-12, atol=1e-14)
    assert gauss._use_bands(x) is bands
