"""Overlap-loss options: smooth_nr / smooth_dr (MONAI), average='micro' (kornia), per-pixel mask= (MONAI's
masked Dice), against the plain float64 loops of ref_segmentation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
import ref_segmentation as R
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    extreme_logits,
)
from losskit import LossValueError

RNC = ["none", "mean", "sum"]
# name -> (functional, reference keywords)
FAMILY = {
    "dice": (LF.dice_loss, {}),
    "jaccard": (LF.jaccard_loss, {"k": 1.0}),
    "tversky": (
        lambda *a, **kw: LF.tversky_loss(*a, alpha=0.3, beta=0.7, **kw),
        {"k": 1.0, "alpha": 0.3, "beta": 0.7},
    ),
    "focal_tversky": (
        lambda *a, **kw: LF.focal_tversky_loss(*a, alpha=0.3, beta=0.7, gamma=2.0, **kw),
        {"k": 1.0, "alpha": 0.3, "beta": 0.7, "gamma": 2.0},
    ),
}


def _g(seed):
    return torch.Generator().manual_seed(seed)


def seg(n=3, c=3, hw=(5, 4), seed=0, mode="multiclass", dense=False):
    x = torch.randn(n, c, *hw, generator=_g(seed), dtype=torch.float64) * 2
    if mode == "multiclass" and not dense:
        t = torch.randint(0, c, (n, *hw), generator=_g(seed + 1))
    elif mode == "binary" and not dense:
        t = torch.randint(0, 2, (n, *hw), generator=_g(seed + 1))
    else:
        t = (torch.rand(n, c, *hw, generator=_g(seed + 1), dtype=torch.float64) > 0.6).double()
    return x, t


def pixel_mask(n=3, hw=(5, 4), seed=0, p=0.7):
    return torch.rand(n, *hw, generator=_g(seed + 7)) < p


# ---------------------------------------------------------------- smooth_nr / smooth_dr


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_smooth_nr_dr_match_reference(name, reduction):
    fn, kw = FAMILY[name]
    x, t = seg(seed=1)
    for snr, sdr in ((0.0, 1e-5), (1e-5, 1e-5), (0.5, 2.0), (None, 1.0)):
        ref_nr = 0.0 if snr is None else snr
        assert_matches_reference(
            lambda a, snr=snr, sdr=sdr: fn(a, t, smooth_nr=snr, smooth_dr=sdr, reduction=reduction),
            lambda a, nr=ref_nr, sdr=sdr: R.tversky(a, t, snr=nr, sdr=sdr, reduction=reduction, **kw),
            (x,),
        )


def test_equal_nr_dr_is_smooth_and_omitted_one_falls_back():
    x, t = seg(seed=2)
    for fn, _ in FAMILY.values():
        torch.testing.assert_close(fn(x, t, smooth_nr=0.7, smooth_dr=0.7), fn(x, t, smooth=0.7))
        torch.testing.assert_close(fn(x, t, smooth_nr=0.0), fn(x, t))
    torch.testing.assert_close(
        LF.generalized_dice_loss(x, t, smooth_nr=0.3, smooth_dr=0.3),
        LF.generalized_dice_loss(x, t, smooth=0.3),
    )


def test_monai_dice_formula_with_separate_smoothing():
    """MONAI's DiceLoss: 1 - (2 TP + smooth_nr) / (sum p + sum g + smooth_dr) per (image, class), mean."""
    x, t = seg(n=2, c=3, seed=3)
    p = R.probs(x, "multiclass")
    g = torch.stack([(t == k).double() for k in range(3)], 1)
    inter = (p * g).sum((2, 3))
    den = p.sum((2, 3)) + g.sum((2, 3))
    want = (1 - (2 * inter + 1e-5) / (den + 1e-4)).mean()
    torch.testing.assert_close(LF.dice_loss(x, t, smooth_nr=1e-5, smooth_dr=1e-4), want)


def test_smooth_nr_dr_generalized_dice():
    """With one class and uniform weights, generalized Dice is Dice, also with separate smoothing."""
    x, t = seg(n=3, c=1, seed=4, mode="binary")
    torch.testing.assert_close(
        LF.generalized_dice_loss(
            x, t, "binary", weight_type="uniform", smooth_nr=0.2, smooth_dr=0.9, reduction="none"
        ),
        LF.dice_loss(x, t, "binary", smooth_nr=0.2, smooth_dr=0.9, reduction="none")[:, 0],
    )


