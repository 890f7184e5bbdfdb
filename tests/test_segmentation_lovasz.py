"""Lovász hinge and Lovász-Softmax: definition-of-done tests against the paper's set-function definition."""

from __future__ import annotations

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
)
from losskit import LossTypeError, LossValueError

# ---------------------------------------------------------------- float64 reference from the paper


def jaccard_set_loss(mistakes: set[int], truth: set[int]) -> float:
    """Delta_J(M) = |M| / |G u M| (Berman et al. 2018, eq. 3); 0 for M empty."""
    union = truth | mistakes
    return len(mistakes) / len(union) if union else 0.0


def lovasz_extension(errors: list[torch.Tensor], truth: set[int]) -> torch.Tensor:
    """sum_i m_pi(i) (Delta({pi_1..pi_i}) - Delta({pi_1..pi_(i-1)})), errors sorted in decreasing order."""
    order = sorted(range(len(errors)), key=lambda i: -float(errors[i].detach()))
    total = torch.zeros((), dtype=torch.float64)
    prefix: set[int] = set()
    previous = 0.0
    for i in order:
        prefix.add(i)
        current = jaccard_set_loss(prefix, truth)
        total = total + errors[i] * (current - previous)
        previous = current
    return total


def _pixel_sets(n: int, per_image: bool, size: int) -> list[list[tuple[int, int]]]:
    """(image, pixel) pairs of each Jaccard set."""
    every = [[(b, i) for i in range(size)] for b in range(n)]
    return every if per_image else [[pair for image in every for pair in image]]


def ref_hinge(x, target, per_image=True, ignore_index=None, reduction="mean"):
    n = x.shape[0]
    flat_x = x.reshape(n, -1)
    flat_t = target.reshape(n, -1)
    losses = []
    for pixels in _pixel_sets(n, per_image, flat_x.shape[1]):
        kept = [(b, i) for b, i in pixels if ignore_index is None or int(flat_t[b, i]) != ignore_index]
        errors = []
        truth = set()
        for k, (b, i) in enumerate(kept):
            sign = 1.0 if int(flat_t[b, i]) == 1 else -1.0
            errors.append(torch.clamp(1.0 - flat_x[b, i, None].squeeze() * sign, min=0.0))
            if sign > 0:
                truth.add(k)
        losses.append(lovasz_extension(errors, truth))
    out = torch.stack(losses) if per_image else losses[0]
    return {"none": out, "sum": out.sum(), "mean": out.mean()}[reduction]


