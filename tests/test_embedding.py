"""Embedding (metric-learning) losses: the definition of done for every loss.

References are written as plain float64 Python loops over pairs and triplets, independent of the
vectorised implementation (which works on distance matrices, masks and per-pair coefficients).
"""

from __future__ import annotations

import ast
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.embedding as E
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
MININGS = ["batch_hard", "batch_semi_hard", "batch_all"]
DISTANCES = ["euclidean", "squared_euclidean", "cosine"]


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand_labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 1000))


# ============================================================================ float64 loop references


def ref_dist(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 1.0 - (a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt())
    d2 = ((a - b) ** 2).sum()
    return d2 if distance == "squared_euclidean" else d2.sqrt()


def ref_reduce(losses: list[torch.Tensor], reduction: str, weights: list[torch.Tensor] | None = None):
    if reduction == "none":
        return torch.stack(losses if weights is None else [w * v for w, v in zip(weights, losses)])
    if weights is None:
        weights = [torch.ones((), dtype=DT)] * len(losses)
    total = sum((w * v for w, v in zip(weights, losses)), torch.zeros((), dtype=DT))
    if reduction == "sum":
        return total
    return total / sum(weights) if losses else total


def ref_cosine_embedding(x1, x2, target, margin, reduction, weight=None):
    out = []
    for i in range(x1.shape[0]):
        cos = 1.0 - ref_dist(x1[i], x2[i], "cosine")
        out.append(1.0 - cos if int(target[i]) == 1 else torch.clamp(cos - margin, min=0.0))
    return ref_reduce(out, reduction, None if weight is None else list(weight))


def ref_contrastive(x1, x2, target, margin, distance, reduction, weight=None):
    out = []
    for i in range(x1.shape[0]):
        d = ref_dist(x1[i], x2[i], distance)
        y = float(target[i])
        out.append(0.5 * y * d**2 + 0.5 * (1 - y) * torch.clamp(margin - d, min=0.0) ** 2)
    return ref_reduce(out, reduction, None if weight is None else list(weight))


def ref_contrastive_pairs(emb, labels, pos_margin, neg_margin, distance, average, normalize):
    if normalize:
        emb = emb / emb.norm(dim=1, keepdim=True)
    n = emb.shape[0]
    pos_terms, neg_terms = [], []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            d = ref_dist(emb[i], emb[j], distance)
            if labels[i] == labels[j]:
                pos_terms.append(torch.clamp(d - pos_margin, min=0.0))
            else:
                neg_terms.append(torch.clamp(neg_margin - d, min=0.0))
    total = torch.zeros((), dtype=DT) + 0.0 * emb.sum()
    for terms in (pos_terms, neg_terms):
        count = sum(1 for t in terms if float(t.detach()) > 0) if average == "nonzero" else len(terms)
        if count:
            total = total + sum(terms) / count
    return total


def ref_hinge(x, margin, soft):
    if soft:
        return torch.log1p(torch.exp(x))
    # a triplet on the kink (x + margin == 0) is inactive: zero value and zero gradient
    return x + margin if float(x.detach()) + margin > 0 else 0.0 * x


def ref_triplet(emb, labels, margin, mining, distance, soft, reduction, normalize=False):
    if normalize:
        emb = emb / emb.norm(dim=1, keepdim=True)
    n = emb.shape[0]
    d = [[ref_dist(emb[i], emb[j], distance) for j in range(n)] for i in range(n)]
    items = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            hardest_p = max((d[a][p] for p in pos), key=lambda t: float(t.detach()))
            hardest_n = min((d[a][q] for q in neg), key=lambda t: float(t.detach()))
            items.append(ref_hinge(hardest_p - hardest_n, margin, soft))
        elif mining == "batch_semi_hard":
            for p in pos:
                farther = [d[a][q] for q in neg if float(d[a][q].detach()) > float(d[a][p].detach())]
                chosen = min(farther or [d[a][q] for q in neg], key=lambda t: float(t.detach()))
                items.append(ref_hinge(d[a][p] - chosen, margin, soft))
        else:
            for p in pos:
                for q in neg:
                    items.append(ref_hinge(d[a][p] - d[a][q], margin, soft))
    total = sum(items, torch.zeros((), dtype=DT) + 0.0 * emb.sum())
    if reduction == "sum":
        return total
    if mining == "batch_all" and not soft:
        count = sum(1 for v in items if float(v.detach()) > 0)
    else:
        count = len(items)
    return total / max(count, 1)


def ref_nt_xent(z1, z2, tau, reduction="mean"):
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    b = n2 // 2
    out = []
    for a in range(n2):
        p = (a + b) % n2
        sim = [(z[a] * z[c]).sum() / (z[a].norm() * z[c].norm()) / tau for c in range(n2)]
        denom = sum(torch.exp(sim[c]) for c in range(n2) if c != a)
        out.append(-(sim[p] - torch.log(denom)))
    return ref_reduce(out, reduction)


def ref_supcon(emb, labels, tau, reduction="mean", base_tau=None):
    base_tau = tau if base_tau is None else base_tau
    if emb.dim() == 3:
        b, v, _ = emb.shape
        rows = [emb[i, k] for k in range(v) for i in range(b)]  # view-major
        labs = [int(labels[i]) for k in range(v) for i in range(b)]
    else:
        rows = list(emb)
        labs = [int(x) for x in labels]
    z = [r / r.norm() for r in rows]
    n = len(z)
    out, valid = [], []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labs[p] == labs[i]]
        if not positives:
            out.append(torch.zeros((), dtype=DT) + 0.0 * emb.sum())
            valid.append(False)
            continue
        logits = [(z[i] * z[k]).sum() / tau for k in range(n)]
        log_denom = torch.log(sum(torch.exp(logits[k]) for k in range(n) if k != i))
        mean_log_prob = sum(logits[p] - log_denom for p in positives) / len(positives)
        out.append(-(tau / base_tau) * mean_log_prob)
        valid.append(True)
    if reduction == "none":
        return torch.stack(out)
    kept = [v for v, ok in zip(out, valid) if ok]
    total = sum(kept, torch.zeros((), dtype=DT) + 0.0 * emb.sum())
    return total if reduction == "sum" else total / max(len(kept), 1)


# ============================================================================ 1. references (values + grads)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cosine_embedding_matches_loop_reference_and_torch(reduction, weighted):
    x1, x2 = rand(7, 5, seed=1), rand(7, 5, seed=2)
    y = rand_labels(7, 2) * 2 - 1
    w = rand(7, seed=3).abs() if weighted else None
    for m in (0.0, 0.3, -0.2):
        assert_matches_reference(
            lambda a, b, m=m: LF.cosine_embedding_loss(a, b, y, m, weight=w, reduction=reduction),
            lambda a, b, m=m: ref_cosine_embedding(a, b, y, m, reduction, w),
            [x1, x2],
            wrt=(0, 1),
        )
        if not weighted:
            torch.testing.assert_close(
                LF.cosine_embedding_loss(x1, x2, y, m, reduction=reduction),
                F.cosine_embedding_loss(x1, x2, y, margin=m, reduction=reduction),
            )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_contrastive_matches_loop_reference(reduction, distance):
    x1, x2 = rand(8, 3, seed=4), rand(8, 3, seed=5) * 0.5
    y = rand_labels(8, 2, seed=2)
    margin = 2.0 if distance == "euclidean" else 0.9
    assert_matches_reference(
        lambda a, b: LF.contrastive_loss(a, b, y, margin, distance, reduction=reduction),
        lambda a, b: ref_contrastive(a, b, y, margin, distance, reduction),
        [x1, x2],
        wrt=(0, 1),
    )
    w = rand(8, seed=6).abs()
    soft_y = torch.rand(8, generator=torch.Generator().manual_seed(7), dtype=DT)  # soft targets in [0, 1]
    assert_matches_reference(
        lambda a, b: LF.contrastive_loss(a, b, soft_y, margin, distance, weight=w, reduction=reduction),
        lambda a, b: ref_contrastive(a, b, soft_y, margin, distance, reduction, w),
        [x1, x2],
        wrt=(0, 1),
    )


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("average", ["nonzero", "all"])
def test_contrastive_pairs_matches_loop_reference(distance, average):
    e, lab = rand(9, 3, seed=8), rand_labels(9, 3, seed=3)
    pm, nm = (0.3, 2.0) if distance != "cosine" else (0.1, 0.8)
    for normalize in (False, True):
        assert_matches_reference(
            lambda x, n=normalize: LF.contrastive_pairs_loss(
                x, lab, pm, nm, distance, average=average, normalize_embeddings=n
            ),
            lambda x, n=normalize: ref_contrastive_pairs(x, lab, pm, nm, distance, average, n),
            [e],
        )


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_matches_loop_reference(mining, distance, soft):
    e, lab = rand(10, 3, seed=9), rand_labels(10, 3, seed=4)
    margin = 0.2 if distance == "cosine" else 1.0
    for reduction in ("mean", "sum"):
        assert_matches_reference(
            lambda x, r=reduction: LF.triplet_loss(x, lab, margin, mining, distance, soft, reduction=r),
            lambda x, r=reduction: ref_triplet(x, lab, margin, mining, distance, soft, r),
            [e],
        )


