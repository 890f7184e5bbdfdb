"""Segmentation losses: definition-of-done tests against plain float64 loops."""

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
    extreme_logits,
)
from losskit import LossTypeError, LossValueError

# ---------------------------------------------------------------- independent float64 references


def ref_probs(x: torch.Tensor, mode: str, from_logits: bool = True) -> torch.Tensor:
    x = x.double()
    if not from_logits:
        return x
    if mode == "multiclass":
        e = torch.exp(x - x.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)
    return 1.0 / (1.0 + torch.exp(-x))


def ref_target(x: torch.Tensor, target: torch.Tensor, mode: str, ignore_index=None):
    """Dense float64 target and a per-position validity mask (N, d1, ...)."""
    n, c = x.shape[:2]
    if target.dim() == x.dim():
        return target.double(), torch.ones((n, *x.shape[2:]), dtype=torch.bool)
    valid = torch.ones(target.shape, dtype=torch.bool) if ignore_index is None else target != ignore_index
    g = torch.zeros(x.shape, dtype=torch.float64)
    if mode == "binary":
        g[:, 0] = ((target == 1) & valid).double()
    else:
        for k in range(c):
            g[:, k] = ((target == k) & valid).double()
    return g, valid


def ref_sums(p, g, valid, batch=False, form="l1", include_background=True):
    """Per (image, class) [TP, sum p, sum g], looping over images and classes.

    form: 'product' -> TP = sum(p g); 'l1' -> TP = (|p| + |g| - |p - g|) / 2; 'squared' -> sums of squares.
    """
    n, c = p.shape[:2]
    rows = []
    for i in range(n):
        row = []
        for k in range(c):
            pv = p[i, k][valid[i]]
            gv = g[i, k][valid[i]]
            if form == "squared":
                row.append(torch.stack([(pv * gv).sum(), (pv * pv).sum(), (gv * gv).sum()]))
            elif form == "l1":
                ps, gs = pv.sum(), gv.sum()
                row.append(torch.stack([(ps + gs - (pv - gv).abs().sum()) / 2, ps, gs]))
            else:
                row.append(torch.stack([(pv * gv).sum(), pv.sum(), gv.sum()]))
        rows.append(torch.stack(row))
    s = torch.stack(rows) if rows else torch.zeros(0, c, 3, dtype=torch.float64)
    if batch:
        s = s.sum(0)
    if not include_background:
        s = s[..., 1:, :]
    return s


def ref_index_losses(sums, kind, smooth=0.0, empty_smooth=1.0, eps=1e-7, alpha=0.5, beta=0.5, gamma=1.0):
    """Entry-wise loss from [TP, P, G] with the documented empty-mask rule."""
    flat = sums.reshape(-1, 3)
    out = []
    for tp, ps, gs in flat:
        fp, fn = ps - tp, gs - tp
        s = (smooth if empty_smooth is None else empty_smooth) if float(gs.detach()) <= 0 else smooth
        if kind == "dice":
            num, den = 2 * tp, ps + gs
        elif kind == "jaccard":
            num, den = tp, tp + fp + fn
        else:
            num, den = tp, tp + alpha * fp + beta * fn
        val = 1 - (num + s) / torch.clamp(den + s, min=eps)
        if kind == "focal_tversky":
            val = torch.clamp(val, min=eps) ** (1.0 / gamma)
        out.append(val)
    return torch.stack(out).reshape(sums.shape[:-1]) if out else sums.new_zeros(sums.shape[:-1])


def ref_reduce(losses, reduction, weight=None):
    if weight is not None:
        w = weight.double().expand_as(losses)
    else:
        w = torch.ones_like(losses)
    if reduction == "none":
        return losses * w
    if reduction == "sum":
        return (losses * w).sum()
    return (losses * w).sum() / w.sum() if float(w.sum()) > 0 else (losses * w).sum()


