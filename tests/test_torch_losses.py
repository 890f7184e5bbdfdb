"""losskit's forms of torch's losses: mse, l1, bce, bce_with_logits, kl_div, hinge_embedding, triplet_margin.

References are torch's own functionals (same semantics) and plain float64 formulas; on valid input the
values and gradients are torch's, elsewhere losskit's conventions hold (empty -> graph-connected zero,
float32 compute for half inputs, typed errors naming the argument, NaN never hidden).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

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
from losskit.registry import get_spec

NAMES = ("bce", "bce_with_logits", "hinge_embedding", "kl_div", "l1", "mse", "triplet_margin")
RNC = ("none", "mean", "sum")
KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")
TORCH_CLASS = {
    "mse": torch.nn.MSELoss,
    "l1": torch.nn.L1Loss,
    "bce": torch.nn.BCELoss,
    "bce_with_logits": torch.nn.BCEWithLogitsLoss,
    "kl_div": torch.nn.KLDivLoss,
    "hinge_embedding": torch.nn.HingeEmbeddingLoss,
    "triplet_margin": torch.nn.TripletMarginLoss,
}
TORCH_FUNCTIONAL = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "kl_div": F.kl_div,
    "hinge_embedding": F.hinge_embedding_loss,
    "triplet_margin": F.triplet_margin_loss,
}


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return (torch.randn(*shape, generator=_g(seed), dtype=torch.float64) * 2).to(dtype)


def _signs(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=_g(seed)) * 2 - 1).to(dtype)


def _inputs(name: str, dtype: torch.dtype = torch.float64, n: int = 5) -> tuple[torch.Tensor, ...]:
    """Valid positional inputs of ``name`` with a batch of ``n``."""
    x, y = _randn(n, 3, seed=1, dtype=dtype), _randn(n, 3, seed=2, dtype=dtype)
    soft = torch.rand(n, 3, generator=_g(3), dtype=torch.float64).to(dtype)
    if name in ("mse", "l1"):
        return x, y
    if name == "bce":
        return torch.sigmoid(x), soft
    if name == "bce_with_logits":
        return x, soft
    if name == "kl_div":
        return torch.log_softmax(x, 1), torch.softmax(y, 1)
    if name == "hinge_embedding":
        return x, _signs(n, 3, seed=4, dtype=dtype)
    return x, y, _randn(n, 3, seed=5, dtype=dtype)


def _wrt(name: str) -> tuple[int, ...]:
    return (0, 1, 2) if name == "triplet_margin" else (0, 1) if name in ("mse", "l1") else (0,)


W = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
# keyword variants checked against torch (tensors in float64, cast to the inputs' dtype where needed)
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "mse": [{}, {"weight": torch.rand(5, 3, generator=_g(6), dtype=torch.float64)}],
    "l1": [{}, {"weight": torch.rand(5, 3, generator=_g(7), dtype=torch.float64)}],
    "bce": [{}, {"weight": W}],
    "bce_with_logits": [{}, {"weight": W}, {"pos_weight": W * 2}, {"weight": W, "pos_weight": W + 1}],
    "kl_div": [{}, {"log_target": True}],
    "hinge_embedding": [{}, {"margin": 0.5}, {"margin": 2.5}],
    "triplet_margin": [{}, {"margin": 0.3, "p": 1.0}, {"swap": True}, {"p": 3.0, "eps": 1e-3}],
}


def _reductions(name: str) -> tuple[str, ...]:
    return KL_REDUCTIONS if name == "kl_div" else RNC


def _functional(name: str) -> Callable[..., torch.Tensor]:
    fn = get_spec(name).functional
    assert fn is not None
    return fn


def _variant_args(name: str, kw: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    args = _inputs(name)
    if name == "kl_div" and kw.get("log_target"):
        args = (args[0], torch.log(args[1]))
    return args


# ---------------------------------------------------------------- values and gradients == torch


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_equal_torch(name):
    for kw in VARIANTS[name]:
        args = _variant_args(name, kw)
        for reduction in _reductions(name):
            assert_matches_reference(
                lambda *a, r=reduction, kw=kw: _functional(name)(*a, reduction=r, **kw),
                lambda *a, r=reduction, kw=kw: TORCH_FUNCTIONAL[name](*a, reduction=r, **kw),
                args,
                _wrt(name),
                rtol=1e-12,
                atol=1e-12,
            )


@pytest.mark.parametrize("name", NAMES)
def test_float32_module_equals_torch_module(name):
    # torch's MSELoss / L1Loss modules take no weight (only their functionals do)
    variants = [{}] if name in ("mse", "l1") else VARIANTS[name]
    for kw in variants:
        kw32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        args = tuple(a.float() for a in _variant_args(name, kw))
        for reduction in _reductions(name):
            ours = losskit.build(name, reduction=reduction, **kw32)(*args)
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours, TORCH_CLASS[name](reduction=reduction, **kw32)(*args))


def test_plain_float64_formulas():
    x, y = _inputs("mse")
    p, t = _inputs("bce")
    torch.testing.assert_close(LF.mse_loss(x, y, reduction="none"), (x - y) ** 2)
    torch.testing.assert_close(LF.l1_loss(x, y), (x - y).abs().mean())
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    torch.testing.assert_close(LF.binary_cross_entropy(p, t, reduction="none"), bce)
    z = torch.logit(p)
    pw = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    expected = -(pw * t * torch.log(p) + (1 - t) * torch.log(1 - p))
    torch.testing.assert_close(
        LF.binary_cross_entropy_with_logits(z, t, pos_weight=pw, reduction="none"), expected
    )
    logp, q = _inputs("kl_div")
    kl = sum(float(q[i, j] * (math.log(q[i, j]) - logp[i, j])) for i in range(5) for j in range(3))
    assert math.isclose(float(LF.kl_div(logp, q, reduction="batchmean")), kl / 5, rel_tol=1e-12)
    h, s = _inputs("hinge_embedding")
    hinge = torch.where(s > 0, h, torch.clamp(1.5 - h, min=0))
    torch.testing.assert_close(LF.hinge_embedding_loss(h, s, margin=1.5, reduction="none"), hinge)
    a, pos, neg = _inputs("triplet_margin")
    d = lambda u, v: (((u - v + 1e-6) ** 2).sum(1)).sqrt()  # noqa: E731
    trip = torch.clamp(d(a, pos) - d(a, neg) + 0.5, min=0)
    torch.testing.assert_close(LF.triplet_margin_loss(a, pos, neg, margin=0.5, reduction="sum"), trip.sum())


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    kw = VARIANTS[name][-1]
    args = _variant_args(name, kw)
    if name == "bce":
        args = (args[0].clamp(0.05, 0.95), args[1])
    assert_gradcheck(lambda *a: _functional(name)(*a, reduction="sum", **kw), args, _wrt(name))


def test_unbatched_inputs_like_torch():
    a, p, n = (_randn(4, seed=s) for s in (10, 11, 12))
    torch.testing.assert_close(LF.triplet_margin_loss(a, p, n), F.triplet_margin_loss(a, p, n))
    logp, q = torch.log_softmax(a, 0), torch.softmax(p, 0)
    torch.testing.assert_close(
        LF.kl_div(logp, q, reduction="batchmean"), F.kl_div(logp, q, reduction="batchmean")
    )


def test_integer_hinge_targets_and_mixed_target_dtypes():
    x, s = _inputs("hinge_embedding", torch.float32)
    torch.testing.assert_close(
        LF.hinge_embedding_loss(x, s.long()), F.hinge_embedding_loss(x, s), rtol=0, atol=0
    )
    y = _randn(5, 3, seed=2)
    out = LF.mse_loss(x, y)  # float32 input, float64 target: torch's type promotion
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.mse_loss(x.double(), y))


# ---------------------------------------------------------------- the modules


@pytest.mark.parametrize("name", NAMES)
def test_module_is_losskits_and_still_torchs_class(name):
    module = losskit.build(name)
    assert type(module).__module__ == "losskit.torch_losses"
    assert isinstance(module, TORCH_CLASS[name])  # code that checks for torch's class keeps working
    assert getattr(losskit, type(module).__name__) is type(module)
    assert getattr(LF, _functional(name).__name__) is _functional(name)
    args = _inputs(name, torch.float32)
    assert_module_matches(module, _functional(name)(*args), *args)


def test_module_buffers_and_repr():
    w, pw = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 4.0])
    m = losskit.BCEWithLogitsLoss(w, reduction="sum", pos_weight=pw)
    assert set(m.state_dict()) == {"weight", "pos_weight"}
    assert repr(m) == "BCEWithLogitsLoss(reduction='sum')"
    x, t = _inputs("bce_with_logits", torch.float32)
    torch.testing.assert_close(
        m(x, t), F.binary_cross_entropy_with_logits(x, t, w, reduction="sum", pos_weight=pw)
    )
    assert m.double()(x.double(), t.double()).dtype == torch.float64
    assert repr(losskit.TripletMarginLoss(0.5, p=1.0, swap=True)) == (
        "TripletMarginLoss(margin=0.5, p=1.0, eps=1e-06, swap=True, reduction='mean')"
    )
    assert repr(losskit.KLDivLoss(reduction="batchmean", log_target=True)) == (
        "KLDivLoss(reduction='batchmean', log_target=True)"
    )
    assert repr(losskit.HingeEmbeddingLoss(2.0)) == "HingeEmbeddingLoss(margin=2.0, reduction='mean')"


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_equals_eager(name):
    args = _inputs(name, torch.float32)
    kw = {} if name in ("mse", "l1", "kl_div") else VARIANTS[name][-1]
    module = losskit.build(name, **kw)
    assert_compiles(lambda *a: module(*a), *args)


# ---------------------------------------------------------------- degenerate and low-precision input


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_connected_zero(name):
    args = _inputs(name, torch.float32, n=0)
    wrt = _wrt(name)
    call = [a.clone().requires_grad_(True) if i in wrt else a for i, a in enumerate(args)]
    for reduction in _reductions(name):
        out = losskit.build(name, reduction=reduction)(*call)
        if reduction == "none":
            assert out.shape == (0, 3) if name != "triplet_margin" else out.shape == (0,)
        else:
            assert_connected_zero(out, *[call[i] for i in wrt])
        assert_connected_zero(_functional(name)(*call, reduction="sum"), *[call[i] for i in wrt])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_inputs_are_computed_in_float32(name, dtype):
    args = tuple(a.to(dtype) for a in _inputs(name, torch.float32))
    for reduction in _reductions(name):
        out = _functional(name)(*args, reduction=reduction)
        assert out.dtype == torch.float32, f"{dtype} inputs gave a {out.dtype} loss"
        want = TORCH_FUNCTIONAL[name](*(a.float() for a in args), reduction=reduction)
        torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bce_with_logits_extreme_logits_are_finite(dtype):
    x = extreme_logits((6, 4), dtype).requires_grad_(True)
    t = (torch.rand(6, 4, generator=_g(8)) > 0.5).to(dtype)
    pw = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = LF.binary_cross_entropy_with_logits(x, t, pos_weight=pw)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, x)


# ---------------------------------------------------------------- non-finite inputs: never a finite loss


def _nonfinite_outcome(fn: Callable[[], torch.Tensor]) -> str:
    try:
        out = fn()
    except LossValueError:
        return "error"
    assert not torch.isfinite(out).all(), f"a non-finite input gave the finite loss {out}"
    return "non-finite"


@pytest.mark.parametrize("checks", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_input_never_gives_a_finite_loss(name, bad, checks):
    losskit.set_value_checks(checks)
    try:
        for position in range(len(_inputs(name))):
            args = [a.clone() for a in _inputs(name, torch.float32)]
            args[position][1, 2] = bad
            for reduction in _reductions(name):
                outcome = _nonfinite_outcome(lambda a=args, r=reduction: _functional(name)(*a, reduction=r))
                if not checks:
                    assert outcome == "non-finite"
    finally:
        losskit.set_value_checks(True)


def test_nan_probability_with_checks_off_propagates_in_bce():
    p, t = _inputs("bce", torch.float32)
    p = p.clone().requires_grad_(True)
    losskit.set_value_checks(False)
    try:
        q = p.detach().clone()
        q[0, 0] = float("nan")
        q.requires_grad_(True)
        out = LF.binary_cross_entropy(q, t, reduction="none")
        assert torch.isnan(out[0, 0]) and torch.isfinite(out.flatten()[1:]).all()
        torch.testing.assert_close(
            out.flatten()[1:], F.binary_cross_entropy(p, t, reduction="none").flatten()[1:]
        )
        (grad,) = torch.autograd.grad(out.flatten()[1:].sum(), q)
        assert torch.isfinite(grad).all() and float(grad[0, 0]) == 0.0
    finally:
        losskit.set_value_checks(True)


# ---------------------------------------------------------------- bad input: typed errors naming the argument


@pytest.mark.parametrize("name", NAMES)
def test_bad_reduction_is_rejected_when_built_and_called(name):
    allowed = "'none', 'batchmean', 'mean', 'sum'" if name == "kl_div" else "'none', 'mean', 'sum'"
    with pytest.raises(LossValueError, match=rf"reduction must be one of {allowed}, got 'avg'"):
        losskit.build(name, reduction="avg")
    with pytest.raises(LossValueError, match=r"reduction must be one of .*got 'avg'"):
        _functional(name)(*_inputs(name), reduction="avg")
    if name != "kl_div":
        with pytest.raises(LossValueError, match=r"got 'batchmean'"):
            losskit.build(name, reduction="batchmean")
    with pytest.raises(LossTypeError, match="reduction must be a string"):
        losskit.build(name, reduction=None)


@pytest.mark.parametrize("name", ["mse", "l1", "bce", "bce_with_logits", "kl_div"])
def test_integer_target_raises_type_error(name):
    x, _ = _inputs(name, torch.float32)
    with pytest.raises(LossTypeError, match="target must be a floating-point tensor, got dtype torch.int64"):
        _functional(name)(x, torch.ones(5, 3, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_integer_input_raises_type_error(name):
    args = list(_inputs(name, torch.float32))
    first = "anchor" if name == "triplet_margin" else "input"
    args[0] = torch.zeros(5, 3, dtype=torch.long)
    with pytest.raises(
        LossTypeError, match=f"{first} must be a floating-point tensor, got dtype torch.int64"
    ):
        _functional(name)(*args)


def test_bool_hinge_target_raises_type_error():
    x, _ = _inputs("hinge_embedding", torch.float32)
    with pytest.raises(LossTypeError, match=r"target must hold -1 / 1 labels .*got dtype torch.bool"):
        LF.hinge_embedding_loss(x, torch.ones(5, 3, dtype=torch.bool))


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_names_both_shapes(name):
    args = list(_inputs(name, torch.float32))
    args[1] = args[1][:4]
    other = "positive" if name == "triplet_margin" else "target"
    ref = "anchor" if name == "triplet_margin" else "input"
    with pytest.raises(
        LossValueError, match=rf"{other} has shape \(4, 3\), expected \(5, 3\) to match {ref}"
    ):
        _functional(name)(*args)
    if name == "triplet_margin":
        a, p, n = _inputs(name, torch.float32)
        with pytest.raises(LossValueError, match=r"negative has shape \(5, 2\), expected \(5, 3\)"):
            LF.triplet_margin_loss(a, p, n[:, :2])
        with pytest.raises(
            LossValueError, match=r"anchor must be 1-D \(D,\) or 2-D \(N, D\), got shape \(5, 3, 1\)"
        ):
            LF.triplet_margin_loss(a[..., None], p[..., None], n[..., None])


def test_broadcasting_targets_are_rejected():
    # torch broadcasts (3, 1) against (3,) to a (3, 3) loss with only a warning
    with pytest.raises(LossValueError, match=r"target has shape \(3,\), expected \(3, 1\) to match input"):
        LF.mse_loss(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(LossValueError, match=r"target has shape \(1, 3\), expected \(5, 3\)"):
        LF.kl_div(*(a[:1] if i else a for i, a in enumerate(_inputs("kl_div"))))


def test_weights_are_checked():
    x, t = _inputs("bce_with_logits", torch.float32)
    with pytest.raises(
        LossValueError, match=r"pos_weight has shape \(2,\), expected a shape broadcastable to \(5, 3\)"
    ):
        LF.binary_cross_entropy_with_logits(x, t, pos_weight=torch.ones(2))
    with pytest.raises(LossValueError, match=r"weight has shape \(4,\), expected a shape broadcastable"):
        LF.binary_cross_entropy(torch.sigmoid(x), t, torch.ones(4))
    with pytest.raises(LossTypeError, match="weight must be a floating-point tensor, got dtype torch.int64"):
        losskit.BCELoss(torch.ones(3, dtype=torch.long))
    with pytest.raises(LossTypeError, match="pos_weight must be a torch.Tensor, got list"):
        losskit.BCEWithLogitsLoss(pos_weight=[1.0, 2.0])
    with pytest.raises(LossValueError, match=r"weight has shape \(2,\), expected a shape broadcastable"):
        LF.mse_loss(x, t, weight=torch.ones(2))


def test_hyperparameters_are_checked_when_built():
    with pytest.raises(LossValueError, match="margin must be > 0.0, got 0.0"):
        losskit.TripletMarginLoss(margin=0.0)
    with pytest.raises(LossValueError, match="p must be > 0.0, got -1"):
        losskit.TripletMarginLoss(p=-1)
    with pytest.raises(LossValueError, match="eps must be >= 0.0, got -0.1"):
        losskit.TripletMarginLoss(eps=-0.1)
    with pytest.raises(LossTypeError, match="swap must be a bool, got str 'yes'"):
        losskit.TripletMarginLoss(swap="yes")
    with pytest.raises(LossTypeError, match="margin must be a number, got str"):
        losskit.HingeEmbeddingLoss(margin="1")
    with pytest.raises(LossTypeError, match="log_target must be a bool, got int 1"):
        losskit.KLDivLoss(log_target=1)
    with pytest.raises(TypeError):  # torch's legacy positional size_average / reduce are not accepted
        losskit.MSELoss(None, None, "sum")


# ---------------------------------------------------------------- out-of-range targets (value checks)


def test_out_of_range_values_raise_with_value_checks_on():
    x, t = _inputs("bce_with_logits", torch.float32)
    bad = t.clone()
    bad[0, 0] = 2.0
    with pytest.raises(LossValueError, match=r"target must have values in \[0.0, 1.0\], got range \[.*, 2\]"):
        LF.binary_cross_entropy_with_logits(x, bad)
    with pytest.raises(LossValueError, match=r"target must have values in \[0.0, 1.0\]"):
        losskit.BCELoss()(torch.sigmoid(x), bad)
    with pytest.raises(
        LossValueError,
        match=r"input must have values in \[0.0, 1.0\], got range .*probabilities; for logits use bce_with_logits",
    ):
        LF.binary_cross_entropy(x, t)
    with pytest.raises(LossValueError, match=r"target must have values in \[0.0, 1.0\]"):
        LF.kl_div(torch.log_softmax(x, 1), -torch.softmax(x, 1))
    s = (t > 0.5).float()  # 0 / 1 labels where -1 / 1 are required
    with pytest.raises(
        LossValueError, match=r"target must hold only -1 and 1 \(1: similar, -1: dissimilar\), got 0; "
    ):
        losskit.HingeEmbeddingLoss()(x, s)
    with pytest.raises(LossValueError, match=r"got 3"):
        LF.hinge_embedding_loss(x, torch.full((5, 3), 3))


def test_value_checks_off_computes_torchs_value():
    x, t = _inputs("bce_with_logits", torch.float32)
    bad = t.clone()
    bad[0, 0] = 2.0
    s = (t > 0.5).float()
    losskit.set_value_checks(False)
    try:
        torch.testing.assert_close(
            LF.binary_cross_entropy_with_logits(x, bad), F.binary_cross_entropy_with_logits(x, bad)
        )
        torch.testing.assert_close(LF.hinge_embedding_loss(x, s), F.hinge_embedding_loss(x, s))
    finally:
        losskit.set_value_checks(True)


@pytest.mark.parametrize("name", NAMES)
def test_an_input_on_another_device_is_named(name):
    args = list(_inputs(name, torch.float32))
    args[-1] = args[-1].to("meta")
    last = {"triplet_margin": "negative"}.get(name, "target")
    with pytest.raises(LossValueError, match=rf"{last} is on meta, expected cpu like"):
        _functional(name)(*args)
    if name in ("mse", "bce", "bce_with_logits"):
        kw = "weight" if name != "bce_with_logits" else "pos_weight"
        x, t = _inputs(name, torch.float32)
        with pytest.raises(LossValueError, match=rf"{kw} is on meta, expected cpu like input"):
            _functional(name)(x, t, **{kw: torch.ones(3, device="meta")})
    meta = [a.to("meta") for a in _inputs(name, torch.float32)]
    assert _functional(name)(*meta).is_meta  # value checks skip tensors without values