def test_triplet_normalized_and_chunked_match_loop_reference():
    e, lab = rand(11, 4, seed=10), rand_labels(11, 4, seed=5)
    for mining in MININGS:
        for soft in (False, True):
            assert_matches_reference(
                lambda x, m=mining, s=soft: LF.triplet_loss(
                    x, lab, 0.3, m, soft_margin=s, normalize_embeddings=True, chunk_size=2
                ),
                lambda x, m=mining, s=soft: ref_triplet(
                    x, lab, 0.3, m, "euclidean", s, "mean", normalize=True
                ),
                [e],
            )


@pytest.mark.parametrize("margin", [0.0, 1.0, 2.0])
def test_triplet_batch_all_with_exact_ties_matches_loop_reference(margin):
    # integer points: squared distances are integers, so d_ap - d_an + margin hits 0 exactly
    g = torch.Generator().manual_seed(6)
    e = torch.randint(0, 3, (12, 2), generator=g).to(DT)
    lab = torch.randint(0, 3, (12,), generator=g)
    for reduction in ("mean", "sum"):
        assert_matches_reference(
            lambda x, r=reduction: LF.triplet_loss(
                x, lab, margin, "batch_all", "squared_euclidean", reduction=r
            ),
            lambda x, r=reduction: ref_triplet(x, lab, margin, "batch_all", "squared_euclidean", False, r),
            [e],
        )


def test_triplet_batch_hard_is_hermans_mean_over_valid_anchors():
    # anchors 0, 1 (class 0) have a positive and a negative; 2 and 3 (class 1, 2) have no positive
    e = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.5], [0.0, 3.0]], dtype=DT)
    lab = torch.tensor([0, 0, 1, 2])
    # anchor 0: max d_ap = 1, min d_an = 0.5 -> 0.7; anchor 1: 1 - 0.5 + 0.2 = 0.7
    torch.testing.assert_close(LF.triplet_loss(e, lab, 0.2), torch.tensor(0.7, dtype=DT))
    torch.testing.assert_close(LF.triplet_loss(e, lab, 0.2, reduction="sum"), torch.tensor(1.4, dtype=DT))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nt_xent_matches_loop_reference(reduction):
    z1, z2 = rand(5, 4, seed=11), rand(5, 4, seed=12)
    for tau in (0.5, 0.1):
        assert_matches_reference(
            lambda a, b, t=tau: LF.nt_xent_loss(a, b, t, reduction=reduction),
            lambda a, b, t=tau: ref_nt_xent(a, b, t, reduction),
            [z1, z2],
            wrt=(0, 1),
        )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_supcon_matches_loop_reference(reduction):
    e, lab = rand(8, 4, seed=13), torch.tensor([0, 1, 0, 2, 1, 3, 0, 4])  # 3 and 4: no positive
    assert_matches_reference(
        lambda x: LF.supcon_loss(x, lab, 0.2, reduction=reduction),
        lambda x: ref_supcon(x, lab, 0.2, reduction),
        [e],
    )
    views = rand(5, 2, 3, seed=14)
    lab5 = torch.tensor([0, 1, 0, 2, 1])
    assert_matches_reference(
        lambda x: LF.supcon_loss(x, lab5, 0.3, 0.07, reduction=reduction),
        lambda x: ref_supcon(x, lab5, 0.3, reduction, base_tau=0.07),
        [views],
    )
    # labels=None: instance discrimination, the other views of the same sample are the positives
    assert_matches_reference(
        lambda x: LF.supcon_loss(x, None, 0.3, reduction=reduction),
        lambda x: ref_supcon(x, torch.arange(5), 0.3, reduction),
        [views],
    )


# ============================================================================ 2. gradcheck (float64)


def test_gradcheck_pair_losses():
    x1, x2 = rand(4, 3, seed=15), rand(4, 3, seed=16)
    y_pm, y_01 = torch.tensor([1, -1, -1, 1]), torch.tensor([1, 0, 0, 1])
    assert_gradcheck(lambda a, b: LF.cosine_embedding_loss(a, b, y_pm, -0.5), [x1, x2], wrt=(0, 1))
    for distance in ("euclidean", "cosine"):
        assert_gradcheck(
            lambda a, b, d=distance: LF.contrastive_loss(a, b, y_01, 3.0, d), [x1, x2], wrt=(0, 1)
        )


@pytest.mark.parametrize("mining", MININGS)
def test_gradcheck_triplet(mining):
    e, lab = rand(7, 3, seed=17), torch.tensor([0, 0, 1, 1, 2, 2, 0])
    for distance, soft in (("euclidean", False), ("cosine", True)):
        assert_gradcheck(lambda x, d=distance, s=soft: LF.triplet_loss(x, lab, 0.5, mining, d, s), [e])


def test_gradcheck_contrastive_pairs_nt_xent_supcon():
    e, lab = rand(6, 3, seed=18), torch.tensor([0, 0, 1, 1, 2, 2])
    assert_gradcheck(lambda x: LF.contrastive_pairs_loss(x, lab, 0.1, 2.0, average="all"), [e])
    assert_gradcheck(lambda a, b: LF.nt_xent_loss(a, b, 0.3), [e, rand(6, 3, seed=19)], wrt=(0, 1))
    assert_gradcheck(lambda x: LF.supcon_loss(x, lab, 0.3), [e])
    assert_gradcheck(lambda x: LF.supcon_loss(x, None, 0.3), [rand(3, 2, 3, seed=20)])


# ============================================================================ 3. properties (hypothesis)

batch = st.integers(min_value=2, max_value=9)
dim = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=10_000)
PROPS = settings(max_examples=20, deadline=None, derandomize=True)


@PROPS
@given(b=batch, d=dim, seed=seeds, k=st.integers(1, 4))
def test_property_non_negative(b, d, seed, k):
    e, lab = rand(b, d, seed=seed), rand_labels(b, k, seed)
    x2 = rand(b, d, seed=seed + 1)
    y01 = rand_labels(b, 2, seed + 2)
    assert float(LF.cosine_embedding_loss(e, x2, y01 * 2 - 1, 0.1)) >= 0
    assert float(LF.contrastive_loss(e, x2, y01)) >= 0
    assert float(LF.contrastive_pairs_loss(e, lab)) >= 0
    for mining in MININGS:
        assert float(LF.triplet_loss(e, lab, 0.2, mining)) >= 0
    assert float(LF.nt_xent_loss(e, x2)) >= 0
    assert float(LF.supcon_loss(e, lab)) >= 0


def _triplet_items(lab: torch.Tensor, mining: str) -> int:
    """Number of items 'mean' divides by for batch_hard / semi_hard (independent of distances)."""
    n, items = lab.shape[0], 0
    for a in range(n):
        n_pos = sum(1 for p in range(n) if p != a and lab[p] == lab[a])
        n_neg = sum(1 for q in range(n) if lab[q] != lab[a])
        if n_pos and n_neg:
            items += 1 if mining == "batch_hard" else n_pos
    return items


