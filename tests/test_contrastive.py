"""CLIP and SigLIP: the definition of done, single process (DDP runs: test_contrastive_distributed.py).

References are float64 Python loops over image-text pairs, written from the papers' formulas
(Radford et al. 2021, eq. of the pseudo-code; Zhai et al. 2023, eq. 1), independent of the matrix
code under test.
"""

from __future__ import annotations

import copy
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
)
from losskit import LossTypeError, LossValueError
from losskit.bench.measure import held_bytes

DT = torch.float64
LN100 = math.log(100.0)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ============================================================================ float64 loop references


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v * v).sum().sqrt()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def _features(img, txt, normalize):
    if normalize:
        img = torch.stack([_unit(v) for v in img]) if len(img) else img
        txt = torch.stack([_unit(v) for v in txt]) if len(txt) else txt
    return img, txt


def _ref_scale(log_scale, max_scale=100.0):
    s = torch.exp(torch.as_tensor(log_scale, dtype=DT))
    return torch.clamp(s, max=max_scale) if max_scale is not None else s


def ref_clip(img, txt, log_scale, bias=None, *, normalize=True, max_scale=100.0, reduction="mean"):
    """(CE over texts for each image + CE over images for each text) / 2, pair by pair."""
    img, txt = _features(img, txt, normalize)
    s = _ref_scale(log_scale, max_scale)
    b = torch.zeros((), dtype=DT) if bias is None else torch.as_tensor(bias, dtype=DT)
    n = len(img)
    per = []
    for i in range(n):
        row = torch.stack([s * _dot(img[i], txt[j]) + b for j in range(n)])
        col = torch.stack([s * _dot(img[j], txt[i]) + b for j in range(n)])
        ce_img = -row[i] + torch.log(sum(torch.exp(v) for v in row))
        ce_txt = -col[i] + torch.log(sum(torch.exp(v) for v in col))
        per.append(0.5 * (ce_img + ce_txt))
    per = torch.stack(per) if per else torch.zeros(0, dtype=DT)
    return {"none": per, "sum": per.sum(), "mean": per.sum() / max(n, 1)}[reduction]


def ref_siglip(img, txt, log_scale, bias=None, *, normalize=True, max_scale=100.0, reduction="mean"):
    """-1/B sum_ij log sigmoid(z_ij (t x_i . y_j + b)), z = +1 on the diagonal, -1 elsewhere."""
    img, txt = _features(img, txt, normalize)
    t = _ref_scale(log_scale, max_scale)
    b = torch.zeros((), dtype=DT) if bias is None else torch.as_tensor(bias, dtype=DT)
    n = len(img)
    per = []
    for i in range(n):
        total = torch.zeros((), dtype=DT)
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = t * _dot(img[i], txt[j]) + b
            u = z * logit  # log sigmoid(u) = min(u, 0) - log(1 + exp(-|u|)), exact without overflow
            total = total - (torch.clamp(u, max=0.0) - torch.log1p(torch.exp(-u.abs())))
        per.append(total)
    per = torch.stack(per) if per else torch.zeros(0, dtype=DT)
    return {"none": per, "sum": per.sum(), "mean": per.sum() / max(n, 1)}[reduction]


LOSSES = {"clip": (LF.clip_loss, ref_clip), "siglip": (LF.siglip_loss, ref_siglip)}


def _inputs(n=5, d=4, seed=0):
    return rand(n, d, seed=seed) * 2, rand(n, d, seed=seed + 1) * 2


