"""``losskit bench`` cases for the Lovász and boundary losses, beside the eager code people copy.

Shapes are ``(N, C, H, W)`` logits with class-index targets, float32 (the Dice case's shape):

* ``lovasz_softmax``: Lovász-Softmax (classes present, the batch as one set) vs the reference
  recipe of Berman et al.: flatten to ``(pixels, C)``, then per class a sort of ``|fg - p|`` and a
  dot product with the Jaccard increments (a Python loop over classes);
* ``boundary``: boundary loss with precomputed signed distance maps (the training setup of
  Kervadec et al., maps made in the data pipeline) vs ``(softmax(x) * maps).mean()``;
* ``boundary_maps``: the same loss computing the maps from the target on every call with the torch
  distance transform vs the recipe people copy, SciPy's ``distance_transform_edt`` per image and
  class on the CPU (``one_hot2dist``) followed by the product.

segmentation_models_pytorch's ``LovaszLoss`` is added as a peer when it is installed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .cases import Case, Shape, Variant, _lf, _peer, make_classes, register_case

__all__ = ["eager_boundary_maps", "eager_lovasz_softmax"]


def _jaccard_increments(fg_sorted: torch.Tensor) -> torch.Tensor:
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))


def eager_lovasz_softmax(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Lovász-Softmax as the authors' recipe computes it (classes present, one set for the batch)."""
    c = x.shape[1]
    probs = x.softmax(1).movedim(1, -1).reshape(-1, c)
    labels = y.reshape(-1)
    losses = []
    for k in range(c):
        fg = (labels == k).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors_sorted, perm = torch.sort((fg - probs[:, k]).abs(), 0, descending=True)
        losses.append(torch.dot(errors_sorted, _jaccard_increments(fg[perm])))
    return torch.stack(losses).mean()


def eager_boundary_maps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SciPy signed distance maps per image and class (Kervadec's one_hot2dist), then the loss."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    c = x.shape[1]
    onehot = F.one_hot(y, c).movedim(-1, 1).cpu().numpy().astype(bool)
    maps = np.zeros(onehot.shape, dtype=np.float32)
    for n in range(onehot.shape[0]):
        for k in range(c):
            pos = onehot[n, k]
            if pos.any():
                neg = ~pos
                maps[n, k] = distance_transform_edt(neg) * neg - (distance_transform_edt(pos) - 1) * pos
    return (x.softmax(1) * torch.from_numpy(maps).to(x.device)).mean()


def make_maps(shape: Shape, dtype: torch.dtype, seed: int) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """``(logits, signed distance maps)`` of a random class-index target (maps made once, untimed)."""
    from losskit.segmentation import signed_distance_map

    (x, y), wrt = make_classes(shape, dtype, seed)
    onehot = F.one_hot(y, shape[1]).movedim(-1, 1)
    return (x, signed_distance_map(onehot, len(shape) - 2).to(dtype)), wrt


def make_blobs(shape: Shape, dtype: torch.dtype, seed: int) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """Logits and a target of a few square objects per image (distances span the whole image)."""
    (x, _), wrt = make_classes(shape, dtype, seed)
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.zeros(n, h, w, dtype=torch.long)
    for i in range(n):
        for k in range(1, c):
            top, left = (int(v) for v in torch.randint(0, max(h - h // 8, 1), (2,), generator=g))
            y[i, top : top + h // 8, left : left + w // 8] = k
    return (x, y), wrt


def _lovasz_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.lovasz_softmax_loss", "losskit", lambda x, y: LF.lovasz_softmax_loss(x, y)),
        Variant("eager (authors' recipe, loop over classes)", "eager", eager_lovasz_softmax),
        Variant("F.cross_entropy", "native", F.cross_entropy),
    ]
    kornia = _peer("kornia.losses")
    if kornia is not None:  # per image, every class: losskit's per_image=True, classes='all'
        out.append(
            Variant(
                "losskit.lovasz_softmax_loss(per_image=True, classes='all')",
                "losskit",
                lambda x, y: LF.lovasz_softmax_loss(x, y, classes="all", per_image=True),
            )
        )
        out.append(Variant("kornia lovasz_softmax_loss (per image, all classes)", "peer", kornia.lovasz_softmax_loss))
    smp = _peer("segmentation_models_pytorch.losses")
    if smp is not None:
        loss = smp.LovaszLoss("multiclass", per_image=False)
        out.append(Variant("smp LovaszLoss", "peer", lambda x, y: loss(x, y)))
    return out


def _boundary_variants() -> list[Variant]:
    LF = _lf()
    return [
        Variant(
            "losskit.boundary_loss (maps given)", "losskit", lambda x, d: LF.boundary_loss(x, distance_maps=d)
        ),
        Variant("eager (softmax(x) * maps).mean()", "eager", lambda x, d: (x.softmax(1) * d).mean()),
        Variant("F.softmax + sum (floor)", "native", lambda x, d: x.softmax(1).sum() * 0.0),
    ]


def _boundary_maps_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.boundary_loss (torch EDT per call)", "losskit", lambda x, y: LF.boundary_loss(x, y))
    ]
    if _peer("scipy.ndimage") is not None:
        out.append(Variant("eager (SciPy EDT per image and class)", "eager", eager_boundary_maps))
    out.append(Variant("F.cross_entropy", "native", F.cross_entropy))
    return out


_SEG = (16, 4, 128, 128)
_SEG_QUICK = (2, 4, 16, 16)

register_case(Case("lovasz_softmax", make_classes, _SEG, _SEG_QUICK, _lovasz_variants, []))
register_case(Case("boundary", make_maps, _SEG, _SEG_QUICK, _boundary_variants, []))
register_case(
    Case(
        "boundary_maps",
        make_blobs,
        _SEG,
        _SEG_QUICK,
        _boundary_maps_variants,
        [],
        note="square objects of 1/8 of the image side per class: distances span the image",
        max_repeat=5,
    )
)
