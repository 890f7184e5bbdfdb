"""Detection losses: definition-of-done tests against plain float64 loops."""

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

# ---------------------------------------------------------------- independent float64 references


def to_xyxy(b, fmt):
    a, c, d, e = b[0], b[1], b[2], b[3]
    if fmt == "xyxy":
        return a, c, d, e
    if fmt == "xywh":
        return a, c, a + d, c + e
    return a - d / 2, c - e / 2, a + d / 2, c + e / 2


def ref_one_box(p, g, kind, fmt="xyxy", eps=1e-7):
    """torchvision's formulas (generalized/distance/complete_box_iou_loss), re-typed for one box pair."""
    x1, y1, x2, y2 = to_xyxy(p, fmt)
    x1g, y1g, x2g, y2g = to_xyxy(g, fmt)
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    if float((xk2 - xk1).detach()) > 0 and float((yk2 - yk1).detach()) > 0:
        inter = (xk2 - xk1) * (yk2 - yk1)
    else:
        inter = (xk2 - xk1) * 0.0
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return 1 - iou
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    if kind == "giou":
        area_c = (xc2 - xc1) * (yc2 - yc1)
        return 1 - (iou - (area_c - union) / (area_c + eps))
    diag = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
    dist = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    diou = 1 - iou + dist / diag
    if kind == "diou":
        return diou
    v = (4 / math.pi**2) * (torch.atan((x2g - x1g) / (y2g - y1g)) - torch.atan((x2 - x1) / (y2 - y1))) ** 2
    alpha = (v / (1 - iou + v + eps)).detach()
    return diou + alpha * v


def ref_box_loss(pred, target, kind, fmt="xyxy", reduction="mean", weight=None, mask=None):
    flat_p, flat_t = pred.reshape(-1, 4), target.reshape(-1, 4)
    shape = pred.shape[:-1]
    w = None if weight is None else weight.double().expand(shape).reshape(-1)
    m = None if mask is None else mask.expand(shape).reshape(-1)
    vals, num, den = [], pred.new_zeros(()), 0.0
    for i in range(flat_p.shape[0]):
        v = ref_one_box(flat_p[i], flat_t[i], kind, fmt)
        wi = 1.0 if w is None else w[i]
        if m is not None and not bool(m[i]):
            v, wi = v * 0.0, 0.0
        vals.append(v * wi)
        num = num + v * wi
        den += float(wi)
    if reduction == "none":
        return torch.stack(vals).reshape(shape) if vals else pred.new_zeros(shape)
    if reduction == "sum":
        return num
    return num / den if den > 0 else num * 0.0


