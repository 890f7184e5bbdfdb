r"""Similarity-weighted pair losses: multi-similarity (with its pair mining) and circle loss.

Both compare every anchor with every candidate (the batch itself, every rank's batch with
``gather_distributed=True``, or a separate reference set with ``ref_embeddings`` / ``ref_labels``)
and weight each pair by how hard it is, through a log-sum-exp over the anchor's positives and
negatives. Candidates in a reference set are never the anchor itself: every reference with the
anchor's label is a positive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_number, check_reduction
from .._reduction import connected_zero
from ..registry import register
from ._common import (
    FAMILY,
    _candidate_set,
    _check_embeddings_labels,
    _check_reference,
    _distance_matrix,
    _gathering,
    _log1p_sum_exp,
    _non_finite_guard,
    _pair_masks,
    _reduce_anchors,
)

__all__ = ["CircleLoss", "MultiSimilarityLoss", "circle_loss", "multi_similarity_loss"]

MS_DISTANCES = ("cosine", "euclidean", "squared_euclidean")
# (anchors, anchor_labels, candidates, candidate_labels, offset, **config) -> (per-anchor loss, valid anchors)
PairTerms = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]


def _cosine_matrix(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``(Na, Nc)`` cosine similarities (rows L2-normalised first)."""
    return F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T


# ============================================================================ multi-similarity


def _multi_similarity_terms(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    offset: int | None,
    *,
    alpha: float,
    beta: float,
    base: float,
    epsilon: float,
    distance: str,
) -> tuple[torch.Tensor, None]:
    """Per-anchor multi-similarity loss (every anchor counts; no valid mask).

    Written on a similarity ``s``: cosine, or ``-d`` for a distance (then ``lambda = -base``). The
    mining masks are built under ``no_grad``; the two log-sum-exps add the ``1`` of the formula as a
    detached shift (:func:`_log1p_sum_exp`).
    """
    pos, neg, _ = _pair_masks(anchor_labels, candidate_labels, offset)
    if distance == "cosine":
        sim, lam = _cosine_matrix(anchors, candidates), base
    else:
        sim, lam = -_distance_matrix(anchors, candidates, distance), -base
    with torch.no_grad():
        big = torch.finfo(sim.dtype).max
        s = sim.detach()
        hardest_pos = torch.where(pos, s, s.new_full((), big)).amin(dim=1, keepdim=True)
        hardest_neg = torch.where(neg, s, s.new_full((), -big)).amax(dim=1, keepdim=True)
        # a negative is kept when it is closer than the hardest positive (within epsilon), a positive
        # when it is farther than the hardest negative (NaN compares False: the guard catches it)
        keep_neg = neg & (s + epsilon > hardest_pos) & pos.any(dim=1, keepdim=True)
        keep_pos = pos & (s - epsilon < hardest_neg) & neg.any(dim=1, keepdim=True)
    pos_term = _log1p_sum_exp(-alpha * (sim - lam), keep_pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - lam), keep_neg) / beta
    return pos_term + neg_term, None


