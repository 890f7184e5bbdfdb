r"""Detection losses: box IoU losses (IoU, GIoU, DIoU, CIoU), the seed's composite loss and a
RetinaNet-style detection objective.

The classification terms are the focal losses of :mod:`losskit.classification`
(:func:`~losskit.classification.focal_loss`, :func:`~losskit.classification.sigmoid_focal_loss`) and
the box regression term :func:`~losskit.regression.smooth_l1_loss`; nothing is re-implemented here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._boxes import BOX_FORMATS, box_dims, box_iou_elementwise, check_box_sides
from ._checks import (
    LossValueError,
    can_read_values,
    check_broadcastable,
    check_choice,
    check_class_target,
    check_floating,
    check_int,
    check_integer,
    check_min_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from ._reduction import Normalizer, check_normalizer, reduce_loss, upcast
from .classification import focal_loss, sigmoid_focal_loss
from .distributed import ddp_normalizer, is_initialized
from .registry import register
from .regression import smooth_l1_loss

__all__ = [
    "BoxIoULoss",
    "CompositeLoss",
    "DetectionLoss",
    "box_iou_loss",
    "detection_loss",
]

IOU_KINDS = ("iou", "giou", "diou", "ciou")
BOX_LOSSES = ("smooth_l1", "l1", "giou", "diou", "ciou")


# ----------------------------------------------------------------------------- box IoU losses


def box_iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str = "giou",
    box_format: str = "xyxy",
    eps: float = 1e-7,
    reduction: str = "mean",
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""IoU-based box regression losses: IoU, GIoU (Rezatofighi et al. 2019), DIoU and CIoU
    (Zheng et al. 2020).

    .. math::
        \mathcal{L}_{IoU} = 1 - IoU,\qquad
        \mathcal{L}_{GIoU} = 1 - IoU + \frac{|C| - |A \cup B|}{|C|},\qquad
        \mathcal{L}_{DIoU} = 1 - IoU + \frac{\rho^2(b, b^{gt})}{c^2},\qquad
        \mathcal{L}_{CIoU} = \mathcal{L}_{DIoU} + \alpha v

    with ``C`` the smallest enclosing box, ``rho`` the distance between centres, ``c`` the enclosing
    box's diagonal, ``v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2`` and ``alpha = v / (1 - IoU + v)``
    treated as a constant (computed under ``no_grad``), all with ``eps`` where torchvision puts it:
    same values as ``torchvision.ops.generalized_box_iou_loss``, ``distance_box_iou_loss`` and
    ``complete_box_iou_loss`` on proper boxes. Differences: boxes may have a zero width or height:
    the aspect-ratio angle is ``atan2(w, h)``, exact with its exact gradient when one side is 0 (the
    gradient is continuous as a side goes to 0, where torchvision's ``atan(w / h)`` gives NaN); a
    point box (both sides 0) counts as a square (angle ``pi / 4``, no gradient through it); an overlap
    of width exactly 0 gets no gradient. The default reduction is ``'mean'`` (torchvision:
    ``'none'``); ``'mean'`` over no boxes is a graph-connected zero.

    Boxes must not be inverted: ``x1 <= x2`` and ``y1 <= y2`` (``'xyxy'``), ``w, h >= 0`` (the other
    formats). With value checks on (the default, :func:`losskit.set_value_checks`) an inverted box
    whose ``mask`` is True raises a :class:`~losskit.LossValueError` naming the argument and the box;
    with them off (or on ``'meta'`` tensors) the values for inverted boxes are unspecified. Where both
    boxes are degenerate and the enclosing box has zero area (both on one line), GIoU's
    ``(|C| - |A \cup B|) / |C|`` is ``0 / eps = 0``, and it jumps to its limit within ``~eps`` of it.

    **3-D boxes** ``(..., 6)`` (axis-aligned; e.g. CT / MRI detection): areas become volumes, ``C``
    is the smallest enclosing cuboid, and ``rho`` and ``c`` are the Euclidean centre distance and the
    enclosing cuboid's space diagonal -- the definitions of GIoU (Rezatofighi et al. 2019 state it for
    any dimension) and DIoU (Zheng et al. 2020 define both through distances, not through 2-D
    quantities), so ``'iou'``, ``'giou'`` and ``'diou'`` are the published losses. CIoU's aspect term
    ``v`` compares ``atan(w / h)`` of two rectangles and has no standard 3-D form (the 3-D detection
    literature uses several incompatible extensions), so ``kind='ciou'`` with 3-D boxes raises a
    :class:`~losskit.LossValueError`. Formats: ``'xyxy'`` / ``'xyzxyz'`` =
    ``(x1, y1, z1, x2, y2, z2)``, ``'xywh'`` / ``'xyzwhd'`` = ``(x1, y1, z1, w, h, d)``, ``'cxcywh'``
    / ``'cxcyczwhd'`` = ``(cx, cy, cz, w, h, d)`` (the 3-D names, MONAI's spelling, require 6
    coordinates).

    Args:
        pred, target: boxes ``(..., 4)`` (2-D) or ``(..., 6)`` (3-D) in ``box_format``: ``'xyxy'``
            (corners), ``'xywh'`` (top-left corner, width, height) or ``'cxcywh'`` (centre, width,
            height), or their 3-D names ``'xyzxyz'``, ``'xyzwhd'``, ``'cxcyczwhd'``.
        kind: ``'iou' | 'giou' | 'diou' | 'ciou'`` (``'ciou'``: 2-D boxes only).
        eps: guards the divisions.
        reduction: ``'none'`` (shape ``(...)``), ``'mean'`` or ``'sum'``.
        weight: per-box weights broadcastable to ``(...)``.
        mask: bool ``(...)``, ``False`` boxes are ignored.
        normalizer: with ``'mean'``, divide the sum by this (e.g. the number of positive anchors).

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[1.0, 0.0, 3.0, 2.0]])  # IoU = 2 / 6, enclosing area 6
        >>> box_iou_loss(pred, target, kind="iou")
        tensor(0.6667)
        >>> box_iou_loss(pred, target, kind="giou")
        tensor(0.6667)
        >>> box_iou_loss(pred, target, kind="diou")  # + centre distance^2 / diagonal^2 = 1 / 13
        tensor(0.7436)
        >>> cube = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])  # 3-D: (x1, y1, z1, x2, y2, z2)
        >>> shifted = torch.tensor([[1.0, 0.0, 0.0, 3.0, 2.0, 2.0]])  # IoU = 4 / 12
        >>> box_iou_loss(cube, shifted, kind="diou")  # + 1 / (3^2 + 2^2 + 2^2)
        tensor(0.7255)
    """
    return _box_iou(
        pred, target, kind, box_format, eps, reduction, weight, mask, normalizer, ("pred", "target")
    )