def boxes(n=6, seed=0, fmt="xyxy"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 10
    wh = torch.rand(n, 2, generator=g) * 5 + 0.5
    if fmt == "xyxy":
        return torch.cat([xy, xy + wh], -1)
    if fmt == "xywh":
        return torch.cat([xy, wh], -1)
    return torch.cat([xy + wh / 2, wh], -1)


KINDS = ["iou", "giou", "diou", "ciou"]

# ---------------------------------------------------------------- 1. box IoU references


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_box_iou_matches_reference(kind, reduction):
    p, t = boxes(8, 0), boxes(8, 1)
    t[:2] = p[:2] + 0.3  # some overlapping pairs
    assert_matches_reference(
        lambda a, b: LF.box_iou_loss(a, b, kind, reduction=reduction),
        lambda a, b: ref_box_loss(a, b, kind, reduction=reduction),
        (p, t),
        (0, 1),
    )
    w = torch.rand(8, generator=torch.Generator().manual_seed(2)) + 0.1
    m = torch.tensor([True, False, True, True, False, True, True, True])
    assert_matches_reference(
        lambda a, b: LF.box_iou_loss(a, b, kind, reduction=reduction, weight=w, mask=m),
        lambda a, b: ref_box_loss(a, b, kind, reduction=reduction, weight=w, mask=m),
        (p, t),
        (0, 1),
    )


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
@pytest.mark.parametrize("kind", KINDS)
def test_box_formats(kind, fmt):
    p, t = boxes(5, 3, fmt), boxes(5, 4, fmt)
    assert_matches_reference(
        lambda a, b: LF.box_iou_loss(a, b, kind, fmt, reduction="none"),
        lambda a, b: ref_box_loss(a, b, kind, fmt, reduction="none"),
        (p.reshape(5, 1, 4), t.reshape(5, 1, 4)),  # extra leading dims are fine
        (0, 1),
    )


def test_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    far = torch.tensor([[4.0, 0.0, 6.0, 2.0]])  # disjoint: IoU 0, enclosing 12, union 8
    assert abs(float(LF.box_iou_loss(a, far, "iou")) - 1.0) < 1e-6
    assert abs(float(LF.box_iou_loss(a, far, "giou")) - (1 + 4 / 12)) < 1e-6
    # DIoU: centre distance 4, enclosing diagonal^2 = 36 + 4
    assert abs(float(LF.box_iou_loss(a, far, "diou")) - (1 + 16 / 40)) < 1e-6
    # same aspect ratio: CIoU == DIoU
    assert abs(float(LF.box_iou_loss(a, far, "ciou")) - (1 + 16 / 40)) < 1e-6
    # identical boxes: every kind is 0
    for kind in KINDS:
        assert float(LF.box_iou_loss(a, a, kind)) < 1e-6


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(0, 20, allow_nan=False), min_size=4, max_size=4),
    st.lists(st.floats(0, 20, allow_nan=False), min_size=4, max_size=4),
)
def test_box_properties(c1, c2):
    p = torch.tensor([[min(c1[0], c1[2]), min(c1[1], c1[3]), max(c1[0], c1[2]), max(c1[1], c1[3])]])
    t = torch.tensor([[min(c2[0], c2[2]), min(c2[1], c2[3]), max(c2[0], c2[2]), max(c2[1], c2[3])]])
    p, t = p.double(), t.double()
    iou = LF.box_iou_loss(p, t, "iou")
    giou = LF.box_iou_loss(p, t, "giou")
    diou = LF.box_iou_loss(p, t, "diou")
    ciou = LF.box_iou_loss(p, t, "ciou")
    for v in (iou, giou, diou, ciou):
        assert torch.isfinite(v)
    assert -1e-9 <= float(iou) <= 1 + 1e-9
    assert -1e-9 <= float(giou) < 2 + 1e-9
    assert float(diou) >= float(iou) - 1e-9 and float(ciou) >= float(diou) - 1e-9
    # symmetric in its two arguments (CIoU's alpha v too)
    for kind in KINDS:
        torch.testing.assert_close(LF.box_iou_loss(p, t, kind), LF.box_iou_loss(t, p, kind))
    torch.testing.assert_close(LF.box_iou_loss(p, t, "giou", reduction="sum"), giou)


# ---------------------------------------------------------------- 2. gradcheck


# CIoU's alpha is a constant by definition (no_grad, as in torchvision), so finite differences do not
# match its gradient; test_box_iou_matches_reference checks that gradient against the reference.
@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_box_gradcheck(kind):
    p, t = boxes(4, 5), boxes(4, 6)
    t[:2] = p[:2] + 0.2
    assert_gradcheck(lambda a, b: LF.box_iou_loss(a, b, kind, reduction="none"), (p, t), (0, 1))


# ---------------------------------------------------------------- 4. degenerate boxes and empty input


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes_are_finite(kind):
    p = torch.tensor(
        [
            [0.0, 0.0, 0.0, 2.0],  # zero width
            [0.0, 0.0, 2.0, 0.0],  # zero height
            [1.0, 1.0, 1.0, 1.0],  # a point
            [1.0, 1.0, 1.0, 1.0],  # the same point as its target
            [0.0, 0.0, 2.0, 2.0],
        ],
        requires_grad=True,
    )
    t = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 2.0, 2.0],
            [1.0, 1.0, 1.0, 1.0],
            [3.0, 3.0, 3.0, 5.0],
        ],
        requires_grad=True,
    )
    loss = LF.box_iou_loss(p, t, kind, reduction="none")
    assert_finite_with_grads(loss, p, t)
    # values agree with the torchvision formulas wherever those are defined in the forward pass
    ref = torch.stack([ref_one_box(a.double(), b.double(), kind) for a, b in zip(p.detach(), t.detach())])
    ok = torch.isfinite(ref)
    torch.testing.assert_close(loss.detach().double()[ok], ref[ok], rtol=1e-5, atol=1e-5)