@PROPS
@given(b=batch, d=dim, seed=seeds, k=st.integers(1, 4))
def test_property_reduction_consistency(b, d, seed, k):
    e, lab, x2 = rand(b, d, seed=seed), rand_labels(b, k, seed), rand(b, d, seed=seed + 1)
    y = rand_labels(b, 2, seed + 2)

    def check(fn, count):
        torch.testing.assert_close(fn("sum"), fn("mean") * max(count, 1))

    for fn in (
        lambda r: LF.cosine_embedding_loss(e, x2, y * 2 - 1, 0.1, reduction=r),
        lambda r: LF.contrastive_loss(e, x2, y, reduction=r),
    ):
        torch.testing.assert_close(fn("sum"), fn("mean") * b)
        torch.testing.assert_close(fn("none").sum(), fn("sum"))
    for mining in ("batch_hard", "batch_semi_hard"):
        count = _triplet_items(lab, mining)
        fn = lambda r, m=mining: LF.triplet_loss(e, lab, 0.2, m, reduction=r)  # noqa: E731
        check(fn, count)
    nt = lambda r: LF.nt_xent_loss(e, x2, 0.5, reduction=r)  # noqa: E731
    torch.testing.assert_close(nt("sum"), nt("mean") * 2 * b)
    torch.testing.assert_close(nt("none").sum(), nt("sum"))
    n_anchors = sum(1 for i in range(b) if (lab == lab[i]).sum() > 1)
    sc = lambda r: LF.supcon_loss(e, lab, 0.2, reduction=r)  # noqa: E731
    torch.testing.assert_close(sc("sum"), sc("mean") * max(n_anchors, 1))
    torch.testing.assert_close(sc("none").sum(), sc("sum"))


@PROPS
@given(b=batch, d=st.integers(2, 4), seed=seeds, scale=st.floats(0.1, 10.0))
def test_property_nt_xent_swap_symmetry_and_scale_invariance(b, d, seed, scale):
    z1, z2 = rand(b, d, seed=seed), rand(b, d, seed=seed + 1)
    torch.testing.assert_close(LF.nt_xent_loss(z1, z2), LF.nt_xent_loss(z2, z1))
    per = LF.nt_xent_loss(z1, z2, reduction="none")
    torch.testing.assert_close(LF.nt_xent_loss(z2, z1, reduction="none"), torch.cat([per[b:], per[:b]]))
    # embeddings are L2-normalised inside: a positive rescaling changes nothing
    torch.testing.assert_close(LF.nt_xent_loss(z1 * scale, z2), LF.nt_xent_loss(z1, z2))
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(LF.nt_xent_loss(z1[perm], z2[perm]), LF.nt_xent_loss(z1, z2))


@PROPS
@given(b=batch, d=st.integers(2, 4), seed=seeds, tau=st.floats(0.05, 2.0))
def test_property_supcon_two_views_distinct_labels_is_nt_xent(b, d, seed, tau):
    z1, z2 = rand(b, d, seed=seed), rand(b, d, seed=seed + 1)
    views = torch.stack([z1, z2], dim=1)
    want = LF.nt_xent_loss(z1, z2, tau, reduction="none")
    torch.testing.assert_close(LF.supcon_loss(views, torch.arange(b) * 7, tau, reduction="none"), want)
    torch.testing.assert_close(LF.supcon_loss(views, None, tau), want.mean())


@PROPS
@given(b=batch, d=dim, seed=seeds, k=st.integers(1, 4), shift=st.floats(-5, 5))
def test_property_triplet_invariances(b, d, seed, k, shift):
    e, lab = rand(b, d, seed=seed), rand_labels(b, k, seed)
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
    for mining in MININGS:
        base = LF.triplet_loss(e, lab, 0.3, mining)
        # batch order and label names do not matter; Euclidean distances ignore translations
        torch.testing.assert_close(LF.triplet_loss(e[perm], lab[perm], 0.3, mining), base)
        torch.testing.assert_close(LF.triplet_loss(e, lab * 5 + 11, 0.3, mining), base)
        torch.testing.assert_close(LF.triplet_loss(e + shift, lab, 0.3, mining), base, rtol=1e-6, atol=1e-6)
    # cosine distance ignores the embeddings' norms
    scales = rand(b, seed=seed + 3).abs() + 0.1
    torch.testing.assert_close(
        LF.triplet_loss(e * scales[:, None], lab, 0.1, "batch_all", "cosine"),
        LF.triplet_loss(e, lab, 0.1, "batch_all", "cosine"),
    )


@PROPS
@given(b=batch, d=st.integers(2, 4), seed=seeds)
def test_property_pair_losses_symmetry_and_scale(b, d, seed):
    x1, x2 = rand(b, d, seed=seed), rand(b, d, seed=seed + 1)
    y = rand_labels(b, 2, seed)
    torch.testing.assert_close(LF.contrastive_loss(x1, x2, y), LF.contrastive_loss(x2, x1, y))
    torch.testing.assert_close(
        LF.cosine_embedding_loss(3.0 * x1, x2, y * 2 - 1, 0.2),
        LF.cosine_embedding_loss(x1, x2, y * 2 - 1, 0.2),
    )


# ============================================================================ 4. degenerate batches


def _batch_losses():
    """(name, fn(embeddings, labels)) for every batch loss (pair losses take x2 = flipped batch)."""
    return [
        ("contrastive_pairs", lambda e, lab: LF.contrastive_pairs_loss(e, lab)),
        *[(f"triplet_{m}", lambda e, lab, m=m: LF.triplet_loss(e, lab, 0.2, m)) for m in MININGS],
        ("supcon", lambda e, lab: LF.supcon_loss(e, lab)),
    ]


@pytest.mark.parametrize("name", [n for n, _ in _batch_losses()])
def test_degenerate_batches_give_connected_zero(name):
    fn = dict(_batch_losses())[name]
    cases = [
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long)),  # empty
        (torch.randn(1, 3), torch.zeros(1, dtype=torch.long)),  # B = 1
    ]
    if name != "contrastive_pairs":  # its positive and negative terms are independent (below)
        cases.append((torch.randn(5, 3), torch.arange(5)))  # no positive pair
        cases.append((torch.randn(4, 3), torch.zeros(4, dtype=torch.long)))  # one class: no negative
    for emb, lab in cases:
        e = emb.clone().requires_grad_(True)
        assert_connected_zero(fn(e, lab), e)


def test_contrastive_pairs_missing_term_is_zero_the_other_still_counts():
    e = rand(4, 3, seed=21).requires_grad_(True)
    for lab in (torch.zeros(4, dtype=torch.long), torch.arange(4)):  # one class / no positive pair
        assert_connected_zero(LF.contrastive_pairs_loss(e, lab, pos_margin=100.0, neg_margin=0.0), e)
        value = LF.contrastive_pairs_loss(e, lab, 0.0, 10.0)  # only one of the two terms exists
        want = ref_contrastive_pairs(e.detach(), lab, 0.0, 10.0, "euclidean", "nonzero", False)
        assert float(want) > 0
        torch.testing.assert_close(value, want)


def test_nt_xent_and_pair_losses_degenerate():
    for b in (0, 1):  # B = 1: the two views have nothing to be contrasted with
        z1, z2 = torch.randn(b, 3, requires_grad=True), torch.randn(b, 3, requires_grad=True)
        assert_connected_zero(LF.nt_xent_loss(z1, z2), z1, z2)
    x = torch.randn(0, 3, requires_grad=True)
    assert_connected_zero(LF.cosine_embedding_loss(x, x, torch.ones(0)), x)
    assert_connected_zero(LF.contrastive_loss(x, x, torch.ones(0)), x)


def test_degenerate_zero_inside_a_larger_graph_keeps_backward_working():
    e = torch.randn(4, 3, requires_grad=True)
    total = LF.triplet_loss(e, torch.zeros(4, dtype=torch.long)) + (e**2).sum()
    total.backward()
    torch.testing.assert_close(e.grad, 2 * e.detach())


# ============================================================================ 5. low precision, d = 0