def make_ref(kind, mode, reduction="mean", batch=False, ignore_index=None, weight=None, form=None, **kw):
    incl = kw.pop("include_background", True)
    from_logits = kw.pop("from_logits", True)

    def ref(x, target):
        p = ref_probs(x, mode, from_logits)
        g, valid = ref_target(x, target, mode, ignore_index)
        f = form or ("l1" if target.dim() == x.dim() else "product")
        sums = ref_sums(p, g, valid, batch, f, incl)
        w = None if weight is None else (weight if incl else weight[1:])
        return ref_reduce(ref_index_losses(sums, kind, **kw), reduction, w)

    return ref


def data(mode="multiclass", shape=(2, 3, 4, 5), seed=0, dense=False, ignore=False):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(*shape, generator=g) * 2
    if mode == "multilabel":
        t = (torch.rand(*shape, generator=g) > 0.6).float()
        return x, t
    hi = 2 if mode == "binary" else c
    t = torch.randint(0, hi, (n, *shape[2:]), generator=g)
    if ignore:
        t[torch.rand(t.shape, generator=g) < 0.25] = -1
    if dense:
        t = torch.nn.functional.one_hot(t, c).movedim(-1, 1).float()
    return x, t


FUNCS = {
    "dice": LF.dice_loss,
    "jaccard": LF.jaccard_loss,
    "tversky": LF.tversky_loss,
    "focal_tversky": LF.focal_tversky_loss,
}

# ---------------------------------------------------------------- 1. references, values and gradients

CASES = [
    ("multiclass", False, False),  # class indices
    ("multiclass", False, True),  # class indices with ignore_index=-1
    ("multiclass", True, False),  # dense one-hot
    ("binary", False, True),
    ("multilabel", True, False),
]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("mode", "dense", "ignore"), CASES, ids=[f"{m}-d{d}-i{i}" for m, d, i in CASES])
def test_dice_matches_reference(mode, dense, ignore, reduction, batch):
    shape = (2, 1, 4, 5) if mode == "binary" else (2, 3, 4, 5)
    x, t = data(mode, shape, dense=dense, ignore=ignore)
    ii = -1 if ignore else None
    w = None if mode == "binary" else torch.tensor([0.5, 1.0, 2.0])
    for weight in (None, w):
        assert_matches_reference(
            lambda a, b, weight=weight: LF.dice_loss(
                a, b, mode, reduction=reduction, batch_dice=batch, ignore_index=ii, weight=weight
            ),
            make_ref("dice", mode, reduction, batch, ii, weight),
            (x, t),
        )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("jaccard", {}),
        ("tversky", {"alpha": 0.3, "beta": 0.7}),
        ("focal_tversky", {"alpha": 0.3, "beta": 0.7, "gamma": 4 / 3}),
    ],
)
def test_overlap_family_matches_reference(kind, kw, reduction):
    fn = FUNCS[kind]
    w = torch.tensor([0.5, 1.0, 2.0])
    for mode, dense, ignore, batch in (
        ("multiclass", False, True, False),
        ("multiclass", True, False, True),
        ("multilabel", True, False, False),
    ):
        x, t = data(mode, dense=dense, ignore=ignore, seed=3)
        ii = -1 if ignore else None
        assert_matches_reference(
            lambda a, b, mode=mode, ii=ii, batch=batch: fn(
                a, b, mode, reduction=reduction, batch_dice=batch, ignore_index=ii, weight=w, **kw
            ),
            make_ref(kind, mode, reduction, batch, ii, w, **kw),
            (x, t),
        )


def test_options_smooth_squared_background_3d():
    x, t = data("multiclass", (2, 3, 2, 3, 4), seed=5)  # (N, C, D, H, W)
    w = torch.tensor([3.0, 1.0, 2.0])
    assert_matches_reference(
        lambda a, b: LF.dice_loss(a, b, smooth=0.7, squared=True, include_background=False, weight=w),
        make_ref("dice", "multiclass", weight=w, form="squared", smooth=0.7, include_background=False),
        (x, t),
    )
    assert_matches_reference(
        lambda a, b: LF.tversky_loss(a, b, alpha=0.2, beta=0.9, smooth=0.3, empty_smooth=None),
        make_ref("tversky", "multiclass", alpha=0.2, beta=0.9, smooth=0.3, empty_smooth=None),
        (x, t),
    )