# ---------------------------------------------------------------- average='micro'


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize(
    "case",
    [
        {},
        {"batch": True},
        {"weight": torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)},
        {"include_background": False},
        {"ignore_index": 1},
    ],
    ids=["plain", "batch", "weight", "nobg", "ignore"],
)
def test_micro_matches_reference(name, reduction, case):
    fn, kw = FAMILY[name]
    x, t = seg(seed=5)
    opts = dict(case)
    lib = {"batch_dice" if k == "batch" else k: v for k, v in opts.items()}
    assert_matches_reference(
        lambda a: fn(a, t, average="micro", reduction=reduction, **lib),
        lambda a: R.tversky(a, t, average="micro", reduction=reduction, **kw, **opts),
        (x,),
    )


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_micro_sigmoid_modes_and_dense_targets(mode):
    c = 1 if mode == "binary" else 3
    x, t = seg(c=c, seed=6, mode=mode, dense=True)
    for fn, kw in FAMILY.values():
        assert_matches_reference(
            lambda a, fn=fn: fn(a, t, mode, average="micro", reduction="none"),
            lambda a, kw=kw: R.tversky(a, t, mode, average="micro", reduction="none", **kw),
            (x,),
        )


def test_micro_shapes_and_macro_default_unchanged():
    x, t = seg(n=4, c=3, seed=7)
    assert LF.dice_loss(x, t, average="micro", reduction="none").shape == (4,)
    assert LF.dice_loss(x, t, average="micro", batch_dice=True, reduction="none").shape == ()
    torch.testing.assert_close(LF.dice_loss(x, t), LF.dice_loss(x, t, average="macro"))
    assert LF.dice_loss(x, t, reduction="none").shape == (4, 3)


