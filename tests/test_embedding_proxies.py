"""Proxy-Anchor (Kim et al. 2020) and sub-centre ArcFace (Deng et al. 2020).

References are plain float64 loops over proxies / classes and samples, from the papers' formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

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
    roundtrip_modules,
)
from losskit import LossTypeError, LossValueError

DT = torch.float64


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt())


def ref_proxy_anchor(emb, labels, proxies, delta=0.1, alpha=32.0):
    """Kim et al. 2020, eq. (4)."""
    n, c = emb.shape[0], proxies.shape[0]
    pos_terms, neg_terms = [], []
    for p in range(c):
        pos = [x for x in range(n) if labels[x] == p]
        neg = [x for x in range(n) if labels[x] != p]
        if pos:
            pos_terms.append(
                torch.log(1 + sum(torch.exp(-alpha * (cos(emb[x], proxies[p]) - delta)) for x in pos))
            )
        neg_terms.append(
            torch.log(1 + sum((torch.exp(alpha * (cos(emb[x], proxies[p]) + delta)) for x in neg), 0.0))
        )
    zero = 0.0 * emb.sum() + 0.0 * proxies.sum()
    return zero + sum(pos_terms, 0.0) / max(len(pos_terms), 1) + sum(neg_terms, 0.0) / c


def ref_sub_center_arcface(emb, labels, weight, s, m, reduction="mean"):
    """Deng et al. 2020: cos_j = max_k cos(x, W_jk), then ArcFace's cos(theta + m) on the target."""
    losses = []
    for i in range(emb.shape[0]):
        cosines = [
            max((cos(emb[i], weight[j, k]) for k in range(weight.shape[1])), key=float)
            for j in range(weight.shape[0])
        ]
        y = int(labels[i])
        theta = torch.acos(cosines[y].clamp(-1, 1))
        target = torch.cos(theta + m) if float(theta) + m <= math.pi else cosines[y] - m * math.sin(m)
        logits = [s * (target if j == y else cosines[j]) for j in range(len(cosines))]
        losses.append(-logits[y] + torch.log(sum(torch.exp(v) for v in logits)))
    stacked = torch.stack(losses)
    return {"none": stacked, "mean": stacked.mean(), "sum": stacked.sum()}[reduction]


# ============================================================================ Proxy-Anchor


@pytest.mark.parametrize(("delta", "alpha"), [(0.1, 32.0), (0.0, 4.0), (0.3, 8.0)])
def test_proxy_anchor_matches_loop_reference(delta, alpha):
    emb, lab = rand(9, 4, seed=1), torch.tensor([0, 1, 1, 3, 3, 3, 0, 1, 3])  # class 2 has no sample
    proxies = rand(4, 4, seed=2)
    assert_matches_reference(
        lambda e, p: LF.proxy_anchor_loss(e, lab, p, delta, alpha),
        lambda e, p: ref_proxy_anchor(e, lab, p, delta, alpha),
        [emb, proxies],
        wrt=(0, 1),
        rtol=1e-9,
        atol=1e-10,
    )


def test_proxy_anchor_gradcheck_and_properties():
    emb, lab, proxies = rand(6, 3, seed=3), torch.tensor([0, 0, 1, 2, 2, 1]), rand(3, 3, seed=4)
    assert_gradcheck(lambda e, p: LF.proxy_anchor_loss(e, lab, p, alpha=4.0), [emb, proxies], (0, 1))
    base = LF.proxy_anchor_loss(emb, lab, proxies)
    assert float(base) >= 0
    # cosine similarities: invariant to the norm of embeddings and proxies
    torch.testing.assert_close(LF.proxy_anchor_loss(emb * 3.0, lab, proxies * 0.2), base)
    # samples at their own proxies score lower than samples at another class's proxy
    eye = torch.eye(3, dtype=DT)
    good = LF.proxy_anchor_loss(eye[lab], lab, eye)
    bad = LF.proxy_anchor_loss(eye[(lab + 1) % 3], lab, eye)
    assert float(good) < float(bad)


