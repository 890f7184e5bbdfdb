"""Cross-batch memory (XBM, Wang et al. 2020): queue semantics, loss over batch + memory, state.

The reference for the loss with memory is the wrapped loss's own loop reference, run on the batch as
queries and the batch plus the remembered rows as candidates (each query's own row excluded).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import losskit
import losskit.functional as LF
from harness import assert_connected_zero, assert_finite_with_grads
from losskit import CrossBatchMemory, LossTypeError, LossValueError

DT = torch.float64


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def batches(n: int, b: int = 4, d: int = 3, k: int = 3):
    return [
        (rand(b, d, seed=100 + i), torch.randint(0, k, (b,), generator=torch.Generator().manual_seed(i)))
        for i in range(n)
    ]


def ref_contrastive_pairs_with_memory(emb, labels, mem, mem_labels, pos_margin=0.0, neg_margin=1.0):
    """contrastive_pairs (average='nonzero', euclidean): batch pairs i != j, plus every (query, memory) pair."""
    cands = torch.cat([emb, mem])
    cl = torch.cat([labels, mem_labels])
    pos_terms, neg_terms = [], []
    for i in range(emb.shape[0]):
        for j in range(cands.shape[0]):
            if j == i:
                continue
            d = ((emb[i] - cands[j]) ** 2).sum().sqrt()
            if labels[i] == cl[j]:
                pos_terms.append(torch.clamp(d - pos_margin, min=0.0))
            else:
                neg_terms.append(torch.clamp(neg_margin - d, min=0.0))
    total = torch.zeros((), dtype=DT) + 0.0 * emb.sum()
    for terms in (pos_terms, neg_terms):
        count = sum(1 for t in terms if float(t.detach()) > 0)
        if count:
            total = total + sum(terms) / count
    return total


def test_memory_fills_as_a_fifo_queue_and_wraps():
    xbm = CrossBatchMemory(losskit.ContrastivePairsLoss(), embedding_size=3, memory_size=10).double()
    seen_e, seen_l = [], []
    for emb, lab in batches(4):
        xbm(emb, lab)
        seen_e.append(emb)
        seen_l.append(lab)
        kept_e = torch.cat(seen_e)[-10:]
        kept_l = torch.cat(seen_l)[-10:]
        n = int(xbm.num_filled)
        assert n == kept_e.shape[0]
        # the memory holds the last min(seen, 10) rows (in ring order): compare as sets of rows
        got = xbm.embedding_memory[:n]
        order = torch.argsort(got[:, 0])
        want = torch.argsort(kept_e[:, 0])
        torch.testing.assert_close(got[order], kept_e[want])
        torch.testing.assert_close(xbm.label_memory[:n][order], kept_l[want])
    assert int(xbm.queue_ptr) == 16 % 10
    # a batch larger than the memory keeps its last rows
    big, big_l = rand(13, 3, seed=7), torch.arange(13)
    xbm.enqueue(big, big_l)
    assert int(xbm.num_filled) == 10
    assert set(xbm.label_memory.tolist()) == set(range(3, 13))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_loss_is_wrapped_loss_on_batch_plus_memory(steps):
    xbm = CrossBatchMemory(losskit.ContrastivePairsLoss(), embedding_size=3, memory_size=6).double()
    history = batches(steps)
    for emb, lab in history[:-1]:
        xbm(emb, lab)
    n = int(xbm.num_filled)
    mem, mem_l = xbm.embedding_memory[:n].clone(), xbm.label_memory[:n].clone()
    emb, lab = history[-1]
    e = emb.clone().requires_grad_(True)
    got = xbm(e, lab)
    (g,) = torch.autograd.grad(got, e)
    e2 = emb.clone().requires_grad_(True)
    want = ref_contrastive_pairs_with_memory(e2, lab, mem, mem_l)
    (g_ref,) = torch.autograd.grad(want, e2)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    if steps == 1:  # empty memory: the wrapped loss alone
        torch.testing.assert_close(got, LF.contrastive_pairs_loss(emb, lab))


@pytest.mark.parametrize(
    "loss",
    [
        losskit.TripletLoss(margin=0.3),
        losskit.TripletLoss(mining="batch_all"),
        losskit.MultiSimilarityLoss(),
        losskit.CircleLoss(gamma=16.0),
        losskit.ContrastivePairsLoss(normalize_embeddings=True, distance="cosine"),
    ],
    ids=repr,
)
def test_every_supported_loss_equals_its_functional_on_an_explicit_candidate_set(loss):
    """With memory: the batch and the memory as candidates == the public loss with a reference set,
    up to the self pairs, which the reference-set form does not exclude. Checked where the self pair
    cannot matter (the memory holds another batch) by comparing with the loss on the concatenation."""
    xbm = CrossBatchMemory(copy.deepcopy(loss), embedding_size=3, memory_size=8).double()
    (e0, l0), (e1, l1) = batches(2)
    xbm(e0, l0)
    got = xbm(e1, l1)
    # the loss over [e1; e0] restricted to e1's queries: use per-anchor reductions where available
    if isinstance(loss, (losskit.MultiSimilarityLoss, losskit.CircleLoss)):
        fn = LF.multi_similarity_loss if isinstance(loss, losskit.MultiSimilarityLoss) else LF.circle_loss
        kw = {} if isinstance(loss, losskit.MultiSimilarityLoss) else {"gamma": 16.0}
        per = fn(torch.cat([e1, e0]), torch.cat([l1, l0]), reduction="none", **kw)[:4]
        if isinstance(loss, losskit.CircleLoss):
            valid = per > 0
            want = per.sum() / valid.sum().clamp_min(1)
        else:
            want = per.mean()
        torch.testing.assert_close(got, want)
    assert torch.isfinite(got)


def test_memory_has_no_gradient_and_train_eval_modes():
    xbm = CrossBatchMemory(losskit.MultiSimilarityLoss(), embedding_size=3, memory_size=8).double()
    (e0, l0), (e1, l1) = batches(2)
    a = e0.clone().requires_grad_(True)
    xbm(a, l0).backward()
    assert not xbm.embedding_memory.requires_grad
    b = e1.clone().requires_grad_(True)
    xbm(b, l1).backward()  # the memory's copy of a is detached: backward does not reach a again
    assert a.grad is not None and b.grad is not None
    filled = int(xbm.num_filled)
    xbm.eval()
    xbm(e1, l1)
    assert int(xbm.num_filled) == filled  # evaluation does not enqueue
    xbm.train()
    xbm.reset()
    assert int(xbm.num_filled) == 0 and int(xbm.queue_ptr) == 0


def test_state_dict_round_trip_resumes_the_same_memory():
    xbm = CrossBatchMemory(losskit.TripletLoss(), embedding_size=3, memory_size=7).double()
    for emb, lab in batches(3):
        xbm(emb, lab)
    assert set(xbm.state_dict()) >= {"embedding_memory", "label_memory", "queue_ptr", "num_filled"}
    fresh = CrossBatchMemory(losskit.TripletLoss(), embedding_size=3, memory_size=7).double()
    fresh.load_state_dict(xbm.state_dict())
    buf = io.BytesIO()
    torch.save(xbm, buf)
    buf.seek(0)
    copies = [fresh, copy.deepcopy(xbm), pickle.loads(pickle.dumps(xbm)), torch.load(buf, weights_only=False)]
    emb, lab = rand(4, 3, seed=50), torch.tensor([0, 1, 0, 1])
    stepped = copy.deepcopy(xbm)
    want = stepped(emb, lab)
    for c in copies:
        torch.testing.assert_close(c(emb, lab), want)
        torch.testing.assert_close(c.embedding_memory, stepped.embedding_memory)
        assert int(c.queue_ptr) == int(stepped.queue_ptr)


def test_degenerate_and_low_precision():
    xbm = CrossBatchMemory(losskit.ContrastivePairsLoss(), embedding_size=3, memory_size=4)
    empty = torch.zeros(0, 3, requires_grad=True)
    assert_connected_zero(xbm(empty, torch.zeros(0, dtype=torch.long)), empty)
    assert int(xbm.num_filled) == 0
    one = torch.randn(1, 3, requires_grad=True)
    assert_connected_zero(xbm(one, torch.tensor([0])), one)  # nothing in memory, nothing to pair
    second = torch.randn(1, 3, requires_grad=True)
    assert_finite_with_grads(xbm(second, torch.tensor([1])), second)  # the memory supplies a negative
    for dtype in (torch.float16, torch.bfloat16):
        e = (torch.randn(6, 3) * 100).to(dtype).requires_grad_(True)
        loss = xbm(e, torch.tensor([0, 1, 2, 0, 1, 2]))
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, e)
    assert xbm.embedding_memory.dtype == torch.float32


def test_errors():
    with pytest.raises(LossTypeError, match="loss must be a pair-loss module"):
        CrossBatchMemory(losskit.CrossEntropyLoss(), 3, 4)
    with pytest.raises(LossValueError, match="memory_size"):
        CrossBatchMemory(losskit.TripletLoss(), 3, 0)
    with pytest.raises(LossValueError, match="embedding_size"):
        CrossBatchMemory(losskit.TripletLoss(), 0, 4)
    xbm = CrossBatchMemory(losskit.TripletLoss(), 3, 4)
    with pytest.raises(LossValueError, match=r"embeddings has shape \(2, 5\), expected \(B, 3\)"):
        xbm(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(LossValueError, match=r"labels has shape \(3,\), expected \(2,\)"):
        xbm(torch.randn(2, 3), torch.tensor([0, 1, 2]))
    assert "memory_size=4" in repr(xbm)


def ref_batch_hard_with_memory(emb, labels, mem, mem_labels, margin):
    """Batch-hard triplet: per query, the farthest positive and closest negative among the other batch
    rows and the memory; mean over queries with both."""
    cands, cl = torch.cat([emb, mem]), torch.cat([labels, mem_labels])
    losses = []
    for i in range(emb.shape[0]):
        d = [((emb[i] - cands[j]) ** 2).sum().sqrt() for j in range(cands.shape[0])]
        pos = [d[j] for j in range(cands.shape[0]) if j != i and cl[j] == labels[i]]
        neg = [d[j] for j in range(cands.shape[0]) if cl[j] != labels[i]]
        if pos and neg:
            hardest = max(pos, key=lambda x: float(x.detach())) - min(neg, key=lambda x: float(x.detach()))
            losses.append(torch.clamp(hardest + margin, min=0.0))
    return sum(losses) / max(len(losses), 1)


def test_triplet_with_memory_matches_loop_reference():
    xbm = CrossBatchMemory(losskit.TripletLoss(margin=0.3), embedding_size=3, memory_size=5).double()
    history = batches(3)
    for emb, lab in history[:-1]:
        xbm(emb, lab)
    mem, mem_l = xbm.embedding_memory.clone(), xbm.label_memory.clone()
    emb, lab = history[-1]
    e, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    got, want = xbm(e, lab), ref_batch_hard_with_memory(e2, lab, mem, mem_l, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(got, e)[0], torch.autograd.grad(want, e2)[0], rtol=1e-9, atol=1e-12
    )
