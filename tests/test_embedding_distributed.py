"""Metric losses under real DDP (2 gloo processes, different data, SGD): multi-similarity, circle,
Proxy-Anchor (learnable proxies), supervised NT-Xent, reference sets, cross-batch memory, sub-centre
ArcFace.

A float64 encoder (and, for the proxy and sub-centre losses, the loss module with its parameters)
is wrapped in DistributedDataParallel; each rank holds different rows of the global batch, unevenly
split (5 + 3). With ``gather_distributed=True`` the gradients at every step and the parameters after
the last one (proxies included) must equal those of one process training on the concatenated batch.
The cross-batch memory is kept outside the DDP module (DDP would broadcast its buffers from rank 0
and hide a difference): each rank's memory after training must equal the others' and the one
process's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import losskit
from ddp_utils import run_distributed
from test_distributed import (
    DT,
    EMB_LABELS,
    N_SAMPLES,
    _assert_ranks_agree,
    _assert_same_run,
    _encoder,
    _grad_gap,
    _rank_or_none,
    _rows,
    _train,
    pair_batch,
)

SIZES = [5, 3]
BATCH_KINDS = [
    "multi_similarity",
    "multi_similarity_euclidean",
    "circle",
    "proxy_anchor",
    "nt_xent_supervised",
    "multi_similarity_ref",
    "triplet_ref",
    "circle_ref",
    "contrastive_pairs_ref",
    "xbm_contrastive_pairs",
    "xbm_multi_similarity",
    "xbm_triplet",
]


class WithLoss(nn.Module):
    """Encoder and a loss module that owns parameters (proxies, sub-centres): one DDP module."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.encoder = _encoder()
        self.loss = loss

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(self.encoder(x), labels)


def _pair_loss(kind: str, gather: bool) -> nn.Module:
    kw = {"gather_distributed": gather}
    if kind.startswith("multi_similarity_euclidean"):
        return losskit.MultiSimilarityLoss(distance="euclidean", base=1.0, epsilon=0.5, **kw)
    if kind.startswith("multi_similarity"):
        return losskit.MultiSimilarityLoss(alpha=2.0, beta=10.0, **kw)
    if kind.startswith("circle"):
        return losskit.CircleLoss(gamma=16.0, **kw)
    if kind == "contrastive_pairs_ref":
        return losskit.ContrastivePairsLoss(neg_margin=2.0, **kw)
    if kind == "triplet_ref":
        return losskit.TripletLoss(margin=0.3, **kw)
    raise ValueError(kind)


def _xbm(kind: str, gather: bool) -> losskit.CrossBatchMemory:
    inner = {
        "xbm_contrastive_pairs": losskit.ContrastivePairsLoss(neg_margin=2.0),
        "xbm_multi_similarity": losskit.MultiSimilarityLoss(beta=10.0),
        "xbm_triplet": losskit.TripletLoss(margin=0.5, mining="batch_all"),
    }[kind]
    # 10 < 8 rows x 3 steps: the queue wraps during the run
    return losskit.CrossBatchMemory(inner, embedding_size=4, memory_size=10, gather_distributed=gather).to(DT)


def _run(kind: str, gather: bool, sizes: list[int] | None = SIZES) -> dict[str, Any]:
    rows = _rows(N_SAMPLES, sizes, _rank_or_none())
    labels = EMB_LABELS[rows]
    xbm = _xbm(kind, gather) if kind.startswith("xbm") else None

    def make_model() -> nn.Module:
        if kind == "proxy_anchor":
            return WithLoss(losskit.ProxyAnchorLoss(3, 4, alpha=8.0, gather_distributed=gather)).to(DT)
        if kind == "sub_center_arcface":
            return WithLoss(losskit.SubCenterArcFaceLoss(4, 3, sub_centers=2, scale=4.0)).to(DT)
        return _encoder()

    def step_loss(model: nn.Module, step: int) -> None:
        v1, v2 = (v[rows] for v in pair_batch(step))
        if kind in ("proxy_anchor", "sub_center_arcface"):
            loss = model(v1, labels)
        elif xbm is not None:
            loss = xbm(model(v1), labels)
        elif kind == "nt_xent_supervised":
            loss = losskit.functional.nt_xent_loss(
                model(v1), model(v2), 0.3, labels=labels, gather_distributed=gather
            )
        elif kind.endswith("_ref"):  # queries from the first view against references from the second
            loss = _pair_loss(kind, gather)(model(v1), labels, model(v2), labels)
        else:
            loss = _pair_loss(kind, gather)(model(v1), labels)
        loss.backward()

    out = _train(make_model, step_loss)
    if xbm is not None:
        out["memory"] = (xbm.embedding_memory.clone(), xbm.label_memory.clone(), int(xbm.num_filled))
    return out


