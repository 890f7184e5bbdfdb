"""Angular-margin softmax losses with learnable class centres: ArcFace and CosFace."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    LossValueError,
    check_choice,
    check_class_range,
    check_floating,
    check_int,
    check_number,
    check_reduction,
    check_same_device,
    shape_str,
)
from .._reduction import reduce_loss, upcast
from ..registry import register
from ._common import FAMILY, _check_embeddings_labels, _safe_sqrt

__all__ = ["AngularMarginLoss", "ArcFaceLoss", "CosFaceLoss", "SubCenterArcFaceLoss", "angular_margin_loss"]


# ============================================================================ angular margin (ArcFace / CosFace)

ANGULAR_KINDS = ("arcface", "cosface")


def angular_margin_loss(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 64.0,
    margin: float = 0.5,
    kind: str = "arcface",
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Additive angular (ArcFace, Deng et al. 2019) or cosine (CosFace, Wang et al. 2018) margin softmax.

    With ``cos_j = cos(x, W_j)`` (embedding and class centres L2-normalised) and ``y`` the label:

    .. math::
        \ell = -\log \frac{e^{s\, \psi(\cos_y)}}{e^{s\, \psi(\cos_y)} + \sum_{j \ne y} e^{s \cos_j}},
        \qquad \psi_{\text{arc}}(\cos\theta) = \cos(\theta + m), \quad
        \psi_{\text{cos}}(\cos\theta) = \cos\theta - m

    ArcFace uses ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` while ``theta + m <= pi``
    and, beyond (where ``cos(theta + m)`` would increase again), ``cos(theta) - m sin(m)`` as in the
    authors' code, so the target logit keeps decreasing with the angle. ``sin(theta)`` uses a safe
    square root (finite gradient at ``cos = +-1``). ``margin = 0`` gives the normalised-softmax
    cross-entropy with logits ``s cos_j`` for both kinds.

    Args:
        embeddings: ``(B, D)``.
        weight: ``(C, D)`` class centres, or ``(C, K, D)`` with ``K`` sub-centres per class (the
            module owns them as a parameter).
        labels: ``(B,)`` integer class indices in ``[0, C)``.
        scale: ``s > 0`` (the papers use 64).
        margin: ``m >= 0``: radians for ArcFace (0.5, at most ``pi / 2``), cosine units for CosFace
            (0.35).
        kind: ``'arcface'`` or ``'cosface'``.
        reduction: ``'none' | 'mean' | 'sum'``; ``mean`` of an empty batch is a graph-connected 0.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> angular_margin_loss(emb, centres, torch.tensor([0, 1]), scale=1.0, margin=0.0)
        tensor(0.3133)
    """
    check_reduction(reduction)
    check_number("scale", scale, low=0.0, low_open=True)
    check_choice("kind", kind, ANGULAR_KINDS)
    check_number("margin", margin, low=0.0, high=math.pi / 2 if kind == "arcface" else None)
    emb, labels = _check_embeddings_labels(embeddings, labels)
    check_floating("weight", weight)
    check_same_device(("embeddings", embeddings), ("weight", weight))
    if weight.dim() not in (2, 3) or weight.shape[-1] != emb.shape[1] or 0 in weight.shape[1:-1]:
        raise LossValueError(
            f"weight has shape {shape_str(weight.shape)}, expected (C, {emb.shape[1]}) or "
            f"(C, K, {emb.shape[1]}) with K >= 1: one centre (or K sub-centres) per class with the "
            f"embeddings' dimension"
        )
    check_class_range("labels", labels, weight.shape[0])
    w = upcast(weight).to(emb.dtype).contiguous()
    if w.dim() == 2:
        cos = F.normalize(emb, dim=-1) @ F.normalize(w, dim=-1).T
    else:  # (B, C * K) -> max over each class's K sub-centres
        c, k, d = w.shape
        cos = (F.normalize(emb, dim=-1) @ F.normalize(w, dim=-1).reshape(c * k, d).T).reshape(-1, c, k)
        cos = cos.amax(dim=2)
    target = cos.gather(1, labels[:, None]).squeeze(1)
    m = float(margin)
    if kind == "cosface":
        psi = target - m
    else:
        sin = _safe_sqrt((1.0 - target * target).clamp_min(0.0))
        arc = target * math.cos(m) - sin * math.sin(m)
        psi = torch.where(target > math.cos(math.pi - m), arc, target - m * math.sin(m))
    logits = cos.scatter(1, labels[:, None], psi[:, None]) * float(scale)
    per_sample = torch.logsumexp(logits, dim=1) - logits.gather(1, labels[:, None]).squeeze(1)
    return reduce_loss(per_sample, reduction)