def _box_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    box_format: str,
    eps: float,
    reduction: str,
    weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    normalizer: Normalizer,
    names: tuple[str, str],
) -> torch.Tensor:
    """:func:`box_iou_loss` with its error messages naming the boxes ``names``."""
    pn, tn = names
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_choice("kind", kind, IOU_KINDS)
    check_choice("box_format", box_format, BOX_FORMATS)
    check_number("eps", eps, low=0.0, low_open=True)
    check_floating(pn, pred)
    check_floating(tn, target)
    check_same_device((pn, pred), (tn, target), ("weight", weight), ("mask", mask))
    dims = box_dims(pn, pred, box_format)
    check_same_shape(tn, target, pn, pred)
    if dims == 3 and kind == "ciou":
        raise LossValueError(
            f"kind='ciou' is defined for 2-D boxes only ({pn} has shape {shape_str(pred.shape)}): its "
            "aspect-ratio term atan(w / h) has no standard 3-D form; use kind='diou' (or 'giou', 'iou') "
            "for 3-D boxes"
        )
    if weight is not None:
        check_floating("weight", weight)
        check_broadcastable("weight", weight, f"{pn}'s boxes", pred[..., 0])
    if mask is not None:
        check_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise LossValueError(f"mask must be a bool tensor (True = counts), got dtype {mask.dtype}")
        check_broadcastable("mask", mask, f"{pn}'s boxes", pred[..., 0])
    check_box_sides(pn, pred, box_format, mask)
    check_box_sides(tn, target, box_format, mask)
    p, t = upcast(pred), upcast(target)
    loss = box_iou_elementwise(p, t, kind, box_format, float(eps))
    w = None if weight is None else weight.to(dtype=loss.dtype)
    return reduce_loss(loss, reduction, weight=w, mask=mask, normalizer=normalizer)


