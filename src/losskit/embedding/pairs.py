"""Pair losses: cosine embedding and contrastive on aligned pairs, contrastive over every pair of a
labelled batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_choice,
    check_floating,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from .._reduction import connected_zero, reduce_loss, upcast
from ..registry import register
from ._common import (
    DISTANCES,
    FAMILY,
    _candidate_set,
    _check_embeddings_labels,
    _check_reference,
    _cosine,
    _distance_matrix,
    _gathering,
    _mean_or_sum,
    _non_finite_guard,
    _pair_masks,
    _paired_distance,
    _safe_sqrt,
)

__all__ = [
    "ContrastiveLoss",
    "ContrastivePairsLoss",
    "CosineEmbeddingLoss",
    "contrastive_loss",
    "contrastive_pairs_loss",
    "cosine_embedding_loss",
]


# ============================================================================ cosine embedding


def _check_pair_inputs(
    x1: torch.Tensor,
    x2: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    names: tuple[str, str] = ("input1", "input2"),
) -> None:
    """Pair losses: ``x1``, ``x2`` floating ``(N, D)`` or ``(D,)``, a real ``target`` (and floating
    ``weight``) of shape ``(N,)``, all on one device."""
    n1, n2 = names
    check_floating(n1, x1)
    check_floating(n2, x2)
    check_ndim(n1, x1, (1, 2), "(N, D) or (D,)")
    check_same_shape(n2, x2, n1, x1)
    check_tensor("target", target)
    if target.is_complex():
        raise LossTypeError(
            f"target must be a real (integer, bool or floating-point) tensor, got dtype {target.dtype}"
        )
    if weight is not None:
        check_floating("weight", weight)
    check_same_device((n1, x1), (n2, x2), ("target", target), ("weight", weight))
    expected = tuple(x1.shape[:-1])
    if tuple(target.shape) != expected:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(expected)}: one entry per "
            f"pair of {n1} of shape {shape_str(x1.shape)}"
        )
    if weight is not None:
        check_same_shape("weight", weight, "target", target)


def cosine_embedding_loss(
    input1: torch.Tensor,
    input2: torch.Tensor,
    target: torch.Tensor,
    margin: float = 0.0,
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cosine embedding loss, equal to :func:`torch.nn.functional.cosine_embedding_loss`.

    .. math::
        \ell(x_1, x_2, y) = \begin{cases} 1 - \cos(x_1, x_2) & y = 1 \\
        \max(0, \cos(x_1, x_2) - \text{margin}) & y = -1 \end{cases}

    Similar pairs (``y = 1``) are pulled to cosine 1, dissimilar ones (``y = -1``) pushed below
    ``margin`` (in ``[-1, 1]``; 0 to 0.5 is typical). Targets are **1 / -1**, like torch; 0/1 labels
    are rejected with an error instead of silently treating 0 as "dissimilar" (torch returns 0 loss
    for them). ``cos`` is ``x1.x2 / (sqrt(|x1|^2 + 1e-12) sqrt(|x2|^2 + 1e-12))`` as in torch.

    Differences from torch: ``mean`` over an empty batch is a graph-connected 0 (torch gives NaN); an
    optional per-pair ``weight`` gives ``sum(w l) / sum(w)`` for ``mean``.

    Args:
        input1, input2: ``(N, D)`` or ``(D,)``.
        target: ``(N,)`` (or ``()``), values 1 or -1, integer or floating.
        margin: margin for dissimilar pairs, in ``[-1, 1]``.
        weight: optional ``(N,)`` per-pair weights.
        reduction: ``'none' | 'mean' | 'sum'``.

    Example:
        >>> x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> x2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
        >>> cosine_embedding_loss(x1, x2, torch.tensor([1, -1]), reduction="none")
        tensor([1.0000, 0.7071])
    """
    check_reduction(reduction)
    check_number("margin", margin, low=-1.0, high=1.0)
    _check_pair_inputs(input1, input2, target, weight)
    if can_read_values(target) and target.numel() > 0:
        bad = target[(target != 1) & (target != -1)]
        if bad.numel() > 0:
            hint = " (for 0/1 labels pass 2 * target - 1)" if bool((bad == 0).all()) else ""
            raise LossValueError(
                f"target must contain only 1 (similar) or -1 (dissimilar), got {bad[0].item()!r}{hint}"
            )
    x1, x2 = upcast(input1).contiguous(), upcast(input2).contiguous()
    cos = _cosine(x1, x2)
    similar = target > 0
    loss = torch.where(similar, 1.0 - cos, (cos - float(margin)).clamp_min(0.0))
    w = None if weight is None else weight.to(loss.dtype)
    return reduce_loss(loss, reduction, weight=w)


