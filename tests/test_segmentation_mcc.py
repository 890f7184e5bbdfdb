"""Matthews correlation loss: definition-of-done tests against the plain float64 loops of ref_segmentation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
import ref_segmentation as R
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

RNC = ["none", "mean", "sum"]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def binary(n=3, hw=(5, 4), seed=0):
    x = torch.randn(n, 1, *hw, generator=_g(seed), dtype=torch.float64) * 2
    return x, torch.randint(0, 2, (n, *hw), generator=_g(seed + 1))


def multilabel(n=3, c=3, hw=(5, 4), seed=0, soft=False):
    x = torch.randn(n, c, *hw, generator=_g(seed), dtype=torch.float64) * 2
    t = (torch.rand(n, c, *hw, generator=_g(seed + 1), dtype=torch.float64) > 0.6).double()
    if soft:
        t = t * 0.7 + 0.1 * torch.rand(n, c, *hw, generator=_g(seed + 2), dtype=torch.float64)
    return x, t


# ---------------------------------------------------------------- 1. reference


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize(
    "case",
    ["binary_index", "binary_dense", "multilabel", "multilabel_soft", "ignore", "mask", "weight", "nobg"],
)
def test_mcc_matches_reference(case, batch, reduction):
    mode, lib, ref = "binary", {}, {}
    if case == "binary_index":
        x, t = binary(seed=1)
    elif case == "binary_dense":
        x, t = binary(seed=2)
        t = t.unsqueeze(1).double()
    elif case in ("multilabel", "multilabel_soft", "weight", "nobg"):
        mode = "multilabel"
        x, t = multilabel(seed=3, soft=case == "multilabel_soft")
        if case == "weight":
            lib = ref = {"weight": torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)}
        if case == "nobg":
            lib = ref = {"include_background": False}
    elif case == "ignore":
        x, t = binary(seed=4)
        t = torch.where(torch.rand(t.shape, generator=_g(5)) < 0.3, torch.full_like(t, 7), t)
        lib = ref = {"ignore_index": 7}
    else:
        x, t = binary(seed=6)
        lib = ref = {"mask": torch.rand(t.shape, generator=_g(6)) < 0.6}
    assert_matches_reference(
        lambda a: LF.mcc_loss(a, t, mode, batch_dice=batch, reduction=reduction, **lib),
        lambda a: R.mcc(a, t, mode, batch=batch, reduction=reduction, **ref),
        (x,),
    )


def test_mcc_of_hard_masks_is_pearson_correlation():
    """For 0/1 predictions MCC is the phi coefficient: the Pearson correlation of the two masks."""
    g = torch.Generator().manual_seed(7)
    p = (torch.rand(4, 1, 9, 7, generator=g) > 0.5).double()
    t = (torch.rand(4, 9, 7, generator=g) > 0.4).long()
    loss = LF.mcc_loss(p, t, from_logits=False, reduction="none")[:, 0]
    for i in range(4):
        corr = torch.corrcoef(torch.stack([p[i, 0].flatten(), t[i].double().flatten()]))[0, 1]
        torch.testing.assert_close(loss[i], 1 - corr)


def test_mcc_known_values():
    probs = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    assert float(LF.mcc_loss(probs, torch.tensor([[1, 0, 1, 0]]), from_logits=False)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(LF.mcc_loss(probs, torch.tensor([[0, 1, 0, 1]]), from_logits=False)) == pytest.approx(2.0)
    assert float(LF.mcc_loss(probs, torch.tensor([[1, 1, 0, 0]]), from_logits=False)) == pytest.approx(1.0)


# ---------------------------------------------------------------- empty-mask rule


def test_empty_target_false_positive_has_loss_and_gradient():
    x = torch.full((1, 1, 4, 4), -20.0, dtype=torch.float64)
    x[0, 0, 1, 1] = 3.0
    x.requires_grad_(True)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    loss = LF.mcc_loss(x, t)
    fp = float(torch.sigmoid(x.detach()).sum())
    assert float(loss.detach()) == pytest.approx(fp / (fp + 1.0))
    (g,) = torch.autograd.grad(loss, x)
    assert float(g[0, 0, 1, 1]) > 0
    # nothing predicted on an empty target: ~0
    assert float(LF.mcc_loss(torch.full((1, 1, 4, 4), -40.0), t)) < 1e-12
    # the plain formula (empty_smooth=None) is the constant 1 there
    assert float(LF.mcc_loss(x.detach(), t, empty_smooth=None)) == pytest.approx(1.0)


def test_full_target_missed_mass_has_loss_and_gradient():
    x = torch.full((1, 1, 3, 3), 20.0, dtype=torch.float64)
    x[0, 0, 0, 0] = -2.0
    x.requires_grad_(True)
    t = torch.ones(1, 3, 3, dtype=torch.long)
    loss = LF.mcc_loss(x, t)
    fn = float((1 - torch.sigmoid(x.detach())).sum())
    assert float(loss.detach()) == pytest.approx(fn / (fn + 1.0))
    (g,) = torch.autograd.grad(loss, x)
    assert float(g[0, 0, 0, 0]) < 0


# ---------------------------------------------------------------- 2. gradcheck, 3. properties


def test_mcc_gradcheck():
    x, t = binary(n=2, hw=(3, 3), seed=8)
    assert_gradcheck(lambda a: LF.mcc_loss(a, t, reduction="none"), (x,))
    x2, t2 = multilabel(n=2, c=2, hw=(3, 3), seed=9, soft=True)
    assert_gradcheck(lambda a: LF.mcc_loss(a, t2, "multilabel", batch_dice=True), (x2,))
    # an empty target entry (the FP / (FP + s) branch)
    assert_gradcheck(lambda a: LF.mcc_loss(a, torch.zeros_like(t), reduction="none"), (x,))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.booleans())
def test_mcc_properties(seed, batch):
    x, t = binary(n=2, seed=seed)
    none = LF.mcc_loss(x, t, batch_dice=batch, reduction="none")
    assert bool((none >= -1e-9).all() and (none <= 2 + 1e-9).all())
    torch.testing.assert_close(LF.mcc_loss(x, t, batch_dice=batch, reduction="sum"), none.sum())
    torch.testing.assert_close(LF.mcc_loss(x, t, batch_dice=batch), none.mean())
    # swapping foreground and background (logit -> -logit, label -> 1 - label) leaves MCC unchanged
    torch.testing.assert_close(LF.mcc_loss(-x, 1 - t, batch_dice=batch, reduction="none"), none)


# ---------------------------------------------------------------- 4. degenerate input


def test_mcc_degenerate_inputs():
    x = torch.zeros(0, 1, 4, 4, requires_grad=True)
    assert_connected_zero(LF.mcc_loss(x, torch.zeros(0, 4, 4, dtype=torch.long)), x)
    y, t = binary(seed=10)
    y.requires_grad_(True)
    assert_connected_zero(LF.mcc_loss(y, torch.full_like(t, -1), ignore_index=-1), y)
    assert_connected_zero(LF.mcc_loss(y, t, mask=torch.zeros(t.shape, dtype=torch.bool)), y)
    # exactly-zero probabilities on a non-empty target: finite loss and gradient
    p = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert_finite_with_grads(
        LF.mcc_loss(p, torch.ones(1, 4, 4, dtype=torch.long) * (torch.arange(4) < 2), from_logits=False), p
    )


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_mcc_low_precision(mode, dtype):
    c = 1 if mode == "binary" else 3
    x = extreme_logits((2, c, 6, 6), dtype, seed=11).requires_grad_(True)
    t = (torch.rand(2, c, 6, 6, generator=_g(12)) > 0.5).float()
    loss = LF.mcc_loss(x, t, mode)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)


# ---------------------------------------------------------------- 6. errors


def test_mcc_errors():
    x, t = binary(seed=13)
    with pytest.raises(
        LossValueError,
        match=r"mode must be one of 'binary', 'multilabel' for the MCC loss .* got 'multiclass'",
    ):
        LF.mcc_loss(x, t, "multiclass")
    with pytest.raises(LossValueError, match="mode must be one of 'binary', 'multilabel'"):
        losskit.MCCLoss(mode="multiclass")
    with pytest.raises(LossValueError, match=r"mode='binary' expects input with one channel"):
        LF.mcc_loss(torch.randn(3, 2, 5, 4), t)
    with pytest.raises(LossValueError, match=r"target contains class index 2"):
        LF.mcc_loss(x, t + 1)
    with pytest.raises(LossValueError, match=r"mode='multilabel' needs a dense target"):
        LF.mcc_loss(torch.randn(3, 2, 5, 4), t, "multilabel")
    with pytest.raises(LossTypeError, match="input must be a floating-point tensor"):
        LF.mcc_loss(t.unsqueeze(1), t)
    with pytest.raises(LossValueError, match="eps must be > 0.0"):
        losskit.MCCLoss(eps=0.0)
    with pytest.raises(LossValueError, match=r"weight has shape \(2,\), expected \(1,\)"):
        LF.mcc_loss(x, t, weight=torch.ones(2, dtype=torch.float64))
    with pytest.raises(LossValueError, match=r"mask has shape"):
        LF.mcc_loss(x, t, mask=torch.ones(3, 5, dtype=torch.bool))


# ---------------------------------------------------------------- 7. module, serialisation, compile; 8. registry


def test_mcc_module_roundtrip_compile_and_registry():
    x, t = multilabel(seed=14)
    x = x.float()
    w = torch.tensor([1.0, 2.0, 0.5])
    m = losskit.MCCLoss("multilabel", weight=w, batch_dice=True)
    assert "weight" in m.state_dict()
    assert_module_matches(m, LF.mcc_loss(x, t, "multilabel", weight=w, batch_dice=True), x, t)
    mask = torch.rand(3, 5, 4, generator=_g(15)) < 0.5
    torch.testing.assert_close(
        m(x, t, mask=mask), LF.mcc_loss(x, t, "multilabel", weight=w, batch_dice=True, mask=mask)
    )
    assert_compiles(lambda a, b: m(a, b), x, t)
    assert "mcc" in losskit.available()
    assert isinstance(losskit.build("mcc"), losskit.MCCLoss)