class BoxIoULoss(nn.Module):
    """Module form of :func:`box_iou_loss`.

    Example:
        >>> loss_fn = BoxIoULoss(kind="ciou")
        >>> box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> loss_fn(box, box)
        tensor(0.)
    """

    def __init__(
        self, kind: str = "giou", box_format: str = "xyxy", eps: float = 1e-7, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.kind = check_choice("kind", kind, IOU_KINDS)
        self.box_format = check_choice("box_format", box_format, BOX_FORMATS)
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))
        self.reduction = check_reduction(reduction)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return box_iou_loss(pred, target, self.kind, self.box_format, self.eps, self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, box_format={self.box_format!r}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------- seed composite loss


class CompositeLoss(nn.Module):
    r"""The seed's composite detection loss: softmax focal loss + Smooth L1 box loss.

    .. math::
        \mathcal{L} = w_{cls}\,\operatorname{mean}_i\big[\alpha (1 - p_{i,y_i})^\gamma\,
        \mathrm{CE}_i\big] + w_{bbox}\,\operatorname{mean}\big[\mathrm{SmoothL1}_\beta(b, b^{gt})\big]

    Same constructor and ``forward`` as the seed (``CompositeLoss(alpha=1, gamma=2, cls_weight=1.0,
    bbox_weight=1.0)``, ``forward(cls_preds, cls_targets, bbox_preds, bbox_targets)``) and the same
    value: :func:`~losskit.classification.focal_loss` is the seed's softmax focal loss (``alpha`` a
    plain multiplier) and the box term is ``F.smooth_l1_loss`` (``beta = 1``) averaged over all
    coordinates. Both terms are plain means over the batch: unlike :class:`DetectionLoss` there are
    no background or ignored boxes. The last values of both terms (detached) are in
    :attr:`last_terms`.

    Example:
        >>> loss_fn = CompositeLoss()
        >>> cls_preds = torch.tensor([[10.0, -10.0]])
        >>> box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> loss_fn(cls_preds, torch.tensor([0]), box, box + 2.0)  # focal ~0, smooth L1 = 2 - 0.5
        tensor(1.5000)
    """

    def __init__(
        self,
        alpha: float = 1,
        gamma: float = 2,
        cls_weight: float = 1.0,
        bbox_weight: float = 1.0,
        *,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.gamma = float(check_number("gamma", gamma, low=0.0))
        self.cls_weight = float(check_number("cls_weight", cls_weight, low=0.0))
        self.bbox_weight = float(check_number("bbox_weight", bbox_weight, low=0.0))
        self.beta = float(check_number("beta", beta, low=0.0))
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self,
        cls_preds: torch.Tensor,
        cls_targets: torch.Tensor,
        bbox_preds: torch.Tensor,
        bbox_targets: torch.Tensor,
    ) -> torch.Tensor:
        # check under the seed's argument names (the inner losses would report 'input' / 'target')
        check_floating("cls_preds", cls_preds)
        check_min_ndim("cls_preds", cls_preds, 2, "(N, C) or (N, C, d1, ...)")
        check_class_target(cls_preds, cls_targets, input_name="cls_preds", target_name="cls_targets")
        check_floating("bbox_preds", bbox_preds)
        check_floating("bbox_targets", bbox_targets)
        check_same_device(
            ("cls_preds", cls_preds),
            ("cls_targets", cls_targets),
            ("bbox_preds", bbox_preds),
            ("bbox_targets", bbox_targets),
        )
        check_same_shape("bbox_targets", bbox_targets, "bbox_preds", bbox_preds)
        cls = focal_loss(cls_preds, cls_targets, self.alpha, self.gamma, reduction="mean")
        box = smooth_l1_loss(bbox_preds, bbox_targets, self.beta, reduction="mean")
        self.last_terms = {"cls": cls.detach(), "bbox": box.detach()}
        return self.cls_weight * cls + self.bbox_weight * box

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, cls_weight={self.cls_weight}, "
            f"bbox_weight={self.bbox_weight}"
        )