class AngularMarginLoss(nn.Module):
    """Angular-margin softmax with learnable class centres: ``loss_fn(embeddings, labels)``.

    Owns ``weight``, a ``(num_classes, embedding_dim)`` parameter (``(num_classes, sub_centers,
    embedding_dim)`` with ``sub_centers > 1``; Xavier-uniform initialised, as in the ArcFace code); add it to the optimizer (``loss_fn.parameters()``). See
    :func:`angular_margin_loss`.

    Example:
        >>> loss_fn = AngularMarginLoss(embedding_dim=8, num_classes=4, kind="cosface", margin=0.35)
        >>> loss = loss_fn(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
        >>> loss.backward()
        >>> loss_fn.weight.grad.shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        kind: str = "arcface",
        reduction: str = "mean",
        sub_centers: int = 1,
    ) -> None:
        super().__init__()
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.sub_centers = check_int("sub_centers", sub_centers, low=1)
        self.scale = float(check_number("scale", scale, low=0.0, low_open=True))
        self.kind = check_choice("kind", kind, ANGULAR_KINDS)
        self.margin = float(
            check_number("margin", margin, low=0.0, high=math.pi / 2 if kind == "arcface" else None)
        )
        self.reduction = check_reduction(reduction)
        shape = (
            (num_classes, embedding_dim) if sub_centers == 1 else (num_classes, sub_centers, embedding_dim)
        )
        self.weight = nn.Parameter(torch.empty(shape))
        # Xavier-uniform over the (C * K, D) matrix of centres
        nn.init.xavier_uniform_(self.weight.data.view(-1, embedding_dim))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return angular_margin_loss(
            embeddings, self.weight, labels, self.scale, self.margin, self.kind, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}, kind={self.kind!r}, reduction={self.reduction!r}"
            + (f", sub_centers={self.sub_centers}" if self.sub_centers > 1 else "")
        )


class ArcFaceLoss(AngularMarginLoss):
    """ArcFace (additive angular margin, Deng et al. 2019): ``s = 64``, ``m = 0.5`` by default.

    Example:
        >>> ArcFaceLoss(embedding_dim=8, num_classes=4)
        ArcFaceLoss(embedding_dim=8, num_classes=4, scale=64.0, margin=0.5, kind='arcface', reduction='mean')
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin, "arcface", reduction)


class CosFaceLoss(AngularMarginLoss):
    """CosFace (large margin cosine loss, Wang et al. 2018): ``s = 64``, ``m = 0.35`` by default.

    Example:
        >>> CosFaceLoss(embedding_dim=8, num_classes=4)
        CosFaceLoss(embedding_dim=8, num_classes=4, scale=64.0, margin=0.35, kind='cosface', reduction='mean')
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.35,
        reduction: str = "mean",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin, "cosface", reduction)


class SubCenterArcFaceLoss(AngularMarginLoss):
    """Sub-centre ArcFace (Deng et al., ECCV 2020): ``K = 3`` sub-centres per class, ``s = 64``, ``m = 0.5``.

    ``weight`` is ``(num_classes, sub_centers, embedding_dim)``; each class's cosine is the largest
    over its sub-centres (see :func:`angular_margin_loss`).

    Example:
        >>> loss_fn = SubCenterArcFaceLoss(embedding_dim=8, num_classes=4)
        >>> loss_fn.weight.shape
        torch.Size([4, 3, 8])
        >>> loss_fn(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        sub_centers: int = 3,
        scale: float = 64.0,
        margin: float = 0.5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin, "arcface", reduction, sub_centers)


# ============================================================================ registry

register(
    "arcface",
    ArcFaceLoss,
    family=FAMILY,
    functional=angular_margin_loss,
    source="Deng et al. CVPR 2019 (ArcFace)",
    notes="learnable centres; needs embedding_dim, num_classes; cos(theta + m), s=64, m=0.5",
)
register(
    "cosface",
    CosFaceLoss,
    family=FAMILY,
    functional=angular_margin_loss,
    source="Wang et al. CVPR 2018 (CosFace)",
    notes="learnable centres; needs embedding_dim, num_classes; cos(theta) - m, s=64, m=0.35",
)
register(
    "sub_center_arcface",
    SubCenterArcFaceLoss,
    family=FAMILY,
    functional=angular_margin_loss,
    source="Deng et al. ECCV 2020 (sub-center ArcFace)",
    notes="K=3 sub-centres per class, max over them; weight (C, K, D); s=64, m=0.5",
)