def test_dense_hard_target_equals_class_indices():
    x, t = data("multiclass", seed=7)
    dense = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).float()
    for fn in (*FUNCS.values(), LF.generalized_dice_loss):
        torch.testing.assert_close(fn(x, dense, reduction="none"), fn(x, t, reduction="none"))
    # bool / int one-hot targets are accepted as dense too
    torch.testing.assert_close(LF.dice_loss(x, dense.bool()), LF.dice_loss(x, t))


def monai_dice_reference(x, t, include_background, squared, batch, smooth):
    """MONAI ``DiceLoss(softmax=True, to_onehot_y=True, include_background, squared_pred=squared,
    batch=batch, smooth_nr=smooth, smooth_dr=smooth, reduction='mean')`` for class-index targets:

        f[n, c] = 1 - (2 * sum_i g p + smooth_nr) / (sum_i g^(2 if squared) + sum_i p^(2 if squared) + smooth_dr)

    sums over space (and the batch when batch=True), channel 0 removed after the softmax when
    include_background=False, then the plain mean of f over all entries. Written as loops.
    """
    p = ref_probs(x, "multiclass")
    n, c = p.shape[:2]
    classes = range(c) if include_background else range(1, c)
    images = [list(range(n))] if batch else [[i] for i in range(n)]
    values = []
    for group in images:
        for k in classes:
            inter = ps = gs = 0.0
            for i in group:
                for pos in range(p[i, k].numel()):
                    pv = p[i, k].reshape(-1)[pos]
                    gv = 1.0 if int(t[i].reshape(-1)[pos]) == k else 0.0
                    inter = inter + pv * gv
                    ps = ps + (pv * pv if squared else pv)
                    gs = gs + (gv * gv if squared else gv)
            values.append(1 - (2 * inter + smooth) / (gs + ps + smooth))
    return torch.stack(values).mean()


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_equals_monai_formula(include_background, squared, batch):
    x, t = data("multiclass", (2, 3, 3, 4), seed=11)
    t[0][t[0] == 2] = 1  # class 2 absent from image 0: MONAI's plain formula applies there too
    kw = {"include_background": include_background, "squared": squared, "batch_dice": batch}
    assert_matches_reference(
        lambda a, b: LF.dice_loss(a, b, smooth=1e-5, empty_smooth=None, **kw),
        lambda a, b: monai_dice_reference(a, b, include_background, squared, batch, 1e-5),
        (x, t),
    )


# ---------------------------------------------------------------- soft labels


def test_soft_target_equal_to_prediction_gives_zero():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, 5, generator=g)
    soft = torch.softmax(logits, 1)
    for fn in FUNCS.values():
        loss = fn(logits, soft)
        assert float(loss) < 1e-5, fn.__name__
    # multilabel soft targets as well
    sig = torch.sigmoid(logits)
    assert float(LF.dice_loss(logits, sig, "multilabel")) < 1e-6
    # the classic product form is far from 0 there and is not minimised at p == g
    p = soft.double()
    classic = 1 - (2 * (p * p).sum((2, 3))) / (p.sum((2, 3)) + p.sum((2, 3)))
    assert float(classic.mean()) > 0.2
    # with the L1 form, the soft target is the minimiser: moving the prediction increases the loss
    x = logits.clone().requires_grad_(True)
    loss = LF.dice_loss(x, soft)
    perturbed = LF.dice_loss(logits + 0.1 * torch.randn(logits.shape, generator=g), soft)
    assert float(perturbed) > float(loss.detach())


def test_soft_target_dice_is_l1_distance_ratio():
    # Dice in the L1 form is |p - g|_1 / (|p|_1 + |g|_1), loop-checked for one entry
    g = torch.Generator().manual_seed(4)
    p = torch.rand(1, 1, 6, generator=g, dtype=torch.float64)
    y = torch.rand(1, 1, 6, generator=g, dtype=torch.float64)
    num = sum(abs(float(p[0, 0, i]) - float(y[0, 0, i])) for i in range(6))
    den = sum(float(p[0, 0, i]) + float(y[0, 0, i]) for i in range(6))
    got = LF.dice_loss(p, y, "binary", from_logits=False)
    assert abs(float(got) - num / den) < 1e-12


