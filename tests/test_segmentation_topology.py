"""Soft skeleton, clDice and soft Dice + clDice against float64 loops written from Shit et al. 2021."""

from __future__ import annotations

import itertools

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
    extreme_logits,
)
from losskit import LossTypeError, LossValueError
from losskit.segmentation import soft_skeleton


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- float64 loop references


def _neighbours(idx, shape, offsets):
    for off in offsets:
        j = tuple(a + b for a, b in zip(idx, off))
        if all(0 <= a < n for a, n in zip(j, shape)):
            yield j


def ref_erode(img: torch.Tensor) -> torch.Tensor:
    """Min over the pixel and its axis neighbours (a cross), inside the image."""
    k = img.dim()
    cross = [tuple(0 for _ in range(k))]
    for axis in range(k):
        for step in (-1, 1):
            cross.append(tuple(step if a == axis else 0 for a in range(k)))
    out = []
    for idx in itertools.product(*map(range, img.shape)):
        out.append(torch.stack([img[j] for j in _neighbours(idx, img.shape, cross)]).min())
    return torch.stack(out).reshape(img.shape)


def ref_dilate(img: torch.Tensor) -> torch.Tensor:
    box = list(itertools.product((-1, 0, 1), repeat=img.dim()))
    out = []
    for idx in itertools.product(*map(range, img.shape)):
        out.append(torch.stack([img[j] for j in _neighbours(idx, img.shape, box)]).max())
    return torch.stack(out).reshape(img.shape)


def ref_skeleton(img: torch.Tensor, iterations: int) -> torch.Tensor:
    """Algorithm 1 of the paper, on one image."""
    skel = torch.relu(img - ref_dilate(ref_erode(img)))
    for _ in range(iterations):
        img = ref_erode(img)
        delta = torch.relu(img - ref_dilate(ref_erode(img)))
        skel = skel + torch.relu(delta - skel * delta)
    return skel


def ref_inputs(x, t, mode, from_logits=True, ignore_index=None):
    if from_logits:
        p = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    else:
        p = x
    if t.dim() == x.dim():
        return p, t.double()
    valid = torch.ones(t.shape, dtype=torch.bool) if ignore_index is None else t != ignore_index
    if mode == "binary":
        g = ((t == 1) & valid).double().unsqueeze(1)
    else:
        g = torch.stack([((t == k) & valid).double() for k in range(x.shape[1])], 1)
    return p * valid.unsqueeze(1), g


def _reduce(v, reduction):
    return {"none": v, "sum": v.sum(), "mean": v.mean()}[reduction]


def ref_cl_dice_entries(
    x,
    t,
    mode="multiclass",
    from_logits=True,
    iterations=3,
    smooth=1.0,
    include_background=True,
    batch_dice=False,
    ignore_index=None,
):
    p, g = ref_inputs(x, t, mode, from_logits, ignore_index)
    first = 0 if include_background else 1
    n, c = p.shape[:2]
    sums = {}
    for i in range(n):
        for k in range(first, c):
            sp, sg = ref_skeleton(p[i, k], iterations), ref_skeleton(g[i, k], iterations)
            key = (0 if batch_dice else i, k)
            terms = [(sp * g[i, k]).sum(), sp.sum(), (sg * p[i, k]).sum(), sg.sum()]
            sums[key] = [a + b for a, b in zip(sums[key], terms)] if key in sums else terms
    rows = []
    for i in range(1 if batch_dice else n):
        row = []
        for k in range(first, c):
            a, b, cc, d = sums[(i, k)]
            t_prec, t_sens = (a + smooth) / (b + smooth), (cc + smooth) / (d + smooth)
            row.append(1 - 2 * t_prec * t_sens / (t_prec + t_sens))
        rows.append(torch.stack(row))
    out = torch.stack(rows)
    return out[0] if batch_dice else out


def ref_cl_dice(x, t, reduction="mean", **kw):
    return _reduce(ref_cl_dice_entries(x, t, **kw), reduction)


def ref_dice_entries(x, t, mode="multiclass"):
    """Plain soft Dice per (image, class); an empty target uses smoothing 1 (the family's rule)."""
    p, g = ref_inputs(x, t, mode)
    rows = []
    for i in range(p.shape[0]):
        row = []
        for k in range(p.shape[1]):
            tp, ps, gs = (p[i, k] * g[i, k]).sum(), p[i, k].sum(), g[i, k].sum()
            s = 1.0 if float(gs) == 0 else 0.0
            row.append(1 - (2 * tp + s) / (ps + gs + s))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _multi(n=2, c=3, shape=(6, 7), seed=0, dtype=torch.float64):
    x = (torch.randn(n, c, *shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)
    return x, torch.randint(0, c, (n, *shape), generator=_gen(seed + 1))


# ---------------------------------------------------------------- skeleton


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 4)])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_soft_skeleton_matches_loops(shape, iterations):
    img = torch.rand(2, 1, *shape, generator=_gen(1), dtype=torch.float64)
    out = soft_skeleton(img, iterations)
    for n in range(2):
        torch.testing.assert_close(out[n, 0], ref_skeleton(img[n, 0], iterations))


