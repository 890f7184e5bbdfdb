"""Dice + CE, Dice + focal and deep supervision: definition-of-done tests against plain float64 formulas."""

from __future__ import annotations

import copy
import pickle

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
from losskit import LossTypeError, LossValueError


def _g(seed):
    return torch.Generator().manual_seed(seed)


def multiclass(n=2, c=3, hw=(5, 4), seed=0):
    return (
        torch.randn(n, c, *hw, generator=_g(seed), dtype=torch.float64) * 2,
        torch.randint(0, c, (n, *hw), generator=_g(seed + 1)),
    )


def sigmoid_case(mode, n=2, hw=(5, 4), seed=0):
    c = 1 if mode == "binary" else 3
    x = torch.randn(n, c, *hw, generator=_g(seed), dtype=torch.float64) * 2
    if mode == "binary":
        return x, torch.randint(0, 2, (n, *hw), generator=_g(seed + 1))
    return x, (torch.rand(n, c, *hw, generator=_g(seed + 1), dtype=torch.float64) > 0.6).double()


def pixel_mask(n=2, hw=(5, 4), seed=0):
    return torch.rand(n, *hw, generator=_g(seed + 9)) < 0.7


# ---------------------------------------------------------------- references of the second term


def ref_ce_mean(x, t, weight=None, smooth=0.0, ignore_index=None, mask=None):
    tt = t if mask is None else torch.where(mask, t, torch.full_like(t, -5))
    ii = -5 if mask is not None and ignore_index is None else ignore_index
    if mask is not None and ignore_index is not None:
        tt = torch.where(mask, t, torch.full_like(t, ignore_index))
    loss, w = R.ce_pixels(x, tt, weight, smooth, ii)
    return loss.sum() / w.sum() if float(w.sum()) > 0 else loss.sum() * 0.0


def ref_softmax_focal_mean(x, t, gamma, weight=None):
    """-w_y (1 - p_y)^gamma log p_y, mean sum / sum w_y (class-index targets, no smoothing)."""
    logp = torch.log_softmax(x.double(), 1)
    lp = logp.gather(1, t.unsqueeze(1)).squeeze(1)
    w = torch.ones(x.shape[1], dtype=torch.float64) if weight is None else weight.double()
    wy = w[t]
    loss = -wy * (1 - torch.exp(lp)) ** gamma * lp
    return loss.sum() / wy.sum()


def ref_sigmoid_term(x, y, gamma=0.0, alpha=None, weight=None, valid=None):
    """alpha_t (1 - p_t)^gamma BCE(x, y) element-wise; mean sum(w l) / sum(w) over the valid elements."""
    p = torch.sigmoid(x.double())
    loss = R.bce(x, y)
    p_t = p * y + (1 - p) * (1 - y)
    loss = loss * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    w = torch.ones_like(loss)
    if weight is not None:
        w = w * weight.double().reshape(1, -1, *([1] * (x.dim() - 2)))
    if valid is not None:
        w = w * valid.unsqueeze(1).double()
    return (loss * w).sum() / w.sum()


# ---------------------------------------------------------------- Dice + CE: multiclass


@pytest.mark.parametrize(
    "case",
    ["plain", "weight", "ignore", "mask", "smooth", "nobg", "micro_batch", "terms"],
)
def test_dice_ce_multiclass_matches_reference(case):
    x, t = multiclass(seed=1)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    m = pixel_mask(seed=1)
    lib, dice_ref, ce_ref = {}, {}, {}
    wd, wc = 1.0, 1.0
    if case == "weight":
        lib, dice_ref, ce_ref = {"weight": w}, {"weight": w}, {"weight": w}
    elif case == "ignore":
        t = torch.where(torch.rand(t.shape, generator=_g(2)) < 0.3, torch.full_like(t, 9), t)
        lib, dice_ref, ce_ref = {"ignore_index": 9}, {"ignore_index": 9}, {"ignore_index": 9}
    elif case == "mask":
        lib, dice_ref, ce_ref = {"mask": m}, {"mask": m}, {"mask": m}
    elif case == "smooth":
        lib, ce_ref = {"smooth_factor": 0.1}, {"smooth": 0.1}
    elif case == "nobg":  # background left out of the Dice term only
        lib, dice_ref = {"include_background": False}, {"include_background": False}
    elif case == "micro_batch":
        lib = {"average": "micro", "batch_dice": True, "smooth_nr": 1e-5, "smooth_dr": 1e-5}
        dice_ref = {"average": "micro", "batch": True, "snr": 1e-5, "sdr": 1e-5}
    else:
        wd, wc = 0.3, 1.7
    assert_matches_reference(
        lambda a: LF.dice_ce_loss(a, t, "multiclass", wd, wc, **lib),
        lambda a: wd * R.tversky(a, t, **dice_ref) + wc * ref_ce_mean(a, t, **ce_ref),
        (x,),
    )