def test_no_inf_literals_in_masks():
    files = sorted(pathlib.Path(E.__file__).parent.glob("*.py"))
    assert len(files) > 1  # the package's modules
    for path in files:
        tree = ast.parse(path.read_text())
        # comparing with inf (``x == math.inf``) is a test, not a mask value
        compared = {
            id(op) for c in ast.walk(tree) if isinstance(c, ast.Compare) for op in (c.left, *c.comparators)
        }
        for node in ast.walk(tree):
            if id(node) in compared:
                continue
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "float":
                args = [a.value for a in node.args if isinstance(a, ast.Constant)]
                assert not any("inf" in str(a).lower() for a in args), (
                    f"float('inf') in {path.name}:{node.lineno}"
                )
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("inf", "ninf"), f".{node.attr} in {path.name}:{node.lineno}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extreme_inputs_finite(dtype):
    e = extreme_logits((12, 6), dtype, seed=2).requires_grad_(True)
    x2 = extreme_logits((12, 6), dtype, seed=3)
    lab = torch.tensor([0, 1, 2] * 4)
    y01 = rand_labels(12, 2, 4)
    losses = [
        LF.cosine_embedding_loss(e, x2, y01 * 2 - 1),
        LF.contrastive_loss(e, x2, y01, margin=1e5),
        LF.contrastive_pairs_loss(e, lab, neg_margin=1e5),
        LF.nt_xent_loss(e, x2, 0.05),
        LF.supcon_loss(e, lab, 0.05),
        *[LF.triplet_loss(e, lab, 1.0, m, dist) for m in MININGS for dist in DISTANCES],
    ]
    for value in losses:
        assert value.dtype == torch.float32
        assert_finite_with_grads(value, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    e, lab = rand(10, 4, seed=22, dtype=torch.float32).to(dtype), rand_labels(10, 3, 6)
    x2 = rand(10, 4, seed=23, dtype=torch.float32).to(dtype)
    for fn in (
        lambda x, y: LF.triplet_loss(x, lab, 0.5, "batch_all"),
        lambda x, y: LF.triplet_loss(x, lab, 0.5, "batch_semi_hard", "cosine"),
        lambda x, y: LF.supcon_loss(x, lab, 0.1),
        lambda x, y: LF.nt_xent_loss(x, y, 0.1),
        lambda x, y: LF.contrastive_pairs_loss(x, lab),
    ):
        torch.testing.assert_close(fn(e, x2), fn(e.float(), x2.float()))


def test_duplicate_embeddings_give_finite_euclidean_gradients():
    base = rand(3, 4, seed=24)
    e = torch.cat([base, base, base[:1] + 1e-3]).requires_grad_(True)  # d(a, p) = 0 for every pair
    lab = torch.tensor([0, 1, 2, 0, 1, 2, 1])  # the last row is a negative right next to anchor 0
    for mining in MININGS:
        for soft in (False, True):
            value = LF.triplet_loss(e, lab, 0.5, mining, "euclidean", soft)
            assert float(value.detach()) > 0  # the hinge is active at d(a, p) = 0
            assert_finite_with_grads(value, e)
    assert_finite_with_grads(LF.contrastive_pairs_loss(e, torch.zeros(7, dtype=torch.long), 0.0, 1.0), e)
    x = rand(4, 3, seed=25).requires_grad_(True)
    value = LF.contrastive_loss(x, x.detach().clone(), torch.zeros(4), margin=1.0)  # d = 0, dissimilar
    torch.testing.assert_close(value, torch.tensor(0.5, dtype=DT))
    assert_finite_with_grads(value, x)
    assert_finite_with_grads(LF.contrastive_pairs_loss(x.repeat(2, 1), torch.tensor([0, 1, 2, 3] * 2)), x)


# ============================================================================ memory: no B^3 for batch_all


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages saved for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_batch_all_saved_bytes_grow_as_b_squared():
    def run(b: int) -> int:
        e = torch.randn(b, 8, requires_grad=True)
        lab = torch.arange(b) % 16
        return saved_bytes(lambda: LF.triplet_loss(e, lab, 0.2, "batch_all"))

    small, large = run(128), run(512)
    b = 512
    assert large < 16 * b * b * 4, f"{large} bytes saved at B=512 (B^3 floats would be {b**3 * 4})"
    assert large / small < 16 * 1.3  # B x4 -> bytes x16 (B^2), not x64 (B^3)


# ============================================================================ 6. bad input, with messages


def test_bad_inputs_raise_clear_errors():
    e, lab = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    cases = [
        (
            lambda: LF.triplet_loss(e, lab, reduction="none"),
            LossValueError,
            "reduction must be one of 'mean', 'sum', got 'none'",
        ),
        (
            lambda: LF.nt_xent_loss(e, e, reduction="avg"),
            LossValueError,
            "reduction must be one of 'none', 'mean', 'sum', got 'avg'",
        ),
        (lambda: LF.supcon_loss(e, lab, reduction=1), LossTypeError, "reduction must be a string"),
        (
            lambda: LF.cosine_embedding_loss(e, e, torch.tensor([1, -1, 1, 1]), reduction="max"),
            LossValueError,
            "reduction must be one of",
        ),
        (
            lambda: LF.triplet_loss(e, lab[:3]),
            LossValueError,
            r"labels has shape \(3,\), expected \(4,\) to match embeddings of shape \(4, 2\)",
        ),
        (
            lambda: LF.triplet_loss(e, lab[:, None]),
            LossValueError,
            r"labels has shape \(4, 1\), expected \(4,\)",
        ),
        (
            lambda: LF.supcon_loss(e, lab.float()),
            LossTypeError,
            "labels must be an integer tensor of class indices, got dtype torch.float32",
        ),
        (lambda: LF.contrastive_pairs_loss(e, lab.bool()), LossTypeError, "labels must be an integer tensor"),
        (
            lambda: LF.triplet_loss(e[0], lab),
            LossValueError,
            r"embeddings must be \(B, D\), got shape \(2,\)",
        ),
        (
            lambda: LF.triplet_loss(lab[:, None], lab),
            LossTypeError,
            "embeddings must be a floating-point tensor, got dtype torch.int64",
        ),
        (
            lambda: LF.supcon_loss(torch.randn(2, 2, 2, 2), None),
            LossValueError,
            r"embeddings must be \(B, D\) or \(B, V, D\)",
        ),
        (
            lambda: LF.nt_xent_loss(e, e[:3]),
            LossValueError,
            r"z2 has shape \(3, 2\), expected \(4, 2\) to match z1",
        ),
        (
            lambda: LF.cosine_embedding_loss(e, e[:, :1], lab),
            LossValueError,
            r"input2 has shape \(4, 1\), expected \(4, 2\) to match input1",
        ),
        (
            lambda: LF.cosine_embedding_loss(e, e, torch.tensor([1, -1])),
            LossValueError,
            r"target has shape \(2,\), expected \(4,\): one entry per pair",
        ),
        (
            lambda: LF.contrastive_loss(e, e, torch.ones(4), weight=torch.ones(3)),
            LossValueError,
            r"weight has shape \(3,\), expected \(4,\)",
        ),
        (lambda: LF.triplet_loss(e, lab, margin=-0.1), LossValueError, "margin must be >= 0.0, got -0.1"),
        (
            lambda: LF.contrastive_loss(e, e, torch.ones(4), margin=0.0),
            LossValueError,
            "margin must be > 0.0, got 0.0",
        ),
        (
            lambda: LF.cosine_embedding_loss(e, e, torch.ones(4), margin=1.5),
            LossValueError,
            "margin must be <= 1.0, got 1.5",
        ),
        (
            lambda: LF.contrastive_pairs_loss(e, lab, neg_margin=-1.0),
            LossValueError,
            "neg_margin must be >= 0.0",
        ),
        (lambda: LF.triplet_loss(e, lab, margin="big"), LossTypeError, "margin must be a number"),
        (
            lambda: LF.nt_xent_loss(e, e, temperature=0.0),
            LossValueError,
            "temperature must be > 0.0, got 0.0",
        ),
        (
            lambda: LF.supcon_loss(e, lab, temperature=-1.0),
            LossValueError,
            "temperature must be > 0.0, got -1.0",
        ),
        (
            lambda: LF.supcon_loss(e, lab, base_temperature=0),
            LossValueError,
            "base_temperature must be > 0.0",
        ),
        (
            lambda: LF.nt_xent_loss(e, e, temperature=float("nan")),
            LossValueError,
            "temperature must not be NaN",
        ),
        (
            lambda: LF.triplet_loss(e, lab, mining="hard"),
            LossValueError,
            "mining must be one of 'batch_hard', 'batch_semi_hard', 'batch_all', got 'hard'",
        ),
        (
            lambda: LF.triplet_loss(e, lab, distance="manhattan"),
            LossValueError,
            "distance must be one of 'euclidean', 'squared_euclidean', 'cosine', got 'manhattan'",
        ),
        (
            lambda: LF.contrastive_loss(e, e, torch.ones(4), distance="squared_euclidean"),
            LossValueError,
            "distance must be one of 'euclidean', 'cosine'",
        ),
        (
            lambda: LF.contrastive_pairs_loss(e, lab, average="mean"),
            LossValueError,
            "average must be one of 'nonzero', 'all', got 'mean'",
        ),
        (
            lambda: LF.triplet_loss(e, lab, mining="batch_all", chunk_size=0),
            LossValueError,
            "chunk_size must be >= 1, got 0",
        ),
        (
            lambda: LF.cosine_embedding_loss(e, e, torch.tensor([1, 0, 1, 0])),
            LossValueError,
            r"only 1 \(similar\) or -1 \(dissimilar\), got 0 \(for 0/1 labels pass 2 \* target - 1\)",
        ),
        (
            lambda: LF.cosine_embedding_loss(e, e, torch.tensor([1, 2, 1, 1])),
            LossValueError,
            r"only 1 \(similar\) or -1 \(dissimilar\), got 2$",
        ),
        (
            lambda: LF.contrastive_loss(e, e, torch.tensor([1, -1, 1, 1])),
            LossValueError,
            r"1 \(similar\) or 0 \(dissimilar\).*got -1 \(for 1/-1 labels pass \(target \+ 1\) / 2\)",
        ),
        (lambda: LF.nt_xent_loss(e.long(), e.long()), LossTypeError, "z1 must be a floating-point tensor"),
    ]
    for call, err, msg in cases:
        with pytest.raises(err, match=msg):
            call()


def test_modules_check_hyperparameters_at_construction():
    cases = [
        (lambda: losskit.TripletLoss(mining="semi"), "mining must be one of"),
        (lambda: losskit.TripletLoss(distance="l1"), "distance must be one of"),
        (lambda: losskit.TripletLoss(margin=-1.0), "margin must be >= 0.0"),
        (lambda: losskit.TripletLoss(reduction="none"), "reduction must be one of 'mean', 'sum'"),
        (lambda: losskit.NTXentLoss(temperature=0), "temperature must be > 0.0"),
        (lambda: losskit.SupConLoss(base_temperature=-0.1), "base_temperature must be > 0.0"),
        (lambda: losskit.ContrastivePairsLoss(average="x"), "average must be one of"),
        (lambda: losskit.ContrastiveLoss(distance="dot"), "distance must be one of"),
        (lambda: losskit.CosineEmbeddingLoss(margin=-2.0), "margin must be >= -1.0"),
        (lambda: losskit.CosineEmbeddingLoss(reduction="avg"), "reduction must be one of"),
    ]
    for call, msg in cases:
        with pytest.raises(LossValueError, match=msg):
            call()


# ============================================================================ 7. modules, serialisation, compile

E1, E2 = rand(8, 3, seed=30, dtype=torch.float32), rand(8, 3, seed=31, dtype=torch.float32)
LAB = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])
Y_PM, Y_01 = torch.tensor([1, -1, 1, -1, 1, 1, -1, -1]), torch.tensor([1, 0, 1, 0, 1, 1, 0, 0])