# ---------------------------------------------------------------- empty masks


def test_empty_mask_policy():
    # image 0: class 2 absent from target and (strongly) from prediction -> ~0
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, :2] = 1
    logits = torch.full((1, 3, 4, 4), -20.0)
    logits[0, 0][t[0] == 0] = 20.0
    logits[0, 1][t[0] == 1] = 20.0
    x = logits.clone().requires_grad_(True)
    per_class = LF.dice_loss(x, t, reduction="none")
    assert float(per_class.detach().max()) < 1e-6
    # class 2 absent from target but predicted on 4 pixels -> positive loss with a gradient
    logits2 = logits.clone()
    logits2[0, :, 3] = -20.0
    logits2[0, 2, 3] = 20.0  # row 3 (target class 0) predicted as class 2
    x2 = logits2.clone().requires_grad_(True)
    per_class2 = LF.dice_loss(x2, t, reduction="none")
    p2 = 4.0  # predicted mass of class 2: 4 pixels at probability ~1
    assert abs(float(per_class2.detach()[0, 2]) - p2 / (p2 + 1.0)) < 1e-4
    # at p = 1/2 on the 4 false-positive pixels the gradient is clearly alive (and positive: lowering
    # the class-2 logit there lowers the loss)
    logits3 = logits.clone()
    logits3[0, :, 3] = -20.0
    logits3[0, 0, 3] = 0.0
    logits3[0, 2, 3] = 0.0
    x3 = logits3.clone().requires_grad_(True)
    (g3,) = torch.autograd.grad(LF.dice_loss(x3, t, reduction="none")[0, 2], x3)
    assert (g3[0, 2, 3] > 1e-3).all()
    # every overlap loss follows the same rule
    for fn in (LF.jaccard_loss, LF.tversky_loss, LF.focal_tversky_loss):
        assert float(fn(logits, t, reduction="none")[0, 2]) < 1e-4
        assert float(fn(logits3, t, reduction="none")[0, 2]) > 0.1
    # empty_smooth=None is the plain formula: an empty class is then a constant 1 without gradient
    x4 = logits3.clone().requires_grad_(True)
    plain = LF.dice_loss(x4, t, reduction="none", empty_smooth=None)
    assert abs(float(plain.detach()[0, 2]) - 1.0) < 1e-6
    (g4,) = torch.autograd.grad(plain[0, 2], x4)
    assert float(g4.abs().max()) == 0.0


# ---------------------------------------------------------------- ignore_index


def test_ignore_index_leaves_both_sums():
    x, t = data("multiclass", (2, 3, 4, 6), seed=8)
    t_ign = t.clone()
    t_ign[..., 4:] = 255
    for fn in (*FUNCS.values(), LF.generalized_dice_loss):
        crop = fn(x[..., :4], t[..., :4], reduction="none")
        full = fn(x, t_ign, ignore_index=255, reduction="none")
        torch.testing.assert_close(full, crop)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(LF.dice_loss(xg, t_ign, ignore_index=255), xg)
    assert float(grad[..., 4:].abs().max()) == 0.0
    # binary with ignore
    xb, tb = data("binary", (2, 1, 4, 6), seed=9)
    tb_ign = tb.clone()
    tb_ign[..., 4:] = -1
    torch.testing.assert_close(
        LF.dice_loss(xb, tb_ign, "binary", ignore_index=-1), LF.dice_loss(xb[..., :4], tb[..., :4], "binary")
    )


# ---------------------------------------------------------------- relations between the losses