# ============================================================================ 1. reference values and gradients


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", list(LOSSES))
def test_matches_loop_reference(name, reduction, with_bias, normalize):
    fn, ref = LOSSES[name]
    img, txt = _inputs()
    if not normalize:
        img, txt = img * 0.3, txt * 0.3
    log_scale = torch.tensor(math.log(2.5), dtype=DT)
    bias = torch.tensor(-1.5, dtype=DT) if with_bias else None
    args = (img, txt, log_scale, bias) if with_bias else (img, txt, log_scale)
    wrt = (0, 1, 2, 3) if with_bias else (0, 1, 2)

    def call(f):
        return lambda *a: f(*a, normalize=normalize, reduction=reduction)

    assert_matches_reference(call(fn), call(ref), args, wrt, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_chunked_matches_loop_reference(name, chunk, reduction):
    fn, ref = LOSSES[name]
    img, txt = _inputs(n=5)
    args = (img, txt, torch.tensor(math.log(10.0), dtype=DT), torch.tensor(-10.0, dtype=DT))
    assert_matches_reference(
        lambda *a: fn(*a, chunk_size=chunk, reduction=reduction),
        lambda *a: ref(*a, reduction=reduction),
        args,
        (0, 1, 2, 3),
        rtol=1e-9,
        atol=1e-10,
    )


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("name", list(LOSSES))
def test_partial_gradients(name, chunk):
    """Only some inputs need a gradient (frozen text tower, fixed scale): the others get none."""
    fn, ref = LOSSES[name]
    img, txt = _inputs()
    img.requires_grad_(True)
    loss = fn(img, txt, math.log(10.0), -10.0, chunk_size=chunk)
    (g,) = torch.autograd.grad(loss, [img])
    img_ref = img.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref(img_ref, txt, math.log(10.0), -10.0), [img_ref])
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_float32_matches_reference():
    img, txt = _inputs(n=8, d=6)
    for fn, ref in LOSSES.values():
        args = (img.float(), txt.float(), torch.tensor(math.log(10.0)), torch.tensor(-3.0))
        assert_matches_reference(fn, ref, args, (0, 1, 2, 3), rtol=1e-5, atol=1e-5)
    args = (img.float(), txt.float(), torch.tensor(math.log(10.0)), torch.tensor(-3.0))
    for fn, ref in LOSSES.values():
        assert_matches_reference(lambda *a, fn=fn: fn(*a, chunk_size=3), ref, args, (0, 1, 2, 3))


def test_scale_is_capped_at_100_with_no_gradient_above():
    img, txt = _inputs()
    for fn, ref in LOSSES.values():
        ls = torch.tensor(6.0, dtype=DT, requires_grad=True)  # exp(6) = 403 > 100
        loss = fn(img, txt, ls)
        torch.testing.assert_close(loss, ref(img, txt, LN100))
        (g,) = torch.autograd.grad(loss, [ls])
        assert float(g) == 0.0
        # max_scale=None: no cap
        torch.testing.assert_close(fn(img, txt, 6.0, max_scale=None), ref(img, txt, 6.0, max_scale=None))
        torch.testing.assert_close(fn(img, txt, 6.0, max_scale=50.0), ref(img, txt, 6.0, max_scale=50.0))


@pytest.mark.parametrize("chunk", [None, 2])
def test_gradcheck(chunk):
    img, txt = _inputs(n=4, d=3)
    ls, b = torch.tensor(0.7, dtype=DT), torch.tensor(-0.5, dtype=DT)
    assert_gradcheck(lambda *a: LF.siglip_loss(*a, chunk_size=chunk), (img, txt, ls, b), (0, 1, 2, 3))
    assert_gradcheck(
        lambda *a: LF.siglip_loss(*a, chunk_size=chunk, reduction="none"), (img, txt, ls, b), (0, 1, 2, 3)
    )
    assert_gradcheck(lambda *a: LF.clip_loss(*a, chunk_size=chunk), (img, txt, ls, b), (0, 1, 2, 3))
    assert_gradcheck(
        lambda *a: LF.clip_loss(*a, chunk_size=chunk, reduction="none"), (img, txt, ls), (0, 1, 2)
    )


# ============================================================================ 3. properties


def test_clip_is_symmetric_and_bias_cancels():
    img, txt = _inputs()
    torch.testing.assert_close(LF.clip_loss(img, txt, 1.0), LF.clip_loss(txt, img, 1.0))
    b = torch.tensor(3.0, dtype=DT, requires_grad=True)
    loss = LF.clip_loss(img, txt, 1.0, b)
    torch.testing.assert_close(loss, LF.clip_loss(img, txt, 1.0))
    (g,) = torch.autograd.grad(loss, [b])
    assert abs(float(g)) < 1e-12