def test_soft_skeleton_of_hard_shapes():
    line = torch.zeros(1, 1, 7, 9)
    line[0, 0, 3, 1:8] = 1
    torch.testing.assert_close(soft_skeleton(line), line)  # a one-pixel line is its own skeleton
    bar = torch.zeros(1, 1, 9, 11)
    bar[0, 0, 2:7, 2:9] = 1  # 5 pixels thick: the skeleton is a thin subset of the bar
    skel = soft_skeleton(bar, iterations=3)
    assert float(skel.sum()) > 0 and float((skel * (1 - bar)).sum()) == 0
    assert float(skel.sum()) < float(bar.sum()) / 3


# ---------------------------------------------------------------- 1. reference values and gradients


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_cl_dice_matches_reference(reduction, batch_dice, include_background):
    x, t = _multi(seed=2)
    kw = {"batch_dice": batch_dice, "include_background": include_background}
    assert_matches_reference(
        lambda a: LF.cl_dice_loss(a, t, reduction=reduction, **kw),
        lambda a: ref_cl_dice(a, t, reduction=reduction, **kw),
        [x],
    )


def test_cl_dice_modes_ignore_iterations_and_3d_match_reference():
    x, t = _multi(c=1, seed=3)
    t = t.clamp(max=1)
    kw = {"mode": "binary", "iterations": 1, "smooth": 0.5}
    assert_matches_reference(lambda a: LF.cl_dice_loss(a, t, **kw), lambda a: ref_cl_dice(a, t, **kw), [x])
    xm = torch.randn(2, 2, 5, 6, generator=_gen(4), dtype=torch.float64)
    tm = (torch.rand(2, 2, 5, 6, generator=_gen(5)) > 0.5).double()
    kw = {"mode": "multilabel"}
    assert_matches_reference(lambda a: LF.cl_dice_loss(a, tm, **kw), lambda a: ref_cl_dice(a, tm, **kw), [xm])
    x, t = _multi(seed=6)
    t[0, :2] = -5
    kw = {"ignore_index": -5}
    assert_matches_reference(lambda a: LF.cl_dice_loss(a, t, **kw), lambda a: ref_cl_dice(a, t, **kw), [x])
    x3, t3 = _multi(n=1, c=2, shape=(4, 4, 5), seed=7)
    kw = {"iterations": 2}
    assert_matches_reference(lambda a: LF.cl_dice_loss(a, t3, **kw), lambda a: ref_cl_dice(a, t3, **kw), [x3])
    p = torch.softmax(x, 1)
    kw = {"from_logits": False, "ignore_index": -5}
    assert_matches_reference(lambda a: LF.cl_dice_loss(a, t, **kw), lambda a: ref_cl_dice(a, t, **kw), [p])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_dice_cl_dice_matches_reference(alpha):
    x, t = _multi(seed=8)
    t[1] = 0  # classes 1 and 2 absent from image 1

    def ref(a):
        return ((1 - alpha) * ref_dice_entries(a, t) + alpha * ref_cl_dice_entries(a, t)).mean()

    assert_matches_reference(lambda a: LF.dice_cl_dice_loss(a, t, alpha=alpha), ref, [x])


def test_gradcheck():
    x, t = _multi(n=1, c=2, shape=(5, 5), seed=9)
    assert_gradcheck(lambda a: LF.cl_dice_loss(a, t, iterations=2), [x])
    assert_gradcheck(lambda a: LF.dice_cl_dice_loss(a, t, batch_dice=True), [x])


# ---------------------------------------------------------------- 3. properties, 4. empty masks


def test_perfect_prediction_is_zero_and_loss_in_unit_interval():
    _, t = _multi(seed=10)
    onehot = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).double()
    assert float(LF.cl_dice_loss(onehot, t, from_logits=False)) == pytest.approx(0.0, abs=1e-12)
    assert float(LF.dice_cl_dice_loss(onehot, t, from_logits=False)) == pytest.approx(0.0, abs=1e-12)
    for seed in range(4):
        x, t = _multi(seed=20 + seed)
        v = LF.cl_dice_loss(x, t, reduction="none")
        assert bool((v >= 0).all()) and bool((v <= 1).all())