def test_dice_ce_dense_multiclass_targets():
    x, _ = multiclass(seed=3)
    q = torch.softmax(torch.randn(x.shape, generator=_g(4), dtype=torch.float64), 1)
    m = pixel_mask(seed=3)
    ce = -(q * torch.log_softmax(x, 1)).sum(1)
    torch.testing.assert_close(LF.dice_ce_loss(x, q), R.tversky(x, q) + ce.mean())
    torch.testing.assert_close(LF.dice_ce_loss(x, q, mask=m), R.tversky(x, q, mask=m) + ce[m].mean())


# ---------------------------------------------------------------- Dice + CE: binary / multilabel (soft BCE)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("case", ["plain", "smooth", "weight", "mask", "ignore"])
def test_dice_ce_sigmoid_matches_reference(mode, case):
    x, t = sigmoid_case(mode, seed=5)
    y = t.unsqueeze(1).double() if mode == "binary" else t
    lib, dice_ref, valid, w = {}, {}, None, None
    sf = 0.0
    if case == "smooth":
        sf = 0.15
        lib = {"smooth_factor": sf}
    elif case == "weight":
        w = (
            torch.tensor([2.0], dtype=torch.float64)
            if mode == "binary"
            else torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
        )
        lib = dice_ref = {"weight": w}
    elif case == "mask":
        valid = pixel_mask(seed=5)
        lib = dice_ref = {"mask": valid}
    elif case == "ignore":
        if mode == "multilabel":
            pytest.skip("ignore_index needs class-index targets")
        ign = torch.rand(t.shape, generator=_g(6)) < 0.3
        t = torch.where(ign, torch.full_like(t, 255), t)
        y = (t == 1).unsqueeze(1).double()
        valid = ~ign
        lib = dice_ref = {"ignore_index": 255}
    assert_matches_reference(
        lambda a: LF.dice_ce_loss(a, t, mode, **lib),
        lambda a: (
            R.tversky(a, t, mode, **dice_ref)
            + ref_sigmoid_term(a, R.soft_bce_target(y, sf), weight=w, valid=valid)
        ),
        (x,),
    )


def test_smooth_factor_is_smp_soft_bce():
    """The BCE term with smooth_factor s equals BCE against (1 - y) s + y (1 - s); s = 0.5 makes it target-free."""
    x, t = sigmoid_case("multilabel", seed=7)
    dice = LF.dice_loss(x, t, "multilabel")
    for s in (0.05, 0.3):
        want = R.bce(x, (1 - t) * s + t * (1 - s)).mean()
        torch.testing.assert_close(LF.dice_ce_loss(x, t, "multilabel", smooth_factor=s) - dice, want)
    half = LF.dice_ce_loss(x, t, "multilabel", 0.0, smooth_factor=0.5)
    torch.testing.assert_close(half, LF.dice_ce_loss(x, 1 - t, "multilabel", 0.0, smooth_factor=0.5))


# ---------------------------------------------------------------- Dice + focal


def test_dice_focal_multiclass():
    x, t = multiclass(seed=8)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    for gamma in (0.0, 1.5, 2.0):
        assert_matches_reference(
            lambda a, gamma=gamma: LF.dice_focal_loss(a, t, gamma=gamma, weight=w),
            lambda a, gamma=gamma: R.tversky(a, t, weight=w) + ref_softmax_focal_mean(a, t, gamma, w),
            (x,),
        )
    # gamma = 0 is Dice + CE, with every option
    kw = {"smooth_factor": 0.1, "ignore_index": 1, "mask": pixel_mask(seed=8), "weight": w}
    torch.testing.assert_close(LF.dice_focal_loss(x, t, gamma=0.0, **kw), LF.dice_ce_loss(x, t, **kw))


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_dice_focal_sigmoid(mode):
    x, t = sigmoid_case(mode, seed=9)
    y = t.unsqueeze(1).double() if mode == "binary" else t
    m = pixel_mask(seed=9)
    for gamma, alpha, sf in ((2.0, None, 0.0), (1.0, 0.25, 0.0), (2.0, 0.6, 0.1)):
        assert_matches_reference(
            lambda a, g=gamma, al=alpha, s=sf: LF.dice_focal_loss(
                a, t, mode, 0.4, 2.0, gamma=g, alpha=al, smooth_factor=s, mask=m
            ),
            lambda a, g=gamma, al=alpha, s=sf: (
                0.4 * R.tversky(a, t, mode, mask=m)
                + 2.0 * ref_sigmoid_term(a, R.soft_bce_target(y, s), g, al, valid=m)
            ),
            (x,),
        )
    torch.testing.assert_close(LF.dice_focal_loss(x, t, mode, gamma=0.0), LF.dice_ce_loss(x, t, mode))