MODULE_CASES = [
    (
        "cosine_embedding",
        {"margin": 0.2, "reduction": "sum"},
        lambda: LF.cosine_embedding_loss(E1, E2, Y_PM, 0.2, reduction="sum"),
        (E1, E2, Y_PM),
    ),
    (
        "contrastive",
        {"margin": 0.7, "distance": "cosine"},
        lambda: LF.contrastive_loss(E1, E2, Y_01, 0.7, "cosine"),
        (E1, E2, Y_01),
    ),
    (
        "contrastive_pairs",
        {"pos_margin": 0.1, "neg_margin": 1.5, "distance": "squared_euclidean", "average": "all"},
        lambda: LF.contrastive_pairs_loss(E1, LAB, 0.1, 1.5, "squared_euclidean", average="all"),
        (E1, LAB),
    ),
    (
        "triplet",
        {"margin": 0.3, "mining": "batch_all", "distance": "cosine", "reduction": "sum", "chunk_size": 3},
        lambda: LF.triplet_loss(E1, LAB, 0.3, "batch_all", "cosine", reduction="sum", chunk_size=3),
        (E1, LAB),
    ),
    (
        "triplet",
        {"mining": "batch_semi_hard", "soft_margin": True, "normalize_embeddings": True},
        lambda: LF.triplet_loss(E1, LAB, 0.2, "batch_semi_hard", soft_margin=True, normalize_embeddings=True),
        (E1, LAB),
    ),
    (
        "nt_xent",
        {"temperature": 0.2, "reduction": "none"},
        lambda: LF.nt_xent_loss(E1, E2, 0.2, reduction="none"),
        (E1, E2),
    ),
    ("info_nce", {"temperature": 0.3}, lambda: LF.nt_xent_loss(E1, E2, 0.3), (E1, E2)),
    (
        "supcon",
        {"temperature": 0.2, "base_temperature": 0.07},
        lambda: LF.supcon_loss(E1, LAB, 0.2, 0.07),
        (E1, LAB),
    ),
]


@pytest.mark.parametrize("case", range(len(MODULE_CASES)))
def test_registry_build_module_equals_functional_and_round_trips(case):
    name, kwargs, functional, args = MODULE_CASES[case]
    assert losskit.registry.get_spec(name).name in losskit.available()
    module = losskit.build(name, **kwargs)
    assert module.__module__.startswith("losskit.embedding.")
    assert getattr(losskit.embedding, type(module).__name__) is type(module)
    assert_module_matches(module, functional(), *args)
    assert_module_matches(losskit.build({"name": name, **kwargs}), functional(), *args)


def test_torch_triplet_margin_still_buildable():
    module = losskit.build("triplet_margin", margin=0.5)
    assert isinstance(module, torch.nn.TripletMarginLoss)
    a, p, n = rand(4, 3, seed=32), rand(4, 3, seed=33), rand(4, 3, seed=34)
    want = sum(max(float((a[i] - p[i]).norm() - (a[i] - n[i]).norm()) + 0.5, 0.0) for i in range(4)) / 4
    assert math.isclose(float(module(a, p, n)), want, rel_tol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "triplet_batch_hard",
        "triplet_batch_semi_hard",
        "triplet_batch_all",
        "nt_xent",
        "supcon",
        "pairs",
        "cosine",
        "contrastive",
    ],
)
def test_compile_fullgraph_equals_eager(name):
    fns = {
        "triplet_batch_hard": (lambda e, lab: LF.triplet_loss(e, lab, 0.2, "batch_hard"), (E1, LAB)),
        "triplet_batch_semi_hard": (
            lambda e, lab: LF.triplet_loss(e, lab, 0.2, "batch_semi_hard", "cosine"),
            (E1, LAB),
        ),
        "triplet_batch_all": (
            lambda e, lab: LF.triplet_loss(e, lab, 0.2, "batch_all", chunk_size=3),
            (E1, LAB),
        ),
        "nt_xent": (lambda a, b: LF.nt_xent_loss(a, b, 0.5), (E1, E2)),
        "supcon": (lambda e, lab: LF.supcon_loss(e, lab, 0.1), (E1, LAB)),
        "pairs": (lambda e, lab: LF.contrastive_pairs_loss(e, lab), (E1, LAB)),
        "cosine": (lambda a, b, y: LF.cosine_embedding_loss(a, b, y, 0.1), (E1, E2, Y_PM)),
        "contrastive": (lambda a, b, y: LF.contrastive_loss(a, b, y), (E1, E2, Y_01)),
    }
    fn, args = fns[name]
    assert_compiles(fn, *args)


# ============================================================================ gather_distributed without a process group


