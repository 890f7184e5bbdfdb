"""3-D (axis-aligned cuboid) boxes for the IoU-family box losses, against plain float64 formulas."""

from __future__ import annotations

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
from losskit import LossValueError

KINDS_3D = ["iou", "giou", "diou"]
FORMATS = ["xyxy", "xyzxyz", "xywh", "xyzwhd", "cxcywh", "cxcyczwhd"]

# ---------------------------------------------------------------- independent float64 reference


def to_corners(b, fmt):
    """(x1, y1, z1, x2, y2, z2) of one 6-vector."""
    x, y, z, u, v, w = (b[i] for i in range(6))
    if fmt in ("xyxy", "xyzxyz"):
        return x, y, z, u, v, w
    if fmt in ("xywh", "xyzwhd"):
        return x, y, z, x + u, y + v, z + w
    return x - u / 2, y - v / 2, z - w / 2, x + u / 2, y + v / 2, z + w / 2


def ref_one_cuboid(p, g, kind, fmt="xyxy", eps=1e-7):
    """Rezatofighi et al. (GIoU) and Zheng et al. (DIoU) with volumes and the space diagonal."""
    x1, y1, z1, x2, y2, z2 = to_corners(p, fmt)
    a1, b1, c1, a2, b2, c2 = to_corners(g, fmt)
    dx = torch.min(x2, a2) - torch.max(x1, a1)
    dy = torch.min(y2, b2) - torch.max(y1, b1)
    dz = torch.min(z2, c2) - torch.max(z1, c1)
    if float(dx.detach()) > 0 and float(dy.detach()) > 0 and float(dz.detach()) > 0:
        inter = dx * dy * dz
    else:
        inter = dx * 0.0
    vol_p = (x2 - x1) * (y2 - y1) * (z2 - z1)
    vol_g = (a2 - a1) * (b2 - b1) * (c2 - c1)
    union = vol_p + vol_g - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return 1 - iou
    ex = torch.max(x2, a2) - torch.min(x1, a1)
    ey = torch.max(y2, b2) - torch.min(y1, b1)
    ez = torch.max(z2, c2) - torch.min(z1, c1)
    if kind == "giou":
        vol_c = ex * ey * ez
        return 1 - iou + (vol_c - union) / (vol_c + eps)
    rho2 = (
        ((x1 + x2) / 2 - (a1 + a2) / 2) ** 2
        + ((y1 + y2) / 2 - (b1 + b2) / 2) ** 2
        + ((z1 + z2) / 2 - (c1 + c2) / 2) ** 2
    )
    return 1 - iou + rho2 / (ex**2 + ey**2 + ez**2 + eps)


def ref_loss(pred, target, kind, fmt="xyxy", reduction="mean", weight=None, mask=None):
    shape = pred.shape[:-1]
    flat_p, flat_t = pred.reshape(-1, 6), target.reshape(-1, 6)
    w = None if weight is None else weight.double().expand(shape).reshape(-1)
    m = None if mask is None else mask.expand(shape).reshape(-1)
    vals, total, den = [], pred.new_zeros(()), 0.0
    for i in range(flat_p.shape[0]):
        v = ref_one_cuboid(flat_p[i], flat_t[i], kind, fmt)
        wi = 1.0 if w is None else w[i]
        if m is not None and not bool(m[i]):
            v, wi = v * 0.0, 0.0
        vals.append(v * wi)
        total = total + v * wi
        den += float(wi)
    if reduction == "none":
        return torch.stack(vals).reshape(shape) if vals else pred.new_zeros(shape)
    if reduction == "sum":
        return total
    return total / den if den > 0 else total * 0.0


def cuboids(n=6, seed=0, fmt="xyxy", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 3, generator=g, dtype=torch.float64) * 6
    size = torch.rand(n, 3, generator=g, dtype=torch.float64) * 4 + 0.5
    if fmt in ("xyxy", "xyzxyz"):
        b = torch.cat([lo, lo + size], -1)
    elif fmt in ("xywh", "xyzwhd"):
        b = torch.cat([lo, size], -1)
    else:
        b = torch.cat([lo + size / 2, size], -1)
    return b.to(dtype)