def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    distance: str = "cosine",
    *,
    reduction: str = "mean",
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Multi-similarity loss with its pair mining (Wang et al., CVPR 2019).

    With ``S_ik`` the cosine similarity of anchor ``i`` and candidate ``k``, the *mined* positives
    ``P_i`` (same label, ``S_ik < max_{neg} S_i + epsilon``) and negatives ``N_i`` (other label,
    ``S_ik > min_{pos} S_i - epsilon``):

    .. math::
        \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{k \in P_i} e^{-\alpha (S_{ik} - \lambda)}\Big)
               + \frac{1}{\beta} \log\Big(1 + \sum_{k \in N_i} e^{\beta (S_{ik} - \lambda)}\Big)

    ``lambda = base``. Defaults are the paper's (``alpha = 2``, ``beta = 50``, ``lambda = 0.5``,
    ``epsilon = 0.1``; pytorch-metric-learning's ``MultiSimilarityLoss`` + ``MultiSimilarityMiner``).
    An anchor without a positive or without a negative mines nothing and gives 0. ``mean`` is over
    every anchor, as in the paper (``1/m sum_i``). With ``distance='euclidean'`` or
    ``'squared_euclidean'`` the similarity is ``-d`` (pytorch-metric-learning's convention: the
    positive term is ``exp(alpha (d - base))``, the negative one ``exp(-beta (d - base))``, the
    mining inequalities reversed); embeddings are then not normalised.

    Args:
        embeddings: ``(B, D)`` queries.
        labels: ``(B,)`` integer class labels.
        alpha, beta: ``> 0``, the positive and negative scales.
        base: ``lambda``, the similarity (or distance) margin.
        epsilon: ``>= 0``, the mining slack.
        distance: ``'cosine'`` (similarity, default), ``'euclidean'``, ``'squared_euclidean'``.
        reduction: ``'mean' | 'sum' | 'none'`` (``(B,)`` per-anchor losses).
        ref_embeddings, ref_labels: ``(M, D)``, ``(M,)``: compare the queries with this reference set
            instead of with the batch (every reference with the query's label is a positive).
        gather_distributed: under an initialised :mod:`torch.distributed` group, compare this
            rank's anchors with every rank's samples (or references), gathered with gradient;
            ``mean`` divides by the global anchor count over the world size, so DDP's gradient
            averaging gives the one-process gradient over the concatenated batch.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
        >>> multi_similarity_loss(emb, torch.tensor([0, 0, 1, 1]))
        tensor(0.3394)
    """
    check_reduction(reduction)
    check_number("alpha", alpha, low=0.0, low_open=True)
    check_number("beta", beta, low=0.0, low_open=True)
    check_number("base", base)
    check_number("epsilon", epsilon, low=0.0)
    check_choice("distance", distance, MS_DISTANCES)
    config = {
        "alpha": float(alpha),
        "beta": float(beta),
        "base": float(base),
        "epsilon": float(epsilon),
        "distance": distance,
    }
    return _pair_loss(
        _multi_similarity_terms,
        config,
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        reduction,
        gather_distributed,
    )


def _pair_loss(
    terms: PairTerms,
    config: dict[str, Any],
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_embeddings: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    reduction: str,
    gather_distributed: bool,
) -> torch.Tensor:
    """Checks, candidate set and reduction shared by the per-anchor pair losses of this module."""
    emb, labels = _check_embeddings_labels(embeddings, labels)
    reference = _check_reference(emb, ref_embeddings, ref_labels)
    gathered = _gathering(gather_distributed)
    cand, cand_labels, offset = _candidate_set(emb, labels, reference, gathered)
    return _from_candidates(terms, config, emb, labels, cand, cand_labels, offset, reduction, gathered)


def _from_candidates(
    terms: PairTerms,
    config: dict[str, Any],
    emb: torch.Tensor,
    labels: torch.Tensor,
    cand: torch.Tensor,
    cand_labels: torch.Tensor,
    offset: int | None,
    reduction: str,
    gathered: bool,
) -> torch.Tensor:
    if emb.shape[0] == 0 or cand.shape[0] == 0:
        if reduction == "none":
            return emb.sum(dim=-1) + connected_zero(cand)
        if not gathered or cand.shape[0] == 0:
            return connected_zero(emb, cand)
    per_anchor, valid = terms(emb, labels, cand, cand_labels, offset, **config)
    per_anchor = per_anchor + (_non_finite_guard(emb) + _non_finite_guard(cand))
    return _reduce_anchors(per_anchor, valid, reduction, gathered)


class _PairLossModule(nn.Module):
    """Shared forward of the per-anchor pair-loss modules: ``loss_fn(embeddings, labels)``."""

    _terms: ClassVar[PairTerms] = staticmethod(_multi_similarity_terms)
    reduction: str
    gather_distributed: bool

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return _pair_loss(
            type(self)._terms,
            self._config(),
            embeddings,
            labels,
            ref_embeddings,
            ref_labels,
            self.reduction,
            self.gather_distributed,
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
        return _from_candidates(
            type(self)._terms,
            self._config(),
            emb,
            labels,
            cand,
            cand_labels,
            offset,
            self.reduction,
            gathered,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config().items()) + f", reduction={self.reduction!r}"


class MultiSimilarityLoss(_PairLossModule):
    """Module form of :func:`multi_similarity_loss`: ``loss_fn(embeddings, labels)``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
        >>> MultiSimilarityLoss()(emb, torch.tensor([0, 0, 1, 1]))
        tensor(0.3394)
    """

    _terms = staticmethod(_multi_similarity_terms)

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        distance: str = "cosine",
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = float(check_number("alpha", alpha, low=0.0, low_open=True))
        self.beta = float(check_number("beta", beta, low=0.0, low_open=True))
        self.base = float(check_number("base", base))
        self.epsilon = float(check_number("epsilon", epsilon, low=0.0))
        self.distance = check_choice("distance", distance, MS_DISTANCES)
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)

    def _config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "base": self.base,
            "epsilon": self.epsilon,
            "distance": self.distance,
        }


# ============================================================================ circle loss


def _circle_terms(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    offset: int | None,
    *,
    margin: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor circle loss and the mask of anchors with a positive and a negative.

    ``softplus(lse_n + lse_p)`` is ``log(1 + sum_n e^{.} sum_p e^{.})``; the weights ``alpha_p``,
    ``alpha_n`` are detached, as in the authors' code.
    """
    pos, neg, _ = _pair_masks(anchor_labels, candidate_labels, offset)
    sim = _cosine_matrix(anchors, candidates)
    s = sim.detach()
    alpha_p = (1.0 + margin - s).clamp_min(0.0)
    alpha_n = (s + margin).clamp_min(0.0)
    logit_p = -gamma * alpha_p * (sim - (1.0 - margin))
    logit_n = gamma * alpha_n * (sim - margin)
    low = sim.new_full((), torch.finfo(sim.dtype).min)
    has_pos, has_neg = pos.any(dim=1), neg.any(dim=1)
    zero = sim.new_zeros(())
    lse_p = torch.where(has_pos, torch.logsumexp(torch.where(pos, logit_p, low), dim=1), zero)
    lse_n = torch.where(has_neg, torch.logsumexp(torch.where(neg, logit_n, low), dim=1), zero)
    valid = has_pos & has_neg
    return torch.where(valid, F.softplus(lse_p + lse_n), zero), valid


def circle_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.25,
    gamma: float = 256.0,
    *,
    reduction: str = "mean",
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Circle loss over the pairs of a labelled batch (Sun et al., CVPR 2020).

    With cosine similarities ``s_p`` (positives of the anchor) and ``s_n`` (negatives), margin ``m``
    and scale ``gamma``:

    .. math::
        \ell_i = \log\Big(1 + \sum_{n} e^{\gamma \alpha_n (s_n - \Delta_n)}
                             \sum_{p} e^{-\gamma \alpha_p (s_p - \Delta_p)}\Big),
        \quad \alpha_p = [1 + m - s_p]_+,\ \alpha_n = [s_n + m]_+,\ \Delta_p = 1 - m,\ \Delta_n = m

    ``alpha_p`` and ``alpha_n`` are treated as constants (no gradient), as in the authors' code and
    pytorch-metric-learning's ``CircleLoss``. Defaults are the paper's for face recognition
    (``m = 0.25``, ``gamma = 256``). ``mean`` is over anchors with at least one positive and one
    negative (the others give 0; a batch without any is a graph-connected 0). The margins are
    defined on cosine similarities, so there is no distance option.

    Args:
        embeddings: ``(B, D)`` (L2-normalised inside).
        labels: ``(B,)`` integer class labels.
        margin: ``m``, the relaxation (``>= 0``).
        gamma: ``> 0``, the scale.
        reduction: ``'mean' | 'sum' | 'none'`` (``(B,)``).
        ref_embeddings, ref_labels: compare the queries with a separate reference set.
        gather_distributed: as in :func:`multi_similarity_loss`.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
        >>> circle_loss(emb, torch.tensor([0, 0, 1, 1]), gamma=16.0)
        tensor(8.9005)
    """
    check_reduction(reduction)
    check_number("margin", margin, low=0.0)
    check_number("gamma", gamma, low=0.0, low_open=True)
    config = {"margin": float(margin), "gamma": float(gamma)}
    return _pair_loss(
        _circle_terms, config, embeddings, labels, ref_embeddings, ref_labels, reduction, gather_distributed
    )


class CircleLoss(_PairLossModule):
    """Module form of :func:`circle_loss`: ``loss_fn(embeddings, labels)``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
        >>> CircleLoss(gamma=16.0)(emb, torch.tensor([0, 0, 1, 1]))
        tensor(8.9005)
    """

    _terms = staticmethod(_circle_terms)

    def __init__(
        self,
        margin: float = 0.25,
        gamma: float = 256.0,
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.margin = float(check_number("margin", margin, low=0.0))
        self.gamma = float(check_number("gamma", gamma, low=0.0, low_open=True))
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)

    def _config(self) -> dict[str, Any]:
        return {"margin": self.margin, "gamma": self.gamma}


# ============================================================================ registry

register(
    "multi_similarity",
    MultiSimilarityLoss,
    family=FAMILY,
    functional=multi_similarity_loss,
    source="Wang et al. CVPR 2019 (MS loss)",
    notes="with its pair mining; alpha=2, beta=50, lambda=0.5, eps=0.1; cosine or -distance; ref set",
)
register(
    "circle",
    CircleLoss,
    family=FAMILY,
    functional=circle_loss,
    source="Sun et al. CVPR 2020 (Circle loss)",
    notes="pair form, cosine; m=0.25, gamma=256; detached alpha weights; ref set",
)
