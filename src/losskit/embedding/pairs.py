"""Metric-learning (embedding) losses: cosine embedding, contrastive, triplet with batch mining,
NT-Xent (SimCLR / InfoNCE) and supervised contrastive (SupCon).

Pair losses (:func:`cosine_embedding_loss`, :func:`contrastive_loss`) take two aligned batches and a
per-pair target. Batch losses (:func:`contrastive_pairs_loss`, :func:`triplet_loss`,
:func:`nt_xent_loss`, :func:`supcon_loss`) take one batch of embeddings with class labels and compare
every sample with every other one.

Classification-style metric losses (:func:`angular_margin_loss`: ArcFace / CosFace) compare each
embedding with learnable class centres (:class:`ArcFaceLoss`, :class:`CosFaceLoss`).

Internally every batch loss is written as *local anchors against a set of candidates*: the anchors'
embeddings and labels, the candidates' embeddings and labels, and the anchors' offset among the
candidates (to exclude each anchor's own copy). On one process the candidates are the batch itself and
the offset is 0. With ``gather_distributed=True`` under an initialised :mod:`torch.distributed` group,
the candidates are every rank's samples, gathered with gradient (:mod:`losskit.distributed`), and
``mean`` divides by the global count over the world size, so DDP's gradient averaging reproduces the
one-process gradient over the concatenated batch.

Common rules:

* Half-precision inputs are computed in float32; the loss is returned in float32.
* Masks never use ``float('inf')``: excluded entries are replaced with ``torch.where`` or with the
  finite ``torch.finfo(dtype).min`` before a ``logsumexp``.
* Euclidean distances use a safe square root: the gradient is finite (zero) at ``d = 0``, e.g. for
  duplicate embeddings.
* Identical embeddings are at distance exactly 0 (every distance, any memory layout): the rounding
  noise of the ``|a|^2 + |c|^2 - 2 a.c`` distance matrix is set to 0, and inputs are made
  contiguous, so the loss does not depend on strides.
* A NaN or inf in an input gives a non-finite loss, never a finite value that hides it; the batch
  losses that mine or hinge (:func:`contrastive_pairs_loss`, :func:`triplet_loss`) return NaN when a
  candidate holds one even if no selected pair reads it.
* A batch with nothing to compare (``B = 0``, ``B = 1``, a single class, no positive pair) gives a zero
  that is still connected to the graph, never NaN. :func:`contrastive_pairs_loss` is a sum of two
  independent terms: the one without pairs is 0, the other one still counts (negatives are pushed
  apart in a batch without positive pairs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as _dist
from ._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_choice,
    check_class_range,
    check_floating,
    check_int,
    check_integer,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from ._reduction import connected_zero, reduce_loss, upcast
from .registry import register

__all__ = [
    "AngularMarginLoss",
    "ArcFaceLoss",
    "ContrastiveLoss",
    "ContrastivePairsLoss",
    "CosFaceLoss",
    "CosineEmbeddingLoss",
    "NTXentLoss",
    "SupConLoss",
    "TripletLoss",
    "angular_margin_loss",
    "contrastive_loss",
    "contrastive_pairs_loss",
    "cosine_embedding_loss",
    "nt_xent_loss",
    "supcon_loss",
    "triplet_loss",
]

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
MININGS = ("batch_hard", "batch_semi_hard", "batch_all")

# Squared distances at or below this are treated as exact zeros by the safe square root.
_SQRT_EPS = 1e-12
# Gram-form distances below _GRAM_NOISE * sqrt(D) * eps * (|a|^2 + |c|^2) are rounding noise (set to 0);
# the largest seen for identical rows is about 0.7 * sqrt(D) * eps * (|a|^2 + |c|^2).
_GRAM_NOISE = 2.0
# batch_all processes anchors in chunks of about this many (anchor, positive, negative) entries.
_BATCH_ALL_BUDGET = 1 << 22


# ============================================================================ shared pieces


def _safe_sqrt(d2: torch.Tensor) -> torch.Tensor:
    """``sqrt(d2)``, 0 with a zero gradient where ``d2 <= eps``; NaN and inf propagate.

    The ``where`` comes before the square root: its backward selects 0 for the zeroed entries, so the
    infinite slope of ``sqrt`` at 0 never reaches the gradient (and only a bool mask and the result
    are kept for backward).
    """
    return torch.where(d2 <= _SQRT_EPS, 0.0, d2).sqrt()


def _cosine(x1: torch.Tensor, x2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise cosine similarity, ``x1 . x2 / (sqrt(|x1|^2 + eps) sqrt(|x2|^2 + eps))`` (torch's form).

    The norms are multiplied after the square roots, so large inputs do not overflow.
    """
    dot = (x1 * x2).sum(-1)
    n1 = ((x1 * x1).sum(-1) + eps).sqrt()
    n2 = ((x2 * x2).sum(-1) + eps).sqrt()
    return dot / (n1 * n2)