# ---------------------------------------------------------------- 1. reference values and gradients


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", KINDS_3D)
def test_3d_matches_reference(kind, reduction):
    p, t = cuboids(8, 0), cuboids(8, 1)
    # make a few pairs overlap
    t[:3] = p[:3] + 0.3
    assert_matches_reference(
        lambda a, b: LF.box_iou_loss(a, b, kind, reduction=reduction),
        lambda a, b: ref_loss(a, b, kind, reduction=reduction),
        (p, t),
        (0, 1),
    )
    w = torch.rand(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = torch.tensor([True, False, True, True, False, True, True, True])
    assert_matches_reference(
        lambda a, b: LF.box_iou_loss(a, b, kind, reduction=reduction, weight=w, mask=m),
        lambda a, b: ref_loss(a, b, kind, reduction=reduction, weight=w, mask=m),
        (p, t),
        (0, 1),
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS_3D)
def test_3d_formats(kind, fmt):
    p, t = cuboids(5, 3, fmt), cuboids(5, 4, fmt)
    t[:2] = p[:2] * 1.1 + 0.2
    assert_matches_reference(
        lambda a, b: LF.box_iou_loss(a, b, kind, fmt, reduction="none"),
        lambda a, b: ref_loss(a, b, kind, fmt, reduction="none"),
        (p, t),
        (0, 1),
    )


def test_3d_names_and_2d_names_are_the_same_layout():
    p, t = cuboids(4, 5), cuboids(4, 6)
    for a, b in (("xyxy", "xyzxyz"), ("xywh", "xyzwhd"), ("cxcywh", "cxcyczwhd")):
        for kind in KINDS_3D:
            torch.testing.assert_close(
                LF.box_iou_loss(p.abs(), t.abs(), kind, a), LF.box_iou_loss(p.abs(), t.abs(), kind, b)
            )


def test_3d_known_values():
    cube = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])
    # far apart along z: IoU 0, enclosing 2 x 2 x 6 = 24, union 16
    far = torch.tensor([[0.0, 0.0, 4.0, 2.0, 2.0, 6.0]])
    assert abs(float(LF.box_iou_loss(cube, far, "iou")) - 1.0) < 1e-6
    assert abs(float(LF.box_iou_loss(cube, far, "giou")) - (1 + 8 / 24)) < 1e-6
    # centres 4 apart, diagonal^2 = 4 + 4 + 36
    assert abs(float(LF.box_iou_loss(cube, far, "diou")) - (1 + 16 / 44)) < 1e-6
    for kind in KINDS_3D:
        assert float(LF.box_iou_loss(cube, cube, kind)) < 1e-6


# ---------------------------------------------------------------- 2. gradcheck


@pytest.mark.parametrize("kind", KINDS_3D)
def test_3d_gradcheck(kind):
    p, t = cuboids(4, 7), cuboids(4, 8)
    t[:2] = p[:2] + 0.25
    assert_gradcheck(lambda a, b: LF.box_iou_loss(a, b, kind, reduction="none"), (p, t), (0, 1))