def test_gather_distributed_flag_is_a_no_op_without_process_group():
    assert not torch.distributed.is_initialized()
    views = torch.stack([E1, E2], dim=1)
    pairs = [
        (lambda **k: LF.nt_xent_loss(E1, E2, 0.3, **k)),
        (lambda **k: LF.nt_xent_loss(E1, E2, 0.3, reduction="sum", **k)),
        (lambda **k: LF.supcon_loss(views, LAB, 0.3, **k)),
        (lambda **k: LF.supcon_loss(views, None, 0.3, reduction="sum", **k)),
        (lambda **k: LF.contrastive_pairs_loss(E1, LAB, **k)),
        *[(lambda m=m, **k: LF.triplet_loss(E1, LAB, 0.2, m, **k)) for m in MININGS],
    ]
    for fn in pairs:
        torch.testing.assert_close(fn(gather_distributed=True), fn())
    for cls, args in (
        (losskit.NTXentLoss, (E1, E2)),
        (losskit.SupConLoss, (E1, LAB)),
        (losskit.TripletLoss, (E1, LAB)),
        (losskit.ContrastivePairsLoss, (E1, LAB)),
    ):
        module = cls(gather_distributed=True)
        assert module.gather_distributed
        torch.testing.assert_close(module(*args), cls()(*args))


def test_supcon_empty_batch_none_reduction_keeps_its_shape():
    e = torch.randn(0, 2, 3, requires_grad=True)
    out = LF.supcon_loss(e, torch.zeros(0, dtype=torch.long), reduction="none")
    assert out.shape == (0,)
    assert_connected_zero(LF.supcon_loss(e, torch.zeros(0, dtype=torch.long)), e)


# ============================================================================ angular margin (ArcFace / CosFace)


def ref_angular(emb, weight, labels, scale, margin, kind, reduction="mean"):
    out = []
    for i in range(emb.shape[0]):
        x = emb[i] / emb[i].norm()
        cos = [(x * (w / w.norm())).sum() for w in weight]
        y = int(labels[i])
        if kind == "cosface":
            target = cos[y] - margin
        else:
            theta = torch.acos(cos[y])
            if float(theta.detach()) + margin <= math.pi:
                target = torch.cos(theta + margin)
            else:
                target = cos[y] - margin * math.sin(margin)
        logits = [scale * (target if j == y else c) for j, c in enumerate(cos)]
        out.append(-(logits[y] - torch.log(sum(torch.exp(v) for v in logits))))
    return ref_reduce(out, reduction)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_angular_margin_matches_loop_reference(kind, reduction):
    emb, w, lab = rand(9, 4, seed=40), rand(5, 4, seed=41), rand_labels(9, 5, 7)
    for scale, margin in ((8.0, 0.5), (30.0, 0.2), (4.0, 1.4)):
        if kind == "cosface" and margin > 1:
            continue
        assert_matches_reference(
            lambda x, c, s=scale, m=margin: LF.angular_margin_loss(
                x, c, lab, s, m, kind, reduction=reduction
            ),
            lambda x, c, s=scale, m=margin: ref_angular(x, c, lab, s, m, kind, reduction),
            [emb, w],
            wrt=(0, 1),
        )


def test_angular_margin_arcface_fallback_beyond_pi_minus_m():
    # target centre opposite to the embedding: theta = pi, theta + m > pi -> cos(theta) - m sin(m)
    emb, w = torch.tensor([[1.0, 0.0]], dtype=DT), torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=DT)
    got = LF.angular_margin_loss(emb, w, torch.tensor([0]), 1.0, 0.5, reduction="none")
    target = -1.0 - 0.5 * math.sin(0.5)
    want = -(target - math.log(math.exp(target) + math.exp(0.0)))
    assert math.isclose(float(got), want, rel_tol=1e-12)


def test_angular_margin_properties_and_gradcheck():
    emb, w, lab = rand(6, 3, seed=42), rand(4, 3, seed=43), rand_labels(6, 4, 8)
    # margin 0: both kinds are the normalised-softmax cross-entropy
    plain = F.cross_entropy(8.0 * F.normalize(emb) @ F.normalize(w).T, lab)
    for kind in ("arcface", "cosface"):
        torch.testing.assert_close(LF.angular_margin_loss(emb, w, lab, 8.0, 0.0, kind), plain)
        # a larger margin makes the target harder: the loss grows
        losses = [float(LF.angular_margin_loss(emb, w, lab, 8.0, m, kind)) for m in (0.0, 0.2, 0.4)]
        assert losses[0] < losses[1] < losses[2]
        # invariant to the scale of embeddings and centres
        torch.testing.assert_close(
            LF.angular_margin_loss(3 * emb, 0.5 * w, lab, 8.0, 0.3, kind),
            LF.angular_margin_loss(emb, w, lab, 8.0, 0.3, kind),
        )
        assert_gradcheck(
            lambda x, c, k=kind: LF.angular_margin_loss(x, c, lab, 4.0, 0.3, k), [emb, w], wrt=(0, 1)
        )


def test_angular_margin_edge_cases():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # embedding exactly on its centre (cos = 1, sin = 0): finite gradients
    e = torch.tensor([[2.0, 0.0]], requires_grad=True)
    assert_finite_with_grads(LF.angular_margin_loss(e, w, torch.tensor([0])), e)
    e0 = torch.randn(0, 2, requires_grad=True)
    assert_connected_zero(LF.angular_margin_loss(e0, w, torch.zeros(0, dtype=torch.long)), e0)
    for dtype in (torch.float16, torch.bfloat16):
        x = extreme_logits((6, 2), dtype).requires_grad_(True)
        value = LF.angular_margin_loss(x, w, torch.tensor([0, 1] * 3))
        assert value.dtype == torch.float32
        assert_finite_with_grads(value, x)


def test_angular_margin_modules():
    torch.manual_seed(0)
    emb, lab = rand(6, 8, seed=44, dtype=torch.float32), rand_labels(6, 4, 9)
    for cls, kind, margin in ((losskit.ArcFaceLoss, "arcface", 0.5), (losskit.CosFaceLoss, "cosface", 0.35)):
        module = cls(embedding_dim=8, num_classes=4)
        assert module.kind == kind and module.margin == margin and module.scale == 64.0
        assert module.weight.shape == (4, 8) and module.weight.requires_grad
        want = LF.angular_margin_loss(emb, module.weight, lab, 64.0, margin, kind)
        assert_module_matches(module, want, emb, lab)
        assert "weight" in module.state_dict()
        module(emb, lab).backward()
        assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
        assert_compiles(lambda x, y, m=module: m(x, y), emb, lab)
    generic = losskit.AngularMarginLoss(8, 4, scale=10.0, margin=0.2, kind="cosface", reduction="sum")
    want = LF.angular_margin_loss(emb, generic.weight, lab, 10.0, 0.2, "cosface", reduction="sum")
    assert_module_matches(generic, want, emb, lab)


def test_angular_margin_bad_inputs():
    e, w, lab = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3])
    cases = [
        (
            lambda: LF.angular_margin_loss(e, w, torch.tensor([0, 1, 2, 5])),
            LossValueError,
            r"labels contains class index 5, expected values in \[0, 5\)",
        ),
        (
            lambda: LF.angular_margin_loss(e, w, torch.tensor([0, -1, 2, 3])),
            LossValueError,
            "labels contains class index -1",
        ),
        (
            lambda: LF.angular_margin_loss(e, w[:, :2], lab),
            LossValueError,
            r"weight has shape \(5, 2\), expected \(C, 3\)",
        ),
        (
            lambda: LF.angular_margin_loss(e, w, lab[:3]),
            LossValueError,
            r"labels has shape \(3,\), expected \(4,\)",
        ),
        (
            lambda: LF.angular_margin_loss(e, w, lab.float()),
            LossTypeError,
            "labels must be an integer tensor",
        ),
        (lambda: LF.angular_margin_loss(e, w, lab, scale=0.0), LossValueError, "scale must be > 0.0"),
        (lambda: LF.angular_margin_loss(e, w, lab, margin=2.0), LossValueError, "margin must be <= 1.57"),
        (
            lambda: LF.angular_margin_loss(e, w, lab, margin=-0.1, kind="cosface"),
            LossValueError,
            "margin must be >= 0.0",
        ),
        (
            lambda: LF.angular_margin_loss(e, w, lab, kind="sphereface"),
            LossValueError,
            "kind must be one of 'arcface', 'cosface', got 'sphereface'",
        ),
        (
            lambda: LF.angular_margin_loss(e, w, lab, reduction="avg"),
            LossValueError,
            "reduction must be one of",
        ),
        (lambda: losskit.ArcFaceLoss(0, 4), LossValueError, "embedding_dim must be >= 1, got 0"),
        (lambda: losskit.CosFaceLoss(8, 4, scale=-1.0), LossValueError, "scale must be > 0.0"),
    ]
    for call, err, msg in cases:
        with pytest.raises(err, match=msg):
            call()