def _ciou_aspect_grad(p, t):
    """Gradient of CIoU's ``alpha v`` (alpha a constant) w.r.t. both boxes, from the formula.

    ``v = 4/pi^2 (theta_g - theta)^2`` with ``theta = atan2(w, h)`` (``atan(w / h)`` for ``h > 0``, and
    ``pi/2`` for ``w > 0, h = 0``); ``d theta / dw = h / (w^2 + h^2)``, ``d theta / dh = -w / (w^2 + h^2)``;
    ``w = x2 - x1``, ``h = y2 - y1``.
    """
    (x1, y1, x2, y2), (a1, b1, a2, b2) = p, t
    w, h, wg, hg = x2 - x1, y2 - y1, a2 - a1, b2 - b1
    theta, theta_g = math.atan2(w, h), math.atan2(wg, hg)
    inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
    iou = inter / (w * h + wg * hg - inter + 1e-7)
    v = 4 / math.pi**2 * (theta_g - theta) ** 2
    alpha = v / (1 - iou + v + 1e-7)
    k = alpha * 8 / math.pi**2 * (theta_g - theta)  # d(alpha v) / d theta_g; minus that for theta
    dw, dh = h / (w * w + h * h), -w / (w * w + h * h)
    dwg, dhg = hg / (wg * wg + hg * hg), -wg / (wg * wg + hg * hg)
    grad_p = [k * dw, k * dh, -k * dw, -k * dh]
    grad_t = [-k * dwg, -k * dhg, k * dwg, k * dhg]
    return torch.tensor(grad_p, dtype=torch.float64), torch.tensor(grad_t, dtype=torch.float64)


# a side of one box goes to 0: pred's width, pred's height, target's width
SHRINKING = {
    "pred_width": lambda s: ([2.0, 0.0, 2.0 + s, 1.0], [0.0, 0.0, 1.0, 1.0]),
    "pred_height": lambda s: ([0.0, 2.0, 1.0, 2.0 + s], [0.0, 0.0, 1.0, 1.0]),
    "target_width": lambda s: ([0.0, 0.0, 1.0, 2.0], [3.0, 0.0, 3.0 + s, 1.0]),
    "overlapping": lambda s: ([0.5, 0.0, 0.5 + s, 1.0], [0.0, 0.0, 1.0, 2.0]),
}


