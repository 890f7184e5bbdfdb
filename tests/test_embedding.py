"""Embedding losses: first tests (torch parity, batch_all against the B^3 broadcast, degenerate batches)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losskit.functional as LF
from harness import assert_connected_zero
from losskit import LossValueError


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cosine_embedding_matches_torch(reduction):
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    y = torch.randint(0, 2, (7,), generator=g) * 2 - 1
    for m in (0.0, 0.3, -0.2):
        torch.testing.assert_close(
            LF.cosine_embedding_loss(x1, x2, y, m, reduction=reduction),
            F.cosine_embedding_loss(x1, x2, y, margin=m, reduction=reduction),
        )


def test_cosine_embedding_rejects_01_targets():
    x = torch.randn(3, 4)
    with pytest.raises(LossValueError, match=r"only 1 \(similar\) or -1 \(dissimilar\), got 0"):
        LF.cosine_embedding_loss(x, x, torch.tensor([1, 0, 1]))


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_batch_all_matches_broadcast_and_chunks(distance, soft):
    g = torch.Generator().manual_seed(1)
    e = torch.randn(10, 4, generator=g, dtype=torch.float64)
    lab = torch.randint(0, 3, (10,), generator=g)
    diff = e[:, None] - e[None]
    if distance == "cosine":
        d = 1 - F.normalize(e) @ F.normalize(e).T
    else:
        d = (diff * diff).sum(-1)
        d = d.sqrt() if distance == "euclidean" else d
    t = d[:, :, None] - d[:, None, :]
    same = lab[:, None] == lab[None]
    valid = (same & ~torch.eye(10, dtype=torch.bool))[:, :, None] & (~same)[:, None, :]
    if soft:
        ref = F.softplus(t)[valid].mean()
    else:
        vals = (t + 0.2).clamp_min(0)[valid]
        ref = vals.sum() / (vals > 0).sum()
    for chunk in (None, 1, 3):
        got = LF.triplet_loss(e, lab, 0.2, "batch_all", distance, soft, chunk_size=chunk)
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_semi_hard", "batch_all"])
def test_triplet_degenerate_batches_give_connected_zero(mining):
    for emb, lab in (
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long)),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
    ):
        e = emb.clone().requires_grad_(True)
        assert_connected_zero(LF.triplet_loss(e, lab, mining=mining), e)


def test_supcon_no_positive_gives_connected_zero():
    e = torch.randn(4, 3, requires_grad=True)
    assert_connected_zero(LF.supcon_loss(e, torch.arange(4)), e)