# ============================================================================ gather_distributed with an empty rank

DDP_LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _ddp_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return rand(8, 4, seed=50), rand(8, 4, seed=51)


DDP_LOSSES = {
    "triplet_batch_hard": lambda e, y, z, **k: LF.triplet_loss(e, y, 0.2, "batch_hard", **k),
    "triplet_batch_all": lambda e, y, z, **k: LF.triplet_loss(e, y, 0.2, "batch_all", **k),
    "triplet_batch_semi_hard": lambda e, y, z, **k: LF.triplet_loss(e, y, 0.2, "batch_semi_hard", **k),
    "supcon": lambda e, y, z, **k: LF.supcon_loss(torch.stack([e, z], 1), y, 0.3, **k),
    "nt_xent": lambda e, y, z, **k: LF.nt_xent_loss(e, z, 0.3, **k),
    "contrastive_pairs": lambda e, y, z, **k: LF.contrastive_pairs_loss(e, y, **k),
}


def _ddp_empty_rank_worker(rank: int, world: int) -> dict[str, torch.Tensor]:
    emb, z2 = _ddp_inputs()
    rows = slice(0, 8) if rank == 0 else slice(0, 0)  # rank 1 holds no sample
    grads = {}
    for name, fn in DDP_LOSSES.items():
        e = emb[rows].clone().requires_grad_(True)
        fn(e, DDP_LABELS[rows], z2[rows], gather_distributed=True).backward()
        grads[name] = e.grad
    return grads


def test_gather_distributed_with_an_empty_rank_matches_one_process():
    # every rank must take part in the gathers (forward and backward) even without samples
    from ddp_utils import run_distributed

    results = run_distributed(_ddp_empty_rank_worker)
    emb, z2 = _ddp_inputs()
    for name, fn in DDP_LOSSES.items():
        x = emb.clone().requires_grad_(True)
        fn(x, DDP_LABELS, z2).backward()
        assert results[1][name].shape == (0, 4)
        # DDP averages over the 2 ranks: rank 0's gradient / 2 is the one-process gradient
        torch.testing.assert_close(results[0][name] / 2, x.grad)


# ============================================================================ non-finite inputs

NON_FINITE_LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 0, 3])  # class 3: a sample without a positive
ONE, TWO, ANGULAR = (0,), (0, 1), (0, 2)  # which of (x1 (8, 3), x2 (8, 3), centres (4, 3)) a loss reads


def _every_embedding_loss() -> dict[str, tuple[tuple[int, ...], object]]:
    """name -> (inputs read, fn(x1, x2, centres, labels)) for every loss and option of the module."""
    fns: dict[str, tuple[tuple[int, ...], object]] = {}
    for m in MININGS:
        for dist in DISTANCES:
            for soft in (False, True):
                for norm in (False, True):
                    fns[f"triplet-{m}-{dist}-soft{int(soft)}-norm{int(norm)}"] = (
                        ONE,
                        lambda a, b, w, y, m=m, d=dist, s=soft, n=norm: LF.triplet_loss(
                            a, y, 0.2, m, d, s, n
                        ),
                    )
    for dist in DISTANCES:
        for average in ("nonzero", "all"):
            for norm in (False, True):
                fns[f"contrastive_pairs-{dist}-{average}-norm{int(norm)}"] = (
                    ONE,
                    lambda a, b, w, y, d=dist, av=average, n=norm: LF.contrastive_pairs_loss(
                        a, y, 0.0, 1.0, d, average=av, normalize_embeddings=n
                    ),
                )
    for dist in ("euclidean", "cosine"):
        fns[f"contrastive-{dist}"] = (
            TWO,
            lambda a, b, w, y, d=dist: LF.contrastive_loss(a, b, y % 2, 1.0, d),
        )
    fns["cosine_embedding"] = (TWO, lambda a, b, w, y: LF.cosine_embedding_loss(a, b, 1 - 2 * (y % 2), 0.1))
    fns["nt_xent"] = (TWO, lambda a, b, w, y: LF.nt_xent_loss(a, b, 0.5))
    fns["supcon"] = (ONE, lambda a, b, w, y: LF.supcon_loss(a, y, 0.5))
    fns["supcon-views"] = (TWO, lambda a, b, w, y: LF.supcon_loss(torch.stack([a, b], 1), y, 0.5))
    fns["supcon-instances"] = (TWO, lambda a, b, w, y: LF.supcon_loss(torch.stack([a, b], 1), None, 0.5))
    for kind in ("arcface", "cosface"):
        fns[kind] = (ANGULAR, lambda a, b, w, y, k=kind: LF.angular_margin_loss(a, w, y, 8.0, 0.3, k))
    return fns


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("name", list(_every_embedding_loss()))
def test_non_finite_input_gives_non_finite_loss(name, kind):
    """A NaN or inf in any element of any floating input: the loss is not finite (never hidden)."""
    reads, fn = _every_embedding_loss()[name]
    inputs = [rand(8, 3, seed=60), rand(8, 3, seed=61), rand(4, 3, seed=62)]
    bad = {"nan": math.nan, "inf": math.inf}[kind]
    finite = []
    for i in reads:
        for k in range(inputs[i].numel()):
            call = [t.clone() for t in inputs]
            call[i].view(-1)[k] = bad
            value = fn(*call, NON_FINITE_LABELS)
            if bool(torch.isfinite(value).all()):
                finite.append((i, k, float(value)))
    assert not finite, f"finite loss for (input, element, value): {finite[:5]}"


@pytest.mark.parametrize("mining", MININGS)
def test_nan_embedding_gives_nan_value_and_gradient(mining):
    # the reported case: the value was exactly the margin while the gradient was NaN
    e = torch.zeros(4, 2)
    e[0, 0] = math.nan
    e.requires_grad_(True)
    value = LF.triplet_loss(e, torch.tensor([0, 0, 1, 1]), 0.2, mining)
    value.backward()
    assert math.isnan(float(value.detach())) and bool(e.grad.isnan().any())
    x = torch.zeros(4, 2)
    x[1, 1] = math.nan
    assert math.isnan(float(LF.contrastive_pairs_loss(x, torch.tensor([0, 0, 1, 1]))))


