"""Multi-similarity, circle, supervised NT-Xent and reference sets on the pair losses.

References are plain float64 loops over anchors and pairs, written from the papers' formulas
(Wang et al. 2019, Sun et al. 2020, Khosla et al. 2020), independent of the masked matrices of the
implementation.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    extreme_logits,
)
from losskit import LossTypeError, LossValueError

DT = torch.float64
RNC = ("none", "mean", "sum")


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels_of(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 1000))


# ============================================================================ float64 loop references


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt())


def similarity(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """Cosine similarity, or minus the distance (the sign convention for distances)."""
    if distance == "cosine":
        return cos(a, b)
    d2 = ((a - b) ** 2).sum()
    return -(d2 if distance == "squared_euclidean" else d2.sqrt())


def pairs_of(emb, labels, ref, ref_labels, i):
    """(positive, negative) candidate indices of query ``i``; the query itself is skipped in-batch."""
    cands, cl = (emb, labels) if ref is None else (ref, ref_labels)
    pos = [k for k in range(cands.shape[0]) if cl[k] == labels[i] and (ref is not None or k != i)]
    neg = [k for k in range(cands.shape[0]) if cl[k] != labels[i]]
    return cands, pos, neg


def reduce(losses, valid, reduction):
    zero = torch.zeros((), dtype=DT)
    if reduction == "none":
        return torch.stack(losses) if losses else torch.zeros(0, dtype=DT)
    total = sum((v for v, ok in zip(losses, valid) if ok), zero)
    return total if reduction == "sum" else total / max(sum(valid), 1)


def ref_multi_similarity(
    emb,
    labels,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    eps=0.1,
    distance="cosine",
    reduction="mean",
    ref=None,
    ref_labels=None,
):
    lam = base if distance == "cosine" else -base
    losses = []
    for i in range(emb.shape[0]):
        cands, pos, neg = pairs_of(emb, labels, ref, ref_labels, i)
        s = {k: similarity(emb[i], cands[k], distance) for k in pos + neg}
        v = {k: float(s[k].detach()) for k in s}
        loss = torch.zeros((), dtype=DT)
        if pos and neg:
            min_pos = min(v[k] for k in pos)
            max_neg = max(v[k] for k in neg)
            mined_pos = [k for k in pos if v[k] - eps < max_neg]
            mined_neg = [k for k in neg if v[k] + eps > min_pos]
            loss = (
                loss + torch.log(1 + sum((torch.exp(-alpha * (s[k] - lam)) for k in mined_pos), 0.0)) / alpha
            )
            loss = loss + torch.log(1 + sum((torch.exp(beta * (s[k] - lam)) for k in mined_neg), 0.0)) / beta
        losses.append(loss)
    return reduce(losses, [True] * len(losses), reduction)


def ref_circle(emb, labels, m=0.25, gamma=256.0, reduction="mean", ref=None, ref_labels=None):
    losses, valid = [], []
    for i in range(emb.shape[0]):
        cands, pos, neg = pairs_of(emb, labels, ref, ref_labels, i)
        if not (pos and neg):
            losses.append(torch.zeros((), dtype=DT))
            valid.append(False)
            continue
        # alpha_p, alpha_n are constants (float), as in the paper's implementation; the two sums in
        # log space (gamma = 256 overflows exp in float64): log(1 + S_p S_n) = softplus(log S_p + log S_n)
        s = {k: cos(emb[i], cands[k]) for k in pos + neg}
        logits_p = [-gamma * max(1 + m - float(s[k].detach()), 0.0) * (s[k] - (1 - m)) for k in pos]
        logits_n = [gamma * max(float(s[k].detach()) + m, 0.0) * (s[k] - m) for k in neg]
        log_sum_p = torch.logsumexp(torch.stack(logits_p), 0)
        log_sum_n = torch.logsumexp(torch.stack(logits_n), 0)
        losses.append(torch.nn.functional.softplus(log_sum_p + log_sum_n))
        valid.append(True)
    return reduce(losses, valid, reduction)


def ref_supervised_nt_xent(z1, z2, labels, tau, reduction="mean"):
    z = torch.cat([z1, z2])
    lab = torch.cat([labels, labels])
    n = z.shape[0]
    losses, valid = [], []
    for i in range(n):
        denom = sum(torch.exp(cos(z[i], z[k]) / tau) for k in range(n) if k != i)
        pos = [p for p in range(n) if p != i and lab[p] == lab[i]]
        has_neg = any(lab[k] != lab[i] for k in range(n))
        if not pos or not has_neg:
            losses.append(torch.zeros((), dtype=DT))
            valid.append(False)
            continue
        losses.append(-sum(torch.log(torch.exp(cos(z[i], z[p]) / tau) / denom) for p in pos) / len(pos))
        valid.append(True)
    return reduce(losses, valid, reduction)


def ref_pairs_with_reference(emb, labels, ref, ref_labels, pos_margin, neg_margin):
    """contrastive_pairs with a reference set, average='nonzero', euclidean."""
    pos_terms, neg_terms = [], []
    for i in range(emb.shape[0]):
        for k in range(ref.shape[0]):
            d = ((emb[i] - ref[k]) ** 2).sum().sqrt()
            if labels[i] == ref_labels[k]:
                pos_terms.append(torch.clamp(d - pos_margin, min=0.0))
            else:
                neg_terms.append(torch.clamp(neg_margin - d, min=0.0))
    total = torch.zeros((), dtype=DT) + 0.0 * emb.sum()
    for terms in (pos_terms, neg_terms):
        count = sum(1 for t in terms if float(t.detach()) > 0)
        if count:
            total = total + sum(terms) / count
    return total


def ref_triplet_hard_with_reference(emb, labels, ref, ref_labels, margin):
    losses = []
    for i in range(emb.shape[0]):
        d = [((emb[i] - ref[k]) ** 2).sum().sqrt() for k in range(ref.shape[0])]
        pos = [d[k] for k in range(ref.shape[0]) if ref_labels[k] == labels[i]]
        neg = [d[k] for k in range(ref.shape[0]) if ref_labels[k] != labels[i]]
        if pos and neg:
            losses.append(
                torch.clamp(
                    max(pos, key=lambda x: float(x.detach()))
                    - min(neg, key=lambda x: float(x.detach()))
                    + margin,
                    min=0.0,
                )
            )
    return sum(losses) / max(len(losses), 1)


def ref_triplet_all_with_reference(emb, labels, ref, ref_labels, margin):
    """Every (query, positive, negative) from the reference set; mean over the active triplets."""
    active = []
    for i in range(emb.shape[0]):
        d = [((emb[i] - ref[k]) ** 2).sum().sqrt() for k in range(ref.shape[0])]
        for p in range(ref.shape[0]):
            for n in range(ref.shape[0]):
                if ref_labels[p] == labels[i] and ref_labels[n] != labels[i]:
                    v = d[p] - d[n] + margin
                    if float(v) > 0:
                        active.append(v)
    return sum(active) / max(len(active), 1)


# ============================================================================ 1. references


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("distance", ["cosine", "euclidean", "squared_euclidean"])
def test_multi_similarity_matches_loop_reference(reduction, distance):
    emb, lab = rand(10, 4, seed=1), labels_of(10, 3, seed=1)
    # margins on the scale of the distances, so that mining keeps some pairs and drops others
    kw = {} if distance == "cosine" else {"base": 2.0, "epsilon": 0.5}
    assert_matches_reference(
        lambda e: LF.multi_similarity_loss(e, lab, distance=distance, reduction=reduction, **kw),
        lambda e: ref_multi_similarity(
            e,
            lab,
            base=kw.get("base", 0.5),
            eps=kw.get("epsilon", 0.1),
            distance=distance,
            reduction=reduction,
        ),
        [emb],
        rtol=1e-9,
        atol=1e-10,
    )


def test_multi_similarity_mining_drops_pairs_and_epsilon_large_keeps_all():
    emb, lab = rand(12, 5, seed=2), labels_of(12, 3, seed=2)
    mined = ref_multi_similarity(emb, lab, alpha=1.0, beta=5.0, eps=0.0)
    all_pairs = ref_multi_similarity(emb, lab, alpha=1.0, beta=5.0, eps=10.0)
    assert not torch.allclose(mined, all_pairs)  # the mining step matters on this batch
    for eps, want in ((0.0, mined), (10.0, all_pairs)):
        got = LF.multi_similarity_loss(emb, lab, alpha=1.0, beta=5.0, epsilon=eps)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", RNC)
def test_circle_matches_loop_reference(reduction):
    emb, lab = rand(10, 4, seed=3), labels_of(10, 3, seed=3)
    assert_matches_reference(
        lambda e: LF.circle_loss(e, lab, margin=0.4, gamma=32.0, reduction=reduction),
        lambda e: ref_circle(e, lab, m=0.4, gamma=32.0, reduction=reduction),
        [emb],
        rtol=1e-9,
        atol=1e-10,
    )


def test_circle_default_gamma_matches_reference_and_is_finite():
    emb, lab = rand(8, 4, seed=4), labels_of(8, 2, seed=4)
    torch.testing.assert_close(LF.circle_loss(emb, lab), ref_circle(emb, lab), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("reduction", RNC)
def test_supervised_nt_xent_matches_loop_reference(reduction):
    z1, z2, lab = rand(6, 3, seed=5), rand(6, 3, seed=6), labels_of(6, 3, seed=5)
    assert_matches_reference(
        lambda a, b: LF.nt_xent_loss(a, b, 0.3, labels=lab, reduction=reduction),
        lambda a, b: ref_supervised_nt_xent(a, b, lab, 0.3, reduction=reduction),
        [z1, z2],
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_supervised_nt_xent_distinct_labels_is_nt_xent_and_equals_supcon_of_the_views():
    z1, z2 = rand(5, 3, seed=7), rand(5, 3, seed=8)
    for reduction in RNC:
        got = LF.nt_xent_loss(z1, z2, 0.5, labels=torch.arange(5) * 7, reduction=reduction)
        torch.testing.assert_close(got, LF.nt_xent_loss(z1, z2, 0.5, reduction=reduction))
    lab = torch.tensor([0, 1, 0, 2, 1])
    torch.testing.assert_close(
        LF.nt_xent_loss(z1, z2, 0.2, labels=lab), LF.supcon_loss(torch.stack([z1, z2], 1), lab, 0.2)
    )


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all", "batch_semi_hard"])
def test_triplet_reference_set_equals_loop_reference(mining):
    q, ql = rand(6, 3, seed=9), labels_of(6, 3, seed=9)
    r, rl = rand(9, 3, seed=10), labels_of(9, 3, seed=10)
    got = LF.triplet_loss(q, ql, 0.3, mining=mining, ref_embeddings=r, ref_labels=rl)
    if mining == "batch_hard":
        torch.testing.assert_close(got, ref_triplet_hard_with_reference(q, ql, r, rl, 0.3))
        assert_matches_reference(
            lambda e, f: LF.triplet_loss(e, ql, 0.3, ref_embeddings=f, ref_labels=rl),
            lambda e, f: ref_triplet_hard_with_reference(e, ql, f, rl, 0.3),
            [q, r],
            wrt=(0, 1),
            rtol=1e-9,
            atol=1e-10,
        )
    elif mining == "batch_all":
        torch.testing.assert_close(got, ref_triplet_all_with_reference(q, ql, r, rl, 0.3))
    else:
        # a reference set that is a copy of the batch: every anchor also meets its own copy as a positive
        same = LF.triplet_loss(q, ql, 0.3, mining=mining, ref_embeddings=q.clone(), ref_labels=ql)
        assert torch.isfinite(same) and torch.isfinite(got)


def test_contrastive_pairs_reference_set_equals_loop_reference():
    q, ql = rand(5, 3, seed=11), labels_of(5, 2, seed=11)
    r, rl = rand(7, 3, seed=12), labels_of(7, 2, seed=12)
    assert_matches_reference(
        lambda e, f: LF.contrastive_pairs_loss(e, ql, 0.2, 2.0, ref_embeddings=f, ref_labels=rl),
        lambda e, f: ref_pairs_with_reference(e, ql, f, rl, 0.2, 2.0),
        [q, r],
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


@pytest.mark.parametrize("name", ["multi_similarity_loss", "circle_loss"])
def test_similarity_losses_reference_set_equal_loop_reference(name):
    q, ql = rand(5, 3, seed=13), labels_of(5, 2, seed=13)
    r, rl = rand(8, 3, seed=14), labels_of(8, 2, seed=14)
    ref_fn = ref_multi_similarity if name == "multi_similarity_loss" else ref_circle
    kw = {"gamma": 16.0} if name == "circle_loss" else {}
    assert_matches_reference(
        lambda e, f: getattr(LF, name)(e, ql, ref_embeddings=f, ref_labels=rl, **kw),
        lambda e, f: ref_fn(e, ql, ref=f, ref_labels=rl, **kw),
        [q, r],
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_reference_set_that_is_the_batch_differs_only_by_the_self_pairs():
    # the batch as its own reference: identical rows are positives at similarity 1 (distance 0)
    emb, lab = rand(6, 3, seed=15), labels_of(6, 2, seed=15)
    ms = LF.multi_similarity_loss(emb, lab, ref_embeddings=emb, ref_labels=lab, epsilon=10.0)
    torch.testing.assert_close(ms, ref_multi_similarity(emb, lab, eps=10.0, ref=emb, ref_labels=lab))
    assert not torch.allclose(ms, LF.multi_similarity_loss(emb, lab, epsilon=10.0))


# ============================================================================ 2. gradcheck


def test_gradcheck_similarity_losses():
    emb, lab = rand(7, 3, seed=16), labels_of(7, 3, seed=16)
    r, rl = rand(5, 3, seed=17), labels_of(5, 3, seed=17)
    assert_gradcheck(lambda e: LF.multi_similarity_loss(e, lab, alpha=1.0, beta=4.0), [emb])
    assert_gradcheck(
        lambda e, f: LF.multi_similarity_loss(e, lab, alpha=1.0, beta=4.0, ref_embeddings=f, ref_labels=rl),
        [emb, r],
        (0, 1),
    )
    assert_gradcheck(lambda e: LF.multi_similarity_loss(e, lab, distance="euclidean", base=1.0), [emb])
    # circle loss: its weights alpha_p, alpha_n are constants by definition (no gradient), so finite
    # differences see a different function; its gradient is checked against the loop reference above
    assert_gradcheck(lambda a, b: LF.nt_xent_loss(a, b, 0.5, labels=lab), [emb, rand(7, 3, seed=18)], (0, 1))


# ============================================================================ 3. properties


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(2, 9),
    d=st.integers(1, 4),
    k=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    scale=st.floats(0.1, 10),
)
def test_property_non_negative_scale_invariant_and_reductions(b, d, k, seed, scale):
    emb, lab = rand(b, d, seed=seed), labels_of(b, k, seed=seed)
    for fn, kw in ((LF.multi_similarity_loss, {}), (LF.circle_loss, {"gamma": 8.0})):
        none = fn(emb, lab, reduction="none", **kw)
        assert (none >= 0).all()
        # cosine similarities do not change with the embeddings' norm
        torch.testing.assert_close(fn(emb * scale, lab, reduction="none", **kw), none)
        torch.testing.assert_close(fn(emb, lab, reduction="sum", **kw), none.sum())
    ms = LF.multi_similarity_loss(emb, lab, reduction="none")
    torch.testing.assert_close(LF.multi_similarity_loss(emb, lab), ms.mean())  # mean over every anchor


def test_circle_mean_is_over_anchors_with_a_positive_and_a_negative():
    emb = rand(5, 3, seed=19)
    lab = torch.tensor([0, 0, 1, 2, 2])  # anchor 2 has no positive
    none = LF.circle_loss(emb, lab, gamma=8.0, reduction="none")
    assert float(none[2]) == 0.0
    torch.testing.assert_close(LF.circle_loss(emb, lab, gamma=8.0), none.sum() / 4)


def test_multi_similarity_lower_for_separated_classes():
    lab = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]], dtype=DT)
    bad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [0.1, 0.99]], dtype=DT)
    for fn in (LF.multi_similarity_loss, LF.circle_loss):
        assert float(fn(good, lab)) < float(fn(bad, lab))


# ============================================================================ 4. degenerate inputs


@pytest.mark.parametrize("name", ["multi_similarity_loss", "circle_loss"])
def test_degenerate_batches_give_connected_zero(name):
    fn = getattr(LF, name)
    for emb, lab in (
        (torch.zeros(0, 3, dtype=DT, requires_grad=True), torch.zeros(0, dtype=torch.long)),
        (rand(1, 3).requires_grad_(True), torch.tensor([0])),
        (rand(4, 3).requires_grad_(True), torch.zeros(4, dtype=torch.long)),  # one class: no negative
        (rand(4, 3).requires_grad_(True), torch.arange(4)),  # no positive pair
    ):
        for reduction in ("mean", "sum"):
            assert_connected_zero(fn(emb, lab, reduction=reduction), emb)
        assert fn(emb, lab, reduction="none").shape == (emb.shape[0],)
    empty_ref = torch.zeros(0, 3, dtype=DT, requires_grad=True)
    q = rand(3, 3).requires_grad_(True)
    assert_connected_zero(
        fn(q, torch.tensor([0, 1, 0]), ref_embeddings=empty_ref, ref_labels=torch.zeros(0, dtype=torch.long)),
        q,
        empty_ref,
    )


def test_duplicate_embeddings_finite_gradients():
    emb = torch.ones(6, 3, dtype=DT, requires_grad=True)
    lab = torch.tensor([0, 0, 1, 1, 2, 2])
    for loss in (
        LF.multi_similarity_loss(emb, lab),
        LF.multi_similarity_loss(emb, lab, distance="euclidean"),
        LF.circle_loss(emb, lab),
    ):
        assert_finite_with_grads(loss, emb)


# ============================================================================ 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extreme_inputs_finite_float32(dtype):
    e = extreme_logits((12, 6), dtype, seed=20).requires_grad_(True)
    lab = torch.tensor([0, 1, 2] * 4)
    for loss in (
        LF.multi_similarity_loss(e, lab),
        LF.circle_loss(e, lab),
        LF.nt_xent_loss(e, extreme_logits((12, 6), dtype, seed=21), 0.05, labels=lab),
        LF.triplet_loss(e, lab, ref_embeddings=extreme_logits((5, 6), dtype, seed=22), ref_labels=lab[:5]),
    ):
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, e)
        assert e.grad is None or torch.isfinite(e.grad).all()


def test_non_finite_input_gives_non_finite_loss():
    lab = torch.tensor([0, 0, 1, 1])
    for bad in (math.nan, math.inf):
        emb = rand(4, 3)
        emb[3, 0] = bad
        for loss in (
            LF.multi_similarity_loss(emb, lab),
            LF.multi_similarity_loss(emb, lab, distance="euclidean"),
            LF.circle_loss(emb, lab),
        ):
            assert not torch.isfinite(loss)
        ref = rand(4, 3)
        ref[0, 1] = bad
        q = rand(2, 3)
        for fn in (LF.multi_similarity_loss, LF.circle_loss, LF.triplet_loss, LF.contrastive_pairs_loss):
            assert not torch.isfinite(fn(q, lab[:2], ref_embeddings=ref, ref_labels=lab))


# ============================================================================ 6. errors


def test_bad_hyperparameters_and_inputs_raise_clear_errors():
    emb, lab = rand(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(LossValueError, match="alpha"):
        LF.multi_similarity_loss(emb, lab, alpha=0.0)
    with pytest.raises(LossValueError, match="epsilon"):
        losskit.MultiSimilarityLoss(epsilon=-1.0)
    with pytest.raises(LossValueError, match="distance"):
        LF.multi_similarity_loss(emb, lab, distance="manhattan")
    with pytest.raises(LossValueError, match="gamma"):
        losskit.CircleLoss(gamma=0)
    with pytest.raises(LossValueError, match="reduction"):
        LF.circle_loss(emb, lab, reduction="avg")
    with pytest.raises(LossValueError, match=r"labels has shape \(3,\), expected \(4,\)"):
        LF.circle_loss(emb, lab[:3])
    with pytest.raises(LossTypeError, match="labels"):
        LF.multi_similarity_loss(emb, lab.float())
    with pytest.raises(LossValueError, match="ref_embeddings was given without ref_labels"):
        LF.triplet_loss(emb, lab, ref_embeddings=emb)
    with pytest.raises(LossValueError, match="ref_labels was given without ref_embeddings"):
        LF.circle_loss(emb, lab, ref_labels=lab)
    with pytest.raises(LossValueError, match=r"ref_embeddings has shape \(4, 2\), expected \(M, 3\)"):
        LF.contrastive_pairs_loss(emb, lab, ref_embeddings=rand(4, 2), ref_labels=lab)
    with pytest.raises(LossValueError, match=r"ref_labels has shape \(3,\), expected \(4,\)"):
        LF.multi_similarity_loss(emb, lab, ref_embeddings=emb, ref_labels=lab[:3])
    with pytest.raises(LossTypeError, match="ref_labels"):
        LF.multi_similarity_loss(emb, lab, ref_embeddings=emb, ref_labels=lab.float())
    with pytest.raises(LossValueError, match=r"labels has shape \(3,\), expected \(4,\)"):
        LF.nt_xent_loss(emb, emb, labels=lab[:3])


# ============================================================================ 7. module, round trips, compile


def test_modules_equal_functional_and_round_trip():
    emb, lab = rand(8, 3, seed=23), labels_of(8, 3, seed=23)
    r, rl = rand(5, 3, seed=24), labels_of(5, 3, seed=24)
    ms = losskit.MultiSimilarityLoss(alpha=1.5, beta=20.0, base=0.3, epsilon=0.2, distance="euclidean")
    assert_module_matches(ms, LF.multi_similarity_loss(emb, lab, 1.5, 20.0, 0.3, 0.2, "euclidean"), emb, lab)
    circle = losskit.CircleLoss(margin=0.3, gamma=64.0, reduction="sum")
    assert_module_matches(circle, LF.circle_loss(emb, lab, 0.3, 64.0, reduction="sum"), emb, lab)
    assert_module_matches(
        circle,
        LF.circle_loss(emb, lab, 0.3, 64.0, reduction="sum", ref_embeddings=r, ref_labels=rl),
        emb,
        lab,
        r,
        rl,
    )
    trip = losskit.TripletLoss(margin=0.4)
    assert_module_matches(
        trip, LF.triplet_loss(emb, lab, 0.4, ref_embeddings=r, ref_labels=rl), emb, lab, r, rl
    )
    pairs = losskit.ContrastivePairsLoss()
    assert_module_matches(
        pairs, LF.contrastive_pairs_loss(emb, lab, ref_embeddings=r, ref_labels=rl), emb, lab, r, rl
    )
    nt = losskit.NTXentLoss(temperature=0.3)
    assert_module_matches(
        nt, LF.nt_xent_loss(emb, r.repeat(2, 1)[:8], 0.3, labels=lab), emb, r.repeat(2, 1)[:8], lab
    )
    assert "alpha=1.5" in repr(ms) and "gamma=64.0" in repr(circle)
    for m in (copy.deepcopy(ms), pickle.loads(pickle.dumps(circle))):
        assert type(m).__name__ in ("MultiSimilarityLoss", "CircleLoss")


def test_registered_and_buildable():
    for name, cls in (("multi_similarity", losskit.MultiSimilarityLoss), ("circle", losskit.CircleLoss)):
        assert name in losskit.available()
        assert isinstance(losskit.build(name), cls)


@pytest.mark.parametrize("name", ["multi_similarity_loss", "circle_loss"])
def test_compile_fullgraph_equals_eager(name):
    emb, lab = rand(8, 3, seed=25, dtype=torch.float32), labels_of(8, 3, seed=25)
    assert_compiles(lambda e: getattr(LF, name)(e, lab), emb)


# ============================================================================ peer cross-check (optional)


def test_values_equal_pytorch_metric_learning_when_installed():
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses, miners

    assert pml.__version__
    emb, lab = rand(16, 5, seed=30), torch.arange(16) % 4
    for alpha, beta, base, eps in ((2.0, 50.0, 0.5, 0.1), (1.0, 10.0, 0.3, 0.3)):
        peer = losses.MultiSimilarityLoss(alpha, beta, base)(
            emb, lab, miners.MultiSimilarityMiner(eps)(emb, lab)
        )
        torch.testing.assert_close(LF.multi_similarity_loss(emb, lab, alpha, beta, base, eps), peer)
    for m, gamma in ((0.25, 256.0), (0.4, 32.0)):
        torch.testing.assert_close(
            LF.circle_loss(emb, lab, m, gamma), losses.CircleLoss(m=m, gamma=gamma)(emb, lab)
        )
