"""Distance transform, boundary loss and Hausdorff DT loss: exactness against SciPy and float64 loops."""

from __future__ import annotations

import itertools
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
)
from losskit import LossTypeError, LossValueError
from losskit.segmentation import distance_transform, signed_distance_map

ndimage = pytest.importorskip("scipy.ndimage")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- float64 references with loops


def brute_distance(mask: torch.Tensor, spacing=None) -> torch.Tensor:
    """Distance of every non-zero element to the nearest zero one, by trying every zero (inf if none)."""
    spacing = spacing or (1.0,) * mask.dim()
    out = torch.zeros(mask.shape, dtype=torch.float64)
    zeros = [idx for idx in itertools.product(*map(range, mask.shape)) if not mask[idx]]
    for idx in itertools.product(*map(range, mask.shape)):
        if mask[idx]:
            best = math.inf
            for z in zeros:
                best = min(best, math.sqrt(sum(((a - b) * h) ** 2 for a, b, h in zip(idx, z, spacing))))
            out[idx] = best
    return out


def ref_signed(mask: torch.Tensor) -> torch.Tensor:
    """Kervadec's one_hot2dist for one class: d(., G) outside, -(d(., not G) - 1) inside; capped at the diagonal."""
    diagonal = math.sqrt(sum(n * n for n in mask.shape))
    fg = mask.bool()
    outside = brute_distance(~fg).clamp(max=diagonal)
    inside = brute_distance(fg).clamp(max=diagonal)
    return torch.where(fg, -(inside - 1), outside)


def ref_field(mask: torch.Tensor) -> torch.Tensor:
    diagonal = math.sqrt(sum(n * n for n in mask.shape))
    fg = mask.bool()
    return brute_distance(fg).clamp(max=diagonal) + brute_distance(~fg).clamp(max=diagonal)


def ref_probs(x, mode):
    return torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)


def ref_onehot(x, t, mode):
    if t.dim() == x.dim():
        return t.double()
    if mode == "binary":
        return (t == 1).double().unsqueeze(1)
    return torch.stack([(t == k).double() for k in range(x.shape[1])], 1)