# ============================================================================ memory layouts, identical rows


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``x`` (B, D) as equal tensors in other memory layouts, differentiable w.r.t. ``x``."""
    b, d = x.shape
    return {
        "contiguous": x,
        "transposed": x.T.contiguous().T,
        "column_sliced": torch.stack([x, torch.zeros_like(x)], -1).reshape(b, 2 * d)[:, ::2],
        "row_sliced": torch.cat([torch.zeros_like(x[:1]), x])[1:],
    }


def _distance_losses() -> dict[str, object]:
    """name -> fn(x, labels) for every loss of the module that reads distances or similarities."""
    fns: dict[str, object] = {}
    for m in MININGS:
        for dist in DISTANCES:
            for soft in (False, True):
                fns[f"triplet-{m}-{dist}-soft{int(soft)}"] = lambda x, y, m=m, d=dist, s=soft: (
                    LF.triplet_loss(x, y, 0.2, m, d, s)
                )
    for dist in DISTANCES:
        fns[f"contrastive_pairs-{dist}"] = lambda x, y, d=dist: LF.contrastive_pairs_loss(x, y, 0.0, 1.0, d)
    for dist in ("euclidean", "cosine"):
        fns[f"contrastive-{dist}"] = lambda x, y, d=dist: LF.contrastive_loss(x, x.flip(0), y % 2, 1.0, d)
    fns["cosine_embedding"] = lambda x, y: LF.cosine_embedding_loss(x, x.flip(0), 1 - 2 * (y % 2))
    fns["nt_xent"] = lambda x, y: LF.nt_xent_loss(x, x.flip(0), 0.5)
    fns["supcon"] = lambda x, y: LF.supcon_loss(x, y, 0.5)
    fns["arcface"] = lambda x, y: LF.angular_margin_loss(x, x[:3].flip(0), y % 3, 8.0, 0.3)
    return fns


@pytest.mark.parametrize("name", list(_distance_losses()))
def test_value_and_gradient_do_not_depend_on_memory_layout(name):
    # 1000-d rows, each twice: the Gram form of the distances cancels on the duplicates
    fn = _distance_losses()[name]
    base = rand(6, 1000, seed=70, dtype=torch.float32)
    x = torch.cat([base, base]).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    want = fn(x, labels)
    (want_grad,) = torch.autograd.grad(want, x)
    for layout, view in _layouts(x).items():
        value = fn(view, labels)
        (grad,) = torch.autograd.grad(value, x)
        torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7, msg=f"{layout}: value")
        torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-7, msg=f"{layout}: gradient")
        assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_rows_are_at_distance_exactly_zero(distance, scale, dtype):
    row = rand(1, 1000, seed=71, dtype=dtype) * scale
    other = rand(2, 1000, seed=72, dtype=dtype) * scale
    x = torch.cat([row.expand(6, 1000), other])
    views = {**_layouts(x), "expanded": torch.cat([row.expand(6, 1000), other])}
    for layout, view in views.items():
        d = E._distance_matrix(view, view, distance)
        assert bool((d[:6, :6] == 0).all()), f"{layout}: {d[:6, :6].abs().max().item()}"
        assert bool((d[:6, 6:] > 0).all()) and bool((d[6, 7] > 0).all())
        assert bool((E._paired_distance(view, view.clone(), distance) == 0).all()), layout
        # the other entries keep their value: a float64 reference from the differences
        ref = torch.stack([torch.stack([ref_dist(a, c, distance) for c in x.double()]) for a in x.double()])
        torch.testing.assert_close(d.double(), ref, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "column_sliced", "row_sliced", "expanded"])
@pytest.mark.parametrize("seed", range(4))
def test_identical_embeddings_give_the_exact_hinge_values(layout, seed):
    # six identical 1000-d embeddings: every distance is 0, so every active term is its margin
    row = rand(1, 1000, seed=73 + seed, dtype=torch.float32)
    x = row.expand(6, 1000) if layout == "expanded" else _layouts(row.expand(6, 1000).contiguous())[layout]
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for distance in DISTANCES:
        # positives at d = 0 add nothing, each negative pair costs neg_margin - 0 = 1
        torch.testing.assert_close(
            LF.contrastive_pairs_loss(x, labels, distance=distance), torch.tensor(1.0), rtol=0, atol=0
        )
        for mining in MININGS:
            torch.testing.assert_close(
                LF.triplet_loss(x, labels, 0.2, mining, distance), torch.tensor(0.2), rtol=0, atol=0
            )
            torch.testing.assert_close(
                LF.triplet_loss(x, labels, 0.2, mining, distance, soft_margin=True),
                torch.tensor(math.log(2.0)),
                rtol=0,
                atol=0,
            )


# ============================================================================ devices (meta included), complex dtypes


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _calls_on(make) -> dict[str, object]:
    """name -> zero-argument call of every loss of the module, inputs made by ``make(shape, dtype)``."""
    emb, x2 = make((4, 3), torch.float32), make((4, 3), torch.float32)
    lab = make((4,), torch.long)
    return {
        "cosine_embedding": lambda: LF.cosine_embedding_loss(emb, x2, make((4,), torch.long)),
        "cosine_embedding_weight": lambda: LF.cosine_embedding_loss(
            emb, x2, make((4,), torch.long), weight=make((4,), torch.float32)
        ),
        "contrastive": lambda: LF.contrastive_loss(emb, x2, make((4,), torch.float32)),
        "contrastive_weight": lambda: LF.contrastive_loss(
            emb, x2, make((4,), torch.float32), weight=make((4,), torch.float32)
        ),
        "contrastive_pairs": lambda: LF.contrastive_pairs_loss(emb, lab),
        **{
            f"triplet_{m}_{soft}": lambda m=m, soft=soft: LF.triplet_loss(emb, lab, 0.2, m, soft_margin=soft)
            for m in MININGS
            for soft in (False, True)
        },
        "nt_xent": lambda: LF.nt_xent_loss(emb, x2),
        "supcon": lambda: LF.supcon_loss(emb, lab),
        "supcon_views": lambda: LF.supcon_loss(make((4, 2, 3), torch.float32), None),
        "arcface": lambda: LF.angular_margin_loss(emb, make((2, 3), torch.float32), lab),
    }


@pytest.mark.parametrize("name", list(_calls_on(lambda shape, dtype: _meta(*shape, dtype=dtype))))
def test_meta_inputs_skip_value_checks(name):
    # meta tensors have shapes but no values: the value checks are skipped, shape checks still run
    out = _calls_on(lambda shape, dtype: _meta(*shape, dtype=dtype))[name]()
    assert out.device.type == "meta" and out.dim() == 0


def test_inputs_on_another_device_name_the_argument():
    e, lab, t = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.tensor([1, -1, 1, -1])
    m = _meta(4, 3)
    cases = [
        (lambda: LF.cosine_embedding_loss(e, m, t), r"input2 is on meta, expected cpu like input1"),
        (
            lambda: LF.cosine_embedding_loss(e, e, t.to("meta")),
            r"target is on meta, expected cpu like input1",
        ),
        (
            lambda: LF.cosine_embedding_loss(e, e, t, weight=_meta(4)),
            r"weight is on meta, expected cpu like input1",
        ),
        (lambda: LF.contrastive_loss(m, e, t.abs()), r"x2 is on cpu, expected meta like x1"),
        (
            lambda: LF.contrastive_loss(e, e, t.abs(), weight=_meta(4)),
            r"weight is on meta, expected cpu like x1",
        ),
        (
            lambda: LF.contrastive_pairs_loss(e, lab.to("meta")),
            r"labels is on meta, expected cpu like embeddings",
        ),
        (lambda: LF.triplet_loss(m, lab), r"labels is on cpu, expected meta like embeddings"),
        (lambda: LF.nt_xent_loss(e, m), r"z2 is on meta, expected cpu like z1"),
        (lambda: LF.supcon_loss(m, lab), r"labels is on cpu, expected meta like embeddings"),
        (
            lambda: LF.angular_margin_loss(e, _meta(2, 3), lab % 2),
            r"weight is on meta, expected cpu like embeddings",
        ),
        (
            lambda: losskit.ArcFaceLoss(3, 2).to("meta")(e, lab % 2),
            r"weight is on meta, expected cpu like embeddings",
        ),
    ]
    for call, msg in cases:
        with pytest.raises(LossValueError, match=msg):
            call()


def test_complex_inputs_name_the_argument():
    e, lab, t = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.tensor([1, -1, 1, -1])
    c = torch.randn(4, 3, dtype=torch.complex64)
    floating = "must be a floating-point tensor, got dtype torch.complex64"
    cases = [
        (lambda: LF.cosine_embedding_loss(c, e, t), "input1 " + floating),
        (lambda: LF.cosine_embedding_loss(e, c, t), "input2 " + floating),
        (
            lambda: LF.cosine_embedding_loss(e, e, t.to(torch.complex64)),
            r"target must be a real \(integer, bool or floating-point\) tensor, got dtype torch.complex64",
        ),
        (
            lambda: LF.contrastive_loss(e, e, t.abs().to(torch.complex64)),
            r"target must be a real \(integer, bool or floating-point\) tensor, got dtype torch.complex64",
        ),
        (lambda: LF.contrastive_loss(e, e, t.abs(), weight=c[:, 0]), "weight " + floating),
        (lambda: LF.contrastive_pairs_loss(c, lab), "embeddings " + floating),
        (lambda: LF.triplet_loss(c, lab), "embeddings " + floating),
        (lambda: LF.triplet_loss(e, lab.to(torch.complex64)), "labels must be an integer tensor"),
        (lambda: LF.nt_xent_loss(e, c), "z2 " + floating),
        (lambda: LF.supcon_loss(c, lab), "embeddings " + floating),
        (lambda: LF.angular_margin_loss(e, c[:2], lab % 2), "weight " + floating),
    ]
    for call, msg in cases:
        with pytest.raises(LossTypeError, match=msg):
            call()