def test_a_broken_line_costs_more_than_a_thick_connected_one():
    """The case clDice is for: Dice prefers the broken thin prediction, clDice the connected one."""
    t = torch.zeros(1, 9, 15, dtype=torch.long)
    t[0, 4, 1:14] = 1
    broken = t.clone().unsqueeze(1).double()
    broken[0, 0, 4, 5:9] = 0  # a gap of 4 pixels
    thick = t.clone().unsqueeze(1).double()
    thick[0, 0, 3:6, 1:14] = 1  # connected but three pixels wide
    kw = {"mode": "binary", "from_logits": False}
    assert float(LF.cl_dice_loss(broken, t, **kw)) > float(LF.cl_dice_loss(thick, t, **kw))
    assert float(LF.dice_loss(broken, t, **kw)) < float(LF.dice_loss(thick, t, **kw))


def test_empty_target_false_positive_costs_with_gradient():
    t = torch.zeros(1, 7, 7, dtype=torch.long)
    p = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    p[0, 0, 3, 1:6] = 0.8  # a predicted thin line on an empty image
    p.requires_grad_(True)
    loss = LF.cl_dice_loss(p, t, mode="binary", from_logits=False)
    assert float(loss) > 0
    assert torch.autograd.grad(loss, p)[0].abs().sum() > 0
    quiet = LF.cl_dice_loss(torch.zeros(1, 1, 7, 7), t, mode="binary", from_logits=False)
    assert float(quiet) == 0.0


def test_all_ignored_and_empty_batch_give_connected_zero():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    t = torch.full((2, 5, 5), 4)
    assert_connected_zero(LF.cl_dice_loss(x, t, ignore_index=4), x)
    e = torch.randn(0, 3, 5, 5, requires_grad=True)
    assert_connected_zero(LF.cl_dice_loss(e, torch.zeros(0, 5, 5, dtype=torch.long)), e)
    assert_connected_zero(LF.dice_cl_dice_loss(e, torch.zeros(0, 5, 5, dtype=torch.long)), e)


# ---------------------------------------------------------------- 5. low precision, 6. errors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [LF.cl_dice_loss, LF.dice_cl_dice_loss])
def test_half_extreme_logits_finite(fn, dtype):
    x = extreme_logits((2, 3, 8, 8), dtype).requires_grad_(True)
    t = torch.randint(0, 3, (2, 8, 8), generator=_gen(11))
    loss = fn(x, t)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)


def test_errors_name_the_argument():
    x, t = _multi(dtype=torch.float32)
    with pytest.raises(LossValueError, match=r"input must be \(N, C, d1, ...\) with 2-D or 3-D spatial"):
        LF.cl_dice_loss(x[..., 0], t[..., 0])
    with pytest.raises(LossValueError, match="iterations must be >= 0, got -1"):
        LF.cl_dice_loss(x, t, iterations=-1)
    with pytest.raises(LossTypeError, match="iterations must be an int"):
        losskit.ClDiceLoss(iterations=2.5)
    with pytest.raises(LossValueError, match="smooth must be > 0.0, got 0"):
        LF.cl_dice_loss(x, t, smooth=0)
    with pytest.raises(LossValueError, match="alpha must be <= 1.0, got 1.5"):
        losskit.DiceClDiceLoss(alpha=1.5)
    with pytest.raises(
        LossValueError, match=r"target has shape \(2, 7\), expected \(2, 3, 6, 7\) \(dense\) or \(2, 6, 7\)"
    ):
        LF.cl_dice_loss(x, t[:, 0])
    with pytest.raises(LossValueError, match=r"input must be \(N, C, H, W\) or \(N, C, D, H, W\)"):
        soft_skeleton(torch.rand(2, 3, 4))


# ---------------------------------------------------------------- 7. module, round trips, compile


def test_modules_equal_functionals_round_trip_and_compile():
    x, t = _multi(seed=12, dtype=torch.float32)
    m = losskit.ClDiceLoss(iterations=2, include_background=False, batch_dice=True)
    expected = LF.cl_dice_loss(x, t, iterations=2, include_background=False, batch_dice=True)
    assert_module_matches(m, expected, x, t)
    d = losskit.DiceClDiceLoss(alpha=0.25, iterations=4)
    assert_module_matches(d, LF.dice_cl_dice_loss(x, t, alpha=0.25, iterations=4), x, t)
    assert_compiles(lambda a, y: m(a, y), x, t)
    assert_compiles(lambda a, y: d(a, y), x, t)
    assert repr(losskit.build("dice_cl_dice", alpha=0.25, iterations=4)) == repr(d)
