"""Axis-aligned box geometry shared by the box IoU losses: 2-D ``(..., 4)`` and 3-D ``(..., 6)`` boxes.

Private helpers of :mod:`losskit.detection`: corner conversion, the element-wise IoU / GIoU / DIoU /
CIoU terms and the inverted-box value check.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import mul

import torch

from ._checks import LossValueError, can_read_values, shape_str

# 2-D names; with 6 coordinates they mean the 3-D analogue (min corner + max corner, min corner +
# sizes, centre + sizes). The 3-D names (MONAI's spelling) need 6 coordinates.
FORMATS_2D = ("xyxy", "xywh", "cxcywh")
FORMATS_3D = ("xyzxyz", "xyzwhd", "cxcyczwhd")
BOX_FORMATS = FORMATS_2D + FORMATS_3D
_LAYOUT = {"xyxy": "corners", "xywh": "size", "cxcywh": "centre"}
_LAYOUT.update(zip(FORMATS_3D, ("corners", "size", "centre")))


def box_dims(name: str, boxes: torch.Tensor, box_format: str) -> int:
    """Spatial dimension (2 or 3) of ``boxes`` ``(..., 4)`` or ``(..., 6)``; a clear error otherwise."""
    if boxes.dim() == 0 or boxes.shape[-1] not in (4, 6):
        raise LossValueError(
            f"{name} has shape {shape_str(boxes.shape)}, expected (..., 4) or (..., 6): one 2-D or 3-D box per row"
        )
    k = boxes.shape[-1] // 2
    if k == 2 and box_format in FORMATS_3D:
        raise LossValueError(
            f"box_format={box_format!r} is a 3-D format, but {name} has shape {shape_str(boxes.shape)}; "
            "expected (..., 6)"
        )
    return k


def corners(boxes: torch.Tensor, box_format: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(lo, hi)``: per-axis lists of the min and max coordinates of ``(..., 2k)`` boxes."""
    k = boxes.shape[-1] // 2
    c = boxes.unbind(-1)
    a, b = list(c[:k]), list(c[k:])
    layout = _LAYOUT[box_format]
    if layout == "corners":
        return a, b
    if layout == "size":
        return a, [ai + bi for ai, bi in zip(a, b)]
    return [ai - 0.5 * bi for ai, bi in zip(a, b)], [ai + 0.5 * bi for ai, bi in zip(a, b)]


def _prod(xs: list[torch.Tensor]) -> torch.Tensor:
    return reduce(mul, xs)


def _sum(xs: list[torch.Tensor]) -> torch.Tensor:
    return reduce(lambda u, v: u + v, xs)


def _aspect_angle(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """CIoU's aspect angle ``atan(w / h)`` of boxes with sides ``w, h >= 0``, as ``atan2(w, h)``.

    Exact, with the exact gradient, when one side is 0 (``atan(w / h)`` gives a NaN gradient at
    ``h = 0``; clamping the sides at ``eps`` would zero the gradient of the side that is 0). A point
    box (both sides 0), where the angle has no limit, counts as a square: ``pi / 4``, no gradient.
    """
    point = (w == 0) & (h == 0)
    one = torch.ones_like(w)
    return torch.atan2(torch.where(point, one, w), torch.where(point, one, h))


def box_iou_elementwise(
    pred: torch.Tensor, target: torch.Tensor, kind: str, box_format: str, eps: float
) -> torch.Tensor:
    """``1 - IoU`` plus the GIoU / DIoU / CIoU penalty of matching boxes, shape ``(...)``.

    Areas become volumes and the enclosing box's diagonal has three terms for 3-D boxes; CIoU's
    aspect term is 2-D only (the caller rejects it for 3-D boxes).
    """
    lo, hi = corners(pred, box_format)
    lo_g, hi_g = corners(target, box_format)
    # relu, not clamp_min(0): an overlap of width exactly 0 gets no gradient (clamp_min passes one
    # there, ~1 / union, unbounded when the union also goes to 0)
    inter = _prod(
        [torch.relu(torch.minimum(b, bg) - torch.maximum(a, ag)) for a, b, ag, bg in zip(lo, hi, lo_g, hi_g)]
    )
    size = [b - a for a, b in zip(lo, hi)]
    size_g = [b - a for a, b in zip(lo_g, hi_g)]
    union = _prod(size) + _prod(size_g) - inter
    iou = inter / (union + eps)
    loss = 1.0 - iou
    if kind == "iou":
        return loss
    # smallest enclosing box
    enc = [torch.maximum(b, bg) - torch.minimum(a, ag) for a, b, ag, bg in zip(lo, hi, lo_g, hi_g)]
    if kind == "giou":
        vol_c = _prod(enc)
        return loss + (vol_c - union) / (vol_c + eps)
    centre = _sum([((a + b) - (ag + bg)) ** 2 / 4 for a, b, ag, bg in zip(lo, hi, lo_g, hi_g)])
    loss = loss + centre / (_sum([e * e for e in enc]) + eps)
    if kind == "diou":
        return loss
    v = (4.0 / math.pi**2) * (_aspect_angle(*size_g) - _aspect_angle(*size)) ** 2
    with torch.no_grad():
        alpha = v / (1.0 - iou + v + eps)
    return loss + alpha * v


def check_box_sides(name: str, boxes: torch.Tensor, box_format: str, mask: torch.Tensor | None) -> None:
    """Boxes must not be inverted: ``x1 <= x2, y1 <= y2 (, z1 <= z2)`` or sizes ``>= 0``; a value check.

    Rows where ``mask`` is False are not checked (they may hold anything).
    """
    if boxes.numel() == 0 or not can_read_values(boxes, mask):
        return
    k = boxes.shape[-1] // 2
    if _LAYOUT[box_format] == "corners":
        sides = [boxes[..., k + i] - boxes[..., i] for i in range(k)]
        what = ("x2 < x1", "y2 < y1", "z2 < z1")
        need = "x1 <= x2 and y1 <= y2" if k == 2 else "x1 <= x2, y1 <= y2 and z1 <= z2"
    else:
        sides = [boxes[..., k + i] for i in range(k)]
        what = ("a negative width", "a negative height", "a negative depth")
        need = "w >= 0 and h >= 0" if k == 2 else "w, h, d >= 0"
    bad = reduce(torch.logical_or, [s < 0 for s in sides])
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        axis = next(i for i, s in enumerate(sides) if bool(s[index] < 0))
        raise LossValueError(
            f"{name} has a box with {what[axis]} at index {index}: {boxes[index].tolist()}; "
            f"{box_format!r} boxes need {need}"
        )