def _dot_noise(x: torch.Tensor) -> float:
    """Relative rounding noise of a ``D``-term dot product in ``x``'s dtype (see :data:`_GRAM_NOISE`)."""
    return torch.finfo(x.dtype).eps * _GRAM_NOISE * math.sqrt(x.shape[-1])


def _paired_distance(x1: torch.Tensor, x2: torch.Tensor, distance: str) -> torch.Tensor:
    """Distance between aligned rows of ``x1`` and ``x2`` (0 for identical rows, as the matrix)."""
    if distance == "cosine":
        d = 1.0 - (F.normalize(x1, dim=-1) * F.normalize(x2, dim=-1)).sum(-1)
        return torch.where(d.detach() < 2.0 * _dot_noise(x1), 0.0, d)
    diff = x1 - x2
    d2 = (diff * diff).sum(-1)
    return d2 if distance == "squared_euclidean" else _safe_sqrt(d2)


def _distance_matrix(anchors: torch.Tensor, candidates: torch.Tensor, distance: str) -> torch.Tensor:
    """``(Na, Nc)`` distances between every anchor and every candidate, O(Na Nc) memory.

    ``squared_euclidean`` is the Gram form ``|a|^2 + |c|^2 - 2 a.c`` (one GEMM), ``euclidean`` its
    safe square root, ``cosine`` is ``1 - cos(a, c)`` in ``[0, 2]``. The Gram form cancels: its
    rounding error is a few ulps of ``|a|^2 + |c|^2`` (of 2 for cosine), so identical rows come out
    at +-2e-4 instead of 0 for ``|a|^2 = 1000`` in float32, depending on the GEMM's memory layout.
    Values below :data:`_GRAM_NOISE` ``* sqrt(D) * eps`` times that scale are rounding noise and are
    set to exactly 0 (with a zero gradient): identical rows are at distance 0 whatever the layout.
    NaN and inf propagate.
    """
    eps = _dot_noise(anchors)
    if distance == "cosine":
        a = F.normalize(anchors, dim=-1)
        c = F.normalize(candidates, dim=-1)
        d = 1.0 - a @ c.T
        zero = d.detach() < 2.0 * eps
    else:
        scale = (anchors * anchors).sum(-1)[:, None] + (candidates * candidates).sum(-1)[None, :]
        d = torch.addmm(scale, anchors, candidates.T, alpha=-2.0)
        with torch.no_grad():
            zero = d < (scale * eps).clamp_min_(_SQRT_EPS)
    # in place (nothing saved d): the noise and its negatives become 0; NaN < x is False, NaN stays
    if distance == "euclidean":
        return d.masked_fill_(zero, 0.0).sqrt()  # the fill's backward masks sqrt's infinite slope at 0
    with torch.no_grad():  # the value only: the gradient there is rounding noise around 0 already
        d.masked_fill_(zero, 0.0)
    return d