def _worker(rank: int, world: int, runs: list[tuple[str, bool, list[int] | None]]) -> list[dict[str, Any]]:
    return [_run(kind, gather, sizes) for kind, gather, sizes in runs]


@pytest.fixture(scope="module")
def ddp_results() -> dict[tuple[str, bool, Any], dict[str, Any]]:
    """One group of 2 processes runs every case (forking is the slow part)."""
    runs = [(k, g, SIZES) for k in BATCH_KINDS for g in (True, False)]
    runs += [("sub_center_arcface", False, None)]  # per-sample mean: plain DDP on equal halves
    results = run_distributed(_worker, runs)
    out = {}
    for i, (kind, gather, sizes) in enumerate(runs):
        _assert_ranks_agree([r[i] for r in results])
        if kind.startswith("xbm") and gather:
            for r in results[1:]:  # every rank keeps the same memory
                assert r[i]["memory"][2] == results[0][i]["memory"][2]
                torch.testing.assert_close(r[i]["memory"][0], results[0][i]["memory"][0], rtol=0, atol=0)
                assert torch.equal(r[i]["memory"][1], results[0][i]["memory"][1])
        if kind.startswith("xbm") and not gather:  # each rank queuing its own rows: the memories differ
            assert not torch.equal(results[1][i]["memory"][0], results[0][i]["memory"][0])
        out[(kind, gather, None if sizes is None else tuple(sizes))] = results[0][i]
    return out


@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_ddp_gather_matches_single_process_uneven(ddp_results, kind):
    ref = _run(kind, True, None)  # one process on the concatenated batch (the flag is a no-op there)
    _assert_same_run(ddp_results[(kind, True, tuple(SIZES))], ref)


@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_ddp_without_the_flag_differs(ddp_results, kind):
    """Each rank on its own rows (and, for the memory, its own queue): a different objective."""
    assert _grad_gap(ddp_results[(kind, False, tuple(SIZES))], _run(kind, True, None)) > 0.01


@pytest.mark.parametrize("kind", [k for k in BATCH_KINDS if k.startswith("xbm")])
def test_memory_is_the_gathered_batches_in_rank_order(ddp_results, kind):
    got = ddp_results[(kind, True, tuple(SIZES))]["memory"]
    want = _run(kind, True, None)["memory"]
    assert got[2] == want[2] == 10
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-12)
    assert torch.equal(got[1], want[1])
    local = ddp_results[(kind, False, tuple(SIZES))]["memory"]
    assert not torch.equal(local[1], want[1]) or not torch.allclose(local[0], want[0])


def test_proxies_are_trained_under_ddp(ddp_results):
    run = ddp_results[("proxy_anchor", True, tuple(SIZES))]
    ref = _run("proxy_anchor", True, None)
    torch.manual_seed(0)
    init = WithLoss(losskit.ProxyAnchorLoss(3, 4)).to(DT).loss.proxies.detach()
    proxies = run["params"][-1]  # encoder (4 tensors), then the proxies
    assert proxies.shape == (3, 4)
    assert not torch.allclose(proxies, init)
    torch.testing.assert_close(proxies, ref["params"][-1], rtol=1e-9, atol=1e-12)


def test_sub_center_arcface_plain_ddp_equal_halves(ddp_results):
    _assert_same_run(
        ddp_results[("sub_center_arcface", False, None)], _run("sub_center_arcface", False, None)
    )


def test_flag_without_process_group_changes_nothing():
    for kind in ("multi_similarity", "proxy_anchor", "xbm_triplet"):
        _assert_same_run(_run(kind, True, None), _run(kind, False, None))