def ref_softmax(
    x, target, classes="present", per_image=False, ignore_index=None, from_logits=True, reduction="mean"
):
    n, c = x.shape[:2]
    p = torch.softmax(x.double(), 1) if from_logits else x.double()
    flat_p = p.reshape(n, c, -1)
    flat_t = target.reshape(n, -1)
    losses = []
    for pixels in _pixel_sets(n, per_image, flat_p.shape[2]):
        kept = [(b, i) for b, i in pixels if ignore_index is None or int(flat_t[b, i]) != ignore_index]
        per_class = []
        for k in range(c) if not isinstance(classes, (list, tuple)) else classes:
            truth = {j for j, (b, i) in enumerate(kept) if int(flat_t[b, i]) == k}
            if classes == "present" and not truth:
                continue
            errors = [(float(int(flat_t[b, i]) == k) - flat_p[b, k, i]).abs() for b, i in kept]
            per_class.append(lovasz_extension(errors, truth))
        losses.append(torch.stack(per_class).mean() if per_class else torch.zeros((), dtype=torch.float64))
    out = torch.stack(losses) if per_image else losses[0]
    return {"none": out, "sum": out.sum(), "mean": out.mean()}[reduction]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary(n=3, shape=(4, 5), seed=0, dtype=torch.float32):
    x = (torch.randn(n, 1, *shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)
    t = torch.randint(0, 2, (n, *shape), generator=_gen(seed + 1))
    return x, t


def _multi(n=2, c=4, shape=(3, 5), seed=0, dtype=torch.float32):
    x = (torch.randn(n, c, *shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)
    t = torch.randint(0, c - 1, (n, *shape), generator=_gen(seed + 1))  # class c - 1 absent
    return x, t


# ---------------------------------------------------------------- 1. reference values and gradients


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ignore", [False, True])
def test_hinge_matches_reference(per_image, reduction, ignore):
    x, t = _binary(seed=3)
    kw = {"per_image": per_image, "reduction": reduction}
    if ignore:
        t[0, 1, :3] = 255
        t[2, 0, 0] = 255
        kw["ignore_index"] = 255
    assert_matches_reference(lambda a: LF.lovasz_hinge_loss(a, t, **kw), lambda a: ref_hinge(a, t, **kw), [x])


@pytest.mark.parametrize("classes", ["present", "all", [0, 3], (2,)])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_matches_reference(classes, per_image, reduction):
    x, t = _multi(seed=5)
    kw = {"classes": classes, "per_image": per_image, "reduction": reduction}
    assert_matches_reference(
        lambda a: LF.lovasz_softmax_loss(a, t, **kw), lambda a: ref_softmax(a, t, **kw), [x]
    )


def test_softmax_ignore_index_and_probabilities_match_reference():
    x, t = _multi(seed=7, shape=(4, 4))
    t[0, :2] = -1
    kw = {"ignore_index": -1, "per_image": True}
    assert_matches_reference(
        lambda a: LF.lovasz_softmax_loss(a, t, **kw), lambda a: ref_softmax(a, t, **kw), [x]
    )
    p = torch.softmax(x.double(), 1)
    t = t.clamp(min=0)
    kw = {"from_logits": False, "classes": "all"}
    assert_matches_reference(
        lambda a: LF.lovasz_softmax_loss(a, t, **kw), lambda a: ref_softmax(a, t, **kw), [p]
    )


def test_three_d_inputs_match_reference():
    x, t = _binary(n=2, shape=(2, 3, 3), seed=9)
    assert_matches_reference(lambda a: LF.lovasz_hinge_loss(a, t), lambda a: ref_hinge(a, t), [x])
    x, t = _multi(n=2, c=3, shape=(2, 2, 3), seed=10)
    assert_matches_reference(lambda a: LF.lovasz_softmax_loss(a, t), lambda a: ref_softmax(a, t), [x])


def test_dense_binary_target_equals_class_indices():
    x, t = _binary(seed=11)
    torch.testing.assert_close(LF.lovasz_hinge_loss(x, t.unsqueeze(1).float()), LF.lovasz_hinge_loss(x, t))


# ---------------------------------------------------------------- 2. gradcheck


def test_gradcheck():
    x, t = _binary(n=2, shape=(3, 3), seed=12, dtype=torch.float64)
    assert_gradcheck(lambda a: LF.lovasz_hinge_loss(a, t, per_image=False), [x])
    x, t = _multi(n=2, c=3, shape=(3, 3), seed=13, dtype=torch.float64)
    assert_gradcheck(lambda a: LF.lovasz_softmax_loss(a, t, per_image=True, classes="all"), [x])


# ---------------------------------------------------------------- 3. properties


def test_hard_predictions_give_one_minus_iou():
    """On 0/1 errors the Lovász extension equals the set function: 1 - IoU of each class."""
    t = torch.randint(0, 3, (1, 6, 6), generator=_gen(14))
    pred = torch.randint(0, 3, (1, 6, 6), generator=_gen(15))
    probs = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).double()
    expected = []
    for k in range(3):
        inter = ((pred == k) & (t == k)).sum().item()
        union = ((pred == k) | (t == k)).sum().item()
        if (t == k).any():
            expected.append(1 - inter / union)
    value = LF.lovasz_softmax_loss(probs, t, from_logits=False)
    assert abs(float(value) - sum(expected) / len(expected)) < 1e-12


def test_perfect_predictions_give_zero_and_loss_is_non_negative():
    x, t = _binary(seed=16, dtype=torch.float64)
    perfect = 3.0 * (2.0 * t.unsqueeze(1).double() - 1.0)  # margins >= 1
    assert float(LF.lovasz_hinge_loss(perfect, t)) == 0.0
    onehot = torch.nn.functional.one_hot(t, 2).permute(0, 3, 1, 2).double()
    assert float(LF.lovasz_softmax_loss(onehot, t, from_logits=False)) == 0.0
    for seed in range(5):
        x, t = _multi(seed=20 + seed)
        assert float(LF.lovasz_softmax_loss(x, t)) >= 0.0
        assert float(LF.lovasz_hinge_loss(x[:, :1], t.clamp(max=1))) >= 0.0


def test_pooled_batch_differs_from_mean_of_images():
    x, t = _binary(seed=17)
    pooled = LF.lovasz_hinge_loss(x, t, per_image=False)
    per_image = LF.lovasz_hinge_loss(x, t, per_image=True)
    assert pooled.dim() == 0 and LF.lovasz_hinge_loss(x, t, per_image=False, reduction="none").dim() == 0
    assert abs(float(pooled) - float(per_image)) > 1e-4


# ---------------------------------------------------------------- 4. degenerate inputs, empty masks


def test_empty_target_false_positive_costs_with_gradient():
    x = torch.full((1, 1, 4, 4), -3.0)
    x[0, 0, 1, 2] = 0.5  # one false positive
    x.requires_grad_(True)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    loss = LF.lovasz_hinge_loss(x, t)
    assert float(loss.detach()) == pytest.approx(1.5)  # max relu(1 + x)
    (g,) = torch.autograd.grad(loss, x)
    assert g[0, 0, 1, 2] > 0 and torch.count_nonzero(g) == 1
    assert float(LF.lovasz_hinge_loss(torch.full((1, 1, 4, 4), -3.0), t)) == 0.0
    # softmax: the pixels of the present class predicted as an absent one cost through the present class
    p = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]], requires_grad=True)  # class 1 absent from the target
    loss = LF.lovasz_softmax_loss(p, torch.zeros(1, 1, 2, dtype=torch.long), from_logits=False)
    assert float(loss) > 0
    assert torch.autograd.grad(loss, p)[0].abs().sum() > 0