def test_prenormalised_features_give_the_same_gradients():
    """normalize=True on features the caller normalised already: same value and gradients."""
    img, txt = _inputs()
    txt = txt / txt.norm(dim=1, keepdim=True)
    for fn in (LF.clip_loss, LF.siglip_loss):
        raw = img.clone().requires_grad_(True)
        once = fn(raw / raw.norm(dim=1, keepdim=True), txt, 1.0, normalize=False)
        (g_once,) = torch.autograd.grad(once, [raw])
        raw2 = img.clone().requires_grad_(True)
        twice = fn(raw2 / raw2.norm(dim=1, keepdim=True), txt, 1.0)
        (g_twice,) = torch.autograd.grad(twice, [raw2])
        torch.testing.assert_close(once, twice)
        torch.testing.assert_close(g_once, g_twice)


def test_reductions_and_non_negativity():
    img, txt = _inputs(n=7)
    for fn in (LF.clip_loss, LF.siglip_loss):
        none = fn(img, txt, 1.3, -0.5, reduction="none")
        assert none.shape == (7,) and bool((none >= 0).all())
        torch.testing.assert_close(fn(img, txt, 1.3, -0.5, reduction="sum"), none.sum())
        torch.testing.assert_close(fn(img, txt, 1.3, -0.5), none.sum() / 7)


def test_siglip_chunks_do_not_change_the_result():
    img, txt = _inputs(n=9, d=5)
    plain = LF.siglip_loss(img, txt, 2.0, -4.0, reduction="none")
    for chunk in (1, 2, 4, 8, 9, 100):
        torch.testing.assert_close(
            LF.siglip_loss(img, txt, 2.0, -4.0, chunk_size=chunk, reduction="none"), plain
        )


def test_clip_perfect_alignment_at_high_scale_is_near_zero():
    eye = torch.eye(4, dtype=DT)
    assert float(LF.clip_loss(eye, eye, LN100)) < 1e-30 + 4 * math.exp(-100) * 3
    # SigLIP with a large scale and a bias between 0 and t: every pair on the right side
    assert float(LF.siglip_loss(eye, eye, LN100, -50.0, chunk_size=2)) < 1e-18


def test_siglip_extreme_logits_stay_finite_and_exact():
    """|t x.y + b| up to 100 + 1e3: softplus of signed logits, no log(sigmoid) underflow."""
    img, txt = _inputs()
    for chunk in (None, 2):
        for bias in (-1e3, 1e3):
            leaf = img.float().requires_grad_(True)
            loss = LF.siglip_loss(leaf, txt.float(), LN100, bias, chunk_size=chunk)
            assert_finite_with_grads(loss, leaf)
            torch.testing.assert_close(loss.double(), ref_siglip(img, txt, LN100, bias), rtol=1e-6, atol=1e-3)
        # CLIP at the capped scale: a stable log-sum-exp in both paths
        leaf = (img.float() * 1e3).requires_grad_(True)
        assert_finite_with_grads(LF.clip_loss(leaf, txt.float(), LN100, chunk_size=chunk), leaf)


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("name", list(LOSSES))
def test_half_inputs_are_computed_in_float32(name, chunk):
    fn, _ = LOSSES[name]
    img, txt = _inputs(n=6)
    for dtype in (torch.float16, torch.bfloat16):
        a, b = img.to(dtype).requires_grad_(True), txt.to(dtype).requires_grad_(True)
        loss = fn(a, b, math.log(10.0), -10.0, chunk_size=chunk)
        assert loss.dtype == torch.float32
        ref = fn(a.detach().float(), b.detach().float(), math.log(10.0), -10.0)
        torch.testing.assert_close(loss, ref)
        ga, gb = torch.autograd.grad(loss, [a, b])
        assert ga.dtype == dtype and torch.isfinite(ga).all() and torch.isfinite(gb).all()


# ============================================================================ memory: chunked SigLIP holds no (B, B) block


