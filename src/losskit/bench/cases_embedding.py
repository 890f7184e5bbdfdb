"""``losskit bench`` cases for the metric-learning losses, beside the eager code people write.

Shapes are ``(B, D)``: ``B`` embeddings of dimension ``D``, ``B / 8`` classes (8 per class), float32.

* ``triplet``: batch-hard triplet (euclidean, margin 0.2) vs ``torch.cdist`` + masked max/min;
* ``triplet_batch_all``: every valid triplet vs the ``(B, B, B)`` broadcast (its memory grows as ``B^3``);
* ``nt_xent``: NT-Xent (tau 0.5) on two views vs the SimCLR recipe (similarity matrix, ``-inf``
  diagonal, ``F.cross_entropy``);
* ``supcon``: SupCon (tau 0.1) vs the reference code of Khosla et al. (masked softmax with ``exp``/``log``);
* ``multi_similarity``: MS loss with its mining (paper defaults) vs the masked-matrix composition
  (``inf``-filled min/max for the mining, ``exp`` / ``log1p``);
* ``circle``: circle loss (m 0.25, gamma 256) vs the authors' formulation (``-inf``-masked logsumexps);
* ``proxy_anchor``: Proxy-Anchor (alpha 32, delta 0.1; ``B / 8`` proxies, with gradient) vs the
  authors' code (one-hot masks, ``exp``, ``log(1 + sum)``);
* ``xbm_multi_similarity``: MS through :class:`CrossBatchMemory` with a full memory of 4096 rows vs
  the eager MS of the batch against ``[batch; memory]``.

pytorch-metric-learning's losses are added as peers when it is installed (the ``peers`` extra).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .cases import Case, Inputs, Shape, Variant, _lf, _peer, register_case

__all__ = [
    "eager_batch_all",
    "eager_batch_hard",
    "eager_circle",
    "eager_multi_similarity",
    "eager_nt_xent",
    "eager_proxy_anchor",
    "eager_supcon",
]

MARGIN, TAU_NT, TAU_SC = 0.2, 0.5, 0.1
MS_ALPHA, MS_BETA, MS_BASE, MS_EPS = 2.0, 50.0, 0.5, 0.1
CIRCLE_M, CIRCLE_GAMMA = 0.25, 256.0
PA_ALPHA, PA_DELTA = 32.0, 0.1
XBM_MEMORY = 4096


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


def eager_multi_similarity(
    emb: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """MS loss with its mining as usually written on the full similarity matrix (``inf`` fills)."""
    z = F.normalize(emb, dim=1)
    cand = z if ref is None else torch.cat([z, F.normalize(ref, dim=1)])
    cand_labels = labels if ref_labels is None else torch.cat([labels, ref_labels])
    sim = z @ cand.T
    same = labels[:, None] == cand_labels[None, :]
    eye = torch.zeros_like(same)
    eye[:, : len(labels)] = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos, neg = same & ~eye, ~same
    min_pos = sim.masked_fill(~pos, float("inf")).min(dim=1, keepdim=True).values
    max_neg = sim.masked_fill(~neg, float("-inf")).max(dim=1, keepdim=True).values
    keep_pos = pos & (sim - MS_EPS < max_neg)
    keep_neg = neg & (sim + MS_EPS > min_pos)
    pos_loss = torch.log1p((torch.exp(-MS_ALPHA * (sim - MS_BASE)) * keep_pos).sum(1)) / MS_ALPHA
    neg_loss = torch.log1p((torch.exp(MS_BETA * (sim - MS_BASE)) * keep_neg).sum(1)) / MS_BETA
    return (pos_loss + neg_loss).mean()


def eager_circle(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    z = F.normalize(emb, dim=1)
    sim = z @ z.T
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    ap = torch.clamp_min(-sim.detach() + 1 + CIRCLE_M, 0.0)
    an = torch.clamp_min(sim.detach() + CIRCLE_M, 0.0)
    logit_p = (-ap * (sim - (1 - CIRCLE_M)) * CIRCLE_GAMMA).masked_fill(~pos, float("-inf"))
    logit_n = (an * (sim - CIRCLE_M) * CIRCLE_GAMMA).masked_fill(same, float("-inf"))
    return F.softplus(torch.logsumexp(logit_n, dim=1) + torch.logsumexp(logit_p, dim=1)).mean()


def eager_proxy_anchor(emb: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    cos = F.linear(F.normalize(emb, dim=1), F.normalize(proxies, dim=1))
    p_one_hot = F.one_hot(labels, proxies.shape[0]).to(cos.dtype)
    n_one_hot = 1 - p_one_hot
    pos_exp = torch.exp(-PA_ALPHA * (cos - PA_DELTA))
    neg_exp = torch.exp(PA_ALPHA * (cos + PA_DELTA))
    with_pos = (p_one_hot.sum(dim=0) != 0).nonzero().squeeze(1)
    p_sim_sum = torch.where(p_one_hot == 1, pos_exp, torch.zeros_like(pos_exp)).sum(dim=0)
    n_sim_sum = torch.where(n_one_hot == 1, neg_exp, torch.zeros_like(neg_exp)).sum(dim=0)
    pos_term = torch.log(1 + p_sim_sum).sum() / len(with_pos)
    neg_term = torch.log(1 + n_sim_sum).sum() / proxies.shape[0]
    return pos_term + neg_term


# ----------------------------------------------------------------------------- inputs


def make_labelled(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(embeddings (B, D), labels (B,))`` with 8 embeddings per class."""
    b, d = shape
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g).to(dtype)
    return (emb, torch.arange(b) % max(b // 8, 2)), (0,)


def make_views(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """Two correlated views ``(B, D)`` of the same batch."""
    b, d = shape
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g)
    return (z1.to(dtype), (z1 + 0.3 * torch.randn(b, d, generator=g)).to(dtype)), (0, 1)


def make_proxies(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(embeddings (B, D), labels (B,), proxies (B / 8, D))``; proxies take a gradient too."""
    (emb, labels), _ = make_labelled(shape, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    proxies = torch.randn(int(labels.max()) + 1, shape[1], generator=g).to(dtype)
    return (emb, labels, proxies), (0, 2)


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
            out: torch.Tensor = loss(torch.cat([a, b]), torch.cat([labels, labels]))
            return out

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


def _multi_similarity_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.multi_similarity_loss", "losskit", lambda e, y: LF.multi_similarity_loss(e, y)),
        Variant("eager (masked similarity matrix)", "eager", eager_multi_similarity),
    ]
    loss, miners = _pml("MultiSimilarityLoss", alpha=MS_ALPHA, beta=MS_BETA, base=MS_BASE), None
    if loss is not None:
        miners = _peer("pytorch_metric_learning.miners")
    if miners is not None:
        miner = miners.MultiSimilarityMiner(epsilon=MS_EPS)
        out.append(Variant("PML MultiSimilarityLoss + Miner", "peer", lambda e, y: loss(e, y, miner(e, y))))
    return out


def _circle_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.circle_loss", "losskit", lambda e, y: LF.circle_loss(e, y, CIRCLE_M, CIRCLE_GAMMA)),
        Variant("eager (authors' masked logsumexps)", "eager", eager_circle),
    ]
    loss = _pml("CircleLoss", m=CIRCLE_M, gamma=CIRCLE_GAMMA)
    if loss is not None:
        out.append(Variant("PML CircleLoss", "peer", lambda e, y: loss(e, y)))
    return out


def _proxy_anchor_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant(
            "losskit.proxy_anchor_loss",
            "losskit",
            lambda e, y, p: LF.proxy_anchor_loss(e, y, p, PA_DELTA, PA_ALPHA),
        ),
        Variant("eager (authors' one-hot code)", "eager", eager_proxy_anchor),
    ]
    losses = _peer("pytorch_metric_learning.losses")
    if losses is not None:

        def pml(e: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            peer = losses.ProxyAnchorLoss(p.shape[0], p.shape[1], margin=PA_DELTA, alpha=PA_ALPHA)
            peer.proxies = torch.nn.Parameter(p)  # the same proxies, as a leaf of the peer
            out: torch.Tensor = peer(e, y) + 0.0 * p.sum()
            return out

        out.append(Variant("PML ProxyAnchorLoss", "peer", pml, note="builds the module per call"))
    return out


def _xbm_variants() -> list[Variant]:
    from losskit.embedding.memory import CrossBatchMemory
    from losskit.embedding.similarity import MultiSimilarityLoss

    def build(shape_d: int) -> CrossBatchMemory:
        xbm = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=shape_d, memory_size=XBM_MEMORY)
        g = torch.Generator().manual_seed(7)
        xbm.enqueue(
            torch.randn(XBM_MEMORY, shape_d, generator=g), torch.randint(0, 128, (XBM_MEMORY,), generator=g)
        )
        return xbm

    state: dict[int, CrossBatchMemory] = {}

    def ours(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xbm = state.setdefault(e.shape[1], build(e.shape[1]))
        out: torch.Tensor = xbm(e, y)
        return out

    def eager(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mem = state.setdefault(-e.shape[1], build(e.shape[1]))
        return eager_multi_similarity(e, y, mem.embedding_memory, mem.label_memory)

    out = [
        Variant("losskit CrossBatchMemory(MultiSimilarityLoss)", "losskit", ours, note="enqueues every call"),
        Variant("eager MS vs [batch; memory]", "eager", eager),
    ]
    losses = _peer("pytorch_metric_learning.losses")
    if losses is not None:
        peer_state: dict[int, Any] = {}

        def pml(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if e.shape[1] not in peer_state:
                inner = losses.MultiSimilarityLoss(alpha=MS_ALPHA, beta=MS_BETA, base=MS_BASE)
                peer = losses.CrossBatchMemory(inner, embedding_size=e.shape[1], memory_size=XBM_MEMORY)
                g = torch.Generator().manual_seed(7)
                with torch.no_grad():  # fill the queue as for losskit
                    peer.embedding_memory.copy_(torch.randn(XBM_MEMORY, e.shape[1], generator=g))
                    peer.label_memory.copy_(torch.randint(0, 128, (XBM_MEMORY,), generator=g))
                peer.has_been_filled = True
                peer_state[e.shape[1]] = peer
            out: torch.Tensor = peer_state[e.shape[1]](e, y)
            return out

        out.append(Variant("PML CrossBatchMemory(MultiSimilarityLoss)", "peer", pml, note="no mining"))
    return out


register_case(
    Case(
        "multi_similarity",
        make_labelled,
        _EMB,
        _EMB_QUICK,
        _multi_similarity_variants,
        _EMB_SCALING,
        note=_NOTE,
    )
)
register_case(Case("circle", make_labelled, _EMB, _EMB_QUICK, _circle_variants, _EMB_SCALING, note=_NOTE))
register_case(
    Case(
        "proxy_anchor",
        make_proxies,
        _EMB,
        _EMB_QUICK,
        _proxy_anchor_variants,
        _EMB_SCALING,
        note=_NOTE + "; B/8 proxies",
    )
)
register_case(
    Case(
        "xbm_multi_similarity",
        make_labelled,
        _EMB,
        _EMB_QUICK,
        _xbm_variants,
        [(256, 128), (1024, 128)],
        note=_NOTE + f"; memory of {XBM_MEMORY} rows, full",
    )
)