def _non_finite_guard(x: torch.Tensor) -> torch.Tensor:
    """A scalar 0, or NaN when ``x`` holds a NaN or inf (no gradient, no host sync).

    Mining and hinges can drop an entry without reading its value (a NaN negative sorted past the
    semi-hard one, an infinitely far negative that is never the hardest, ``relu(m - inf) = 0``):
    adding this to such a loss makes a non-finite input give a non-finite loss, never a finite one.
    """
    with torch.no_grad():
        return torch.where(torch.isfinite(x).all(), x.new_zeros(()), x.new_full((), math.nan))


def _self_mask(num_anchors: int, num_candidates: int, offset: int, device: torch.device) -> torch.Tensor:
    """``(Na, Nc)`` bool, True where candidate ``j`` is anchor ``i`` itself (``j == offset + i``)."""
    rows = torch.arange(num_anchors, device=device) + offset
    cols = torch.arange(num_candidates, device=device)
    return rows[:, None] == cols[None, :]


def _pair_masks(
    anchor_labels: torch.Tensor, candidate_labels: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(positive, negative, self)`` masks of shape ``(Na, Nc)``.

    Positives share the anchor's label and are not the anchor itself; negatives have another label.
    """
    same = anchor_labels[:, None] == candidate_labels[None, :]
    self_ = _self_mask(anchor_labels.shape[0], candidate_labels.shape[0], offset, anchor_labels.device)
    return same & ~self_, ~same, self_


def _check_embeddings_labels(
    embeddings: torch.Tensor, labels: torch.Tensor, what: str = "(B, D)"
) -> tuple[torch.Tensor, torch.Tensor]:
    check_floating("embeddings", embeddings)
    check_ndim("embeddings", embeddings, 2, what)
    check_integer("labels", labels)
    check_same_device(("embeddings", embeddings), ("labels", labels))
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise LossValueError(
            f"labels has shape {shape_str(labels.shape)}, expected ({embeddings.shape[0]},) to match "
            f"embeddings of shape {shape_str(embeddings.shape)}: one class label per sample"
        )
    return upcast(embeddings).contiguous(), labels


def _check_temperature(name: str, value: float) -> float:
    return float(check_number(name, value, low=0.0, low_open=True))


def _mean_or_sum(
    total: torch.Tensor, count: torch.Tensor | int, reduction: str, gathered: bool = False
) -> torch.Tensor:
    """``total`` for ``'sum'``, ``total / max(count, 1)`` for ``'mean'`` (0, graph-connected, if empty).

    ``gathered`` (local anchors against candidates from every rank): ``'mean'`` divides by the DDP
    normaliser ``global count / W`` and ``'sum'`` multiplies by ``W``, so that DDP's averaging of the
    per-rank gradients gives the gradient of the one-process loss over the concatenated batch.
    """
    if gathered:
        if reduction == "sum":
            return total * _dist.world_size()
        return total / _dist.ddp_normalizer(count).to(device=total.device, dtype=total.dtype)
    if reduction == "sum":
        return total
    if isinstance(count, int):
        return total / max(count, 1)
    return total / count.to(total.dtype).clamp_min(1.0)


# Sample ids used as labels for instance discrimination are offset by rank * _RANK_ID_STRIDE under
# gather_distributed, so they are unique across ranks without exchanging batch sizes.
_RANK_ID_STRIDE = 1 << 40


def _gathering(gather_distributed: bool) -> bool:
    """True when ``gather_distributed`` is set and a process group with more than one rank exists."""
    return bool(gather_distributed) and _dist.world_size() > 1


def _candidates(
    anchors: torch.Tensor, labels: torch.Tensor, gathered: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(candidates, candidate_labels, offset)``: the batch itself, or every rank's batch (with grad)."""
    if not gathered:
        return anchors, labels, 0
    cand, cand_labels, offset = _dist.gather_candidates(anchors, labels)
    assert cand_labels is not None  # labels were given
    return cand, cand_labels, offset


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
        self, input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor, **kwargs
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

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
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
        gather_distributed: under an initialised :mod:`torch.distributed` group, pair this rank's
            samples with the samples of every rank (gathered with gradient) and count ``n_P``,
            ``n_N`` globally, so DDP gives the gradient of one process over the concatenated batch
            (the returned value is this rank's share). No effect without a process group.

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
    gathered = _gathering(gather_distributed)
    if emb.shape[0] == 0 and not gathered:
        return connected_zero(emb)
    if normalize_embeddings:
        emb = F.normalize(emb, dim=-1)
    cand, cand_labels, offset = _candidates(emb, labels, gathered)
    if cand.shape[0] == 0:  # every rank is empty
        return connected_zero(cand)
    pos, neg, _ = _pair_masks(labels, cand_labels, offset)
    dist = _distance_matrix(emb, cand, distance)
    pos_loss, neg_loss = _contrastive_pairs_terms(dist, pos, neg, float(pos_margin), float(neg_margin))
    if average == "nonzero":
        n_pos, n_neg = (pos_loss > 0).sum(), (neg_loss > 0).sum()
    else:
        n_pos, n_neg = pos.sum(), neg.sum()
    total = _mean_or_sum(pos_loss.sum(), n_pos, "mean", gathered) + _mean_or_sum(
        neg_loss.sum(), n_neg, "mean", gathered
    )
    return total + _non_finite_guard(cand)


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

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return contrastive_pairs_loss(
            embeddings,
            labels,
            self.pos_margin,
            self.neg_margin,
            self.distance,
            average=self.average,
            normalize_embeddings=self.normalize_embeddings,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, distance={self.distance!r}, "
            f"average={self.average!r}, normalize_embeddings={self.normalize_embeddings}"
        )


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
    offset: int,
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
        gather_distributed: under an initialised :mod:`torch.distributed` group, mine positives
            and negatives for this rank's anchors among the samples of every rank (gathered with
            gradient); ``mean`` divides by the global item count over the world size and ``sum``
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
    gathered = _gathering(gather_distributed)
    if emb.shape[0] == 0 and not gathered:
        return connected_zero(emb)
    if normalize_embeddings:
        emb = F.normalize(emb, dim=-1)
    cand, cand_labels, offset = _candidates(emb, labels, gathered)
    if cand.shape[0] == 0:  # every rank is empty
        return connected_zero(cand)
    total, count = _triplet_terms(
        emb,
        labels,
        cand,
        cand_labels,
        offset,
        margin=float(margin),
        mining=mining,
        distance=distance,
        soft_margin=bool(soft_margin),
        chunk_size=chunk_size,
    )
    return _mean_or_sum(total + _non_finite_guard(cand), count, reduction, gathered)


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

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, distance={self.distance!r}, "
            f"soft_margin={self.soft_margin}, normalize_embeddings={self.normalize_embeddings}"
        )