def test_proxy_anchor_degenerate_and_low_precision():
    proxies = rand(3, 4, seed=5).requires_grad_(True)
    empty = torch.zeros(0, 4, dtype=DT, requires_grad=True)
    assert_connected_zero(
        LF.proxy_anchor_loss(empty, torch.zeros(0, dtype=torch.long), proxies), empty, proxies
    )
    # one class only: the negative term still counts every proxy, finite gradients
    one = rand(4, 4, seed=6).requires_grad_(True)
    assert_finite_with_grads(
        LF.proxy_anchor_loss(one, torch.zeros(4, dtype=torch.long), proxies), one, proxies
    )
    dup = torch.ones(5, 4, dtype=DT, requires_grad=True)
    assert_finite_with_grads(LF.proxy_anchor_loss(dup, torch.tensor([0, 1, 2, 0, 1]), proxies), dup, proxies)
    for dtype in (torch.float16, torch.bfloat16):
        e = extreme_logits((8, 4), dtype, seed=7).requires_grad_(True)
        p = extreme_logits((3, 4), dtype, seed=8).requires_grad_(True)
        loss = LF.proxy_anchor_loss(e, torch.tensor([0, 1, 2] * 2 + [0, 1]), p)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, e, p)
    for bad in (math.nan, math.inf):
        e = rand(4, 4, seed=9)
        e[2, 1] = bad
        assert not torch.isfinite(LF.proxy_anchor_loss(e, torch.tensor([0, 1, 2, 0]), proxies.detach()))


def test_proxy_anchor_errors():
    emb, lab, proxies = rand(4, 3), torch.tensor([0, 1, 2, 0]), rand(3, 3)
    with pytest.raises(LossValueError, match=r"proxies has shape \(3, 2\), expected \(C, 3\)"):
        LF.proxy_anchor_loss(emb, lab, rand(3, 2))
    with pytest.raises(LossValueError, match="labels"):
        LF.proxy_anchor_loss(emb, torch.tensor([0, 1, 3, 0]), proxies)  # class 3 of 3 proxies
    with pytest.raises(LossTypeError, match="proxies"):
        LF.proxy_anchor_loss(emb, lab, torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(LossValueError, match="alpha"):
        LF.proxy_anchor_loss(emb, lab, proxies, alpha=0.0)
    with pytest.raises(LossValueError, match="margin"):
        losskit.ProxyAnchorLoss(3, 3, margin=-0.1)
    with pytest.raises(LossValueError, match="num_classes"):
        losskit.ProxyAnchorLoss(0, 3)
    with pytest.raises(LossTypeError, match=r"loss 'proxy_anchor': .*num_classes"):
        losskit.build("proxy_anchor")


def test_proxy_anchor_module_owns_proxies_round_trips_and_trains():
    torch.manual_seed(0)
    module = losskit.ProxyAnchorLoss(num_classes=3, embedding_dim=4, margin=0.2, alpha=16.0)
    assert module.proxies.shape == (3, 4) and module.proxies.requires_grad
    emb, lab = rand(6, 4, seed=10, dtype=torch.float32), torch.tensor([0, 1, 2, 0, 1, 2])
    assert_module_matches(module, LF.proxy_anchor_loss(emb, lab, module.proxies, 0.2, 16.0), emb, lab)
    for copy in roundtrip_modules(module):
        torch.testing.assert_close(copy.proxies, module.proxies)
    assert "alpha=16.0" in repr(module)
    # SGD on the proxies alone lowers the loss
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    before = float(module(emb, lab).detach())
    for _ in range(5):
        opt.zero_grad()
        module(emb, lab).backward()
        opt.step()
    assert float(module(emb, lab).detach()) < before
    assert_compiles(lambda e: LF.proxy_anchor_loss(e, lab, module.proxies.detach()), emb)


# ============================================================================ sub-centre ArcFace


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.4])
def test_sub_center_arcface_matches_loop_reference(reduction, margin):
    emb, lab, weight = rand(7, 4, seed=11), torch.tensor([0, 1, 2, 2, 1, 0, 1]), rand(3, 3, 4, seed=12)
    assert_matches_reference(
        lambda e, w: LF.angular_margin_loss(e, w, lab, 8.0, margin, reduction=reduction),
        lambda e, w: ref_sub_center_arcface(e, lab, w, 8.0, margin, reduction),
        [emb, weight],
        wrt=(0, 1),
        rtol=1e-8,
        atol=1e-9,
    )


def test_sub_center_arcface_single_sub_centre_is_arcface_and_cosface_works():
    emb, lab, weight = rand(5, 3, seed=13), torch.tensor([0, 1, 2, 0, 1]), rand(3, 3, seed=14)
    for kind in ("arcface", "cosface"):
        torch.testing.assert_close(
            LF.angular_margin_loss(emb, weight[:, None], lab, kind=kind),
            LF.angular_margin_loss(emb, weight, lab, kind=kind),
        )
    # the closest sub-centre wins: adding far-away sub-centres changes nothing
    far = torch.stack([weight, -weight], dim=1)  # (C, 2, D): -w is farther wherever cos(x, w) > 0
    cos_pos = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).T
    if bool((cos_pos > 0).all()):
        torch.testing.assert_close(
            LF.angular_margin_loss(emb, far, lab), LF.angular_margin_loss(emb, weight, lab)
        )