def _reduce(per_entry: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": per_entry, "sum": per_entry.sum(), "mean": per_entry.mean()}[reduction]


def ref_boundary(x, t, mode="multiclass", include_background=True, ignore_index=None, reduction="mean"):
    p = ref_probs(x, mode)
    valid = torch.ones(t.shape, dtype=torch.bool) if ignore_index is None else t != ignore_index
    tt = torch.where(valid, t, -1) if t.dim() < x.dim() else t
    g = ref_onehot(x, tt, mode)
    first = 0 if include_background else 1
    rows = []
    for n in range(x.shape[0]):
        row = []
        for c in range(first, x.shape[1]):
            phi = ref_signed(g[n, c])
            w = valid[n].double()
            row.append((p[n, c] * phi * w).sum() / max(float(w.sum()), 1.0))
        rows.append(torch.stack(row))
    return _reduce(torch.stack(rows), reduction)


def ref_hausdorff(x, t, mode="multiclass", alpha=2.0, reduction="mean", log=False):
    p = ref_probs(x, mode)
    g = ref_onehot(x, t, mode)
    rows = []
    for n in range(x.shape[0]):
        row = []
        for c in range(x.shape[1]):
            dg = ref_field(g[n, c])
            dp = ref_field(p[n, c].detach() > 0.5)
            row.append(((p[n, c] - g[n, c]) ** 2 * (dp**alpha + dg**alpha)).mean())
        rows.append(torch.stack(row))
    out = _reduce(torch.stack(rows), reduction)
    return torch.log1p(out) if log else out


# ---------------------------------------------------------------- distance transform: exact


@pytest.mark.parametrize("shape", [(9, 11), (1, 17), (16, 3), (5, 6, 7), (3, 1, 8)])
@pytest.mark.parametrize("density", [0.03, 0.4, 0.9])
def test_distance_transform_equals_scipy(shape, density):
    for seed in range(3):
        mask = torch.rand(shape, generator=_gen(seed)) > density
        mask.view(-1)[seed] = False  # at least one zero
        ours = distance_transform(mask).double()
        torch.testing.assert_close(
            ours, torch.from_numpy(ndimage.distance_transform_edt(mask.numpy())), rtol=1e-6, atol=1e-5
        )


@pytest.mark.parametrize("spacing", [(2.0, 0.5), (0.3, 1.7, 1.0)])
def test_distance_transform_with_spacing_equals_scipy(spacing):
    shape = (13, 9) if len(spacing) == 2 else (6, 7, 5)
    mask = torch.rand(shape, generator=_gen(1)) > 0.2
    mask.view(-1)[0] = False
    ours = distance_transform(mask, spacing=spacing).double()
    ref = ndimage.distance_transform_edt(mask.numpy(), sampling=spacing)
    torch.testing.assert_close(ours, torch.from_numpy(ref), rtol=1e-6, atol=1e-5)


def test_distance_transform_small_object_far_field_equals_scipy_and_loops():
    """Distances up to the far corner (the early stop must not cut the envelope short)."""
    mask = torch.ones(40, 33, dtype=torch.bool)
    mask[2, 3] = False
    torch.testing.assert_close(
        distance_transform(mask).double(), torch.from_numpy(ndimage.distance_transform_edt(mask.numpy()))
    )
    small = torch.rand(5, 6, generator=_gen(2)) > 0.7
    small[0, 0] = False
    torch.testing.assert_close(distance_transform(small).double(), brute_distance(small))


def test_distance_transform_batches_images_and_marks_images_without_zero():
    masks = torch.rand(3, 2, 8, 7, generator=_gen(3)) > 0.3
    masks[1, 0] = True  # no zero: inf everywhere
    out = distance_transform(masks, spatial_dims=2)
    assert out.shape == masks.shape and out.dtype == torch.float32
    assert torch.isinf(out[1, 0]).all()
    for n, c in [(0, 0), (0, 1), (1, 1), (2, 0)]:
        ref = ndimage.distance_transform_edt(masks[n, c].numpy())
        torch.testing.assert_close(out[n, c].double(), torch.from_numpy(ref), rtol=1e-6, atol=1e-5)
    assert distance_transform(torch.zeros(0, 4, dtype=torch.bool), 1).shape == (0, 4)


def test_distance_transform_runs_on_meta_and_float64():
    mask = torch.rand(4, 5, generator=_gen(4)) > 0.5
    mask[0, 0] = False
    assert distance_transform(mask.to("meta")).is_meta
    assert distance_transform(mask.double()).dtype == torch.float64


def test_signed_distance_map_matches_loops():
    mask = torch.rand(6, 7, generator=_gen(5)) > 0.6
    torch.testing.assert_close(signed_distance_map(mask).double(), ref_signed(mask))
    empty = torch.zeros(4, 5, dtype=torch.bool)
    torch.testing.assert_close(signed_distance_map(empty), torch.full((4, 5), math.sqrt(41.0)))
    torch.testing.assert_close(signed_distance_map(~empty), torch.full((4, 5), 1 - math.sqrt(41.0)))


def test_signed_distance_map_with_spacing_scales_and_stays_negative_inside():
    """An isotropic spacing h scales the map by h; the inside stays <= 0 for h < 1."""
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[2:7, 3:8] = True
    unit = signed_distance_map(mask)
    for h in (0.1, 2.5):
        torch.testing.assert_close(signed_distance_map(mask, spacing=h), unit * h)
        assert bool((signed_distance_map(mask, spacing=h)[mask] <= 0).all())


def test_distance_errors_name_the_argument():
    with pytest.raises(LossValueError, match=r"spatial_dims must be an int in \[1, 2\], got 3"):
        distance_transform(torch.ones(2, 2), spatial_dims=3)
    with pytest.raises(LossValueError, match=r"spacing has 1 entries, expected 2"):
        distance_transform(torch.ones(2, 2), spacing=(1.0,))
    with pytest.raises(LossValueError, match=r"spacing must be > 0.0, got -1"):
        distance_transform(torch.ones(2, 2), spacing=-1)
    with pytest.raises(LossTypeError, match="mask must be a torch.Tensor"):
        distance_transform([[0, 1]])


# ---------------------------------------------------------------- boundary loss


def _multi(n=2, c=3, shape=(5, 6), seed=0, dtype=torch.float64):
    x = (torch.randn(n, c, *shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)
    return x, torch.randint(0, c, (n, *shape), generator=_gen(seed + 1))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("include_background", [True, False])
def test_boundary_matches_reference(reduction, include_background):
    x, t = _multi(seed=6)
    t[1] = 0  # classes 1 and 2 empty in image 1
    kw = {"reduction": reduction, "include_background": include_background}
    assert_matches_reference(lambda a: LF.boundary_loss(a, t, **kw), lambda a: ref_boundary(a, t, **kw), [x])


def test_boundary_binary_multilabel_ignore_and_3d_match_reference():
    x, t = _multi(c=1, seed=7)
    t = t.clamp(max=1)
    t[0, 0, 0] = t[0, 0, 1] = 1
    f = lambda a: LF.boundary_loss(a, t, mode="binary")  # noqa: E731
    assert_matches_reference(f, lambda a: ref_boundary(a, t, mode="binary"), [x])
    xm = torch.randn(2, 2, 4, 5, generator=_gen(8), dtype=torch.float64)
    tm = (torch.rand(2, 2, 4, 5, generator=_gen(9)) > 0.5).double()
    f = lambda a: LF.boundary_loss(a, tm, mode="multilabel")  # noqa: E731
    assert_matches_reference(f, lambda a: ref_boundary(a, tm, mode="multilabel"), [xm])
    x, t = _multi(seed=10)
    t[0, :2] = 9
    f = lambda a: LF.boundary_loss(a, t, ignore_index=9)  # noqa: E731
    assert_matches_reference(f, lambda a: ref_boundary(a, t, ignore_index=9), [x])
    x3, t3 = _multi(c=2, shape=(3, 4, 3), seed=11)
    assert_matches_reference(lambda a: LF.boundary_loss(a, t3), lambda a: ref_boundary(a, t3), [x3])


def test_boundary_precomputed_maps_equal_computed_maps():
    x, t = _multi(seed=12, dtype=torch.float32)
    onehot = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2)
    maps = signed_distance_map(onehot, spatial_dims=2)
    torch.testing.assert_close(LF.boundary_loss(x, distance_maps=maps), LF.boundary_loss(x, t))
    kw = {"include_background": False, "reduction": "none"}
    torch.testing.assert_close(LF.boundary_loss(x, distance_maps=maps, **kw), LF.boundary_loss(x, t, **kw))
    # with a target and ignore_index, the maps are used and the target gives the ignored positions
    t2 = t.clone()
    t2[0, 0] = -1
    torch.testing.assert_close(
        LF.boundary_loss(x, t2, ignore_index=-1, distance_maps=maps),
        ref_boundary_with_maps(x, maps, t2 != -1),
    )


def ref_boundary_with_maps(x, maps, valid):
    p = torch.softmax(x, 1)
    w = valid.unsqueeze(1).float()
    return ((p * maps * w).sum((2, 3)) / w.sum((2, 3))).mean()


def test_boundary_gradcheck_and_perfect_prediction_is_minimal():
    x, t = _multi(n=1, c=2, shape=(4, 4), seed=13)
    assert_gradcheck(lambda a: LF.boundary_loss(a, t), [x])
    onehot = torch.nn.functional.one_hot(t, 2).permute(0, 3, 1, 2).double()
    best = LF.boundary_loss(onehot, t, from_logits=False)
    for seed in range(5):
        p = torch.softmax(torch.randn(1, 2, 4, 4, generator=_gen(seed), dtype=torch.float64), 1)
        assert float(LF.boundary_loss(p, t, from_logits=False)) >= float(best)


def test_boundary_empty_target_false_positive_costs_with_gradient():
    t = torch.zeros(1, 6, 6, dtype=torch.long)
    x = torch.full((1, 1, 6, 6), -8.0)
    x[0, 0, 2, 2] = 3.0
    x.requires_grad_(True)
    loss = LF.boundary_loss(x, t, mode="binary")
    assert float(loss) > 0 and torch.isfinite(loss)
    assert torch.autograd.grad(loss, x)[0][0, 0, 2, 2] > 0
    quiet = LF.boundary_loss(torch.full((1, 1, 6, 6), -8.0), t, mode="binary")
    assert 0 < float(quiet) < float(loss)


# ---------------------------------------------------------------- Hausdorff DT loss


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("alpha", "log"), [(2.0, False), (1.0, True)])
def test_hausdorff_matches_reference(reduction, alpha, log):
    x, t = _multi(seed=14)
    t[1] = 2  # image 1: classes 0 and 1 empty, class 2 everywhere
    kw = {"reduction": reduction, "alpha": alpha, "log": log}
    assert_matches_reference(
        lambda a: LF.hausdorff_dt_loss(a, t, **kw), lambda a: ref_hausdorff(a, t, **kw), [x]
    )