def test_tversky_special_cases():
    x, t = data("multiclass", seed=12)
    dice = LF.dice_loss(x, t, reduction="none")
    torch.testing.assert_close(
        LF.tversky_loss(x, t, alpha=0.5, beta=0.5, empty_smooth=0.5, reduction="none"), dice
    )
    # with smoothing: tversky(0.5, 0.5, smooth=s/2) == dice(smooth=s)
    torch.testing.assert_close(
        LF.tversky_loss(x, t, alpha=0.5, beta=0.5, smooth=0.25, empty_smooth=0.5),
        LF.dice_loss(x, t, smooth=0.5),
    )
    torch.testing.assert_close(
        LF.tversky_loss(x, t, alpha=1.0, beta=1.0, reduction="none"), LF.jaccard_loss(x, t, reduction="none")
    )
    # indices: J = D / (2 - D), so losses: l_J = 2 l_D / (1 + l_D) entry-wise (smooth = 0)
    torch.testing.assert_close(LF.jaccard_loss(x, t, reduction="none"), 2 * dice / (1 + dice))
    # focal Tversky with gamma = 1 is Tversky; its exponent is 1 / gamma
    tv = LF.tversky_loss(x, t, alpha=0.3, beta=0.7, reduction="none")
    torch.testing.assert_close(LF.focal_tversky_loss(x, t, gamma=1.0, reduction="none"), tv)
    torch.testing.assert_close(LF.focal_tversky_loss(x, t, gamma=4 / 3, reduction="none"), tv**0.75)


def test_tversky_alpha_weighs_false_positives():
    # prediction covers the target plus extra pixels: only false positives
    probs = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])
    target = torch.tensor([[1, 1, 0, 0]])  # TP = 2, FP = 2, FN = 0

    def tv(p, a, b):
        return float(LF.tversky_loss(p, target, "binary", alpha=a, beta=b, from_logits=False))

    assert abs(tv(probs, 0.0, 1.0)) < 1e-7  # FP not penalised
    assert abs(tv(probs, 1.0, 0.0) - (1 - 2 / 4)) < 1e-7
    # prediction misses target pixels: only false negatives
    probs2 = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # TP = 1, FP = 0, FN = 1
    assert abs(tv(probs2, 1.0, 0.0)) < 1e-7
    assert abs(tv(probs2, 0.0, 1.0) - 0.5) < 1e-7


# ---------------------------------------------------------------- generalized Dice


def ref_generalized(
    x, t, mode="multiclass", batch=False, ignore_index=None, weight_type="square", reduction="mean"
):
    p = ref_probs(x, mode)
    g, valid = ref_target(x, t, mode, ignore_index)
    sums = ref_sums(p, g, valid, batch, "l1" if t.dim() == x.dim() else "product")
    groups = [sums] if batch else list(sums)
    out = []
    for s in groups:
        gs = [float(v) for v in s[:, 2].detach()]
        raw = []
        for v in gs:
            if weight_type == "uniform":
                raw.append(1.0)
            elif v > 0:
                raw.append(1.0 / (v * v) if weight_type == "square" else 1.0 / v)
            else:
                raw.append(math.inf)
        finite = [w for w in raw if math.isfinite(w)]
        if all(v <= 0 for v in gs):
            w, sm = [1.0] * len(raw), 1.0  # nothing present: uniform weights, empty_smooth
        else:
            w, sm = [v if math.isfinite(v) else max(finite) for v in raw], 0.0
        num = sum(2 * w[k] * s[k, 0] for k in range(len(w)))
        den = sum(w[k] * (s[k, 1] + s[k, 2]) for k in range(len(w)))
        out.append(1 - (num + sm) / torch.clamp(den + sm, min=1e-7))
    losses = out[0] if batch else torch.stack(out)
    return ref_reduce(losses, reduction)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
def test_generalized_dice_matches_reference(weight_type, reduction):
    x, t = data("multiclass", (3, 3, 4, 4), seed=13, ignore=True)
    t[1][t[1] == 2] = 0  # class 2 absent from image 1: infinite weight -> largest finite weight
    for batch in (False, True):
        assert_matches_reference(
            lambda a, b, batch=batch: LF.generalized_dice_loss(
                a, b, batch_dice=batch, ignore_index=-1, weight_type=weight_type, reduction=reduction
            ),
            lambda a, b, batch=batch: ref_generalized(a, b, "multiclass", batch, -1, weight_type, reduction),
            (x, t),
        )
    xm, tm = data("multilabel", (2, 3, 4, 4), seed=14)
    tm[0] = 0.0  # nothing present in image 0
    assert_matches_reference(
        lambda a, b: LF.generalized_dice_loss(
            a, b, "multilabel", reduction=reduction, weight_type=weight_type
        ),
        lambda a, b: ref_generalized(a, b, "multilabel", weight_type=weight_type, reduction=reduction),
        (xm, tm),
    )


