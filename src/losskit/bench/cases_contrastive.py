"""``losskit bench`` cases for the image-text losses, beside the eager code people write.

Shapes are ``(B, D)``: ``B`` image-text pairs of dimension ``D``, float32; the inputs are the image and
text features, the log-scale and the bias (all four receive gradients, as in training).

* ``clip``: :func:`losskit.functional.clip_loss`, plain and with ``chunk_size=256``, vs the open_clip composition (normalise, one
  ``(B, B)`` logits matrix, ``(CE(logits) + CE(logits.T)) / 2``);
* ``siglip``: :func:`losskit.functional.siglip_loss`, plain and with ``chunk_size=256`` (blocks
  recomputed in backward), vs the big_vision composition (``(B, B)`` logits, ``2 * eye - 1`` labels,
  ``-logsigmoid(labels * logits).sum() / B``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cases import Case, Inputs, Shape, Variant, _lf, register_case

__all__ = ["eager_clip", "eager_siglip", "make_image_text"]

CHUNK = 256


def eager_clip(
    img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = log_scale.exp().clamp(max=100.0) * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def eager_siglip(
    img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = log_scale.exp().clamp(max=100.0) * img @ txt.T + bias
    labels = 2 * torch.eye(img.shape[0], device=img.device) - 1
    return -F.logsigmoid(labels * logits).sum() / img.shape[0]


def make_image_text(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(image (B, D), text (B, D), log-scale, bias)``: matching pairs are correlated."""
    b, d = shape
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, d, generator=g)
    txt = img + torch.randn(b, d, generator=g)
    log_scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    return (img.to(dtype), txt.to(dtype), log_scale, bias), (0, 1, 2, 3)


def _clip_variants() -> list[Variant]:
    LF = _lf()
    return [
        Variant("losskit.clip_loss", "losskit", lambda i, t, s, b: LF.clip_loss(i, t, s)),
        Variant(
            f"losskit.clip_loss (chunk_size={CHUNK})",
            "losskit",
            lambda i, t, s, b: LF.clip_loss(i, t, s, chunk_size=CHUNK),
            note="blocks recomputed in backward",
        ),
        Variant("eager (open_clip: (B, B) logits, CE both ways)", "eager", eager_clip),
    ]


def _siglip_variants() -> list[Variant]:
    LF = _lf()
    return [
        Variant("losskit.siglip_loss", "losskit", LF.siglip_loss),
        Variant(
            f"losskit.siglip_loss (chunk_size={CHUNK})",
            "losskit",
            lambda i, t, s, b: LF.siglip_loss(i, t, s, b, chunk_size=CHUNK),
            note="blocks recomputed in backward",
        ),
        Variant("eager (big_vision: (B, B) logits, logsigmoid)", "eager", eager_siglip),
    ]


_SHAPE, _QUICK = (4096, 512), (32, 8)
_SCALING = [(1024, 512), (4096, 512), (8192, 512)]
_NOTE = "B image-text pairs of dimension D, float32; gradients for the features, scale and bias"

register_case(Case("clip", make_image_text, _SHAPE, _QUICK, _clip_variants, _SCALING, note=_NOTE))
register_case(Case("siglip", make_image_text, _SHAPE, _QUICK, _siglip_variants, _SCALING, note=_NOTE))