class CosineEmbeddingLoss(nn.Module):
    """Module form of :func:`cosine_embedding_loss` (seed signature ``CosineEmbeddingLoss(margin, reduction)``).

    Example:
        >>> loss_fn = CosineEmbeddingLoss(margin=0.0)
        >>> loss_fn(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([1, 1]))
        tensor(0.)
    """

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = float(check_number("margin", margin, low=-1.0, high=1.0))
        self.reduction = check_reduction(reduction)

    def forward(
        self, input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return cosine_embedding_loss(input1, input2, target, self.margin, reduction=self.reduction, **kwargs)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"


# ============================================================================ contrastive (pairs)


def contrastive_loss(
    x1: torch.Tensor,
    x2: torch.Tensor,
    target: torch.Tensor,
    margin: float = 1.0,
    distance: str = "euclidean",
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Contrastive loss for labelled pairs (Hadsell, Chopra & LeCun 2006).

    .. math::
        \ell(x_1, x_2, y) = \tfrac12\, y\, d^2 + \tfrac12\,(1 - y) \max(0, \text{margin} - d)^2

    with ``d`` the Euclidean distance ``|x1 - x2|`` (or the cosine distance ``1 - cos(x1, x2)``).
    **Target 1 = similar, 0 = dissimilar** (the paper writes it the other way round, Y = 0 for
    similar). Similar pairs are pulled together, dissimilar pairs pushed at least ``margin`` apart.
    Soft targets in ``[0, 1]`` interpolate the two terms; ``-1`` (cosine-embedding style) is rejected.
    The Euclidean distance has a finite gradient at ``d = 0``.

    Args:
        x1, x2: ``(N, D)`` or ``(D,)``.
        target: ``(N,)`` (or ``()``), 1 = similar, 0 = dissimilar.
        margin: ``> 0``, in distance units.
        distance: ``'euclidean'`` or ``'cosine'``.
        weight: optional ``(N,)`` per-pair weights.
        reduction: ``'none' | 'mean' | 'sum'``; ``mean`` of an empty batch is a graph-connected 0.

    Example:
        >>> x1 = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
        >>> x2 = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> contrastive_loss(x1, x2, torch.tensor([1, 0]), margin=1.0, reduction="none")
        tensor([12.5000,  0.1250])
    """
    check_reduction(reduction)
    check_number("margin", margin, low=0.0, low_open=True)
    check_choice("distance", distance, ("euclidean", "cosine"))
    _check_pair_inputs(x1, x2, target, weight, ("x1", "x2"))
    if can_read_values(target) and target.numel() > 0:
        bad = target[(target < 0) | (target > 1)]
        if bad.numel() > 0:
            hint = " (for 1/-1 labels pass (target + 1) / 2)" if bool((bad == -1).all()) else ""
            raise LossValueError(
                f"target must be 1 (similar) or 0 (dissimilar), values in [0, 1]; got {bad[0].item()!r}{hint}"
            )
    a, b = upcast(x1).contiguous(), upcast(x2).contiguous()
    y = target.to(a.dtype)
    if distance == "euclidean":
        d2 = _paired_distance(a, b, "squared_euclidean")
        d = _safe_sqrt(d2)
    else:
        d = _paired_distance(a, b, "cosine")
        d2 = d * d
    loss = 0.5 * y * d2 + 0.5 * (1.0 - y) * (float(margin) - d).clamp_min(0.0).square()
    w = None if weight is None else weight.to(loss.dtype)
    return reduce_loss(loss, reduction, weight=w)


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss` (pairs with a 1 = similar / 0 = dissimilar target).

    For the label-based form over all pairs of a batch use :class:`ContrastivePairsLoss`.

    Example:
        >>> ContrastiveLoss(margin=1.0)(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([1, 0]))
        tensor(0.2500)
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean", reduction: str = "mean") -> None:
        super().__init__()
        self.margin = float(check_number("margin", margin, low=0.0, low_open=True))
        self.distance = check_choice("distance", distance, ("euclidean", "cosine"))
        self.reduction = check_reduction(reduction)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return contrastive_loss(
            x1, x2, target, self.margin, self.distance, reduction=self.reduction, **kwargs
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, reduction={self.reduction!r}"


# ============================================================================ contrastive (all pairs)


def _contrastive_pairs_terms(
    dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pos_margin: float, neg_margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses ``relu(d - pos_margin)`` on positives and ``relu(neg_margin - d)`` on negatives."""
    zero = dist.new_zeros(())
    pos_loss = torch.where(pos, (dist - pos_margin).clamp_min(0.0), zero)
    neg_loss = torch.where(neg, (neg_margin - dist).clamp_min(0.0), zero)
    return pos_loss, neg_loss


def contrastive_pairs_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: str = "euclidean",
    *,
    average: str = "nonzero",
    normalize_embeddings: bool = False,
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Contrastive loss over every pair of a labelled batch (pytorch-metric-learning semantics).

    .. math::
        L = \frac{\sum_{(i,j) \in P} [d_{ij} - m_+]_+}{n_P} + \frac{\sum_{(i,j) \in N} [m_- - d_{ij}]_+}{n_N}

    ``P`` are the ordered pairs ``i != j`` with the same label, ``N`` those with different labels.
    With ``average='nonzero'`` (default, pytorch-metric-learning's ``AvgNonZeroReducer``) ``n_P`` and
    ``n_N`` count only the pairs whose loss is > 0, so easy pairs do not dilute the gradient; with
    ``average='all'`` they count every positive / negative pair. Each term is 0 when it has no pair.

    The distance is ``'euclidean'``, ``'squared_euclidean'`` or ``'cosine'`` (``1 - cos``), margins in
    its units. pytorch-metric-learning L2-normalises embeddings by default; here that is
    ``normalize_embeddings=True``.

    Args:
        embeddings: ``(B, D)``.
        labels: ``(B,)`` integer class labels.
        ref_embeddings, ref_labels: ``(M, D)`` and ``(M,)``: pair each query with this reference set
            instead of with the batch (``P``: every reference with the query's label; no pair is
            excluded as the query itself). Both or neither.
        gather_distributed: under an initialised :mod:`torch.distributed` group, pair this rank's
            samples with the samples (or references) of every rank, gathered with gradient, and
            count ``n_P``, ``n_N`` globally, so DDP gives the gradient of one process over the
            concatenated batch (the returned value is this rank's share). No effect without a
            process group.

    Example:
        >>> emb = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.0, 0.8]])
        >>> contrastive_pairs_loss(emb, torch.tensor([0, 0, 1]), neg_margin=1.0)
        tensor(0.9500)
    """
    check_number("pos_margin", pos_margin, low=0.0)
    check_number("neg_margin", neg_margin, low=0.0)
    check_choice("distance", distance, DISTANCES)
    check_choice("average", average, ("nonzero", "all"))
    emb, labels = _check_embeddings_labels(embeddings, labels)
    reference = _check_reference(emb, ref_embeddings, ref_labels)
    gathered = _gathering(gather_distributed)
    cand, cand_labels, offset = _candidate_set(emb, labels, reference, gathered)
    return _contrastive_pairs_from(
        emb,
        labels,
        cand,
        cand_labels,
        offset,
        gathered,
        pos_margin=float(pos_margin),
        neg_margin=float(neg_margin),
        distance=distance,
        average=average,
        normalize_embeddings=bool(normalize_embeddings),
    )


def _contrastive_pairs_from(
    emb: torch.Tensor,
    labels: torch.Tensor,
    cand: torch.Tensor,
    cand_labels: torch.Tensor,
    offset: int | None,
    gathered: bool,
    *,
    pos_margin: float,
    neg_margin: float,
    distance: str,
    average: str,
    normalize_embeddings: bool,
) -> torch.Tensor:
    """:func:`contrastive_pairs_loss` of checked anchors against a prepared candidate set."""
    if (emb.shape[0] == 0 and not gathered) or cand.shape[0] == 0:  # nothing here, or on any rank
        return connected_zero(emb, cand)
    if normalize_embeddings:
        emb, cand = F.normalize(emb, dim=-1), F.normalize(cand, dim=-1)
    pos, neg, _ = _pair_masks(labels, cand_labels, offset)
    dist = _distance_matrix(emb, cand, distance)
    pos_loss, neg_loss = _contrastive_pairs_terms(dist, pos, neg, pos_margin, neg_margin)
    if average == "nonzero":
        n_pos, n_neg = (pos_loss > 0).sum(), (neg_loss > 0).sum()
    else:
        n_pos, n_neg = pos.sum(), neg.sum()
    total = _mean_or_sum(pos_loss.sum(), n_pos, "mean", gathered) + _mean_or_sum(
        neg_loss.sum(), n_neg, "mean", gathered
    )
    return total + (_non_finite_guard(emb) + _non_finite_guard(cand))


class ContrastivePairsLoss(nn.Module):
    """Module form of :func:`contrastive_pairs_loss`: ``loss_fn(embeddings, labels)``.

    Example:
        >>> emb = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.0, 0.8]])
        >>> ContrastivePairsLoss(neg_margin=1.0)(emb, torch.tensor([0, 0, 1]))
        tensor(0.9500)
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance: str = "euclidean",
        average: str = "nonzero",
        normalize_embeddings: bool = False,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.pos_margin = float(check_number("pos_margin", pos_margin, low=0.0))
        self.neg_margin = float(check_number("neg_margin", neg_margin, low=0.0))
        self.distance = check_choice("distance", distance, DISTANCES)
        self.average = check_choice("average", average, ("nonzero", "all"))
        self.normalize_embeddings = bool(normalize_embeddings)
        self.gather_distributed = bool(gather_distributed)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return contrastive_pairs_loss(
            embeddings,
            labels,
            self.pos_margin,
            self.neg_margin,
            self.distance,
            average=self.average,
            normalize_embeddings=self.normalize_embeddings,
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
        return _contrastive_pairs_from(
            emb,
            labels,
            cand,
            cand_labels,
            offset,
            gathered,
            pos_margin=self.pos_margin,
            neg_margin=self.neg_margin,
            distance=self.distance,
            average=self.average,
            normalize_embeddings=self.normalize_embeddings,
        )

    def extra_repr(self) -> str:
        return (
            f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, distance={self.distance!r}, "
            f"average={self.average!r}, normalize_embeddings={self.normalize_embeddings}"
        )


# ============================================================================ registry

register(
    "cosine_embedding",
    CosineEmbeddingLoss,
    family=FAMILY,
    functional=cosine_embedding_loss,
    source="torch / seed 000",
    notes="targets 1 / -1 (0/1 rejected); empty batch -> 0",
)
register(
    "contrastive",
    ContrastiveLoss,
    family=FAMILY,
    functional=contrastive_loss,
    source="Hadsell, Chopra & LeCun 2006",
    notes="pairs; target 1 = similar, 0 = dissimilar",
)
register(
    "contrastive_pairs",
    ContrastivePairsLoss,
    family=FAMILY,
    functional=contrastive_pairs_loss,
    source="pytorch-metric-learning ContrastiveLoss",
    notes="all pairs of a labelled batch; mean over non-zero pairs",
)