# ---------------------------------------------------------------- modules: last_terms, weights, round trips


@pytest.mark.parametrize(
    ("module", "fn", "kw", "second"),
    [
        (losskit.DiceCELoss, LF.dice_ce_loss, {"ce_weight": 0.5, "include_background": False}, "ce"),
        (
            losskit.DiceFocalLoss,
            LF.dice_focal_loss,
            {"focal_weight": 2.0, "gamma": 1.0, "smooth_nr": 1e-5, "smooth_dr": 1e-5},
            "focal",
        ),
    ],
)
def test_modules_last_terms_and_round_trips(module, fn, kw, second):
    x, t = multiclass(seed=10)
    x = x.float()
    w = torch.tensor([1.0, 2.0, 0.5])
    m = module(weight=w, dice_weight=0.7, **kw)
    assert "weight" in m.state_dict()
    out = m(x, t)
    assert sorted(m.last_terms) == sorted(["dice", second])
    w2 = kw.get("ce_weight", kw.get("focal_weight"))
    torch.testing.assert_close(out, 0.7 * m.last_terms["dice"] + w2 * m.last_terms[second])
    dice_kw = {k: v for k, v in kw.items() if k not in ("ce_weight", "focal_weight", "gamma")}
    torch.testing.assert_close(m.last_terms["dice"], LF.dice_loss(x, t, weight=w, **dice_kw))
    assert not m.last_terms["dice"].requires_grad
    assert_module_matches(m, fn(x, t, dice_weight=0.7, weight=w, **kw), x, t)
    mask = pixel_mask(seed=10)
    torch.testing.assert_close(m(x, t, mask=mask), fn(x, t, dice_weight=0.7, weight=w, mask=mask, **kw))
    assert_compiles(lambda a, b: m(a, b), x, t)


def test_presets_build_by_name():
    assert {"dice_ce", "dice_focal"} <= set(losskit.available())
    m = losskit.build({"name": "dice_ce", "mode": "binary", "smooth_factor": 0.1, "batch_dice": True})
    assert isinstance(m, losskit.DiceCELoss) and m.dice_kw == {"batch_dice": True}
    assert isinstance(losskit.build("dice_focal", gamma=1.0), losskit.DiceFocalLoss)


# ---------------------------------------------------------------- gradcheck, properties


def test_presets_gradcheck():
    x, t = multiclass(n=2, c=3, hw=(3, 3), seed=11)
    m = pixel_mask(n=2, hw=(3, 3), seed=11)
    assert_gradcheck(lambda a: LF.dice_ce_loss(a, t, smooth_factor=0.1, mask=m, average="micro"), (x,))
    assert_gradcheck(lambda a: LF.dice_focal_loss(a, t, gamma=1.5), (x,))
    xb, tb = sigmoid_case("multilabel", n=2, hw=(3, 3), seed=12)
    assert_gradcheck(lambda a: LF.dice_focal_loss(a, tb, "multilabel", alpha=0.25, smooth_factor=0.05), (xb,))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), wd=st.floats(0.0, 3.0), wc=st.floats(0.0, 3.0))
def test_presets_are_the_weighted_sum(seed, wd, wc):
    x, t = multiclass(seed=seed)
    total = LF.dice_ce_loss(x, t, "multiclass", wd, wc)
    torch.testing.assert_close(total, wd * LF.dice_loss(x, t) + wc * LF.cross_entropy_loss(x, t))
    assert float(total) >= 0.0
    # perfect confident prediction: both terms ~0
    perfect = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).double() * 40
    assert float(LF.dice_ce_loss(perfect, t)) < 1e-12


# ---------------------------------------------------------------- degenerate input, empty-mask rule


def test_empty_target_false_positive_is_penalised():
    x = torch.full((1, 1, 4, 4), -20.0, dtype=torch.float64)
    x[0, 0, 2, 2] = 4.0
    x.requires_grad_(True)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    for fn in (LF.dice_ce_loss, LF.dice_focal_loss):
        loss = fn(x, t, "binary")
        assert float(loss.detach()) > 0.5
        (g,) = torch.autograd.grad(loss, x)
        assert float(g[0, 0, 2, 2]) > 0