def test_micro_multiclass_dice_is_mean_true_class_probability():
    """Softmax rows sum to 1 and one-hot rows too: sum_c (|p_c| + |g_c|) = 2 * pixels, so the micro
    Dice index 2 TP / (2 * pixels) is the mean probability of the true class (kornia's default)."""
    x, t = seg(n=2, c=4, hw=(6, 3), seed=8)
    p = R.probs(x, "multiclass")
    p_true = p.gather(1, t.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(LF.dice_loss(x, t, average="micro", reduction="none"), 1 - p_true.mean((1, 2)))


def test_micro_empty_target_penalises_false_positives():
    """The empty-mask rule holds after pooling: an empty target and a predicted positive give a
    positive loss with a gradient; a correct empty prediction gives ~0."""
    x = torch.full((1, 2, 4, 4), -30.0, dtype=torch.float64)
    x[0, 1, 0, 0] = 5.0
    x.requires_grad_(True)
    t = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    loss = LF.dice_loss(x, t, "multilabel", average="micro")
    assert float(loss.detach()) > 0.4
    (g,) = torch.autograd.grad(loss, x)
    assert float(g[0, 1, 0, 0]) > 0
    assert float(LF.dice_loss(x.detach().clamp(max=-30), t, "multilabel", average="micro")) < 1e-10


# ---------------------------------------------------------------- mask=


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("average", ["macro", "micro"])
def test_mask_matches_reference(name, reduction, average):
    fn, kw = FAMILY[name]
    x, t = seg(seed=9)
    m = pixel_mask(seed=9)
    assert_matches_reference(
        lambda a: fn(a, t, mask=m, average=average, reduction=reduction),
        lambda a: R.tversky(a, t, mask=m, average=average, reduction=reduction, **kw),
        (x,),
    )


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_mask_with_dense_targets(mode):
    c = 1 if mode == "binary" else 3
    x, t = seg(c=c, seed=10, mode=mode, dense=True)
    soft = t * 0.8 + 0.1  # soft labels: the L1 form on the masked positions
    m = pixel_mask(seed=10)
    for target in (t, soft):
        for fn, kw in FAMILY.values():
            assert_matches_reference(
                lambda a, fn=fn, target=target: fn(a, target, mode, mask=m, reduction="none"),
                lambda a, kw=kw, target=target: R.tversky(a, target, mode, mask=m, reduction="none", **kw),
                (x,),
            )


def test_mask_equals_ignore_index_and_channel_form():
    x, t = seg(seed=11)
    m = pixel_mask(seed=11)
    ignored = torch.where(m, t, torch.full_like(t, -1))
    for fn, _ in FAMILY.values():
        torch.testing.assert_close(fn(x, t, mask=m), fn(x, ignored, ignore_index=-1))
        torch.testing.assert_close(fn(x, t, mask=m), fn(x, t, mask=m.unsqueeze(1)))
        # mask and ignore_index combine
        both = m & (t != 2)
        torch.testing.assert_close(fn(x, t, mask=m, ignore_index=2), fn(x, t, mask=both))
    torch.testing.assert_close(
        LF.generalized_dice_loss(x, t, mask=m), LF.generalized_dice_loss(x, ignored, ignore_index=-1)
    )


def test_mask_on_the_fused_kernel_size():
    """Inputs large enough for the fused class-sum kernel: a mask takes the plain path, same value."""
    x = torch.randn(2, 4, 128, 160, generator=_g(12))
    t = torch.randint(0, 4, (2, 128, 160), generator=_g(13))
    m = torch.rand(2, 128, 160, generator=_g(14)) < 0.5
    ignored = torch.where(m, t, torch.full_like(t, -1))
    torch.testing.assert_close(LF.dice_loss(x, t, mask=m), LF.dice_loss(x, ignored, ignore_index=-1))


def test_all_masked_gives_connected_zero():
    x, t = seg(seed=15)
    x.requires_grad_(True)
    none = torch.zeros(3, 5, 4, dtype=torch.bool)
    for name, (fn, _) in FAMILY.items():
        for avg in ("macro", "micro"):
            loss = fn(x, t, mask=none, average=avg)
            if name == "focal_tversky":  # (1 - TI) is clamped at eps before the power (documented)
                loss = loss - 1e-7**0.5
            assert_connected_zero(loss, x)
    assert_connected_zero(LF.generalized_dice_loss(x, t, mask=none), x)


def test_masked_out_positions_get_no_gradient():
    x, t = seg(seed=16)
    x.requires_grad_(True)
    m = pixel_mask(seed=16)
    (g,) = torch.autograd.grad(LF.dice_loss(x, t, mask=m), x)
    assert float(g.permute(1, 0, 2, 3)[:, ~m].abs().max()) == 0.0
    assert float(g.permute(1, 0, 2, 3)[:, m].abs().max()) > 0.0


# ---------------------------------------------------------------- gradcheck, properties, low precision


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_gradcheck_with_options(name):
    fn, _ = FAMILY[name]
    x, t = seg(n=2, c=3, hw=(3, 3), seed=17)
    m = pixel_mask(n=2, hw=(3, 3), seed=17)
    assert_gradcheck(
        lambda a: fn(a, t, mask=m, average="micro", smooth_nr=0.1, smooth_dr=0.5, reduction="none"), (x,)
    )
    assert_gradcheck(lambda a: fn(a, t, mask=m, smooth_nr=1e-5, smooth_dr=1e-5), (x,))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 4), batch=st.booleans())
def test_micro_properties(seed, c, batch):
    x, t = seg(n=2, c=c, seed=seed)
    none = LF.dice_loss(x, t, average="micro", batch_dice=batch, reduction="none")
    assert bool((none >= -1e-12).all() and (none <= 1 + 1e-12).all())
    torch.testing.assert_close(
        LF.dice_loss(x, t, average="micro", batch_dice=batch, reduction="sum"), none.sum()
    )
    # a perfect one-hot prediction has zero micro loss
    perfect = torch.nn.functional.one_hot(t, c).permute(0, 3, 1, 2).double() * 60.0
    assert float(LF.dice_loss(perfect, t, average="micro")) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_low_precision_with_options(name, dtype):
    fn, _ = FAMILY[name]
    _, t = seg(seed=18)
    x = extreme_logits((3, 3, 5, 4), dtype, seed=18).requires_grad_(True)
    m = pixel_mask(seed=18)
    loss = fn(x, t, mask=m, average="micro", smooth_nr=1e-5, smooth_dr=1e-5)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)


# ---------------------------------------------------------------- errors