# ============================================================================ NT-Xent and SupCon


def _supcon_terms(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    offset: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor ``-mean_{p in P(i)} log softmax_{j != i}(s_ij / T)[p]`` and the validity mask.

    An anchor is valid when it has a positive and a negative; invalid anchors get 0 (with only
    positives and no negative there is nothing to contrast: a one-class batch gives 0, as in
    pytorch-metric-learning). ``anchors`` and ``candidates`` must already be L2-normalised. The
    anchor itself is excluded from the softmax denominator with ``finfo.min`` (not ``-inf``) and
    from the positives by a ``where``.
    """
    # 1/T folded into the (Na, D) operand; mean_p log_softmax[p] = mean_p logit[p] - logsumexp
    logits = (anchors * (1.0 / temperature)) @ candidates.T
    pos, neg, self_ = _pair_masks(anchor_labels, candidate_labels, offset)
    logits = torch.where(self_, logits.new_full((), torch.finfo(logits.dtype).min), logits)
    n_pos = pos.sum(dim=1)
    pos_logits = torch.where(pos, logits, logits.new_zeros(())).sum(dim=1)
    per_anchor = torch.logsumexp(logits, dim=1) - pos_logits / n_pos.clamp_min(1).to(logits.dtype)
    valid = (n_pos > 0) & neg.any(dim=1)
    return torch.where(valid, per_anchor, per_anchor.new_zeros(())), valid


def _nt_xent_terms(
    z: torch.Tensor, candidates: torch.Tensor, offset: int, temperature: float
) -> torch.Tensor:
    """Per-anchor NT-Xent of the ``2b`` rows ``z = [z1; z2]`` (normalised) against the candidates.

    Row ``i`` is candidate ``offset + i``; its positive is candidate ``offset + (i + b) mod 2b``.
    Positions are known, so no label masks are built: the anchor's own logit is replaced (scatter,
    ``finfo.min``, not ``-inf``) and the per-row cross-entropy with the positive's column as the
    class (fused log-softmax, its backward keeps one ``(Na, Nc)`` buffer) gives the loss.
    """
    n = z.shape[0]
    rows = torch.arange(n, device=z.device)
    self_col = (rows + offset)[:, None]
    pos_col = (rows + n // 2) % max(n, 1) + offset
    logits = ((z * (1.0 / temperature)) @ candidates.T).scatter(1, self_col, torch.finfo(z.dtype).min)
    return F.cross_entropy(logits, pos_col, reduction="none")


def nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    *,
    reduction: str = "mean",
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

    .. math::
        \ell_i = -\log \frac{\exp(\cos(z_i, z_{j(i)}) / \tau)}{\sum_{k \ne i} \exp(\cos(z_i, z_k) / \tau)}

    over the ``2B`` rows of ``[z1; z2]``: ``z1[i]`` and ``z2[i]`` are two views of sample ``i``
    (each other's positive), the other ``2B - 2`` rows are negatives. The loss is the mean over all
    ``2B`` anchors (InfoNCE with in-batch negatives, both directions). ``B = 1`` gives 0 (nothing to
    contrast), ``B = 0`` a graph-connected 0.

    Args:
        z1, z2: ``(B, D)`` projections of two augmented views (normalised inside).
        temperature: ``tau > 0`` (SimCLR uses 0.5 at batch 256 ... 0.1 at large batches).
        reduction: ``'mean' | 'sum' | 'none'`` (``'none'``: the ``2B`` per-anchor losses, ``z1`` rows
            first).
        gather_distributed: under an initialised :mod:`torch.distributed` group, use the views of
            every rank (gathered with gradient) as negatives for this rank's ``2B`` anchors
            (open_clip's local loss); ``mean`` divides by the global anchor count over the world
            size and ``sum`` is multiplied by the world size, so DDP's gradient averaging gives
            exactly the gradient of one process over the concatenated batch (``'none'`` returns
            this rank's anchors). No effect without a process group.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> nt_xent_loss(z, z, temperature=1.0)
        tensor(0.5514)
    """
    check_reduction(reduction)
    tau = _check_temperature("temperature", temperature)
    check_floating("z1", z1)
    check_ndim("z1", z1, 2, "(B, D)")
    check_floating("z2", z2)
    check_same_shape("z2", z2, "z1", z1)
    check_same_device(("z1", z1), ("z2", z2))
    z = F.normalize(upcast(torch.cat([z1, z2], dim=0)), dim=-1)
    gathered = _gathering(gather_distributed)
    cand, offset = z, 0
    if gathered:
        cand, _, offset = _dist.gather_candidates(z)
    per_anchor = _nt_xent_terms(z, cand, offset, tau)
    if reduction == "none" or not gathered:
        return reduce_loss(per_anchor, reduction)
    return _mean_or_sum(per_anchor.sum(), per_anchor.numel(), reduction, gathered)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`: ``loss_fn(z1, z2)``.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> NTXentLoss(temperature=1.0)(z, z)
        tensor(0.5514)
    """

    def __init__(
        self, temperature: float = 0.5, reduction: str = "mean", gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature("temperature", temperature)
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(
            z1, z2, self.temperature, reduction=self.reduction, gather_distributed=self.gather_distributed
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


def supcon_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float | None = None,
    *,
    reduction: str = "mean",
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Supervised contrastive loss, the :math:`L^{sup}_{out}` form of Khosla et al. 2020.

    .. math::
        \ell_i = -\frac{\tau}{\tau_b} \frac{1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{k \ne i} \exp(z_i \cdot z_k / \tau)}

    with L2-normalised ``z``, ``P(i)`` the other samples (all views) with the anchor's label and
    ``tau_b = base_temperature`` (``None``: ``tau``, i.e. no rescaling; the reference code uses
    ``tau = tau_b = 0.07``). ``mean`` averages over anchors with at least one positive (the reference
    code also counts anchors without positives, as zeros); a batch without any positive pair, or of
    a single class (positives but no negative to contrast with, as in pytorch-metric-learning), gives
    a graph-connected 0.

    Args:
        embeddings: ``(B, D)``, or ``(B, V, D)`` for ``V`` views per sample (every view is an anchor).
        labels: ``(B,)`` integer labels; ``None`` uses the sample index (SimCLR-style instance
            discrimination, needs ``V >= 2``).
        reduction: ``'mean' | 'sum' | 'none'`` (``'none'``: per-anchor losses, ``(B,)`` or ``(V * B,)``
            view-major, 0 for anchors without positives or without negatives).
        gather_distributed: under an initialised :mod:`torch.distributed` group, contrast this
            rank's anchors with the samples of every rank (gathered with gradient); ``mean``
            divides by the global number of anchors with a positive over the world size and ``sum``
            is multiplied by the world size, so DDP's gradient averaging gives exactly the gradient
            of one process over the concatenated batch (``'none'`` returns this rank's anchors).
            No effect without a process group.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> supcon_loss(emb, torch.tensor([0, 0, 1]), temperature=1.0)
        tensor(0.3285)
    """
    check_reduction(reduction)
    tau = _check_temperature("temperature", temperature)
    tau_b = tau if base_temperature is None else _check_temperature("base_temperature", base_temperature)
    check_floating("embeddings", embeddings)
    check_ndim("embeddings", embeddings, (2, 3), "(B, D) or (B, V, D)")
    if embeddings.dim() == 3:
        b, v, d = embeddings.shape
        flat = embeddings.transpose(0, 1).reshape(v * b, d)
    else:
        b, v = embeddings.shape[0], 1
        flat = embeddings
    gathered = _gathering(gather_distributed)
    if labels is None:
        labels = torch.arange(b, device=embeddings.device)
        if gathered:
            labels = labels + _dist.rank() * _RANK_ID_STRIDE
    emb, labels = _check_embeddings_labels(flat, labels.repeat(v) if v > 1 else labels)
    if emb.shape[0] == 0 and not gathered:
        return emb.sum(dim=-1) if reduction == "none" else connected_zero(emb)
    z = F.normalize(emb, dim=-1)
    cand, cand_labels, offset = _candidates(z, labels, gathered)
    if cand.shape[0] == 0:  # every rank is empty
        return connected_zero(cand)
    per_anchor, valid = _supcon_terms(z, labels, cand, cand_labels, offset, tau)
    per_anchor = per_anchor * (tau / tau_b)
    if reduction == "none":
        return per_anchor
    if gathered:
        total = torch.where(valid, per_anchor, per_anchor.new_zeros(())).sum()
        return _mean_or_sum(total, valid, reduction, gathered)
    return reduce_loss(per_anchor, reduction, mask=valid)


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss`: ``loss_fn(embeddings, labels=None)``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> SupConLoss(temperature=1.0)(emb, torch.tensor([0, 0, 1]))
        tensor(0.3285)
    """

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature("temperature", temperature)
        self.base_temperature = (
            None if base_temperature is None else _check_temperature("base_temperature", base_temperature)
        )
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return supcon_loss(
            embeddings,
            labels,
            self.temperature,
            self.base_temperature,
            reduction=self.reduction,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"reduction={self.reduction!r}"
        )


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
        weight: ``(C, D)`` class centres (the module owns them as a parameter).
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
    if weight.dim() != 2 or weight.shape[1] != emb.shape[1]:
        raise LossValueError(
            f"weight has shape {shape_str(weight.shape)}, expected (C, {emb.shape[1]}): one centre per "
            f"class with the embeddings' dimension"
        )
    check_class_range("labels", labels, weight.shape[0])
    w = upcast(weight).to(emb.dtype).contiguous()
    cos = F.normalize(emb, dim=-1) @ F.normalize(w, dim=-1).T
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

    Owns ``weight``, a ``(num_classes, embedding_dim)`` parameter (Xavier-uniform initialised, as in
    the ArcFace code); add it to the optimizer (``loss_fn.parameters()``). See
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
    ) -> None:
        super().__init__()
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.scale = float(check_number("scale", scale, low=0.0, low_open=True))
        self.kind = check_choice("kind", kind, ANGULAR_KINDS)
        self.margin = float(
            check_number("margin", margin, low=0.0, high=math.pi / 2 if kind == "arcface" else None)
        )
        self.reduction = check_reduction(reduction)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return angular_margin_loss(
            embeddings, self.weight, labels, self.scale, self.margin, self.kind, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}, kind={self.kind!r}, reduction={self.reduction!r}"
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


# ============================================================================ registry

_FAMILY = "embedding"
register(
    "cosine_embedding",
    CosineEmbeddingLoss,
    family=_FAMILY,
    functional=cosine_embedding_loss,
    source="torch / seed 000",
    notes="targets 1 / -1 (0/1 rejected); empty batch -> 0",
)
register(
    "contrastive",
    ContrastiveLoss,
    family=_FAMILY,
    functional=contrastive_loss,
    source="Hadsell, Chopra & LeCun 2006",
    notes="pairs; target 1 = similar, 0 = dissimilar",
)
register(
    "contrastive_pairs",
    ContrastivePairsLoss,
    family=_FAMILY,
    functional=contrastive_pairs_loss,
    source="pytorch-metric-learning ContrastiveLoss",
    notes="all pairs of a labelled batch; mean over non-zero pairs",
)
register(
    "triplet",
    TripletLoss,
    family=_FAMILY,
    functional=triplet_loss,
    source="Schroff et al. 2015; Hermans et al. 2017",
    notes="batch_hard / batch_semi_hard / batch_all mining; O(B^2) memory",
)
register(
    "nt_xent",
    NTXentLoss,
    family=_FAMILY,
    functional=nt_xent_loss,
    source="Chen et al. 2020 (SimCLR)",
    notes="two views, 2B-2 in-batch negatives",
    aliases=("info_nce",),
)
register(
    "supcon",
    SupConLoss,
    family=_FAMILY,
    functional=supcon_loss,
    source="Khosla et al. 2020",
    notes="L_out; (B, D) or (B, V, D); mean over anchors with a positive",
)
register(
    "arcface",
    ArcFaceLoss,
    family=_FAMILY,
    functional=angular_margin_loss,
    source="Deng et al. CVPR 2019 (ArcFace)",
    notes="learnable centres; needs embedding_dim, num_classes; cos(theta + m), s=64, m=0.5",
)
register(
    "cosface",
    CosFaceLoss,
    family=_FAMILY,
    functional=angular_margin_loss,
    source="Wang et al. CVPR 2018 (CosFace)",
    notes="learnable centres; needs embedding_dim, num_classes; cos(theta) - m, s=64, m=0.35",
)