# ---------------------------------------------------------------- 3. properties


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), z0=st.floats(-3, 3), depth=st.floats(0.1, 5))
def test_3d_properties(seed, z0, depth):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(5, 2, generator=g, dtype=torch.float64) * 4
    wh = torch.rand(5, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    xy2 = xy + torch.randn(5, 2, generator=g, dtype=torch.float64)
    wh2 = torch.rand(5, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    p2, t2 = torch.cat([xy, xy + wh], 1), torch.cat([xy2, xy2 + wh2], 1)
    z = torch.full((5, 1), z0, dtype=torch.float64)

    def lift(b, zlo, zhi):
        return torch.cat([b[:, :2], zlo, b[:, 2:], zhi], 1)

    # a common z extent: IoU and GIoU equal their 2-D values (every volume is area * depth; a tiny
    # eps, which is not scaled by the depth)
    p3, t3 = lift(p2, z, z + depth), lift(t2, z, z + depth)
    for kind in ("iou", "giou"):
        torch.testing.assert_close(
            LF.box_iou_loss(p3, t3, kind, eps=1e-15, reduction="none"),
            LF.box_iou_loss(p2, t2, kind, eps=1e-15, reduction="none"),
        )
    iou = LF.box_iou_loss(p3, t3, "iou", reduction="none")
    giou = LF.box_iou_loss(p3, t3, "giou", reduction="none")
    diou = LF.box_iou_loss(p3, t3, "diou", reduction="none")
    assert bool(((iou >= -1e-9) & (iou <= 1 + 1e-9)).all())
    assert bool((giou >= iou - 1e-9).all() and (giou <= 2 + 1e-9).all())
    assert bool((diou >= iou - 1e-9).all() and (diou < 2).all())
    for kind in KINDS_3D:  # symmetric in its two boxes
        torch.testing.assert_close(LF.box_iou_loss(p3, t3, kind), LF.box_iou_loss(t3, p3, kind))
    # shifting the target half its depth along z halves the intersection: the IoU loss cannot fall
    # (DIoU and GIoU may: the enclosing box grows too)
    t_up = lift(t2, z + depth / 2, z + 1.5 * depth)
    assert bool((LF.box_iou_loss(p3, t_up, "iou", reduction="none") >= iou - 1e-9).all())


# ---------------------------------------------------------------- 4. degenerate input


@pytest.mark.parametrize("kind", KINDS_3D)
def test_3d_degenerate_boxes_are_finite(kind):
    p = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # a point
            [0.0, 0.0, 0.0, 2.0, 2.0, 0.0],  # a flat square (zero depth)
            [1.0, 1.0, 1.0, 1.0, 3.0, 3.0],  # zero width
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    t = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 2.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ],
        dtype=torch.float64,
    )
    loss = LF.box_iou_loss(p, t, kind, reduction="none")
    assert torch.isfinite(loss).all()
    assert_finite_with_grads(loss.sum(), p)
    ref = torch.stack([ref_one_cuboid(a, b, kind) for a, b in zip(p.detach(), t)])
    torch.testing.assert_close(loss.detach(), ref)


def test_3d_empty_and_all_masked():
    for kind in KINDS_3D:
        p = torch.zeros(0, 6, requires_grad=True)
        assert_connected_zero(LF.box_iou_loss(p, torch.zeros(0, 6), kind), p)
        assert LF.box_iou_loss(p, torch.zeros(0, 6), kind, reduction="none").shape == (0,)
        q = cuboids(3, 9, dtype=torch.float32).requires_grad_(True)
        assert_connected_zero(
            LF.box_iou_loss(q, cuboids(3, 10), kind, mask=torch.zeros(3, dtype=torch.bool)), q
        )


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS_3D)
def test_3d_low_precision(kind, dtype):
    p = (cuboids(6, 11) * 100).to(dtype).requires_grad_(True)
    t = (cuboids(6, 12) * 100).to(dtype)
    loss = LF.box_iou_loss(p, t, kind)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, p)
    torch.testing.assert_close(loss, LF.box_iou_loss(p.detach().float(), t.float(), kind))


# ---------------------------------------------------------------- 6. errors


def test_3d_ciou_is_an_error():
    p = cuboids(2, 13)
    with pytest.raises(
        LossValueError, match=r"kind='ciou' is defined for 2-D boxes only \(pred has shape \(2, 6\)\)"
    ):
        LF.box_iou_loss(p, p, "ciou")
    with pytest.raises(LossValueError, match="kind='ciou' is defined for 2-D boxes only"):
        losskit.BoxIoULoss(kind="ciou")(p, p)