# ----------------------------------------------------------------------------- RetinaNet-style loss


def _detection_terms(
    cls_logits: torch.Tensor,
    labels: torch.Tensor,
    box_preds: torch.Tensor,
    box_targets: torch.Tensor,
    *,
    num_classes: int | None,
    alpha: float,
    gamma: float,
    box_loss: str,
    beta: float,
    box_format: str,
    ignore_index: int,
    normalizer: Normalizer,
    gather_distributed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_floating("cls_logits", cls_logits)
    check_integer("labels", labels)
    check_same_device(
        ("cls_logits", cls_logits), ("labels", labels), ("box_preds", box_preds), ("box_targets", box_targets)
    )
    if cls_logits.dim() < 2:
        raise LossValueError(
            f"cls_logits must be (..., C) with one logit per class, got shape {shape_str(cls_logits.shape)}"
        )
    c = cls_logits.shape[-1]
    if num_classes is not None and c != num_classes:
        raise LossValueError(
            f"cls_logits has {c} classes in its last dimension, expected num_classes={num_classes}"
        )
    if labels.shape != cls_logits.shape[:-1]:
        raise LossValueError(
            f"labels has shape {shape_str(labels.shape)}, expected {shape_str(cls_logits.shape[:-1])} "
            f"to match cls_logits of shape {shape_str(cls_logits.shape)}"
        )
    check_floating("box_preds", box_preds)
    check_floating("box_targets", box_targets)
    if tuple(box_preds.shape) != (*labels.shape, 4) and tuple(box_preds.shape) != (*labels.shape, 6):
        raise LossValueError(
            f"box_preds has shape {shape_str(box_preds.shape)}, expected {shape_str((*labels.shape, 4))} "
            f"(or {shape_str((*labels.shape, 6))} for 3-D boxes)"
        )
    check_same_shape("box_targets", box_targets, "box_preds", box_preds)
    check_normalizer(normalizer, "mean")
    if labels.numel() > 0 and can_read_values(labels):
        bad = (labels != ignore_index) & ((labels < 0) | (labels > c))
        if bool(bad.any()):
            value = int(labels[bad][0])
            raise LossValueError(
                f"labels contains {value}, expected a class in [0, {c}), {c} (background) or "
                f"ignore_index={ignore_index}"
            )
    valid = labels != ignore_index
    positive = valid & (labels >= 0) & (labels < c)
    if normalizer is not None:
        norm: Normalizer = normalizer
    elif gather_distributed and is_initialized():
        # max(1, positives summed over ranks) / W: with DDP's gradient averaging, the gradient of the
        # global-batch loss divided by the global positive count
        norm = ddp_normalizer(positive).to(device=cls_logits.device, dtype=upcast(cls_logits).dtype)
    else:
        norm = positive.sum().clamp_min(1).to(upcast(cls_logits).dtype)
    # background (label C) and ignored anchors -> all-zero one-hot rows
    safe = torch.where(positive, labels, torch.full_like(labels, c)).long()
    onehot = torch.nn.functional.one_hot(safe, c + 1)[..., :c].to(upcast(cls_logits).dtype)
    cls = sigmoid_focal_loss(
        cls_logits, onehot, alpha, gamma, reduction="mean", mask=valid.unsqueeze(-1), normalizer=norm
    )
    if box_loss in ("smooth_l1", "l1"):
        b = 0.0 if box_loss == "l1" else beta
        box = smooth_l1_loss(
            box_preds, box_targets, b, mask=positive.unsqueeze(-1), reduction="mean", normalizer=norm
        )
    else:
        box = _box_iou(
            box_preds,
            box_targets,
            box_loss,
            box_format,
            1e-7,
            "mean",
            None,
            positive,
            norm,
            ("box_preds", "box_targets"),
        )
    return cls, box


def detection_loss(
    cls_logits: torch.Tensor,
    labels: torch.Tensor,
    box_preds: torch.Tensor,
    box_targets: torch.Tensor,
    *,
    num_classes: int | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_loss: str = "smooth_l1",
    beta: float = 0.11,
    cls_weight: float = 1.0,
    box_weight: float = 1.0,
    box_format: str = "xyxy",
    ignore_index: int = -1,
    normalizer: Normalizer = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""RetinaNet objective (Lin et al. 2017): sigmoid focal loss over all anchors plus a box loss on
    the positive anchors, both divided by the number of positive anchors.

    .. math::
        \mathcal{L} = \frac{1}{\max(1, N_{pos})}\Big( w_{cls} \sum_{a \ne \mathrm{ign}} \sum_{c}
        \mathrm{FL}(x_{ac}, y_{ac}) + w_{box} \sum_{a \in \mathrm{pos}} \ell_{box}(b_a, b^{gt}_a) \Big)

    Args:
        cls_logits: ``(N, A, C)`` class logits (any leading shape ``(..., C)``).
        labels: ``(N, A)`` integers: a class in ``[0, C)`` = positive anchor, ``C`` = background
            (all-zero focal targets), ``ignore_index`` (default -1) = ignored (no loss at all).
        box_preds, box_targets: ``(N, A, 4)`` (or ``(N, A, 6)``, 3-D): regression targets for
            ``'smooth_l1'`` / ``'l1'`` (summed over the coordinates), boxes in ``box_format`` for
            ``'giou' | 'diou' | 'ciou'``.
            Only positive anchors count; other rows may hold anything finite.
        alpha, gamma: sigmoid focal loss parameters (:func:`~losskit.classification.sigmoid_focal_loss`).
        box_loss: ``'smooth_l1'`` (``beta``, default 0.11 as in Detectron's RetinaNet), ``'l1'``,
            ``'giou'``, ``'diou'``, ``'ciou'`` (:func:`box_iou_loss`).
        cls_weight, box_weight: weights of the two terms.
        normalizer: replaces ``max(1, N_pos)``, e.g. the positive count averaged over DDP ranks
            (RetinaNet implementations all-reduce it) or over a gradient-accumulation window.
        gather_distributed: under DDP, divide by ``max(1, N_pos summed over ranks) / W``
            (:func:`losskit.distributed.ddp_normalizer`), so that DDP's gradient averaging gives the
            gradient of the loss of the global batch; a collective, so every rank must call it. An
            explicit ``normalizer`` takes precedence; without an initialised process group the flag
            changes nothing.

    Example:
        >>> logits = torch.full((1, 3, 2), -20.0)
        >>> logits[0, 0, 1] = 20.0  # anchor 0 confidently class 1
        >>> labels = torch.tensor([[1, 2, -1]])  # positive, background, ignored
        >>> boxes = torch.zeros(1, 3, 4)
        >>> detection_loss(logits, labels, boxes, boxes)
        tensor(0.)
    """
    check_choice("box_loss", box_loss, BOX_LOSSES)
    check_choice("box_format", box_format, BOX_FORMATS)
    check_int("num_classes", num_classes, low=1, allow_none=True)
    check_int("ignore_index", ignore_index)
    check_number("beta", beta, low=0.0)
    check_number("cls_weight", cls_weight, low=0.0)
    check_number("box_weight", box_weight, low=0.0)
    cls, box = _detection_terms(
        cls_logits,
        labels,
        box_preds,
        box_targets,
        num_classes=num_classes,
        alpha=alpha,
        gamma=gamma,
        box_loss=box_loss,
        beta=float(beta),
        box_format=box_format,
        ignore_index=ignore_index,
        normalizer=normalizer,
        gather_distributed=gather_distributed,
    )
    return float(cls_weight) * cls + float(box_weight) * box


class DetectionLoss(nn.Module):
    """Module form of :func:`detection_loss`; the last per-term values (detached, already divided
    by the normaliser and before ``cls_weight`` / ``box_weight``) are kept in :attr:`last_terms`
    as ``{'cls': ..., 'box': ...}``.

    ``forward(cls_logits, labels, box_preds, box_targets, normalizer=None)``: pass ``normalizer``
    to replace the local ``max(1, N_pos)`` (e.g. a DDP-global positive count), or build the module
    with ``gather_distributed=True`` to reduce the positive count over DDP ranks on every call.

    Example:
        >>> loss_fn = DetectionLoss(num_classes=2, box_loss="giou")
        >>> logits = torch.zeros(1, 2, 2)
        >>> labels = torch.tensor([[0, 2]])
        >>> boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
        >>> loss = loss_fn(logits, labels, boxes, boxes)
        >>> sorted(loss_fn.last_terms)
        ['box', 'cls']
    """

    def __init__(
        self,
        num_classes: int | None = None,
        alpha: float = 0.25,
        gamma: float = 2.0,
        box_loss: str = "smooth_l1",
        beta: float = 0.11,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        box_format: str = "xyxy",
        ignore_index: int = -1,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, low=1, allow_none=True)
        self.alpha = float(check_number("alpha", alpha, high=1.0))
        self.gamma = float(check_number("gamma", gamma, low=0.0))
        self.box_loss = check_choice("box_loss", box_loss, BOX_LOSSES)
        self.beta = float(check_number("beta", beta, low=0.0))
        self.cls_weight = float(check_number("cls_weight", cls_weight, low=0.0))
        self.box_weight = float(check_number("box_weight", box_weight, low=0.0))
        self.box_format = check_choice("box_format", box_format, BOX_FORMATS)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.gather_distributed = bool(gather_distributed)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self,
        cls_logits: torch.Tensor,
        labels: torch.Tensor,
        box_preds: torch.Tensor,
        box_targets: torch.Tensor,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        cls, box = _detection_terms(
            cls_logits,
            labels,
            box_preds,
            box_targets,
            num_classes=self.num_classes,
            alpha=self.alpha,
            gamma=self.gamma,
            box_loss=self.box_loss,
            beta=self.beta,
            box_format=self.box_format,
            ignore_index=self.ignore_index,
            normalizer=normalizer,
            gather_distributed=self.gather_distributed,
        )
        self.last_terms = {"cls": cls.detach(), "box": box.detach()}
        return self.cls_weight * cls + self.box_weight * box

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, gamma={self.gamma}, "
            f"box_loss={self.box_loss!r}"
        )


_FAMILY = "detection"
register(
    "box_iou",
    BoxIoULoss,
    family=_FAMILY,
    functional=box_iou_loss,
    source="Rezatofighi et al. 2019; Zheng et al. 2020",
    notes="kind iou/giou/diou/ciou; finite for zero-size boxes",
)
register(
    "composite",
    CompositeLoss,
    family=_FAMILY,
    source="seed 000",
    notes="softmax focal mean + Smooth L1 mean, weighted",
)
register(
    "detection",
    DetectionLoss,
    family=_FAMILY,
    functional=detection_loss,
    source="Lin et al. 2017 (RetinaNet)",
    notes="sigmoid focal + box loss / #positives; pluggable normalizer",
)