def test_hausdorff_binary_3d_matches_reference_and_gradcheck():
    x, t = _multi(c=1, shape=(3, 4, 4), seed=15)
    t = t.clamp(max=1)
    f = lambda a: LF.hausdorff_dt_loss(a, t, mode="binary")  # noqa: E731
    assert_matches_reference(f, lambda a: ref_hausdorff(a, t, mode="binary"), [x])
    x, t = _multi(n=1, c=2, shape=(4, 4), seed=16)
    assert_gradcheck(lambda a: LF.hausdorff_dt_loss(a, t, log=True), [x])


def test_hausdorff_perfect_prediction_is_zero_and_empty_masks_cost_false_positives():
    _, t = _multi(seed=17)
    onehot = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).double()
    assert float(LF.hausdorff_dt_loss(onehot, t, from_logits=False)) == 0.0
    empty = torch.zeros(1, 5, 5, dtype=torch.long)
    everywhere = torch.full((1, 1, 5, 5), 4.0, requires_grad=True)  # the whole image predicted
    loss = LF.hausdorff_dt_loss(everywhere, empty, mode="binary")
    assert float(loss) > 0 and torch.isfinite(loss)
    assert torch.autograd.grad(loss, everywhere)[0].abs().sum() > 0
    nothing = torch.full((1, 1, 5, 5), -30.0)
    assert float(LF.hausdorff_dt_loss(nothing, empty, mode="binary")) < 1e-10


