"""``losskit bench`` cases for the metric-learning losses, beside the eager code people write.

Shapes are ``(B, D)``: ``B`` embeddings of dimension ``D``, ``B / 8`` classes (8 per class), float32.

* ``triplet``: batch-hard triplet (euclidean, margin 0.2) vs ``torch.cdist`` + masked max/min;
* ``triplet_batch_all``: every valid triplet vs the ``(B, B, B)`` broadcast (its memory grows as ``B^3``);
* ``nt_xent``: NT-Xent (tau 0.5) on two views vs the SimCLR recipe (similarity matrix, ``-inf``
  diagonal, ``F.cross_entropy``);
* ``supcon``: SupCon (tau 0.1) vs the reference code of Khosla et al. (masked softmax with ``exp``/``log``).

pytorch-metric-learning's losses are added as peers when it is installed (the ``peers`` extra).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .cases import Case, Shape, Variant, _lf, _peer, register_case

__all__ = ["eager_batch_all", "eager_batch_hard", "eager_nt_xent", "eager_supcon"]

MARGIN, TAU_NT, TAU_SC = 0.2, 0.5, 0.1


def eager_batch_hard(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos, neg = same & ~eye, ~same
    hardest_pos = (dist * pos).max(dim=1).values
    hardest_neg = (dist + dist.max().detach() * (~neg)).min(dim=1).values
    valid = pos.any(1) & neg.any(1)
    return F.relu(hardest_pos - hardest_neg + MARGIN)[valid].mean()


def eager_batch_all(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    loss = F.relu(dist[:, :, None] - dist[:, None, :] + MARGIN) * valid
    return loss.sum() / (loss > 0).sum().clamp_min(1)


def eager_nt_xent(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / TAU_NT
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def eager_supcon(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    z = F.normalize(emb, dim=1)
    logits = z @ z.T / TAU_SC
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1.0 - torch.eye(len(labels), device=emb.device)
    mask = (labels[:, None] == labels[None, :]).float() * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    n_pos = mask.sum(1)
    mean_log_prob_pos = (mask * log_prob).sum(1) / n_pos.clamp_min(1)
    return -mean_log_prob_pos[n_pos > 0].mean()


# ----------------------------------------------------------------------------- inputs


def make_labelled(shape: Shape, dtype: torch.dtype, seed: int):
    """``(embeddings (B, D), labels (B,))`` with 8 embeddings per class."""
    b, d = shape
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g).to(dtype)
    return (emb, torch.arange(b) % max(b // 8, 2)), (0,)


def make_views(shape: Shape, dtype: torch.dtype, seed: int):
    """Two correlated views ``(B, D)`` of the same batch."""
    b, d = shape
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g)
    return (z1.to(dtype), (z1 + 0.3 * torch.randn(b, d, generator=g)).to(dtype)), (0, 1)


# ----------------------------------------------------------------------------- variants


def _pml(name: str, **kw: Any) -> Any:
    """A pytorch-metric-learning loss object, or ``None`` when the package is missing."""
    losses = _peer("pytorch_metric_learning.losses")
    return None if losses is None else getattr(losses, name)(**kw)


_TRIPLET_EAGER = {
    "batch_hard": ("eager (cdist, masked max/min)", eager_batch_hard),
    "batch_all": ("eager ((B, B, B) broadcast)", eager_batch_all),
}


def _triplet_variants(mining: str) -> list[Variant]:
    LF = _lf()
    eager_name, eager = _TRIPLET_EAGER[mining]
    out = [
        Variant(
            f"losskit.triplet_loss ({mining})",
            "losskit",
            lambda e, y: LF.triplet_loss(e, y, MARGIN, mining),
        ),
        Variant(eager_name, "eager", eager),
    ]
    loss = _pml("TripletMarginLoss", margin=MARGIN)
    if loss is None:
        return out
    if mining == "batch_all":
        out.append(Variant("PML TripletMarginLoss (all triplets)", "peer", lambda e, y: loss(e, y)))
        return out
    miners = _peer("pytorch_metric_learning.miners")
    if miners is not None:
        miner = miners.BatchHardMiner()
        out.append(
            Variant(
                "PML TripletMarginLoss + BatchHardMiner",
                "peer",
                lambda e, y: loss(e, y, miner(e, y)),
                note="PML averages over non-zero triplets",
            )
        )
    return out


def _nt_xent_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.nt_xent_loss", "losskit", lambda a, b: LF.nt_xent_loss(a, b, TAU_NT)),
        Variant("eager (SimCLR similarity matrix + CE)", "eager", eager_nt_xent),
    ]
    loss = _pml("NTXentLoss", temperature=TAU_NT)
    if loss is not None:

        def pml(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            labels = torch.arange(a.shape[0], device=a.device)
            return loss(torch.cat([a, b]), torch.cat([labels, labels]))

        # PML compares every positive pair with every negative pair: (2B)^3 elements, 34 GB at B = 1024
        out.append(
            Variant("PML NTXentLoss", "peer", pml, fits=lambda shape: 4 * (2 * shape[0]) ** 3 <= 2**31)
        )
    return out


def _supcon_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.supcon_loss", "losskit", lambda e, y: LF.supcon_loss(e, y, TAU_SC)),
        Variant("eager (Khosla et al. reference)", "eager", eager_supcon),
    ]
    loss = _pml("SupConLoss", temperature=TAU_SC)
    if loss is not None:
        out.append(Variant("PML SupConLoss", "peer", lambda e, y: loss(e, y)))
    return out


_EMB, _EMB_QUICK = (1024, 128), (32, 8)
_EMB_SCALING = [(256, 128), (1024, 128), (4096, 128), (1024, 512)]
_NOTE = "B embeddings of dimension D, B/8 classes"

register_case(
    Case(
        "triplet",
        make_labelled,
        _EMB,
        _EMB_QUICK,
        lambda: _triplet_variants("batch_hard"),
        _EMB_SCALING,
        note=_NOTE,
    )
)
register_case(
    Case(
        "triplet_batch_all",
        make_labelled,
        (512, 128),
        _EMB_QUICK,
        lambda: _triplet_variants("batch_all"),
        [(128, 128), (256, 128), (512, 128)],
        note=_NOTE + "; the eager version holds (B, B, B) tensors",
    )
)
register_case(Case("nt_xent", make_views, _EMB, _EMB_QUICK, _nt_xent_variants, _EMB_SCALING, note=_NOTE))
register_case(Case("supcon", make_labelled, _EMB, _EMB_QUICK, _supcon_variants, _EMB_SCALING, note=_NOTE))
