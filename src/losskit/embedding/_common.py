"""Shared pieces of the embedding losses: distances, pair masks, input checks, the DDP candidate set
and the mean/sum normaliser (see :mod:`losskit.embedding` for the rules they implement)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import distributed as _dist
from .._checks import (
    LossValueError,
    check_floating,
    check_integer,
    check_ndim,
    check_number,
    check_same_device,
    shape_str,
)
from .._reduction import upcast

# Registry family of every loss in this package.
FAMILY = "embedding"
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


def _self_mask(
    num_anchors: int, num_candidates: int, offset: int | None, device: torch.device
) -> torch.Tensor:
    """``(Na, Nc)`` bool, True where candidate ``j`` is anchor ``i`` itself (``j == offset + i``).

    ``offset=None``: the candidates are a separate reference set, no candidate is an anchor.
    """
    if offset is None:
        return torch.zeros(num_anchors, num_candidates, dtype=torch.bool, device=device)
    rows = torch.arange(num_anchors, device=device) + offset
    cols = torch.arange(num_candidates, device=device)
    return rows[:, None] == cols[None, :]


def _pair_masks(
    anchor_labels: torch.Tensor, candidate_labels: torch.Tensor, offset: int | None
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


def _check_reference(
    embeddings: torch.Tensor, ref_embeddings: torch.Tensor | None, ref_labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Checked ``(ref_embeddings, ref_labels)`` (upcast, contiguous), or ``None`` when neither is given."""
    if ref_embeddings is None and ref_labels is None:
        return None
    if ref_embeddings is None or ref_labels is None:
        given, missing = (
            ("ref_embeddings", "ref_labels") if ref_labels is None else ("ref_labels", "ref_embeddings")
        )
        raise LossValueError(f"{given} was given without {missing}: pass both, or neither")
    check_floating("ref_embeddings", ref_embeddings)
    check_ndim("ref_embeddings", ref_embeddings, 2, "(M, D)")
    check_integer("ref_labels", ref_labels)
    check_same_device(
        ("embeddings", embeddings), ("ref_embeddings", ref_embeddings), ("ref_labels", ref_labels)
    )
    if ref_embeddings.shape[1] != embeddings.shape[1]:
        raise LossValueError(
            f"ref_embeddings has shape {shape_str(ref_embeddings.shape)}, expected (M, {embeddings.shape[1]}) "
            f"to match embeddings of shape {shape_str(embeddings.shape)}"
        )
    if ref_labels.dim() != 1 or ref_labels.shape[0] != ref_embeddings.shape[0]:
        raise LossValueError(
            f"ref_labels has shape {shape_str(ref_labels.shape)}, expected ({ref_embeddings.shape[0]},) to "
            f"match ref_embeddings of shape {shape_str(ref_embeddings.shape)}: one class label per sample"
        )
    return upcast(ref_embeddings).to(upcast(embeddings).dtype).contiguous(), ref_labels


def _candidate_set(
    anchors: torch.Tensor,
    labels: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    gathered: bool,
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """``(candidates, candidate_labels, offset)`` of a pair loss.

    Without ``reference``: the batch itself (or every rank's batch, with gradient), and the anchors'
    offset among them. With ``reference = (ref_embeddings, ref_labels)``: the reference set (every
    rank's, gathered with gradient, when ``gathered``) and ``offset=None`` (no anchor is its own
    candidate).
    """
    if reference is None:
        return _candidates(anchors, labels, gathered)
    ref, ref_labels = reference
    if gathered:
        ref, ref_labels, _ = _candidates(ref, ref_labels, True)
    return ref, ref_labels, None


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(x))`` along ``dim``, stable, without ``inf`` (0 where the mask is empty).

    The shift ``m = max(0, max_mask x)`` is detached (the value does not depend on it), so excluded
    entries never reach an ``exp`` of a large number and fp16-scale inputs cannot overflow.
    """
    low = x.new_full((), torch.finfo(x.dtype).min)
    masked = torch.where(mask, x, low)
    with torch.no_grad():
        m = (
            masked.amax(dim=dim, keepdim=True).clamp_min(0.0)
            if x.shape[dim] > 0
            else masked.sum(dim, True) * 0
        )
    terms = torch.where(mask, (masked - m).exp(), x.new_zeros(()))
    m = m.squeeze(dim)
    return m + ((-m).exp() + terms.sum(dim=dim)).log()


def _reduce_anchors(
    per_anchor: torch.Tensor, valid: torch.Tensor | None, reduction: str, gathered: bool
) -> torch.Tensor:
    """``'none'``: the per-anchor losses; ``'sum'`` / ``'mean'`` over the valid anchors (every anchor
    when ``valid`` is ``None``), with the DDP normaliser when ``gathered`` (see :func:`_mean_or_sum`)."""
    if reduction == "none":
        return per_anchor
    if valid is None:
        return _mean_or_sum(per_anchor.sum(), per_anchor.new_tensor(per_anchor.shape[0]), reduction, gathered)
    total = torch.where(valid, per_anchor, per_anchor.new_zeros(())).sum()
    return _mean_or_sum(total, valid.sum(), reduction, gathered)