def test_presets_degenerate_inputs():
    x, t = multiclass(seed=13)
    x.requires_grad_(True)
    for fn in (LF.dice_ce_loss, LF.dice_focal_loss):
        assert_connected_zero(fn(x, torch.full_like(t, -1), ignore_index=-1), x)
        assert_connected_zero(fn(x, t, mask=torch.zeros(t.shape, dtype=torch.bool)), x)
        e = torch.zeros(0, 3, 4, 4, requires_grad=True)
        assert_connected_zero(fn(e, torch.zeros(0, 4, 4, dtype=torch.long)), e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_presets_low_precision(mode, dtype):
    c = {"multiclass": 3, "binary": 1, "multilabel": 3}[mode]
    x = extreme_logits((2, c, 6, 6), dtype, seed=14).requires_grad_(True)
    t = torch.randint(0, 3, (2, 6, 6)) if mode == "multiclass" else (torch.rand(2, c, 6, 6) > 0.5).float()
    for fn in (LF.dice_ce_loss, LF.dice_focal_loss):
        loss = fn(x, t, mode, smooth_factor=0.1)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, x)


# ---------------------------------------------------------------- errors


def test_preset_errors():
    x, t = multiclass(seed=15)
    with pytest.raises(LossValueError, match=r"alpha balances positives in the sigmoid focal term"):
        LF.dice_focal_loss(x, t, alpha=0.25)
    with pytest.raises(LossValueError, match=r"alpha balances positives"):
        losskit.DiceFocalLoss(alpha=0.25)
    with pytest.raises(LossValueError, match=r"smooth_factor must be <= 1"):
        LF.dice_ce_loss(x, t, smooth_factor=1.5)
    with pytest.raises(LossValueError, match=r"ce_weight must be >= 0"):
        losskit.DiceCELoss(ce_weight=-1.0)
    with pytest.raises(LossTypeError, match=r"unexpected Dice option 'from_logits'"):
        losskit.DiceCELoss(from_logits=False)
    with pytest.raises(LossValueError, match=r"weight has shape \(2,\), expected \(3,\)"):
        LF.dice_ce_loss(x, t, weight=torch.ones(2, dtype=torch.float64))
    with pytest.raises(LossValueError, match=r"mode='binary' expects input with one channel"):
        LF.dice_ce_loss(x, t, "binary")
    with pytest.raises(LossValueError, match=r"mask must be a bool tensor"):
        LF.dice_focal_loss(x, t, mask=torch.ones(t.shape))
    with pytest.raises(LossTypeError, match=r"input must be a floating-point tensor"):
        LF.dice_ce_loss(t.unsqueeze(1).expand(2, 3, 5, 4), t)


# ---------------------------------------------------------------- deep supervision


def pyramid(seed=16, sizes=((16, 12), (8, 6), (4, 3), (2, 2)), c=3):
    return [torch.randn(2, c, *s, generator=_g(seed + i), dtype=torch.float64) for i, s in enumerate(sizes)]


@pytest.mark.parametrize(
    ("weight_mode", "weights", "expected"),
    [
        ("exp", None, [1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625]),
        ("two", None, [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]),
        ("same", None, [1.0] * 6),
        ("exp", [0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 9.0], [0.4, 0.3, 0.2, 0.1, 0.05, 0.01]),
    ],
)
def test_deep_supervision_weights(weight_mode, weights, expected):
    ds = losskit.DeepSupervisionLoss(losskit.DiceLoss(), weight_mode, weights)
    assert ds.get_weights(6) == pytest.approx(expected)
    assert R.exp_weights(6) == pytest.approx([1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625])


@pytest.mark.parametrize("weight_mode", ["exp", "two", "same"])
def test_deep_supervision_matches_reference(weight_mode):
    outs = pyramid()
    t = torch.randint(0, 3, (2, 16, 12), generator=_g(20))
    t[0, :3] = 7  # ignored positions survive the resize
    inner = losskit.DiceCELoss(ignore_index=7)
    ds = losskit.DeepSupervisionLoss(inner, weight_mode)
    w = {"exp": R.exp_weights(4), "two": [1, 0.5, 0.5, 0.5], "same": [1] * 4}[weight_mode]

    def ref(*xs):
        total = 0.0
        for level, x in enumerate(xs):
            tl = R.nearest_resize(t, x.shape[2:])
            total = total + w[level] * LF.dice_ce_loss(x, tl, ignore_index=7)
        return total

    assert_matches_reference(lambda *xs: ds(list(xs), t), ref, outs, (0, 1, 2, 3))
    assert sorted(ds.last_terms) == ["level0", "level1", "level2", "level3"]
    torch.testing.assert_close(
        ds.last_terms["level2"], LF.dice_ce_loss(outs[2], R.nearest_resize(t, (4, 3)), ignore_index=7)
    )


