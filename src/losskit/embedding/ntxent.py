"""NT-Xent (SimCLR / InfoNCE) and supervised contrastive (SupCon) losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as _dist
from .._checks import check_floating, check_ndim, check_reduction, check_same_device, check_same_shape
from .._reduction import connected_zero, reduce_loss, upcast
from ..registry import register
from ._common import (
    _RANK_ID_STRIDE,
    FAMILY,
    _candidates,
    _check_embeddings_labels,
    _check_temperature,
    _gathering,
    _mean_or_sum,
    _pair_masks,
    _reduce_anchors,
)

__all__ = ["NTXentLoss", "SupConLoss", "nt_xent_loss", "supcon_loss"]


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
    labels: torch.Tensor | None = None,
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

    With class ``labels`` (supervised NT-Xent) every other row with the anchor's label is a
    positive too, and the anchor's loss is the mean of ``-log softmax`` over its positives (SupCon's
    :math:`L^{sup}_{out}` on the two views, :func:`supcon_loss` of ``stack([z1, z2], 1)``); an anchor
    whose class fills the batch has no negative and gives 0, and ``mean`` is over the other
    anchors. Distinct labels give the unsupervised loss.

    Args:
        z1, z2: ``(B, D)`` projections of two augmented views (normalised inside).
        temperature: ``tau > 0`` (SimCLR uses 0.5 at batch 256 ... 0.1 at large batches).
        labels: optional ``(B,)`` integer class labels of the samples (both views share them).
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
    if labels is not None:
        _, labels = _check_embeddings_labels(z1, labels, "(B, D)")
        if z.shape[0] == 0 and not gathered:
            return z.sum(dim=-1) if reduction == "none" else connected_zero(z)
        cand, cand_labels, offset = _candidates(z, labels.repeat(2), gathered)
        per_anchor, valid = _supcon_terms(z, labels.repeat(2), cand, cand_labels, offset, tau)
        return _reduce_anchors(per_anchor, valid, reduction, gathered)
    cand, offset = z, 0
    if gathered:
        cand, _, offset = _dist.gather_candidates(z)
    per_anchor = _nt_xent_terms(z, cand, offset, tau)
    if reduction == "none" or not gathered:
        return reduce_loss(per_anchor, reduction)
    return _mean_or_sum(per_anchor.sum(), per_anchor.numel(), reduction, gathered)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`: ``loss_fn(z1, z2)`` or ``loss_fn(z1, z2, labels)``.

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

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return nt_xent_loss(
            z1,
            z2,
            self.temperature,
            labels=labels,
            reduction=self.reduction,
            gather_distributed=self.gather_distributed,
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


# ============================================================================ registry

register(
    "nt_xent",
    NTXentLoss,
    family=FAMILY,
    functional=nt_xent_loss,
    source="Chen et al. 2020 (SimCLR)",
    notes="two views, 2B-2 in-batch negatives",
    aliases=("info_nce",),
)
register(
    "supcon",
    SupConLoss,
    family=FAMILY,
    functional=supcon_loss,
    source="Khosla et al. 2020",
    notes="L_out; (B, D) or (B, V, D); mean over anchors with a positive",
)