def test_generalized_dice_uniform_one_class_is_dice():
    x, t = data("binary", (2, 1, 4, 4), seed=15)
    torch.testing.assert_close(
        LF.generalized_dice_loss(x, t, "binary", reduction="none"),
        LF.dice_loss(x, t, "binary", reduction="none")[:, 0],
    )


# ---------------------------------------------------------------- 2. gradcheck


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "focal_tversky", "generalized_dice"])
def test_gradcheck(name):
    fn = getattr(LF, f"{name}_loss")
    x, t = data("multiclass", (2, 3, 2, 3), seed=16, ignore=True)
    assert_gradcheck(lambda a: fn(a, t, ignore_index=-1, batch_dice=True), (x,))
    xs, _ = data("multiclass", (2, 3, 2, 3), seed=17)
    soft = torch.softmax(torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(1)), 1)
    # generalized Dice treats its class weights (functions of the target) as constants
    wrt = (0,) if name == "generalized_dice" else (0, 1)
    assert_gradcheck(lambda a, b: fn(a, b, reduction="none"), (xs, soft), wrt)


# ---------------------------------------------------------------- 3. properties


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(2, 4),
    st.integers(1, 5),
    st.integers(0, 10_000),
    st.sampled_from(["dice", "jaccard", "tversky", "focal_tversky"]),
)
def test_properties(n, c, hw, seed, name):
    fn = FUNCS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, c, (n, hw, hw), generator=g)
    none = fn(x, t, reduction="none")
    assert none.shape == (n, c)
    assert (none >= 0).all() and (none <= 1 + 1e-12).all()
    torch.testing.assert_close(fn(x, t, reduction="sum"), none.sum())
    torch.testing.assert_close(fn(x, t, reduction="mean") * none.numel(), none.sum())
    # a perfect prediction (exact one-hot probabilities) has zero loss
    perfect = torch.nn.functional.one_hot(t, c).movedim(-1, 1).double()
    assert float(fn(perfect, t, from_logits=False).max()) < (1e-5 if name == "focal_tversky" else 1e-12)


def test_batch_dice_differs_from_mean_of_per_image():
    x, t = data("multiclass", (4, 3, 4, 4), seed=18)
    per_image = LF.dice_loss(x, t)
    batch = LF.dice_loss(x, t, batch_dice=True)
    assert LF.dice_loss(x, t, batch_dice=True, reduction="none").shape == (3,)
    assert not torch.allclose(per_image, batch)


# ---------------------------------------------------------------- 4. degenerate inputs


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "focal_tversky", "generalized_dice"])
def test_degenerate_inputs(name):
    fn = getattr(LF, f"{name}_loss")
    floor = 2e-5 if name == "focal_tversky" else 0.0  # eps ** (1/gamma)
    x = torch.zeros(0, 3, 4, 4, requires_grad=True)
    for batch in (False, True):
        v = fn(x, torch.zeros(0, 4, 4, dtype=torch.long), batch_dice=batch)
        if floor:
            assert float(v.detach()) < floor
        else:
            assert_connected_zero(v, x)
    x2 = torch.randn(2, 3, 4, 4, requires_grad=True)
    all_ignored = torch.full((2, 4, 4), -1)
    v2 = fn(x2, all_ignored, ignore_index=-1)
    if floor:
        assert float(v2.detach()) < floor and v2.requires_grad
    else:
        assert_connected_zero(v2, x2)
    x3 = torch.randn(2, 3, 0, 4, requires_grad=True)  # no spatial positions
    v3 = fn(x3, torch.zeros(2, 0, 4, dtype=torch.long))
    assert torch.isfinite(v3) and float(v3.detach()) <= floor
    if name != "generalized_dice":
        assert fn(x, torch.zeros(0, 4, 4, dtype=torch.long), reduction="none").shape == (0, 3)


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "focal_tversky", "generalized_dice"])
def test_low_precision_extremes(name, dtype):
    fn = getattr(LF, f"{name}_loss")
    x = extreme_logits((2, 3, 4, 4), dtype).requires_grad_(True)
    t = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    loss = fn(x, t)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)
    xm = extreme_logits((2, 3, 4, 4), dtype, seed=1).requires_grad_(True)
    soft = torch.rand(2, 3, 4, 4).to(dtype)
    assert_finite_with_grads(fn(xm, soft, "multilabel"), xm)


