"""Reference sets (``ref_embeddings`` / ``ref_labels``) on the pair losses and supervised NT-Xent.

* supervised NT-Xent against a float64 loop written from Khosla et al. (2020), eq. 2 (``L^sup_out``)
  over the ``2B`` views, and against pytorch-metric-learning's ``SupConLoss`` when installed;
* triplet (batch-all), contrastive pairs, multi-similarity (with its miner) and circle with a
  reference set against pytorch-metric-learning's ``ref_emb`` / ``ref_labels`` when installed (same
  semantics: every query is compared with every reference row, no self-pair is removed);
* reference-set degenerate inputs, low precision, gradcheck and errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit.functional as LF
from losskit._checks import LossTypeError, LossValueError

DT = torch.float64


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels_of(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 2000))


# ============================================================================ supervised NT-Xent


def paper_supcon_out(z1, z2, labels, tau):
    """Khosla et al. eq. 2 on the 2B views, float64 loops: mean over anchors with a positive and a negative.

    ``L = sum_i -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )``
    with ``A(i)`` every view but ``i`` and ``P(i)`` the views in ``A(i)`` with ``i``'s label.
    """
    views = [v.tolist() for v in torch.cat([z1, z2]).double()]
    lab = labels.tolist() * 2
    n = len(views)

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    z = [unit(v) for v in views]
    total, count = 0.0, 0
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if lab[p] == lab[i]]
        if not positives or len(positives) == len(others):
            continue
        denom = sum(math.exp(sum(x * y for x, y in zip(z[i], z[a])) / tau) for a in others)
        term = 0.0
        for p in positives:
            term += math.log(math.exp(sum(x * y for x, y in zip(z[i], z[p])) / tau) / denom)
        total += -term / len(positives)
        count += 1
    return total / count if count else 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_supervised_nt_xent_equals_the_paper_formula(seed):
    z1, z2, lab = rand(7, 4, seed=seed), rand(7, 4, seed=seed + 10), labels_of(7, 3, seed=seed)
    got = LF.nt_xent_loss(z1, z2, 0.4, labels=lab)
    assert got.dtype == DT
    assert got.item() == pytest.approx(paper_supcon_out(z1, z2, lab, 0.4), rel=1e-10, abs=1e-12)


def test_supervised_nt_xent_one_class_and_singletons():
    z1, z2 = rand(4, 3, seed=3), rand(4, 3, seed=4)
    # one class: no negative anywhere, graph-connected zero
    z1.requires_grad_(True)
    loss = LF.nt_xent_loss(z1, z2, 0.5, labels=torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z1.grad, torch.zeros_like(z1))
    # distinct labels: each anchor's only positive is its other view (SimCLR)
    assert LF.nt_xent_loss(z1, z2, 0.5, labels=torch.arange(4)).item() == pytest.approx(
        paper_supcon_out(z1, z2, torch.arange(4), 0.5), rel=1e-10
    )


def test_supervised_nt_xent_equals_pml_supcon_when_installed():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses

    z1, z2, lab = rand(10, 5, seed=5), rand(10, 5, seed=6), labels_of(10, 4, seed=5)
    for tau in (0.1, 0.5):
        peer = losses.SupConLoss(temperature=tau)(torch.cat([z1, z2]), lab.repeat(2))
        torch.testing.assert_close(LF.nt_xent_loss(z1, z2, tau, labels=lab), peer)


# ============================================================================ reference sets vs PML


def _pml():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners

    return distances, losses, miners


def _query_ref(seed=20):
    q, ql = rand(12, 6, seed=seed), labels_of(12, 3, seed=seed)
    r, rl = rand(17, 6, seed=seed + 1), labels_of(17, 3, seed=seed + 1)
    return q, ql, r, rl


def test_triplet_batch_all_reference_set_equals_pml():
    distances, losses, _ = _pml()
    q, ql, r, rl = _query_ref()
    for margin in (0.1, 0.5):
        peer = losses.TripletMarginLoss(
            margin=margin, distance=distances.LpDistance(normalize_embeddings=False)
        )(q, ql, ref_emb=r, ref_labels=rl)
        got = LF.triplet_loss(q, ql, margin, mining="batch_all", ref_embeddings=r, ref_labels=rl)
        torch.testing.assert_close(got, peer)


def test_contrastive_pairs_reference_set_equals_pml():
    distances, losses, _ = _pml()
    q, ql, r, rl = _query_ref(30)
    for pos_m, neg_m, dist in ((0.0, 1.0, "euclidean"), (0.3, 2.5, "euclidean"), (0.1, 0.8, "cosine")):
        pml_dist = (
            distances.LpDistance(normalize_embeddings=False)
            if dist == "euclidean"
            else distances.CosineSimilarity()
        )
        if dist == "cosine":  # PML's contrastive loss on a similarity: pos below 1 - m+, neg above 1 - m-
            peer_fn = losses.ContrastiveLoss(pos_margin=1 - pos_m, neg_margin=1 - neg_m, distance=pml_dist)
        else:
            peer_fn = losses.ContrastiveLoss(pos_margin=pos_m, neg_margin=neg_m, distance=pml_dist)
        peer = peer_fn(q, ql, ref_emb=r, ref_labels=rl)
        got = LF.contrastive_pairs_loss(q, ql, pos_m, neg_m, dist, ref_embeddings=r, ref_labels=rl)
        torch.testing.assert_close(got, peer)


def test_multi_similarity_reference_set_with_miner_equals_pml():
    _, losses, miners = _pml()
    q, ql, r, rl = _query_ref(40)
    for alpha, beta, base, eps in ((2.0, 50.0, 0.5, 0.1), (1.0, 10.0, 0.3, 0.3)):
        pairs = miners.MultiSimilarityMiner(eps)(q, ql, r, rl)
        peer = losses.MultiSimilarityLoss(alpha, beta, base)(q, ql, pairs, ref_emb=r, ref_labels=rl)
        got = LF.multi_similarity_loss(q, ql, alpha, beta, base, eps, ref_embeddings=r, ref_labels=rl)
        torch.testing.assert_close(got, peer)


def test_circle_reference_set_equals_pml():
    _, losses, _ = _pml()
    q, ql, r, rl = _query_ref(50)
    for m, gamma in ((0.25, 256.0), (0.4, 32.0)):
        peer = losses.CircleLoss(m=m, gamma=gamma)(q, ql, ref_emb=r, ref_labels=rl)
        torch.testing.assert_close(LF.circle_loss(q, ql, m, gamma, ref_embeddings=r, ref_labels=rl), peer)


# ============================================================================ definition of done

REF_LOSSES = {
    "triplet": lambda q, ql, r, rl: LF.triplet_loss(q, ql, 0.3, mining="batch_all", ref_embeddings=r, ref_labels=rl),
    "contrastive_pairs": lambda q, ql, r, rl: LF.contrastive_pairs_loss(q, ql, ref_embeddings=r, ref_labels=rl),
    "multi_similarity": lambda q, ql, r, rl: LF.multi_similarity_loss(q, ql, ref_embeddings=r, ref_labels=rl),
    "multi_similarity_euclidean": lambda q, ql, r, rl: LF.multi_similarity_loss(
        q, ql, distance="euclidean", base=1.0, epsilon=0.5, ref_embeddings=r, ref_labels=rl
    ),
    "circle": lambda q, ql, r, rl: LF.circle_loss(q, ql, 0.25, 16.0, ref_embeddings=r, ref_labels=rl),
}


# circle loss: its weights alpha_p, alpha_n are constants by definition (detached), so finite
# differences see another function; its reference-set gradient is checked against a loop reference
# in test_embedding_pairs.py
@pytest.mark.parametrize("name", sorted(set(REF_LOSSES) - {"circle"}))
def test_reference_set_gradcheck(name):
    q, ql, r, rl = rand(5, 3, seed=60), labels_of(5, 2, seed=60), rand(6, 3, seed=61), labels_of(6, 2, seed=61)
    q.requires_grad_(True)
    r.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: REF_LOSSES[name](a, ql, b, rl), (q, r))


@pytest.mark.parametrize("name", sorted(REF_LOSSES))
def test_reference_set_degenerate_inputs_give_connected_zero(name):
    fn = REF_LOSSES[name]
    q = rand(4, 3, seed=62).requires_grad_(True)
    r = rand(5, 3, seed=63).requires_grad_(True)
    cases = [
        (torch.zeros(4, dtype=torch.long), r, torch.ones(5, dtype=torch.long)),  # no positive in the reference
        (torch.zeros(4, dtype=torch.long), r[:0], torch.zeros(0, dtype=torch.long)),  # empty reference
    ]
    for ql, ref, rl in cases:
        loss = fn(q, ql, ref, rl)
        assert loss.ndim == 0 and loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, q, allow_unused=False)
        assert torch.equal(g, torch.zeros_like(q))
    empty = fn(q[:0], torch.zeros(0, dtype=torch.long), r, torch.zeros(5, dtype=torch.long))
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(REF_LOSSES))
def test_reference_set_low_precision_is_finite(name, dtype):
    scale = 1e4 if dtype == torch.bfloat16 else 6e4
    q = (rand(8, 4, seed=64, dtype=torch.float32).clamp(-1, 1) * scale).to(dtype).requires_grad_(True)
    r = (rand(9, 4, seed=65, dtype=torch.float32).clamp(-1, 1) * scale).to(dtype).requires_grad_(True)
    ql, rl = labels_of(8, 3, seed=64), labels_of(9, 3, seed=65)
    loss = REF_LOSSES[name](q, ql, r, rl)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(q.grad).all() and torch.isfinite(r.grad).all()


@pytest.mark.parametrize("name", sorted(REF_LOSSES))
def test_reference_set_bad_inputs_raise_clear_errors(name):
    fn = REF_LOSSES[name]
    q, ql, r, rl = rand(4, 3), labels_of(4, 2), rand(5, 3), labels_of(5, 2)
    with pytest.raises(LossValueError, match="ref_embeddings was given without ref_labels"):
        fn(q, ql, r, None)
    with pytest.raises(LossValueError, match="ref_labels was given without ref_embeddings"):
        fn(q, ql, None, rl)
    with pytest.raises(LossValueError, match=r"ref_embeddings has shape \(5, 2\), expected \(M, 3\)"):
        fn(q, ql, rand(5, 2), rl)
    with pytest.raises(LossValueError, match=r"ref_labels has shape \(4,\), expected \(5,\)"):
        fn(q, ql, r, rl[:4])
    with pytest.raises((LossTypeError, TypeError), match="ref_labels"):
        fn(q, ql, r, rl.double())
    with pytest.raises((LossTypeError, TypeError), match="ref_embeddings"):
        fn(q, ql, r.long(), rl)
    with pytest.raises(LossValueError, match=r"ref_embeddings.*\(M, D\)"):
        fn(q, ql, r[0], rl)


def test_module_forms_take_the_reference_set():
    import losskit

    q, ql, r, rl = _query_ref(70)
    pairs = [
        (losskit.TripletLoss(0.3, mining="batch_all"), REF_LOSSES["triplet"]),
        (losskit.ContrastivePairsLoss(), REF_LOSSES["contrastive_pairs"]),
        (losskit.MultiSimilarityLoss(), REF_LOSSES["multi_similarity"]),
        (losskit.CircleLoss(0.25, 16.0), REF_LOSSES["circle"]),
    ]
    for module, fn in pairs:
        torch.testing.assert_close(module(q, ql, r, rl), fn(q, ql, r, rl))
        torch.testing.assert_close(module(q, ql, ref_embeddings=r, ref_labels=rl), fn(q, ql, r, rl))