def test_option_errors():
    x, t = seg(seed=19)
    with pytest.raises(LossValueError, match=r"average must be one of 'macro', 'micro', got 'weighted'"):
        LF.dice_loss(x, t, average="weighted")
    with pytest.raises(LossValueError, match=r"average must be one of"):
        losskit.TverskyLoss(average="samples")
    with pytest.raises(LossValueError, match=r"pass either smooth .* or smooth_nr / smooth_dr, got smooth=1"):
        LF.dice_loss(x, t, smooth=1.0, smooth_nr=1e-5)
    with pytest.raises(LossValueError, match=r"pass either smooth"):
        losskit.DiceLoss(smooth=1.0, smooth_dr=1e-5)
    with pytest.raises(LossValueError, match=r"smooth_dr must be >= 0"):
        LF.jaccard_loss(x, t, smooth_dr=-1.0)
    with pytest.raises(
        LossValueError, match=r"mask must be a bool tensor \(True = counts\), got dtype torch.float32"
    ):
        LF.dice_loss(x, t, mask=torch.ones(3, 5, 4))
    with pytest.raises(
        LossValueError, match=r"mask has shape \(3, 5\), expected \(3, 5, 4\) or \(3, 1, 5, 4\)"
    ):
        LF.dice_loss(x, t, mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(LossValueError, match=r"mask has shape \(3, 3, 5, 4\), expected"):
        LF.generalized_dice_loss(x, t, mask=torch.ones(3, 3, 5, 4, dtype=torch.bool))
    with pytest.raises(LossValueError, match=r"weight has shape \(2,\), expected \(3,\)"):
        LF.dice_loss(x, t, average="micro", weight=torch.ones(2, dtype=torch.float64))
    dense = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).double()
    with pytest.raises(
        LossValueError, match=r"ignore_index is only supported with class-index targets; .*mask="
    ):
        LF.dice_loss(x, dense, ignore_index=0)


# ---------------------------------------------------------------- modules, serialisation, compile


@pytest.mark.parametrize(
    ("module", "fn"),
    [
        (losskit.DiceLoss, LF.dice_loss),
        (losskit.JaccardLoss, LF.jaccard_loss),
        (losskit.TverskyLoss, LF.tversky_loss),
        (losskit.FocalTverskyLoss, LF.focal_tversky_loss),
    ],
)
def test_modules_take_the_options(module, fn):
    x, t = seg(seed=20)
    x = x.float()
    m = pixel_mask(seed=20)
    kw = {"average": "micro", "smooth_nr": 1e-5, "smooth_dr": 1e-3}
    mod = module(**kw)
    assert "average='micro'" in repr(mod)
    assert_module_matches(mod, fn(x, t, mask=m, **kw), x, t, mask=m)
    assert_module_matches(mod, fn(x, t, **kw), x, t)
    assert_compiles(lambda a, b, c: mod(a, b, mask=c), x, t, m)


def test_generalized_dice_module_takes_mask_and_smoothing():
    x, t = seg(seed=21)
    x = x.float()
    m = pixel_mask(seed=21)
    mod = losskit.GeneralizedDiceLoss(smooth_nr=1e-5, smooth_dr=1e-5)
    assert_module_matches(
        mod, LF.generalized_dice_loss(x, t, mask=m, smooth_nr=1e-5, smooth_dr=1e-5), x, t, mask=m
    )
    assert list(mod.state_dict()) == []
    assert_compiles(lambda a, b, c: mod(a, b, mask=c), x, t, m)


# ---------------------------------------------------------------- non-finite logits in the sigmoid modes


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_sigmoid_modes_keep_a_non_finite_logit_visible(value):
    """sigmoid(+-inf) is a finite 0 / 1: the loss must still not be finite (regression: binary Dice
    returned a finite value for an infinite logit); a non-finite logit at a masked position is ignored."""
    x, t = seg(c=1, seed=30, mode="binary")
    x[0, 0, 1, 1] = value
    m = torch.ones(t.shape, dtype=torch.bool)
    m[0, 1, 1] = False
    for fn in (LF.dice_loss, LF.jaccard_loss, LF.generalized_dice_loss, LF.mcc_loss):
        assert not torch.isfinite(fn(x, t, "binary")).all()
        assert not torch.isfinite(fn(x, t, "binary", batch_dice=True)).all()
        assert torch.isfinite(fn(x, t, "binary", mask=m)).all()
    xm, tm = seg(c=3, seed=31, mode="multilabel", dense=True)
    xm[1, 2, 0, 0] = value
    assert not torch.isfinite(LF.dice_loss(xm, tm, "multilabel", average="micro")).all()