def test_sub_center_arcface_gradcheck_gradient_reaches_dominant_sub_centre_only():
    emb, lab, weight = rand(4, 3, seed=15), torch.tensor([0, 1, 0, 1]), rand(2, 3, 3, seed=16)
    assert_gradcheck(lambda e, w: LF.angular_margin_loss(e, w, lab, 4.0, 0.3), [emb, weight], (0, 1))
    w = weight.clone().requires_grad_(True)
    LF.angular_margin_loss(emb, w, lab, 4.0, 0.3).backward()
    cosines = (
        torch.nn.functional.normalize(emb, dim=-1)
        @ torch.nn.functional.normalize(weight, dim=-1).reshape(6, 3).T
    )
    dominant = cosines.reshape(4, 2, 3).argmax(dim=2)  # (B, C)
    used = torch.zeros(2, 3, dtype=torch.bool)
    for i in range(4):
        for j in range(2):
            used[j, dominant[i, j]] = True
    assert bool((w.grad.norm(dim=-1)[~used] == 0).all())


def test_sub_center_arcface_module_errors_and_degenerate():
    torch.manual_seed(0)
    module = losskit.SubCenterArcFaceLoss(embedding_dim=4, num_classes=3)
    assert module.weight.shape == (3, 3, 4) and module.sub_centers == 3
    emb, lab = rand(5, 4, seed=17, dtype=torch.float32), torch.tensor([0, 1, 2, 0, 1])
    assert_module_matches(module, LF.angular_margin_loss(emb, module.weight, lab), emb, lab)
    assert "sub_centers=3" in repr(module)
    assert isinstance(
        losskit.build("sub_center_arcface", embedding_dim=4, num_classes=3), losskit.SubCenterArcFaceLoss
    )
    plain = losskit.ArcFaceLoss(embedding_dim=4, num_classes=3)
    assert plain.weight.shape == (3, 4) and "sub_centers" not in repr(plain)
    with pytest.raises(
        LossValueError, match=r"weight has shape \(3, 0, 4\), expected \(C, 4\) or \(C, K, 4\)"
    ):
        LF.angular_margin_loss(emb.double(), rand(3, 0, 4), lab)
    with pytest.raises(LossValueError, match=r"weight has shape \(3, 2, 5\)"):
        LF.angular_margin_loss(emb, rand(3, 2, 5, dtype=torch.float32), lab)
    with pytest.raises(LossValueError, match="sub_centers"):
        losskit.SubCenterArcFaceLoss(4, 3, sub_centers=0)
    empty = torch.zeros(0, 4, requires_grad=True)
    assert_connected_zero(module(empty, torch.zeros(0, dtype=torch.long)), empty)
    for dtype in (torch.float16, torch.bfloat16):
        e = extreme_logits((6, 4), dtype, seed=18).requires_grad_(True)
        loss = LF.angular_margin_loss(e, module.weight.to(dtype), torch.tensor([0, 1, 2] * 2))
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, e)
    assert_compiles(lambda e: LF.angular_margin_loss(e, module.weight.detach(), lab), emb)


# ============================================================================ peer cross-check (optional)


def test_values_equal_pytorch_metric_learning_when_installed():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses

    emb, lab = rand(16, 5, seed=40), torch.arange(16) % 4
    torch.manual_seed(0)
    peer = losses.ProxyAnchorLoss(4, 5, margin=0.1, alpha=32).double()
    torch.testing.assert_close(LF.proxy_anchor_loss(emb, lab, peer.proxies.detach()), peer(emb, lab).detach())
    # PML's sub-centre ArcFace: W is (D, C * K) with each class's K sub-centres adjacent; margin in degrees
    sub = losses.SubCenterArcFaceLoss(
        num_classes=4, embedding_size=5, margin=math.degrees(0.3), scale=16, sub_centers=3
    )
    sub = sub.double()
    weight = sub.W.detach().T.reshape(4, 3, 5)
    torch.testing.assert_close(LF.angular_margin_loss(emb, weight, lab, 16.0, 0.3), sub(emb, lab).detach())