# ---------------------------------------------------------------- 6. bad input


def test_bad_inputs_have_clear_messages():
    x, t = data("multiclass")
    with pytest.raises(
        LossValueError, match=r"target has shape \(2, 5\), expected \(2, 3, 4, 5\) \(dense\) or \(2, 4, 5\)"
    ):
        LF.dice_loss(x, t[:, 0])
    with pytest.raises(LossValueError, match=r"target contains class index 3, expected values in \[0, 3\)"):
        LF.dice_loss(x, t + 1)
    with pytest.raises(LossTypeError, match="target must be an integer tensor of class indices"):
        LF.dice_loss(x, t.float())
    with pytest.raises(LossTypeError, match="input must be a floating-point tensor"):
        LF.dice_loss(t.unsqueeze(1), t)
    with pytest.raises(
        LossValueError, match="mode must be one of 'multiclass', 'binary', 'multilabel', got 'multi'"
    ):
        LF.dice_loss(x, t, "multi")
    with pytest.raises(LossValueError, match=r"mode='binary' expects input with one channel"):
        LF.dice_loss(x, t, "binary")
    with pytest.raises(LossValueError, match="mode='multilabel' needs a dense target"):
        LF.dice_loss(x, t, "multilabel")
    with pytest.raises(LossValueError, match=r"target contains class index 2, expected values in \[0, 2\)"):
        LF.dice_loss(x[:, :1], t, "binary")
    with pytest.raises(
        LossValueError,
        match=r"target has shape \(2, 5, 5\), expected \(2, 4, 5\) to match input of shape \(2, 1, 4, 5\)",
    ):
        LF.dice_loss(x[:, :1], torch.zeros(2, 5, 5, dtype=torch.long), "binary")
    with pytest.raises(LossValueError, match=r"target must have values in \[0, 1\], got range"):
        LF.dice_loss(x, torch.full_like(x, 2.0))
    with pytest.raises(
        LossValueError, match=r"input must hold probabilities in \[0, 1\] when from_logits=False"
    ):
        LF.dice_loss(x, t, from_logits=False)
    with pytest.raises(LossValueError, match="ignore_index is only supported with class-index targets"):
        LF.dice_loss(x, torch.softmax(x, 1), ignore_index=0)
    with pytest.raises(LossValueError, match=r"weight has shape \(2,\), expected \(3,\)"):
        LF.dice_loss(x, t, weight=torch.ones(2))
    with pytest.raises(LossValueError, match="weight must be non-negative"):
        LF.dice_loss(x, t, weight=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(LossValueError, match=r"input must be \(N, C, d1, ...\) with at least one spatial"):
        LF.dice_loss(x[:, :, 0, 0], t[:, 0, 0])
    with pytest.raises(LossValueError, match="smooth must be >= 0.0, got -1"):
        LF.dice_loss(x, t, smooth=-1)
    with pytest.raises(LossValueError, match="eps must be > 0.0"):
        losskit.DiceLoss(eps=0.0)
    with pytest.raises(LossValueError, match="include_background=False drops channel 0, but mode='binary'"):
        losskit.DiceLoss(mode="binary", include_background=False)
    with pytest.raises(LossValueError, match="alpha must be >= 0.0, got -0.1"):
        losskit.TverskyLoss(alpha=-0.1)
    with pytest.raises(LossValueError, match="gamma must be > 0.0"):
        LF.focal_tversky_loss(x, t, gamma=0)
    with pytest.raises(LossValueError, match="weight_type must be one of 'square', 'simple', 'uniform'"):
        losskit.GeneralizedDiceLoss(weight_type="log")
    with pytest.raises(LossValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
        LF.jaccard_loss(x, t, reduction="avg")
    with pytest.raises(LossTypeError, match="ignore_index must be an int"):
        LF.dice_loss(x, t, ignore_index=1.5)


# ---------------------------------------------------------------- 7. module == functional, serialisation, compile

MODULES = [
    (losskit.DiceLoss(weight=torch.tensor([1.0, 2.0, 0.5]), squared=True), LF.dice_loss,
     {"weight": torch.tensor([1.0, 2.0, 0.5]), "squared": True}),
    (losskit.JaccardLoss(batch_dice=True), LF.jaccard_loss, {"batch_dice": True}),
    (losskit.TverskyLoss(alpha=0.2, beta=0.8, ignore_index=-1), LF.tversky_loss,
     {"alpha": 0.2, "beta": 0.8, "ignore_index": -1}),
    (losskit.FocalTverskyLoss(gamma=2.0, include_background=False), LF.focal_tversky_loss,
     {"gamma": 2.0, "include_background": False}),
    (losskit.GeneralizedDiceLoss(weight_type="simple"), LF.generalized_dice_loss, {"weight_type": "simple"}),
]  # fmt: skip


@pytest.mark.parametrize(("module", "fn", "kw"), MODULES, ids=[type(m[0]).__name__ for m in MODULES])
def test_module_functional_roundtrip_compile(module, fn, kw):
    x, t = data("multiclass", seed=19, ignore="ignore_index" in kw)
    assert_module_matches(module, fn(x, t, **kw), x, t)
    assert_compiles(lambda a, b: module(a, b), x, t)


def test_module_weight_is_buffer():
    m = losskit.DiceLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
    assert "weight" in m.state_dict()
    assert losskit.DiceLoss(weight=[1.0, 2.0, 3.0]).weight.dtype == torch.float32


# ---------------------------------------------------------------- 8. registry


def test_registry_names():
    for name in ("dice", "jaccard", "tversky", "focal_tversky", "generalized_dice"):
        assert name in losskit.available("segmentation")
    assert isinstance(losskit.build("dice", mode="binary"), losskit.DiceLoss)
    m = losskit.build({"name": "tversky", "alpha": 0.3, "beta": 0.7})
    assert (m.alpha, m.beta) == (0.3, 0.7)


def test_dice_plus_cross_entropy_recipe():
    if "cross_entropy" not in losskit.available():
        pytest.skip("cross_entropy is not registered yet")
    loss_fn = losskit.build([{"name": "dice", "weight": 1.0}, {"name": "cross_entropy", "weight": 1.0}])
    x, t = data("multiclass", seed=20)
    total = loss_fn(x, t)
    p = ref_probs(x, "multiclass")
    ce = 0.0
    for i in range(t.shape[0]):
        for pos in range(t[i].numel()):
            k = int(t[i].reshape(-1)[pos])
            ce -= math.log(float(p[i, k].reshape(-1)[pos]))
    ce /= t.numel()
    expected = float(make_ref("dice", "multiclass")(x, t)) + ce
    assert abs(float(total) - expected) < 1e-5
    assert set(loss_fn.last_terms) == {"dice", "cross_entropy"}


# ---------------------------------------------------------------- fused class-index path


def test_fused_path_layouts_and_saved_memory():
    x, t = data("multiclass", (2, 3, 8, 8), seed=21)
    ref = make_ref("dice", "multiclass")
    # non-contiguous (channels_last) logits give the reference value and gradient
    assert_matches_reference(
        lambda a, b: LF.dice_loss(a.contiguous(memory_format=torch.channels_last), b), ref, (x, t)
    )
    # backward keeps at most the logits and the class indices: no one-hot tensor, no probabilities
    # (the fused kernel recomputes the softmax in backward)
    storages: dict[int, int] = {}

    def pack(s):
        storages[s.untyped_storage().data_ptr()] = s.untyped_storage().nbytes()
        return s

    xg = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
        loss = LF.dice_loss(xg, t)
    loss.backward()
    budget = x.numel() * 4 + t.numel() * 8 + 4096  # logits, int64 indices, small (N, C) tensors
    assert sum(storages.values()) <= budget, storages