# ---------------------------------------------------------------- degenerate inputs, low precision, errors


@pytest.mark.parametrize("fn", [LF.boundary_loss, LF.hausdorff_dt_loss])
def test_all_ignored_and_empty_batch_give_connected_zero(fn):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert_connected_zero(fn(x, torch.full((2, 4, 4), 5), ignore_index=5), x)
    e = torch.randn(0, 3, 4, 4, requires_grad=True)
    assert_connected_zero(fn(e, torch.zeros(0, 4, 4, dtype=torch.long)), e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [LF.boundary_loss, LF.hausdorff_dt_loss])
def test_half_extreme_logits_finite(fn, dtype):
    x = extreme_logits((2, 3, 6, 6), dtype).requires_grad_(True)
    t = torch.randint(0, 3, (2, 6, 6), generator=_gen(18))
    t[1] = 0
    loss = fn(x, t)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)


def test_errors_name_the_argument():
    x, t = _multi(dtype=torch.float32)
    with pytest.raises(LossValueError, match="boundary_loss needs a target or precomputed distance_maps"):
        LF.boundary_loss(x)
    with pytest.raises(LossValueError, match=r"distance_maps has shape \(2, 3, 5\), expected \(2, 3, 5, 6\)"):
        LF.boundary_loss(x, distance_maps=x[..., 0])
    with pytest.raises(LossTypeError, match="distance_maps must be a floating-point tensor"):
        LF.boundary_loss(x, distance_maps=t.unsqueeze(1).expand_as(x))
    with pytest.raises(LossValueError, match="alpha must be > 0.0, got 0"):
        LF.hausdorff_dt_loss(x, t, alpha=0)
    with pytest.raises(LossValueError, match="alpha must be > 0.0"):
        losskit.HausdorffDTLoss(alpha=-1.0)
    with pytest.raises(LossValueError, match=r"target contains class index 3"):
        LF.hausdorff_dt_loss(x, torch.full_like(t, 3))
    with pytest.raises(LossValueError, match="mode must be one of"):
        losskit.BoundaryLoss(mode="softmax")
    with pytest.raises(LossValueError, match="target must be a 0/1 mask"):
        LF.boundary_loss(x, torch.full_like(x, 0.3), mode="multilabel")
    with pytest.raises(LossValueError, match="spacing has 3 entries, expected 2"):
        LF.boundary_loss(x, t, spacing=(1.0, 1.0, 1.0))


# ---------------------------------------------------------------- module, round trips, compile


def test_modules_equal_functionals_round_trip_and_compile():
    x, t = _multi(seed=19, dtype=torch.float32)
    m = losskit.BoundaryLoss(include_background=False, spacing=(1.0, 2.0))
    assert_module_matches(m, LF.boundary_loss(x, t, include_background=False, spacing=(1.0, 2.0)), x, t)
    h = losskit.HausdorffDTLoss(alpha=1.5, log=True)
    assert_module_matches(h, LF.hausdorff_dt_loss(x, t, alpha=1.5, log=True), x, t)
    maps = signed_distance_map(torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2), 2)
    b = losskit.BoundaryLoss()
    assert_compiles(lambda a, d: b(a, distance_maps=d), x, maps)
    assert_compiles(lambda a, y: b(a, y), x, t)
    assert_compiles(lambda a, y: h(a, y), x, t)
    assert repr(losskit.build("hausdorff_dt", alpha=1.5, log=True)) == repr(h)
