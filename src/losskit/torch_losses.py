"""PyTorch's own losses, registered by name where torch's implementation is already right.

These are torch's modules and functionals, not copies: ``losskit.build("mse")`` returns a
:class:`torch.nn.MSELoss`. Their reductions are torch's (``mean`` over an empty input is NaN there).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .registry import register

__all__: list[str] = []

_FAMILY = "torch"
register("mse", nn.MSELoss, family=_FAMILY, functional=F.mse_loss, source="torch", notes="torch's module")
register("l1", nn.L1Loss, family=_FAMILY, functional=F.l1_loss, source="torch", notes="torch's module")
register(
    "bce",
    nn.BCELoss,
    family=_FAMILY,
    functional=F.binary_cross_entropy,
    source="torch",
    notes="takes probabilities; log clamped at -100; prefer `bce_with_logits`",
)
register(
    "bce_with_logits",
    nn.BCEWithLogitsLoss,
    family=_FAMILY,
    functional=F.binary_cross_entropy_with_logits,
    source="torch",
    notes="`pos_weight` re-weights positives; it is not focal loss",
)
register(
    "kl_div",
    nn.KLDivLoss,
    family=_FAMILY,
    functional=F.kl_div,
    source="torch",
    notes="input in log-space, KL(target||input); use reduction='batchmean'",
)
register(
    "hinge_embedding",
    nn.HingeEmbeddingLoss,
    family=_FAMILY,
    functional=F.hinge_embedding_loss,
    source="torch",
    notes="targets 1 / -1",
)
register(
    "triplet_margin",
    nn.TripletMarginLoss,
    family=_FAMILY,
    functional=F.triplet_margin_loss,
    source="Balntas et al. 2016 / torch",
    notes="explicit (anchor, positive, negative) triplets",
)