@pytest.mark.parametrize("side", [0.0, 1e-9, 1e-3, 0.5])
@pytest.mark.parametrize("case", sorted(SHRINKING))
def test_ciou_aspect_gradient_is_continuous_as_a_side_goes_to_zero(case, side):
    p0, t0 = SHRINKING[case](side)
    p = torch.tensor([p0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([t0], dtype=torch.float64, requires_grad=True)
    aspect = LF.box_iou_loss(p, t, "ciou", reduction="sum") - LF.box_iou_loss(p, t, "diou", reduction="sum")
    gp, gt = torch.autograd.grad(aspect, (p, t))
    ep, et = _ciou_aspect_grad(p0, t0)
    torch.testing.assert_close(gp[0], ep, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gt[0], et, rtol=1e-6, atol=1e-9)
    if case == "pred_width" and side == 0.0:  # the figures of the zero-width example: +-2 alpha / pi
        torch.testing.assert_close(
            gp[0, [0, 2]], torch.tensor([0.2, -0.2], dtype=torch.float64) * 2 / math.pi
        )


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_of_a_box_against_a_zero_area_target_is_bounded(kind):
    """A target with zero width has no overlap with anything: IoU is 0 for every pred, so its gradient
    is 0 (not ~1 / union, which grows without bound as the pred's width goes to 0)."""
    t = torch.tensor([[0.0, 0.0, 0.0, 2.0]], dtype=torch.float64)
    grads = []
    for w in (1e-3, 1e-6, 0.0):
        p = torch.tensor([[0.0, 0.0, w, 1.0]], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(LF.box_iou_loss(p, t, kind), p)
        grads.append(g)
    if kind == "iou":
        for g in grads:
            assert float(g.abs().max()) == 0.0
    elif kind != "giou":  # GIoU's (|C| - |A u B|) / |C| itself has a slope ~1 / w there (geometry)
        for g in grads:
            assert float(g.abs().max()) < 10.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fmt", "bad", "what"),
    [
        ("xyxy", [2.0, 0.0, 0.0, 2.0], r"x2 < x1"),
        ("xyxy", [0.0, 2.0, 2.0, 0.0], r"y2 < y1"),
        ("xywh", [0.0, 0.0, -1.0, 2.0], r"a negative width"),
        ("cxcywh", [0.0, 0.0, 2.0, -1.0], r"a negative height"),
    ],
)
def test_inverted_boxes_are_an_error(kind, fmt, bad, what):
    good = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    inverted = torch.tensor([[1.0, 1.0, 2.0, 2.0], bad])
    with pytest.raises(LossValueError, match=rf"pred has a box with {what} at index \(1,\): \[.*\]; '{fmt}'"):
        LF.box_iou_loss(inverted, good, kind, fmt)
    with pytest.raises(LossValueError, match=rf"target has a box with {what} at index \(1,\)"):
        losskit.BoxIoULoss(kind, fmt)(good, inverted)
    # masked-out boxes may hold anything
    LF.box_iou_loss(inverted, good, kind, fmt, mask=torch.tensor([True, False]))
    # the check reads values: skipped when value checks are off, and on 'meta' tensors
    losskit.set_value_checks(False)
    try:
        LF.box_iou_loss(inverted, good, kind, fmt)
    finally:
        losskit.set_value_checks(True)
    assert LF.box_iou_loss(inverted.to("meta"), good.to("meta"), kind, fmt).is_meta


def test_seed_example_of_an_inverted_box_is_an_error():
    with pytest.raises(
        LossValueError, match=r"pred has a box with x2 < x1 at index \(0,\): \[2.0, 0.0, 0.0, 2.0\]"
    ):
        LF.box_iou_loss(torch.tensor([[2.0, 0, 0, 2]]), torch.tensor([[0.0, 0, 2, 2]]), kind="giou")


def test_detection_checks_the_boxes_of_positive_anchors_only():
    logits, labels, bp, bt = det_data()
    labels = torch.full_like(labels, 3)  # background
    labels[0, 0] = 1
    bp = bp.clone()
    bp[1, 2] = torch.tensor([5.0, 5.0, 1.0, 1.0])  # inverted, on a background anchor: ignored
    for box_loss in ("giou", "diou", "ciou"):
        assert torch.isfinite(LF.detection_loss(logits, labels, bp, bt, box_loss=box_loss))
    bp[0, 0] = torch.tensor([5.0, 5.0, 1.0, 1.0])
    for box_loss in ("giou", "diou", "ciou"):
        with pytest.raises(LossValueError, match=r"box_preds has a box with x2 < x1 at index \(0, 0\)"):
            LF.detection_loss(logits, labels, bp, bt, box_loss=box_loss)
    # regression targets for smooth L1 are offsets, not boxes: any sign
    assert torch.isfinite(LF.detection_loss(logits, labels, bp, bt, box_loss="smooth_l1"))


def test_empty_box_input():
    p = torch.zeros(0, 4, requires_grad=True)
    for kind in KINDS:
        assert_connected_zero(LF.box_iou_loss(p, torch.zeros(0, 4), kind), p)
        assert_connected_zero(LF.box_iou_loss(p, torch.zeros(0, 4), kind, reduction="sum"), p)
        assert LF.box_iou_loss(p, torch.zeros(0, 4), kind, reduction="none").shape == (0,)
    p2 = boxes(3, 7).requires_grad_(True)
    assert_connected_zero(LF.box_iou_loss(p2, boxes(3, 8), mask=torch.zeros(3, dtype=torch.bool)), p2)


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_box_low_precision(kind, dtype):
    big = 6e4 if dtype == torch.float16 else 1e4
    p = torch.tensor([[0.0, 0.0, big, big], [0.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    t = torch.tensor([[big / 2, 0.0, big, 10.0], [0.0, 0.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.5]], dtype=dtype)
    p.requires_grad_(True)
    loss = LF.box_iou_loss(p, t, kind)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, p)


# ---------------------------------------------------------------- 6. bad input


def test_box_bad_inputs():
    p = boxes(3)
    with pytest.raises(LossValueError, match=r"pred has shape \(3, 3\), expected \(\.\.\., 4\)"):
        LF.box_iou_loss(p[:, :3], p[:, :3])
    with pytest.raises(LossValueError, match=r"target has shape \(2, 4\), expected \(3, 4\) to match pred"):
        LF.box_iou_loss(p, p[:2])
    with pytest.raises(LossValueError, match="kind must be one of 'iou', 'giou', 'diou', 'ciou', got 'eiou'"):
        LF.box_iou_loss(p, p, "eiou")
    with pytest.raises(LossValueError, match="box_format must be one of 'xyxy', 'xywh', 'cxcywh'"):
        losskit.BoxIoULoss(box_format="yxyx")
    with pytest.raises(LossTypeError, match="pred must be a floating-point tensor"):
        LF.box_iou_loss(p.long(), p)
    with pytest.raises(LossValueError, match="mask must be a bool tensor"):
        LF.box_iou_loss(p, p, mask=torch.ones(3))
    with pytest.raises(LossValueError, match="eps must be > 0.0"):
        LF.box_iou_loss(p, p, eps=0.0)


# ---------------------------------------------------------------- CompositeLoss (seed 000)


def seed_composite_reference(alpha, gamma, cls_weight, bbox_weight):
    """The seed's formula re-typed: mean_i alpha (1 - pt)^gamma CE_i + mean smooth_l1(beta=1)."""

    def ref(cls_preds, cls_targets, bbox_preds, bbox_targets):
        n = cls_preds.shape[0]
        focal = cls_preds.new_zeros(())
        for i in range(n):
            row = cls_preds[i]
            logsumexp = torch.log(torch.exp(row - row.max()).sum()) + row.max()
            ce = logsumexp - row[int(cls_targets[i])]
            pt = torch.exp(-ce)
            focal = focal + alpha * (1 - pt) ** gamma * ce
        focal = focal / n
        sl1 = bbox_preds.new_zeros(())
        d = (bbox_preds - bbox_targets).reshape(-1)
        for j in range(d.numel()):
            a = d[j].abs()
            sl1 = sl1 + (0.5 * d[j] ** 2 if float(a.detach()) < 1.0 else a - 0.5)
        sl1 = sl1 / d.numel()
        return cls_weight * focal + bbox_weight * sl1

    return ref


@pytest.mark.parametrize(
    ("alpha", "gamma", "cw", "bw"), [(1, 2, 1.0, 1.0), (0.5, 0.0, 2.0, 0.3), (1.5, 1.5, 0.7, 2.0)]
)
def test_composite_matches_seed_formula(alpha, gamma, cw, bw):
    g = torch.Generator().manual_seed(0)
    cls_preds = torch.randn(16, 10, generator=g) * 2
    cls_targets = torch.randint(0, 10, (16,), generator=g)
    bbox_preds = torch.randn(16, 4, generator=g)
    bbox_targets = torch.randn(16, 4, generator=g)
    module = losskit.CompositeLoss(alpha, gamma, cw, bw)
    assert_matches_reference(
        lambda a, b, c, d: module(a, b, c, d),
        seed_composite_reference(alpha, gamma, cw, bw),
        (cls_preds, cls_targets, bbox_preds, bbox_targets),
        (0, 2, 3),
    )
    assert set(module.last_terms) == {"cls", "bbox"}


def test_seed_composite_example_runs():
    from losskit import CompositeLoss  # seed example, only the import changed

    cls_preds = torch.randn(16, 10)
    cls_targets = torch.randint(0, 10, (16,))
    bbox_preds = torch.randn(16, 4)
    bbox_targets = torch.randn(16, 4)
    loss_fn = CompositeLoss()
    loss = loss_fn(cls_preds, cls_targets, bbox_preds, bbox_targets)
    expected = seed_composite_reference(1, 2, 1.0, 1.0)(
        cls_preds.double(), cls_targets, bbox_preds.double(), bbox_targets.double()
    )
    assert abs(float(loss) - float(expected)) < 1e-5


# ---------------------------------------------------------------- DetectionLoss (RetinaNet)


def ref_detection(
    logits,
    labels,
    box_p,
    box_t,
    alpha=0.25,
    gamma=2.0,
    box_loss="smooth_l1",
    beta=0.11,
    cw=1.0,
    bw=1.0,
    norm=None,
):
    """Loops over anchors and classes: sigmoid focal (RetinaNet) + box loss on positives, / max(1, #pos)."""
    c = logits.shape[-1]
    flat_x, flat_y = logits.reshape(-1, c), labels.reshape(-1)
    fp, ft = box_p.reshape(-1, 4), box_t.reshape(-1, 4)
    cls, box, npos = logits.new_zeros(()), logits.new_zeros(()), 0
    for a in range(flat_y.numel()):
        lab = int(flat_y[a])
        if lab == -1:
            continue
        for k in range(c):
            y = 1.0 if lab == k else 0.0
            x = flat_x[a, k]
            p = 1 / (1 + torch.exp(-x))
            ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
            p_t = p * y + (1 - p) * (1 - y)
            a_t = alpha * y + (1 - alpha) * (1 - y)
            cls = cls + a_t * (1 - p_t) ** gamma * ce
        if 0 <= lab < c:
            npos += 1
            if box_loss == "smooth_l1":
                for j in range(4):
                    d = fp[a, j] - ft[a, j]
                    box = box + (
                        0.5 * d * d / beta if float(d.detach().abs()) < beta else d.abs() - 0.5 * beta
                    )
            else:
                box = box + ref_one_box(fp[a], ft[a], box_loss)
    denom = max(npos, 1) if norm is None else norm
    return cw * cls / denom + bw * box / denom


def det_data(seed=0, n=2, a=5, c=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, a, c, generator=g) * 2
    labels = torch.randint(-1, c + 1, (n, a), generator=g)
    labels[0, 0] = 1  # at least one positive
    bp = boxes(n * a, seed + 1).reshape(n, a, 4)
    bt = boxes(n * a, seed + 2).reshape(n, a, 4)
    return logits, labels, bp, bt


@pytest.mark.parametrize(
    ("box_loss", "beta"), [("smooth_l1", 0.11), ("smooth_l1", 1.0), ("giou", 0.11), ("ciou", 0.11)]
)
def test_detection_matches_reference(box_loss, beta):
    logits, labels, bp, bt = det_data()
    kw = {"box_loss": box_loss, "beta": beta, "cls_weight": 0.7, "box_weight": 1.3}
    assert_matches_reference(
        lambda x, lab, p, t: LF.detection_loss(x, lab, p, t, **kw),
        lambda x, lab, p, t: ref_detection(x, lab, p, t, box_loss=box_loss, beta=beta, cw=0.7, bw=1.3),
        (logits, labels, bp, bt),
        (0, 2),
    )


def test_detection_module_terms_and_normalizer():
    logits, labels, bp, bt = det_data(3)
    module = losskit.DetectionLoss(num_classes=3)
    total = module(logits, labels, bp, bt)
    npos = int(((labels >= 0) & (labels < 3)).sum())
    cls_only = ref_detection(logits.double(), labels, bp.double(), bt.double(), bw=0.0)
    box_only = ref_detection(logits.double(), labels, bp.double(), bt.double(), cw=0.0)
    assert abs(float(module.last_terms["cls"]) - float(cls_only)) < 1e-5
    assert abs(float(module.last_terms["box"]) - float(box_only)) < 1e-5
    assert not module.last_terms["cls"].requires_grad
    torch.testing.assert_close(total, module.last_terms["cls"] + module.last_terms["box"])
    # pluggable normalizer (e.g. a global positive count): two halves with the full-batch count
    # add up to the full-batch loss
    halves = [
        module(logits[i : i + 1], labels[i : i + 1], bp[i : i + 1], bt[i : i + 1], normalizer=npos)
        for i in (0, 1)
    ]
    torch.testing.assert_close(halves[0] + halves[1], total)
    torch.testing.assert_close(module(logits, labels, bp, bt, normalizer=torch.tensor(2.0 * npos)), total / 2)


def test_detection_degenerate():
    logits, labels, bp, bt = det_data(4)
    x = logits.clone().requires_grad_(True)
    # no positives: classification still trains (background), box term is a connected zero, norm = 1
    bg = torch.full_like(labels, 3)
    bg[0, 0] = -1
    m = losskit.DetectionLoss()
    total = m(x, bg, bp, bt)
    assert_finite_with_grads(total, x)
    assert float(m.last_terms["box"]) == 0.0
    expected = ref_detection(logits.double(), bg, bp.double(), bt.double())
    assert abs(float(total.detach()) - float(expected)) < 1e-5
    # everything ignored: graph-connected zero
    assert_connected_zero(LF.detection_loss(x, torch.full_like(labels, -1), bp, bt), x)
    # empty batch
    x0 = torch.zeros(0, 5, 3, requires_grad=True)
    assert_connected_zero(
        LF.detection_loss(
            x0, torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, 4), torch.zeros(0, 5, 4)
        ),
        x0,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_detection_low_precision(dtype):
    from harness import extreme_logits

    logits, labels, bp, bt = det_data(5)
    x = extreme_logits(logits.shape, dtype).requires_grad_(True)
    for box_loss in ("smooth_l1", "ciou"):
        loss = LF.detection_loss(x, labels, bp.to(dtype), bt.to(dtype), box_loss=box_loss)
        assert_finite_with_grads(loss, x)


def test_detection_gradcheck():
    logits, labels, bp, bt = det_data(6, n=1, a=4, c=2)
    assert_gradcheck(lambda x, p: LF.detection_loss(x, labels, p, bt, box_loss="diou"), (logits, bp), (0, 1))


def test_detection_bad_inputs():
    logits, labels, bp, bt = det_data()
    with pytest.raises(
        LossValueError, match=r"labels contains 7, expected a class in \[0, 3\), 3 \(background\)"
    ):
        LF.detection_loss(logits, torch.full_like(labels, 7), bp, bt)
    with pytest.raises(LossValueError, match=r"labels has shape \(2, 4\), expected \(2, 5\)"):
        LF.detection_loss(logits, labels[:, :4], bp, bt)
    with pytest.raises(LossValueError, match=r"box_preds has shape \(2, 5, 3\), expected \(2, 5, 4\)"):
        LF.detection_loss(logits, labels, bp[..., :3], bt[..., :3])
    with pytest.raises(LossValueError, match="expected num_classes=4"):
        losskit.DetectionLoss(num_classes=4)(logits, labels, bp, bt)
    with pytest.raises(
        LossValueError, match="box_loss must be one of 'smooth_l1', 'l1', 'giou', 'diou', 'ciou'"
    ):
        losskit.DetectionLoss(box_loss="mse")
    with pytest.raises(LossTypeError, match="labels must be an integer tensor"):
        LF.detection_loss(logits, labels.float(), bp, bt)
    with pytest.raises(LossValueError, match="normalizer must be > 0"):
        LF.detection_loss(logits, labels, bp, bt, normalizer=0)
    with pytest.raises(LossValueError, match="gamma must be >= 0.0"):
        losskit.CompositeLoss(gamma=-1)


# ---------------------------------------------------------------- 7. modules, serialisation, compile; 8. registry


def test_modules_roundtrip_and_compile():
    p, t = boxes(6, 9), boxes(6, 10)
    for kind in KINDS:
        m = losskit.BoxIoULoss(kind=kind, reduction="sum")
        assert_module_matches(m, LF.box_iou_loss(p, t, kind, reduction="sum"), p, t)
    assert_compiles(lambda a, b: losskit.BoxIoULoss(kind="ciou")(a, b), p, t)
    g = torch.Generator().manual_seed(1)
    cp, ct = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    comp = losskit.CompositeLoss(alpha=0.5, gamma=1.0)
    expected = LF.focal_loss(cp, ct, 0.5, 1.0) + LF.smooth_l1_loss(p, t)
    assert_module_matches(comp, expected, cp, ct, p, t)
    assert_compiles(lambda a, b, c, d: comp(a, b, c, d), cp, ct, p, t)
    logits, labels, bp, bt = det_data(7)
    det = losskit.DetectionLoss(box_loss="giou")
    assert_module_matches(
        det, LF.detection_loss(logits, labels, bp, bt, box_loss="giou"), logits, labels, bp, bt
    )
    assert_compiles(lambda a, b, c, d: det(a, b, c, d), logits, labels, bp, bt)


def test_registry():
    for name in ("box_iou", "composite", "detection"):
        assert name in losskit.available("detection")
    assert losskit.build("box_iou", kind="diou").kind == "diou"
    assert isinstance(losskit.build({"name": "composite", "gamma": 1.0}), losskit.CompositeLoss)
    assert losskit.build("detection", box_loss="ciou").box_loss == "ciou"


# ---------------------------------------------------------------- devices and dtypes: errors name the argument


def _detection_calls():
    """(callable, its tensor arguments by name in call order) for every loss of the module."""
    p, t = boxes(4, 20), boxes(4, 21)
    g = torch.Generator().manual_seed(22)
    cp, ct = torch.randn(4, 5, generator=g), torch.randint(0, 5, (4,), generator=g)
    logits, labels, bp, bt = det_data(23)
    w, m = torch.rand(4, generator=g), torch.tensor([True, True, False, True])
    return [
        (lambda **a: LF.box_iou_loss(**a, kind="ciou"), {"pred": p, "target": t, "weight": w, "mask": m}),
        (
            lambda **a: losskit.CompositeLoss()(*a.values()),
            {"cls_preds": cp, "cls_targets": ct, "bbox_preds": p, "bbox_targets": t},
        ),
        (
            lambda **a: LF.detection_loss(**a, box_loss="giou"),
            {"cls_logits": logits, "labels": labels, "box_preds": bp, "box_targets": bt},
        ),
        (
            lambda **a: losskit.DetectionLoss()(*a.values()),
            {"cls_logits": logits, "labels": labels, "box_preds": bp, "box_targets": bt},
        ),
    ]


@pytest.mark.parametrize("index", range(4))
def test_an_argument_on_another_device_is_a_clear_error(index):
    fn, tensors = _detection_calls()[index]
    names = list(tensors)
    for moved in names:
        args = {n: (v.to("meta") if n == moved else v) for n, v in tensors.items()}
        if moved == names[0]:
            expected = rf"{names[1]} is on cpu, expected meta like {names[0]}"
        else:
            expected = rf"{moved} is on meta, expected cpu like {names[0]}"
        with pytest.raises(LossValueError, match=expected):
            fn(**args)
    # everything on 'meta': shape checks run, value checks skip, the result is a 'meta' scalar
    out = fn(**{n: v.to("meta") for n, v in tensors.items()})
    assert out.is_meta and out.dim() == 0


@pytest.mark.parametrize("index", range(4))
def test_a_complex_argument_is_a_type_error_naming_it(index):
    fn, tensors = _detection_calls()[index]
    for name, value in tensors.items():
        if not value.is_floating_point():
            continue
        args = {n: (v.to(torch.complex64) if n == name else v) for n, v in tensors.items()}
        with pytest.raises(
            LossTypeError, match=rf"{name} must be a floating-point tensor, got dtype torch.complex64"
        ):
            fn(**args)


def test_detection_loss_checks_its_weights():
    logits, labels, bp, bt = det_data(24)
    with pytest.raises(LossValueError, match="cls_weight must be >= 0.0, got -1"):
        LF.detection_loss(logits, labels, bp, bt, cls_weight=-1)
    with pytest.raises(LossTypeError, match="box_weight must be a number, got str"):
        LF.detection_loss(logits, labels, bp, bt, box_weight="1")