def test_nearest_resize_matches_torch_nearest_exact():
    t = torch.randint(0, 5, (2, 13, 11), generator=_g(21))
    for size in ((6, 5), (4, 4), (13, 11), (26, 7)):
        want = torch.nn.functional.interpolate(t.unsqueeze(1).double(), size=size, mode="nearest-exact")
        torch.testing.assert_close(R.nearest_resize(t, size), want.squeeze(1).long())


def test_deep_supervision_dense_targets_masks_and_single_tensor():
    outs = pyramid(c=3)
    t = (torch.rand(2, 3, 16, 12, generator=_g(22), dtype=torch.float64) > 0.5).double()
    m = torch.rand(2, 16, 12, generator=_g(23)) < 0.8
    ds = losskit.DeepSupervisionLoss(losskit.DiceLoss(mode="multilabel"), "two")
    want = sum(
        w
        * LF.dice_loss(
            x, R.nearest_resize(t, x.shape[2:]), "multilabel", mask=R.nearest_resize(m, x.shape[2:])
        )
        for w, x in zip([1, 0.5, 0.5, 0.5], outs)
    )
    torch.testing.assert_close(ds(outs, t, mask=m), want)
    # a single tensor goes to the loss unchanged
    torch.testing.assert_close(ds(outs[0], t), LF.dice_loss(outs[0], t, "multilabel"))
    # tuples work too, and every level gets a gradient
    leaves = [o.clone().requires_grad_(True) for o in outs]
    grads = torch.autograd.grad(ds(tuple(leaves), t), leaves)
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_deep_supervision_builds_inner_loss_and_round_trips():
    ds = losskit.DeepSupervisionLoss({"name": "dice_ce", "weight": [1.0, 2.0, 0.5]}, "exp")
    assert isinstance(ds.loss, losskit.DiceCELoss)
    assert "loss.weight" in ds.state_dict()
    outs = [o.float() for o in pyramid(seed=24)]
    t = torch.randint(0, 3, (2, 16, 12), generator=_g(25))
    value = ds(outs, t)
    for copy_ in (copy.deepcopy(ds), pickle.loads(pickle.dumps(ds))):
        torch.testing.assert_close(copy_(outs, t), value)
    plain = losskit.DeepSupervisionLoss(LF.dice_loss, "same")  # a plain function
    torch.testing.assert_close(
        plain(outs, t), sum(LF.dice_loss(o, R.nearest_resize(t, o.shape[2:])) for o in outs)
    )
    assert_compiles(
        lambda a, b, c: losskit.DeepSupervisionLoss(losskit.DiceCELoss())([a, b], c), outs[0], outs[1], t
    )


def test_deep_supervision_errors():
    outs = pyramid()
    t = torch.randint(0, 3, (2, 16, 12), generator=_g(26))
    with pytest.raises(LossValueError, match=r"weight_mode must be one of 'same', 'exp', 'two', got 'log'"):
        losskit.DeepSupervisionLoss(losskit.DiceLoss(), "log")
    with pytest.raises(LossValueError, match=r"weights has 2 entries, expected at least 4: one per output"):
        losskit.DeepSupervisionLoss(losskit.DiceLoss(), weights=[1.0, 0.5])(outs, t)
    with pytest.raises(LossValueError, match=r"weights must be >= 0"):
        losskit.DeepSupervisionLoss(losskit.DiceLoss(), weights=[1.0, -0.5])
    with pytest.raises(
        LossTypeError, match=r"input must be a tensor or a non-empty list of tensors, got list"
    ):
        losskit.DeepSupervisionLoss(losskit.DiceLoss())([], t)
    with pytest.raises(LossTypeError, match=r"loss must be a module or a callable, got int"):
        losskit.DeepSupervisionLoss(3)
    with pytest.raises(
        LossValueError, match=r"input\[1\] has shape \(2, 3, 8\), expected the rank of target"
    ):
        losskit.DeepSupervisionLoss(losskit.DiceLoss())([outs[0], outs[1][..., 0]], t)
    with pytest.raises(LossValueError, match=r"unknown loss 'dcie'"):
        losskit.DeepSupervisionLoss("dcie")