@pytest.mark.parametrize("per_image", [True, False])
def test_all_ignored_and_empty_inputs_give_connected_zero(per_image):
    x = torch.randn(2, 1, 3, 3, requires_grad=True)
    t = torch.full((2, 3, 3), 7)
    assert_connected_zero(LF.lovasz_hinge_loss(x, t, per_image=per_image, ignore_index=7), x)
    xm = torch.randn(2, 3, 3, 3, requires_grad=True)
    assert_connected_zero(LF.lovasz_softmax_loss(xm, t, per_image=per_image, ignore_index=7), xm)
    empty = torch.randn(2, 3, 0, 3, requires_grad=True)
    assert_connected_zero(LF.lovasz_softmax_loss(empty, torch.zeros(2, 0, 3, dtype=torch.long)), empty)


def test_all_ignored_image_counts_as_zero_in_the_mean():
    x, t = _binary(n=2, seed=18)
    t[1] = 5
    both = LF.lovasz_hinge_loss(x, t, ignore_index=5)
    first = LF.lovasz_hinge_loss(x[:1], t[:1], ignore_index=5)
    torch.testing.assert_close(both, first / 2)


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_extreme_logits_finite(dtype):
    x = extreme_logits((2, 3, 6, 6), dtype).requires_grad_(True)
    t = torch.randint(0, 3, (2, 6, 6), generator=_gen(19))
    loss = LF.lovasz_softmax_loss(x, t)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)
    xb = extreme_logits((2, 1, 6, 6), dtype, seed=1).requires_grad_(True)
    loss = LF.lovasz_hinge_loss(xb, t.clamp(max=1))
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, xb)


# ---------------------------------------------------------------- 6. bad input


def test_errors_name_the_argument():
    x, t = _multi()
    with pytest.raises(LossValueError, match="classes must be 'present', 'all' or a list"):
        LF.lovasz_softmax_loss(x, t, classes="some")
    with pytest.raises(LossValueError, match=r"classes contains 4, expected class indices in \[0, 4\)"):
        LF.lovasz_softmax_loss(x, t, classes=[1, 4])
    with pytest.raises(
        LossTypeError, match="classes must be 'present', 'all' or a list of class indices, got float"
    ):
        losskit.LovaszSoftmaxLoss(classes=1.5)
    with pytest.raises(LossValueError, match="classes must name at least one class"):
        losskit.LovaszSoftmaxLoss(classes=[])
    with pytest.raises(
        LossValueError, match=r"target has shape \(2, 4, 3, 5\), expected class indices of shape"
    ):
        LF.lovasz_softmax_loss(x, torch.rand_like(x))
    with pytest.raises(LossValueError, match=r"target contains class index 4, expected values in \[0, 4\)"):
        LF.lovasz_softmax_loss(x, torch.full_like(t, 4))
    with pytest.raises(LossValueError, match=r"mode='binary' expects input with one channel"):
        LF.lovasz_hinge_loss(x, t)
    with pytest.raises(LossValueError, match=r"target contains class index 2, expected values in \[0, 2\)"):
        LF.lovasz_hinge_loss(x[:, :1], t)
    with pytest.raises(LossValueError, match="target must be a 0/1 mask"):
        LF.lovasz_hinge_loss(x[:, :1], torch.full_like(x[:, :1], 0.5))
    with pytest.raises(LossValueError, match="input must hold probabilities in"):
        LF.lovasz_softmax_loss(x, t, from_logits=False)
    with pytest.raises(LossTypeError, match="ignore_index must be an int"):
        losskit.LovaszHingeLoss(ignore_index=1.0)
    with pytest.raises(
        LossValueError,
        match=r"input must be \(N, C, d1, ...\) with at least one spatial dimension, got shape \(3, 1\)",
    ):
        LF.lovasz_hinge_loss(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- 7. module, round trips, compile


@pytest.mark.parametrize(
    ("module", "fn", "kw", "make"),
    [
        (losskit.LovaszHingeLoss, LF.lovasz_hinge_loss, {"per_image": False, "ignore_index": 9}, _binary),
        (losskit.LovaszSoftmaxLoss, LF.lovasz_softmax_loss, {"classes": [0, 2], "per_image": True}, _multi),
        (losskit.LovaszSoftmaxLoss, LF.lovasz_softmax_loss, {}, _multi),
    ],
)
def test_module_functional_roundtrip_compile(module, fn, kw, make):
    x, t = make(seed=21)
    m = module(**kw)
    assert_module_matches(m, fn(x, t, **kw), x, t)
    assert_compiles(lambda a, b: m(a, b), x, t)
    assert (
        losskit.build(
            m.__class__.__name__.replace("Loss", "")
            .lower()
            .replace("lovaszsoftmax", "lovasz_softmax")
            .replace("lovaszhinge", "lovasz_hinge"),
            **kw,
        ).extra_repr()
        == m.extra_repr()
    )