@pytest.mark.parametrize("name", list(LOSSES))
def test_chunked_holds_no_pairwise_block(name):
    fn, _ = LOSSES[name]
    b, d = 1024, 16
    img, txt = rand(b, d, seed=3, dtype=torch.float32), rand(b, d, seed=4, dtype=torch.float32)
    ls, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    args = (img, txt, ls, bias)
    plain = held_bytes(lambda *a: fn(*a), args, (0, 1, 2, 3))
    chunked = held_bytes(lambda *a: fn(*a, chunk_size=32), args, (0, 1, 2, 3))
    block = b * b * 4
    assert plain >= block  # the plain path keeps (B, B) tensors for backward (signed logits, softmax)
    assert chunked < block / 16  # the normalised features, their norms, CLIP's log-normalisers
    assert chunked <= 4 * b * d * 4 + 8 * b * 4 + 64


# ============================================================================ 4. degenerate inputs


@pytest.mark.parametrize("chunk", [None, 2])
def test_empty_batch_is_a_connected_zero(chunk):
    for fn in (
        lambda *a, **k: LF.clip_loss(*a, chunk_size=chunk, **k),
        lambda *a, **k: LF.siglip_loss(*a, chunk_size=chunk, **k),
    ):
        img = torch.zeros(0, 4, dtype=DT, requires_grad=True)
        txt = torch.zeros(0, 4, dtype=DT, requires_grad=True)
        ls = torch.tensor(1.0, dtype=DT, requires_grad=True)
        assert_connected_zero(fn(img, txt, ls), img, txt, ls)
        assert_connected_zero(fn(img, txt, ls, reduction="sum"), img, txt, ls)
        assert fn(img, txt, ls, reduction="none").shape == (0,)


def test_single_pair():
    img, txt = _inputs(n=1)
    assert float(LF.clip_loss(img, txt, 2.0)) == 0.0  # one candidate: CE of a single class
    assert float(LF.clip_loss(img, txt, 2.0, chunk_size=1)) == 0.0
    torch.testing.assert_close(
        LF.siglip_loss(img, txt, 2.0, -1.0, chunk_size=1), ref_siglip(img, txt, 2.0, -1.0)
    )


def test_zero_features_are_finite():
    img = torch.zeros(3, 4, dtype=DT, requires_grad=True)
    for fn in (LF.clip_loss, LF.siglip_loss):
        assert_finite_with_grads(fn(img, img, 1.0), img)


def test_non_finite_scale_or_bias_gives_non_finite_loss():
    img, txt = _inputs()
    nan, inf = torch.tensor(math.nan, dtype=DT), torch.tensor(math.inf, dtype=DT)
    for fn in (LF.clip_loss, LF.siglip_loss):
        assert not torch.isfinite(fn(img, txt, nan))
        assert not torch.isfinite(fn(img, txt, inf))  # not silently capped at 100
        with pytest.raises(LossValueError, match="logit_scale must not be NaN"):  # a Python number is checked
            fn(img, txt, math.nan)
    assert not torch.isfinite(LF.siglip_loss(img, txt, 1.0, nan, chunk_size=2))
    assert not torch.isfinite(LF.siglip_loss(img, txt, inf, chunk_size=2))


# ============================================================================ 6. bad input


def test_bad_inputs_raise_clear_errors():
    img, txt = _inputs()
    for fn in (LF.clip_loss, LF.siglip_loss):
        with pytest.raises(LossValueError, match=r"text_features has shape \(4, 4\), expected \(5, 4\)"):
            fn(img, txt[:4], 1.0)
        with pytest.raises(LossValueError, match=r"image_features must be \(B, D\), got shape \(5,\)"):
            fn(img[:, 0], txt[:, 0], 1.0)
        with pytest.raises(LossTypeError, match="text_features must be a floating-point tensor"):
            fn(img, txt.long(), 1.0)
        with pytest.raises(
            LossValueError, match=r"logit_scale must be a scalar \(one element\), got shape \(2,\)"
        ):
            fn(img, txt, torch.ones(2, dtype=DT))
        with pytest.raises(LossTypeError, match="logit_bias must be a number, got str"):
            fn(img, txt, 1.0, "b")
        with pytest.raises(LossValueError, match="max_scale must be > 0.0, got 0"):
            fn(img, txt, 1.0, max_scale=0)
        with pytest.raises(LossValueError, match="reduction must be one of"):
            fn(img, txt, 1.0, reduction="avg")
    for fn in (LF.clip_loss, LF.siglip_loss):
        with pytest.raises(LossValueError, match="chunk_size must be >= 1, got 0"):
            fn(img, txt, 1.0, chunk_size=0)
    with pytest.raises(LossTypeError, match="chunk_size must be an int, got float"):
        losskit.SigLIPLoss(chunk_size=2.0)
    with pytest.raises(LossTypeError, match="init_logit_scale must be a number"):
        losskit.CLIPLoss(init_logit_scale="x")
    with pytest.raises(LossValueError, match=r"logit_scale is on meta, expected cpu"):
        LF.clip_loss(img, txt, torch.tensor(1.0, device="meta"))