def test_3d_shape_and_format_errors():
    p = cuboids(3, 14)
    with pytest.raises(
        LossValueError, match=r"pred has shape \(3, 5\), expected \(\.\.\., 4\) or \(\.\.\., 6\)"
    ):
        LF.box_iou_loss(p[:, :5], p[:, :5])
    with pytest.raises(LossValueError, match=r"target has shape \(3, 4\), expected \(3, 6\) to match pred"):
        LF.box_iou_loss(p, p[:, :4])
    with pytest.raises(
        LossValueError, match=r"box_format='xyzwhd' is a 3-D format, but pred has shape \(3, 4\)"
    ):
        LF.box_iou_loss(p[:, :4], p[:, :4], box_format="xyzwhd")
    with pytest.raises(LossValueError, match="box_format must be one of 'xyxy', 'xywh', 'cxcywh', 'xyzxyz'"):
        losskit.BoxIoULoss(box_format="zyx")


@pytest.mark.parametrize(
    ("fmt", "bad", "what"),
    [
        ("xyxy", (0.0, 0.0, 3.0, 1.0, 1.0, 2.0), "z2 < z1"),
        ("xyzwhd", (0.0, 0.0, 0.0, 1.0, 1.0, -1.0), "a negative depth"),
    ],
)
def test_3d_inverted_boxes_are_an_error(fmt, bad, what):
    good = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] * 2)
    inverted = good.clone()
    inverted[1] = torch.tensor(bad)
    with pytest.raises(
        LossValueError, match=rf"pred has a box with {what} at index \(1,\): \[.*\]; '{fmt}' boxes need"
    ):
        LF.box_iou_loss(inverted, good, "giou", fmt)
    with pytest.raises(LossValueError, match=rf"target has a box with {what} at index \(1,\)"):
        LF.box_iou_loss(good, inverted, "giou", fmt)
    LF.box_iou_loss(inverted, good, "giou", fmt, mask=torch.tensor([True, False]))  # masked rows: anything


# ---------------------------------------------------------------- 7. module, compile, detection loss


def test_3d_module_roundtrip_and_compile():
    p, t = cuboids(5, 15, dtype=torch.float32), cuboids(5, 16, dtype=torch.float32)
    for kind in KINDS_3D:
        assert_module_matches(losskit.BoxIoULoss(kind=kind), LF.box_iou_loss(p, t, kind), p, t)
    assert_compiles(lambda a, b: losskit.BoxIoULoss(kind="diou")(a, b), p, t)


def test_detection_loss_takes_3d_boxes():
    logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(17))
    labels = torch.tensor([[0, 3, 1, -1], [2, 3, 3, 3]])
    bp = cuboids(8, 18, dtype=torch.float32).reshape(2, 4, 6).requires_grad_(True)
    bt = cuboids(8, 19, dtype=torch.float32).reshape(2, 4, 6)
    positive = (labels >= 0) & (labels < 3)
    for box_loss in ("giou", "diou", "l1"):
        loss = LF.detection_loss(logits, labels, bp, bt, box_loss=box_loss, cls_weight=0.0)
        if box_loss == "l1":
            want = (bp - bt).abs().sum(-1)[positive].sum() / positive.sum()
        else:
            want = (
                torch.stack(
                    [
                        ref_one_cuboid(bp[i].double(), bt[i].double(), box_loss)
                        for i in zip(*positive.nonzero(as_tuple=True))
                    ]
                ).sum()
                / positive.sum()
            )
        torch.testing.assert_close(loss.double(), want.detach().double(), rtol=1e-5, atol=1e-6)
        assert_finite_with_grads(loss, bp)
    with pytest.raises(LossValueError, match="kind='ciou' is defined for 2-D boxes only"):
        LF.detection_loss(logits, labels, bp, bt, box_loss="ciou")
    with pytest.raises(
        LossValueError, match=r"box_preds has shape \(2, 4, 5\), expected \(2, 4, 4\) \(or \(2, 4, 6\)"
    ):
        LF.detection_loss(logits, labels, bp[..., :5], bt[..., :5])
