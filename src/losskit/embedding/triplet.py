"""Triplet loss with in-batch mining: batch-hard, batch-semi-hard and batch-all (no ``(B, B, B)`` tensor)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_int, check_number
from .._reduction import connected_zero
from ..registry import register
from ._common import (
    _BATCH_ALL_BUDGET,
    DISTANCES,
    FAMILY,
    MININGS,
    _candidate_set,
    _check_embeddings_labels,
    _check_reference,
    _distance_matrix,
    _gathering,
    _mean_or_sum,
    _non_finite_guard,
    _pair_masks,
    _paired_distance,
)

__all__ = ["TripletLoss", "triplet_loss"]


# ============================================================================ triplet with mining


def _triplet_hinge(x: torch.Tensor, margin: float, soft_margin: bool) -> torch.Tensor:
    """``relu(x + margin)`` or, with ``soft_margin``, ``softplus(x)`` (Hermans et al.'s soft margin)."""
    return F.softplus(x) if soft_margin else (x + margin).clamp_min(0.0)


def _batch_hard(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    distance: str,
    margin: float,
    soft_margin: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count over anchors with a positive and a negative of ``hinge(max d_ap - min d_an)``.

    The hardest positive and negative are *selected* on a distance matrix computed under
    ``no_grad`` (squared distances for ``euclidean``: same order); the two distances per anchor are
    then recomputed from the embeddings with gradient. Only ``O(Na D)`` is kept for backward, and
    the gradient is that of ``max``/``min`` (it flows to the selected pair; on exact ties to one
    of them instead of being split).
    """
    with torch.no_grad():
        select = "squared_euclidean" if distance == "euclidean" else distance
        d = _distance_matrix(anchors, candidates, select)
        big = torch.finfo(d.dtype).max
        pos_idx = torch.where(pos, d, d.new_full((), -1.0)).argmax(dim=1)
        neg_idx = torch.where(neg, d, d.new_full((), big)).argmin(dim=1)
        valid = pos.any(dim=1) & neg.any(dim=1)
    d_ap = _paired_distance(anchors, candidates[pos_idx], distance)
    d_an = _paired_distance(anchors, candidates[neg_idx], distance)
    loss = _triplet_hinge(d_ap - d_an, margin, soft_margin)
    return torch.where(valid, loss, loss.new_zeros(())).sum(), valid.sum()


def _batch_semi_hard(
    dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float, soft_margin: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count over (anchor, positive) pairs of ``hinge(d_ap - d_an*)`` with FaceNet's negative.

    ``d_an*`` is the smallest negative distance strictly greater than ``d_ap``; when there is none, the
    smallest negative distance (the hardest negative). Found by sorting each anchor's negative
    distances and a ``searchsorted``: O(Na Nc log Nc) time, O(Na Nc) memory.
    """
    big = torch.finfo(dist.dtype).max
    neg_sorted, _ = torch.where(neg, dist, dist.new_full((), big)).sort(dim=1)
    n_neg = neg.sum(dim=1, keepdim=True)
    idx = torch.searchsorted(neg_sorted.detach(), dist.detach().contiguous(), right=True)
    semi_hard = idx < n_neg
    last = max(dist.shape[1] - 1, 0)
    chosen = neg_sorted.gather(1, idx.clamp_max(last))
    neg_d = torch.where(semi_hard, chosen, neg_sorted[:, :1])
    valid = pos & (n_neg > 0)
    loss = _triplet_hinge(dist - neg_d, margin, soft_margin)
    return torch.where(valid, loss, loss.new_zeros(())).sum(), valid.sum()


def _batch_all(
    dist: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    margin: float,
    soft_margin: bool,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over active triplets ``(a, p, n)`` of ``hinge(d_ap - d_an)`` and their count.

    The hinge is piecewise linear, so the sum over active triplets equals
    ``sum_ij C_ij d_ij + margin * count`` with ``C_ij`` = (number of active triplets using ``(i, j)``
    as anchor-positive) - (number using it as anchor-negative): exact value and gradient, and only
    the ``(Na, Nc)`` distances and coefficients are kept for backward.

    Hard margin: ``(a, p, n)`` is active when ``d_an < d_ap + margin``. The counts come from each
    anchor's sorted negative (and positive) distances and a ``searchsorted``: O(Na Nc log Nc) time,
    no triplet tensor at all. ``soft_margin``: every valid triplet counts with slope
    ``sigmoid(d_ap - d_an)``, which needs every triplet; those are formed under ``no_grad`` one chunk
    of anchors at a time (``(chunk, Nc, Nc)``), and the value is attached to the graph with the
    first-order gradient only (no double backward).
    """
    na, nc = dist.shape
    d = dist.detach()
    if not soft_margin:
        with torch.no_grad():
            big = torch.finfo(d.dtype).max
            neg_sorted = torch.where(neg, d, d.new_full((), big)).sort(dim=1).values
            pos_sorted = torch.where(pos, d, d.new_full((), -big)).sort(dim=1).values
            # per (anchor, positive): negatives with d_an < d_ap + margin
            as_pos = torch.searchsorted(neg_sorted, (d + margin).contiguous(), right=False)
            # per (anchor, negative): positives with d_ap > d_an - margin
            as_neg = nc - torch.searchsorted(pos_sorted, (d - margin).contiguous(), right=True)
            zero = as_pos.new_zeros(())
            as_pos = torch.where(pos, as_pos, zero)
            as_neg = torch.where(neg, as_neg, zero)
            count = as_pos.sum()
            coef = (as_pos - as_neg).to(d.dtype)
        return (dist * coef).sum() + margin * count.to(dist.dtype), count
    if chunk_size is None:
        chunk_size = max(1, _BATCH_ALL_BUDGET // max(nc * nc, 1))
    coef = torch.zeros_like(d)
    count = d.new_zeros((), dtype=torch.long)
    value = d.new_zeros(())
    with torch.no_grad():
        for start in range(0, na, chunk_size):
            stop = min(start + chunk_size, na)
            dc = d[start:stop]
            valid = pos[start:stop, :, None] & neg[start:stop, None, :]
            t = dc[:, :, None] - dc[:, None, :]
            slope = torch.where(valid, torch.sigmoid(t), t.new_zeros(()))
            value = value + torch.where(valid, F.softplus(t), t.new_zeros(())).sum()
            count = count + valid.sum()
            coef[start:stop] = slope.sum(dim=2) - slope.sum(dim=1)
    linear = (dist * coef).sum()
    return linear + (value - linear).detach(), count


def _triplet_terms(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    offset: int | None,
    *,
    margin: float,
    mining: str,
    distance: str,
    soft_margin: bool,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-item losses, item count) of local anchors against the candidates."""
    pos, neg, _ = _pair_masks(anchor_labels, candidate_labels, offset)
    if mining == "batch_hard":
        return _batch_hard(anchors, candidates, pos, neg, distance, margin, soft_margin)
    dist = _distance_matrix(anchors, candidates, distance)
    if mining == "batch_semi_hard":
        return _batch_semi_hard(dist, pos, neg, margin, soft_margin)
    return _batch_all(dist, pos, neg, margin, soft_margin, chunk_size)


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mining: str = "batch_hard",
    distance: str = "euclidean",
    soft_margin: bool = False,
    normalize_embeddings: bool = False,
    *,
    reduction: str = "mean",
    chunk_size: int | None = None,
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Triplet loss with in-batch mining (Schroff et al. 2015; Hermans, Beyer & Leibe 2017).

    For anchor ``a``, positive ``p`` (same label, ``p != a``) and negative ``n`` (other label):

    .. math::
        \ell(a, p, n) = \max(0,\ d(a, p) - d(a, n) + \text{margin})
        \quad\text{or, with soft\_margin,}\quad \log(1 + e^{d(a, p) - d(a, n)})

    ``mining`` chooses the triplets and what ``mean`` divides by:

    * ``'batch_hard'`` (Hermans et al.): per anchor, the farthest positive and the closest negative;
      mean over anchors that have at least one positive and one negative.
    * ``'batch_semi_hard'`` (FaceNet, as in TensorFlow Addons): per (anchor, positive) pair, the
      closest negative *farther* than the positive; when no such negative exists, the closest
      negative (hardest). TensorFlow Addons falls back to the *farthest* negative instead, which
      gives a smaller loss. Mean over (anchor, positive) pairs whose anchor has a negative.
    * ``'batch_all'``: every valid triplet; mean over the **active** triplets (loss > 0), as
      pytorch-metric-learning's ``AvgNonZeroReducer`` (with ``soft_margin`` every valid triplet is
      active). Memory is O(B^2): only a ``(B, B)`` matrix of per-pair gradient coefficients is kept
      for backward. With the hard margin the active triplets are counted from sorted distances
      (O(B^2 log B) time, no triplet tensor); with ``soft_margin`` every triplet's slope is needed,
      so anchors are processed in chunks of ``chunk_size`` (default: about 4M triplet entries per
      chunk) under ``no_grad``. No ``(B, B, B)`` tensor is ever built for the whole batch.

    ``reduction='sum'`` returns the sum over the same items. Distances: ``'euclidean'`` (finite
    gradient at ``d = 0``), ``'squared_euclidean'``, ``'cosine'`` (``1 - cos``, in ``[0, 2]``).
    ``normalize_embeddings=True`` L2-normalises first. The explicit-triplet form is torch's
    ``TripletMarginLoss`` (registered as ``triplet_margin``).

    Args:
        embeddings: ``(B, D)``.
        labels: ``(B,)`` integer class labels.
        margin: ``>= 0`` (unused with ``soft_margin``).
        chunk_size: anchors per chunk for ``'batch_all'`` with ``soft_margin`` (``None``: automatic).
        ref_embeddings, ref_labels: ``(M, D)`` and ``(M,)``: mine each query's positives and
            negatives in this reference set instead of in the batch (every reference with the
            query's label is a positive). Both or neither.
        gather_distributed: under an initialised :mod:`torch.distributed` group, mine positives
            and negatives for this rank's anchors among the samples (or references) of every rank
            (gathered with gradient); ``mean`` divides by the global item count over the world size and ``sum``
            is multiplied by the world size, so DDP's gradient averaging gives exactly the gradient
            of one process over the concatenated batch. No effect without a process group.

    Example:
        >>> emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.5], [0.0, 3.0]])
        >>> triplet_loss(emb, torch.tensor([0, 0, 1, 1]), margin=0.2)
        tensor(1.0750)
    """
    check_number("margin", margin, low=0.0)
    check_choice("mining", mining, MININGS)
    check_choice("distance", distance, DISTANCES)
    check_choice("reduction", reduction, ("mean", "sum"))
    check_int("chunk_size", chunk_size, low=1, allow_none=True)
    emb, labels = _check_embeddings_labels(embeddings, labels)
    reference = _check_reference(emb, ref_embeddings, ref_labels)
    gathered = _gathering(gather_distributed)
    cand, cand_labels, offset = _candidate_set(emb, labels, reference, gathered)
    config: dict[str, Any] = {
        "margin": float(margin),
        "mining": mining,
        "distance": distance,
        "soft_margin": bool(soft_margin),
        "normalize_embeddings": bool(normalize_embeddings),
        "reduction": reduction,
        "chunk_size": chunk_size,
    }
    return _triplet_from(emb, labels, cand, cand_labels, offset, gathered, **config)


def _triplet_from(
    emb: torch.Tensor,
    labels: torch.Tensor,
    cand: torch.Tensor,
    cand_labels: torch.Tensor,
    offset: int | None,
    gathered: bool,
    *,
    normalize_embeddings: bool,
    reduction: str,
    **config: Any,
) -> torch.Tensor:
    """:func:`triplet_loss` of checked anchors against a prepared candidate set."""
    if (emb.shape[0] == 0 and not gathered) or cand.shape[0] == 0:  # nothing here, or on any rank
        return connected_zero(emb, cand)
    if normalize_embeddings:
        emb, cand = F.normalize(emb, dim=-1), F.normalize(cand, dim=-1)
    total, count = _triplet_terms(emb, labels, cand, cand_labels, offset, **config)
    guard = _non_finite_guard(emb) + _non_finite_guard(cand)
    return _mean_or_sum(total + guard, count, reduction, gathered)


class TripletLoss(nn.Module):
    """Module form of :func:`triplet_loss`: ``loss_fn(embeddings, labels)``.

    Example:
        >>> emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.5], [0.0, 3.0]])
        >>> TripletLoss(margin=0.2, mining="batch_hard")(emb, torch.tensor([0, 0, 1, 1]))
        tensor(1.0750)
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "batch_hard",
        distance: str = "euclidean",
        soft_margin: bool = False,
        normalize_embeddings: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.margin = float(check_number("margin", margin, low=0.0))
        self.mining = check_choice("mining", mining, MININGS)
        self.distance = check_choice("distance", distance, DISTANCES)
        self.soft_margin = bool(soft_margin)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"))
        self.chunk_size = check_int("chunk_size", chunk_size, low=1, allow_none=True)
        self.gather_distributed = bool(gather_distributed)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return triplet_loss(
            embeddings,
            labels,
            self.margin,
            self.mining,
            self.distance,
            self.soft_margin,
            self.normalize_embeddings,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            gather_distributed=self.gather_distributed,
        )

    def _candidate_loss(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        cand: torch.Tensor,
        cand_labels: torch.Tensor,
        offset: int | None,
        gathered: bool,
    ) -> torch.Tensor:
        """The loss of checked anchors against a prepared candidate set (used by the cross-batch memory)."""
        config = {
            "margin": self.margin,
            "mining": self.mining,
            "distance": self.distance,
            "soft_margin": self.soft_margin,
            "normalize_embeddings": self.normalize_embeddings,
            "reduction": self.reduction,
            "chunk_size": self.chunk_size,
        }
        return _triplet_from(emb, labels, cand, cand_labels, offset, gathered, **config)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, distance={self.distance!r}, "
            f"soft_margin={self.soft_margin}, normalize_embeddings={self.normalize_embeddings}"
        )


# ============================================================================ registry

register(
    "triplet",
    TripletLoss,
    family=FAMILY,
    functional=triplet_loss,
    source="Schroff et al. 2015; Hermans et al. 2017",
    notes="batch_hard / batch_semi_hard / batch_all mining; O(B^2) memory",
)