# ============================================================================ 7. modules


def test_modules_own_their_parameters():
    clip, sig = losskit.CLIPLoss(), losskit.SigLIPLoss()
    assert dict(clip.named_parameters()).keys() == {"logit_scale"}
    assert dict(sig.named_parameters()).keys() == {"logit_scale", "logit_bias"}
    torch.testing.assert_close(clip.logit_scale.detach(), torch.tensor(math.log(1 / 0.07)))
    torch.testing.assert_close(sig.logit_scale.detach(), torch.tensor(math.log(10.0)))
    torch.testing.assert_close(sig.logit_bias.detach(), torch.tensor(-10.0))
    assert "logit_bias" in losskit.CLIPLoss(init_logit_bias=-2.0).state_dict()
    img, txt = _inputs()
    img, txt = img.float(), txt.float()
    for module, fn in ((clip, LF.clip_loss), (sig, LF.siglip_loss)):
        value = fn(img, txt, module.logit_scale.detach(), module.logit_bias)
        assert_module_matches(module, value, img, txt)
        module(img, txt).backward()
        assert module.logit_scale.grad is not None and module.logit_scale.grad != 0


def test_module_options_reach_the_functional():
    img, txt = _inputs()
    m = losskit.SigLIPLoss(0.5, 1.0, max_scale=None, normalize=False, chunk_size=2, reduction="sum").double()
    torch.testing.assert_close(
        m(img, txt), ref_siglip(img, txt, 0.5, 1.0, normalize=False, max_scale=None, reduction="sum")
    )
    m = losskit.CLIPLoss(0.5, reduction="none").double()
    torch.testing.assert_close(m(img, txt), ref_clip(img, txt, 0.5, reduction="none"))
    m = losskit.CLIPLoss(0.5, -1.0, chunk_size=2, reduction="sum").double()
    torch.testing.assert_close(m(img, txt), ref_clip(img, txt, 0.5, -1.0, reduction="sum"))
    assert "chunk_size=None" in repr(losskit.CLIPLoss())
    assert "chunk_size=2" in repr(losskit.SigLIPLoss(chunk_size=2))
    assert copy.deepcopy(losskit.SigLIPLoss(chunk_size=3)).chunk_size == 3


def test_sgd_step_moves_the_scale_and_bias():
    torch.manual_seed(0)
    m = losskit.SigLIPLoss(chunk_size=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    img, txt = _inputs(n=8)
    before = [p.detach().clone() for p in m.parameters()]
    m(img.float(), txt.float()).backward()
    opt.step()
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, m.parameters()))


def test_compile_fullgraph_equals_eager():
    img, txt = _inputs()
    img, txt = img.float(), txt.float()
    for fn in (LF.clip_loss, LF.siglip_loss):
        assert_compiles(lambda a, b, fn=fn: fn(a, b, torch.tensor(1.5), torch.tensor(-2.0)), img, txt)
    for fn in (LF.clip_loss, LF.siglip_loss):
        assert_compiles(lambda a, b, fn=fn: fn(a, b, torch.tensor(1.5), -2.0, chunk_size=2), img, txt)


def test_registered_and_buildable():
    assert {"clip", "siglip"} <= set(losskit.available())
    assert isinstance(losskit.build("siglip", chunk_size=8), losskit.SigLIPLoss)
    assert isinstance(losskit.build({"name": "clip", "init_logit_bias": -1.0}), losskit.CLIPLoss)
