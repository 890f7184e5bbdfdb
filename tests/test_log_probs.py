"""Per-token / per-sequence log-probabilities (losskit.preference.log_probs).

References are float64 and plain: full logits, ``log_softmax``, ``gather``, and the entropy of the
full softmax; gradients of both outputs together under random upstream gradients.
"""

from __future__ import annotations

import pytest
import torch

from losskit._checks import LossTypeError, LossValueError
from losskit.preference import linear_log_probs, sequence_log_probs, sum_per_sequence

IGN = -100


def _inputs(n=13, h=5, v=11, dtype=torch.float64, bias=True, seed=0, ignore_every=3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    target = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        target[::ignore_every] = IGN
    return hidden, weight, b, target


def _reference(hidden, weight, bias, target, temperature=1.0):
    """float64 per-token log-probs and entropies (0 where ignored), loops over tokens."""
    h, w = hidden.double(), weight.double()
    z = h @ w.T
    if bias is not None:
        z = z + bias.double()
    z = z / temperature
    lps, ents = [], []
    for i in range(z.shape[0]):
        logp = torch.log_softmax(z[i], 0)
        if int(target[i]) == IGN:
            lps.append(z.new_zeros(()) * logp.sum())
            ents.append(z.new_zeros(()) * logp.sum())
        else:
            lps.append(logp[int(target[i])])
            ents.append(-(logp.exp() * logp).sum())
    return torch.stack(lps), torch.stack(ents)


def _grads(outputs, upstreams, inputs):
    total = sum((o * u).sum() for o, u in zip(outputs, upstreams))
    return torch.autograd.grad(total, [x for x in inputs if x is not None])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 5, 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_match_float64_reference(bias, temperature, chunk_size, dtype):
    hidden, weight, b, target = _inputs(dtype=dtype, bias=bias)
    lp, ent = linear_log_probs(
        hidden, weight, target, b, temperature=temperature, return_entropy=True, chunk_size=chunk_size
    )
    assert lp.dtype == dtype and ent.dtype == dtype and lp.shape == (13,)
    leaves64 = [None if x is None else x.detach().double().requires_grad_() for x in (hidden, weight, b)]
    rlp, rent = _reference(*leaves64[:2], leaves64[2], target, temperature)
    tol = {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-5}
    torch.testing.assert_close(lp.double(), rlp, **tol)
    torch.testing.assert_close(ent.double(), rent, **tol)
    assert bool((lp[target == IGN] == 0).all()) and bool((ent[target == IGN] == 0).all())
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(13, generator=g, dtype=torch.float64) for _ in range(2)]
    got = _grads((lp, ent), [u.to(dtype) for u in ups], (hidden, weight, b))
    want = _grads((rlp, rent), ups, leaves64)
    for x, y in zip(got, want):
        assert x.dtype == dtype
        torch.testing.assert_close(x.double(), y, **tol)


@pytest.mark.parametrize("which", ["logps", "entropy", "logps_with_entropy_unused"])
def test_one_output_used_matches_reference(which):
    hidden, weight, b, target = _inputs()
    up = torch.randn(13, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rlp, rent = _reference(hidden, weight, b, target)
    if which == "logps":
        got = _grads((linear_log_probs(hidden, weight, target, b, chunk_size=4),), (up,), (hidden, weight, b))
        want = _grads((rlp,), (up,), (hidden, weight, b))
    else:
        lp, ent = linear_log_probs(hidden, weight, target, b, return_entropy=True, chunk_size=4)
        used, ref = (ent, rent) if which == "entropy" else (lp, rlp)
        got = _grads((used,), (up,), (hidden, weight, b))
        want = _grads((ref,), (up,), (hidden, weight, b))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)


def test_batched_shape_and_nonlinear_use():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (2, 6), generator=g)
    target[1, 4:] = IGN
    lp = linear_log_probs(hidden, weight, target, chunk_size=5)
    assert lp.shape == (2, 6)
    rlp, _ = _reference(hidden.reshape(12, 4), weight, None, target.reshape(-1))
    loss = torch.sigmoid(lp.sum(1)).prod()  # non-linear in the log-probs
    ref = torch.sigmoid(rlp.reshape(2, 6).sum(1)).prod()
    for x, y in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(ref, (hidden, weight))):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("entropy", [False, True])
def test_gradcheck_float64(entropy):
    hidden, weight, b, target = _inputs(n=5, h=3, v=7, ignore_every=4)

    def fn(h, w, bb):
        out = linear_log_probs(h, w, target, bb, temperature=0.8, return_entropy=entropy, chunk_size=2)
        return out if entropy else (out,)

    assert torch.autograd.gradcheck(fn, (hidden, weight, b))


def test_all_ignored_and_empty_give_zeros_and_zero_gradients():
    hidden, weight, b, target = _inputs(n=4)
    target[:] = IGN
    lp, ent = linear_log_probs(hidden, weight, target, b, return_entropy=True)
    assert bool((lp == 0).all()) and bool((ent == 0).all())
    (lp.sum() + ent.sum()).backward()
    for x in (hidden, weight, b):
        assert x.grad is not None and bool((x.grad == 0).all())
    hidden, weight, b, _ = _inputs(n=0)
    lp, ent = linear_log_probs(hidden, weight, torch.zeros(0, dtype=torch.long), b, return_entropy=True)
    assert lp.shape == (0,) and ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert weight.grad is not None and bool((weight.grad == 0).all()) and hidden.grad.shape == (0, 5)


def test_no_grad_and_frozen_head():
    hidden, weight, b, target = _inputs()
    with torch.no_grad():
        lp = linear_log_probs(hidden, weight, target, b)
    assert lp.grad_fn is None
    rlp, _ = _reference(hidden, weight, b, target)
    torch.testing.assert_close(lp, rlp.detach())
    w = weight.detach()
    (linear_log_probs(hidden, w, target, b.detach()).sum()).backward()
    assert w.grad is None and hidden.grad is not None
    want = torch.autograd.grad(rlp.sum(), hidden)[0]
    torch.testing.assert_close(hidden.grad, want)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_half_inputs_match_float32_of_same_rounded_values(dtype, tol):
    hidden, weight, b, target = _inputs(n=40, h=16, v=300, dtype=dtype, ignore_every=5)
    h32, w32, b32 = (x.detach().float().requires_grad_() for x in (hidden, weight, b))
    lp, ent = linear_log_probs(hidden, weight, target, b, return_entropy=True, chunk_size=3)
    rlp, rent = linear_log_probs(h32, w32, target, b32, return_entropy=True, chunk_size=3)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    torch.testing.assert_close(lp, rlp, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(ent, rent, atol=tol * 4, rtol=tol)
    g = torch.Generator().manual_seed(4)
    ups = [torch.randn(40, generator=g) for _ in range(2)]
    got = _grads((lp, ent), ups, (hidden, weight, b))
    want = _grads((rlp, rent), ups, (h32, w32, b32))
    for x, y in zip(got, want):
        assert x.dtype == dtype and torch.isfinite(x).all()
        assert float((x.float() - y).norm() / y.norm()) < tol


def test_nan_in_hidden_gives_non_finite_outputs():
    hidden, weight, b, target = _inputs()
    h = hidden.detach().clone()
    h[1, 2] = float("nan")
    lp, ent = linear_log_probs(h, weight, target, b, return_entropy=True)
    assert not torch.isfinite(lp[1]) and not torch.isfinite(ent[1])
    assert torch.isfinite(lp[[0, 2, 4]]).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"hidden": torch.randn(5)},
            LossValueError,
            r"hidden must be \(N, H\) or \(B, L, H\), got shape \(5,\)",
        ),
        ({"weight": torch.randn(11, 4)}, LossValueError, r"weight has shape \(11, 4\), expected \(V, 5\)"),
        (
            {"weight": torch.randn(11, 5, dtype=torch.float64)},
            LossTypeError,
            r"weight has dtype torch.float64",
        ),
        ({"bias": torch.randn(10)}, LossValueError, r"bias has shape \(10,\), expected \(11,\)"),
        ({"target": torch.zeros(13)}, LossTypeError, r"target must be an integer tensor"),
        (
            {"target": torch.zeros(12, dtype=torch.long)},
            LossValueError,
            r"target has shape \(12,\), expected \(13,\)",
        ),
        (
            {"target": torch.full((13,), 11)},
            LossValueError,
            r"target contains class index 11, expected values in \[0, 11\)",
        ),
        ({"temperature": 0.0}, LossValueError, r"temperature must be > 0.0"),
        ({"chunk_size": 0}, LossValueError, r"chunk_size must be >= 1"),
        ({"return_entropy": 1}, LossTypeError, r"return_entropy must be a bool"),
        ({"ignore_index": 1.5}, LossTypeError, r"ignore_index must be an int"),
        ({"weight": torch.randn(11, 5, device="meta")}, LossValueError, r"weight is on meta, expected cpu"),
        ({"target": torch.zeros(13, dtype=torch.long, device="meta")}, LossValueError, r"target is on meta"),
        ({"bias": torch.randn(11, device="meta")}, LossValueError, r"bias is on meta"),
    ],
)
def test_bad_input_errors(kwargs, exc, match):
    g = torch.Generator().manual_seed(0)
    args = {
        "hidden": torch.randn(13, 5, generator=g),
        "weight": torch.randn(11, 5, generator=g),
        "target": torch.randint(0, 11, (13,), generator=g),
        "bias": None,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        linear_log_probs(**args)


def test_every_input_on_meta_gives_meta_outputs():
    hidden = torch.randn(6, 4, device="meta")
    weight = torch.randn(9, 4, device="meta")
    target = torch.zeros(6, dtype=torch.long, device="meta")
    lp, ent = linear_log_probs(hidden, weight, target, return_entropy=True)
    assert lp.is_meta and ent.is_meta and lp.shape == (6,)


# ----------------------------------------------------------------------------- per-sequence forms


def test_sum_per_sequence_sum_mean_and_empty_rows():
    values = torch.tensor([[-1.0, -2.0, float("-inf")], [0.5, float("nan"), 0.0]], dtype=torch.float64)
    values.requires_grad_()
    mask = torch.tensor([[True, True, False], [False, False, False]])
    s = sum_per_sequence(values, mask)
    m = sum_per_sequence(values, mask.long(), average=True)
    torch.testing.assert_close(s, torch.tensor([-3.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(m, torch.tensor([-1.5, 0.0], dtype=torch.float64))
    (s.sum() + m.sum()).backward()
    want = torch.tensor([[1.5, 1.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(values.grad, want)
    h = values.detach().to(torch.bfloat16)
    assert sum_per_sequence(h.nan_to_num(), mask).dtype == torch.float32


@pytest.mark.parametrize(
    ("values", "mask", "exc", "match"),
    [
        (
            torch.zeros(2, 3),
            torch.ones(2, 4, dtype=torch.bool),
            LossValueError,
            r"mask has shape \(2, 4\), expected \(2, 3\)",
        ),
        (
            torch.zeros(2, 3),
            torch.ones(2, 3),
            LossTypeError,
            r"mask must be a bool .* got dtype torch.float32",
        ),
        (torch.zeros(6), torch.ones(6, dtype=torch.bool), LossValueError, r"values must be \(B, T\)"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            torch.ones(2, 3, dtype=torch.bool),
            LossTypeError,
            r"values must be a floating",
        ),
    ],
)
def test_sum_per_sequence_errors(values, mask, exc, match):
    with pytest.raises(exc, match=match):
        sum_per_sequence(values, mask)


@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_probs_matches_loops_and_fused_form(average):
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 10, (3, 7), generator=g)
    target[0, :3] = IGN
    target[2] = IGN
    logits = hidden @ weight.T
    seq = sequence_log_probs(logits, target, average=average)
    want = []
    for b in range(3):
        terms = [
            torch.log_softmax(logits[b, t], 0)[int(target[b, t])] for t in range(7) if target[b, t] != IGN
        ]
        total = torch.stack(terms).sum() if terms else logits.new_zeros(())
        want.append(total / max(len(terms), 1) if average else total)
    torch.testing.assert_close(seq, torch.stack(want))
    fused = sum_per_sequence(linear_log_probs(hidden, weight, target, chunk_size=4), target != IGN, average)
    torch.testing.assert_close(fused, seq)
    up = torch.randn(3, generator=g, dtype=torch.float64)
    for x, y in zip(
        torch.autograd.grad((fused * up).sum(), (hidden, weight)),
        torch.autograd.grad((seq * up).sum(), (hidden, weight)),
    ):
        torch.testing.assert_close(x, y)


def test_sequence_log_probs_errors():
    with pytest.raises(LossValueError, match=r"logits must be \(B, T, V\)"):
        sequence_log_probs(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(LossValueError, match=r"target has shape \(2, 4\), expected \(2, 3\)"):
        sequence_log_probs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(LossValueError, match=r"target contains class index 5"):
        sequence_log_probs(torch.zeros(2, 3, 5), torch.full((2, 3), 5))


# ----------------------------------------------------------------------------- fused preference losses

from losskit._kernels import log_probs as lp_kernels  # noqa: E402
from losskit.preference import (  # noqa: E402
    LinearDPOLoss,
    LinearKTOLoss,
    LinearORPOLoss,
    LinearSimPOLoss,
    dpo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)


def _pair_inputs(seed=6, b=3, tw=5, tl=4, h=4, v=12, bias=True):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    hw, hl, weight = leaf(b, tw, h), leaf(b, tl, h), leaf(v, h)
    bb = leaf(v) if bias else None
    yw, yl = torch.randint(0, v, (b, tw), generator=g), torch.randint(0, v, (b, tl), generator=g)
    yw[:, :2] = IGN  # prompt positions
    yl[0, :] = IGN  # an all-ignored completion
    yl[1, -1] = IGN
    return hw, hl, weight, bb, yw, yl


def _logits(hidden, weight, bias, temperature=1.0):
    z = hidden @ weight.T
    return (z if bias is None else z + bias) / temperature


def _assert_same_value_and_grads(fused, eager, inputs):
    torch.testing.assert_close(fused, eager)
    leaves = [x for x in inputs if x is not None]
    for x, y in zip(torch.autograd.grad(fused, leaves), torch.autograd.grad(eager, leaves)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("fuse_pairs", [False, True])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "aot"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_linear_dpo_with_precomputed_reference_matches_full_logits(loss_type, temperature, fuse_pairs):
    hw, hl, weight, bb, yw, yl = _pair_inputs()
    rw, rl = (
        torch.tensor([-9.0, -8.0, -7.5], dtype=torch.float64),
        torch.tensor([-6.0, -9.5, -8.0], dtype=torch.float64),
    )
    loss_fn = LinearDPOLoss(
        beta=0.3, loss_type=loss_type, temperature=temperature, chunk_size=4, fuse_pairs=fuse_pairs
    )
    fused = loss_fn(hw, hl, weight, yw, yl, bb, ref_chosen_logps=rw, ref_rejected_logps=rl)
    eager = dpo_loss(
        sequence_log_probs(_logits(hw, weight, bb, temperature), yw),
        sequence_log_probs(_logits(hl, weight, bb, temperature), yl),
        rw,
        rl,
        beta=0.3,
        loss_type=loss_type,
    )
    _assert_same_value_and_grads(fused, eager, (hw, hl, weight, bb))


@pytest.mark.parametrize("fuse_pairs", [False, True])
def test_linear_dpo_with_reference_hidden_states_matches_full_logits(fuse_pairs):
    hw, hl, weight, bb, yw, yl = _pair_inputs()
    g = torch.Generator().manual_seed(7)
    ref_hw, ref_hl = (
        torch.randn(3, 5, 6, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 6, generator=g, dtype=torch.float64),
    )
    ref_w = torch.randn(12, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss_fn = LinearDPOLoss(
        beta=0.2, label_smoothing=0.1, reduction="sum", chunk_size=3, fuse_pairs=fuse_pairs
    )
    fused = loss_fn(
        hw, hl, weight, yw, yl, bb, ref_chosen_hidden=ref_hw, ref_rejected_hidden=ref_hl, ref_weight=ref_w
    )
    with torch.no_grad():
        rw = sequence_log_probs(ref_hw @ ref_w.T, yw)
        rl = sequence_log_probs(ref_hl @ ref_w.T, yl)
    eager = dpo_loss(
        sequence_log_probs(_logits(hw, weight, bb), yw),
        sequence_log_probs(_logits(hl, weight, bb), yl),
        rw,
        rl,
        beta=0.2,
        label_smoothing=0.1,
        reduction="sum",
    )
    _assert_same_value_and_grads(fused, eager, (hw, hl, weight, bb))
    again = loss_fn(
        hw, hl, weight, yw, yl, bb, ref_chosen_hidden=ref_hw, ref_rejected_hidden=ref_hl, ref_weight=ref_w
    )
    assert torch.autograd.grad(again, ref_w, allow_unused=True) == (None,)  # the reference gets no gradient


@pytest.mark.parametrize("fuse_pairs", [False, True])
def test_linear_simpo_and_orpo_match_full_logits(fuse_pairs):
    hw, hl, weight, _, yw, yl = _pair_inputs(bias=False)
    yw[:, 2] = 3  # keep chosen average log-probs strictly negative (ORPO needs them < 0)
    avg_w = sequence_log_probs(_logits(hw, weight, None), yw, average=True)
    avg_l = sequence_log_probs(_logits(hl, weight, None), yl, average=True)
    fused = LinearSimPOLoss(beta=2.5, gamma=0.3, chunk_size=5, fuse_pairs=fuse_pairs)(hw, hl, weight, yw, yl)
    _assert_same_value_and_grads(fused, simpo_loss(avg_w, avg_l, 2.5, 0.3), (hw, hl, weight))
    yl[0, 0] = 1  # ORPO's odds need an average log-prob < 0 on every completion
    avg_w = sequence_log_probs(_logits(hw, weight, None), yw, average=True)
    avg_l = sequence_log_probs(_logits(hl, weight, None), yl, average=True)
    fused = LinearORPOLoss(beta=0.5, chunk_size=5, fuse_pairs=fuse_pairs)(hw, hl, weight, yw, yl)
    _assert_same_value_and_grads(fused, orpo_loss(avg_w, avg_l, 0.5), (hw, hl, weight))


def test_linear_kto_matches_full_logits():
    hw, _, weight, bb, yw, _ = _pair_inputs()
    desirable = torch.tensor([True, False, True])
    ref = torch.tensor([-9.0, -8.0, -7.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    kl_h = torch.randn(4, 3, 4, generator=g, dtype=torch.float64)
    kl_t = torch.randint(0, 12, (4, 3), generator=g)
    ref_kl = torch.tensor([-5.0, -6.0, -4.0, -7.0], dtype=torch.float64)
    loss_fn = LinearKTOLoss(beta=0.4, desirable_weight=1.3, chunk_size=2)
    fused = loss_fn(
        hw, weight, yw, desirable, bb, ref_logps=ref, kl_hidden=kl_h, kl_target=kl_t, ref_kl_logps=ref_kl
    )
    with torch.no_grad():
        policy_kl = sequence_log_probs(_logits(kl_h, weight, bb), kl_t)
    eager = kto_loss(
        sequence_log_probs(_logits(hw, weight, bb), yw),
        ref,
        desirable,
        policy_kl,
        ref_kl,
        0.4,
        desirable_weight=1.3,
    )
    _assert_same_value_and_grads(fused, eager, (hw, weight, bb))
    fused = loss_fn(hw, weight, yw, desirable, bb, ref_logps=ref, kl=0.5)
    eager = kto_loss(
        sequence_log_probs(_logits(hw, weight, bb), yw),
        ref,
        desirable,
        beta=0.4,
        desirable_weight=1.3,
        kl=0.5,
    )
    _assert_same_value_and_grads(fused, eager, (hw, weight, bb))


def test_linear_dpo_half_inputs_and_module_plumbing():
    hw, hl, weight, _, yw, yl = _pair_inputs(bias=False)
    rw, rl = torch.full((3,), -8.0), torch.full((3,), -7.0)
    loss_fn = LinearDPOLoss(beta=0.1)
    half = [x.detach().to(torch.bfloat16).requires_grad_() for x in (hw, hl, weight)]
    out = loss_fn(*half, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in half)
    assert "beta=0.1" in repr(loss_fn) and "chunk_size=None" in repr(loss_fn)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {},
            r"reference is given either by ref_chosen_logps and ref_rejected_logps, or by .*got none of them",
        ),
        ({"ref_chosen_logps": torch.zeros(3)}, r"got ref_chosen_logps$"),
        (
            {"ref_chosen_logps": torch.zeros(2), "ref_rejected_logps": torch.zeros(3)},
            r"ref_chosen_logps has shape \(2,\), expected \(3,\)",
        ),
        (
            {"ref_chosen_hidden": torch.zeros(3, 5, 4), "ref_rejected_hidden": torch.zeros(3, 4, 4)},
            r"ref_weight",
        ),
    ],
)
def test_linear_dpo_reference_errors(kwargs, match):
    hw, hl, weight, _, yw, yl = _pair_inputs(bias=False)
    with pytest.raises(LossValueError, match=match):
        LinearDPOLoss()(hw, hl, weight, yw, yl, **kwargs)


def test_linear_dpo_input_errors():
    hw, hl, weight, _, yw, yl = _pair_inputs(bias=False)
    rw = rl = torch.zeros(3)
    with pytest.raises(LossValueError, match=r"rejected_target has shape \(3, 5\), expected \(3, 4\)"):
        LinearDPOLoss()(hw, hl, weight, yw, yw, ref_chosen_logps=rw, ref_rejected_logps=rl)
    with pytest.raises(
        LossValueError, match=r"rejected_hidden has shape \(3, 4, 5\) .* expected the hidden size"
    ):
        LinearDPOLoss()(
            hw,
            torch.zeros(3, 4, 5, dtype=torch.float64),
            weight,
            yw,
            yl,
            ref_chosen_logps=rw,
            ref_rejected_logps=rl,
        )
    with pytest.raises(LossValueError, match=r"chosen_hidden must be \(B, T, H\)"):
        LinearDPOLoss()(hw[0], hl, weight, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl)
    with pytest.raises(LossValueError, match=r"weight has shape \(12, 3\), expected \(V, 4\)"):
        LinearDPOLoss()(hw, hl, weight[:, :3], yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl)
    with pytest.raises(LossValueError, match=r"rejected_hidden is on meta"):
        LinearDPOLoss()(hw, hl.to("meta"), weight, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl)
    with pytest.raises(LossValueError, match=r"temperature must be > 0"):
        LinearDPOLoss(temperature=-1.0)
    with pytest.raises(LossValueError, match=r"kl_hidden and kl_target go together"):
        LinearKTOLoss()(hw, weight, yw, torch.ones(3, dtype=torch.bool), ref_logps=rw, kl_hidden=hw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_dpo_paired_path_honours_upstream_gradient_and_reductions(reduction):
    hw, hl, weight, bb, yw, yl = _pair_inputs(b=5)
    g = torch.Generator().manual_seed(9)
    rw = -8 + torch.randn(5, generator=g, dtype=torch.float64)
    rl = -8 + torch.randn(5, generator=g, dtype=torch.float64)
    fused = LinearDPOLoss(beta=0.5, reduction=reduction, fuse_pairs=True)(
        hw, hl, weight, yw, yl, bb, ref_chosen_logps=rw, ref_rejected_logps=rl
    )
    eager = dpo_loss(
        sequence_log_probs(_logits(hw, weight, bb), yw),
        sequence_log_probs(_logits(hl, weight, bb), yl),
        rw,
        rl,
        beta=0.5,
        reduction=reduction,
    )
    up = torch.randn(fused.shape, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(fused, eager)
    leaves = (hw, hl, weight, bb)
    got = torch.autograd.grad((fused * up).sum(), leaves)
    for x, y in zip(got, torch.autograd.grad((eager * up).sum(), leaves)):
        torch.testing.assert_close(x, y)


def test_linear_dpo_paired_path_no_grad_half_and_single_backward():
    hw, hl, weight, _, yw, yl = _pair_inputs(bias=False)
    rw, rl = torch.full((3,), -8.0), torch.full((3,), -7.0)
    refs = {"ref_chosen_logps": rw.double(), "ref_rejected_logps": rl.double()}
    loss_fn = LinearDPOLoss(fuse_pairs=True)
    with torch.no_grad():
        value = loss_fn(hw, hl, weight, yw, yl, **refs)
    assert value.grad_fn is None
    plain = LinearDPOLoss(fuse_pairs=False)(hw, hl, weight, yw, yl, **refs)
    torch.testing.assert_close(value, plain.detach())
    half = [x.detach().to(torch.bfloat16).requires_grad_() for x in (hw, hl, weight)]
    f32 = [x.detach().float().requires_grad_() for x in half]
    out = loss_fn(*half, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl)
    ref = LinearDPOLoss(fuse_pairs=False)(*f32, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    out.backward(retain_graph=True)
    ref.backward()
    for x, y in zip(half, f32):
        assert x.grad.dtype == torch.bfloat16
        assert float((x.grad.float() - y.grad).norm() / y.grad.norm()) < 3e-2
    with pytest.raises(RuntimeError, match=r"one backward per forward"):
        out.backward()


def test_fused_modules_pickle_and_deepcopy():
    import copy
    import pickle

    hw, hl, weight, bb, yw, yl = _pair_inputs()
    refs = {"ref_chosen_logps": torch.full((3,), -8.0, dtype=torch.float64)}
    refs["ref_rejected_logps"] = torch.full((3,), -7.0, dtype=torch.float64)
    for loss_fn, args, kw in [
        (LinearDPOLoss(beta=0.2, loss_type="ipo"), (hw, hl, weight, yw, yl, bb), refs),
        (LinearSimPOLoss(gamma=0.1), (hw, hl, weight, yw, yl, bb), {}),
    ]:
        want = loss_fn(*args, **kw)
        for clone in (copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
            torch.testing.assert_close(clone(*args, **kw), want)
            assert repr(clone) == repr(loss_fn)
    with pytest.raises(LossTypeError, match=r"fuse_pairs must be a bool or None, got int"):
        LinearDPOLoss(fuse_pairs=1)


@pytest.mark.parametrize("compact", [True, False])
def test_paired_path_holding_only_the_chosen_logits_matches_full_logits(monkeypatch, compact):
    import losskit.preference.fused as lp_mod

    monkeypatch.setattr(lp_mod, "_PAIR_HOLD_BYTES", 0)  # hold one chosen completion, stream the rejected
    if not compact:  # the masked (accelerator) row plan, on CPU
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    hw, hl, weight, bb, yw, yl = _pair_inputs(b=3, tw=3, tl=8)
    yw[:, 0] = 1  # every chosen completion keeps a counted token
    g = torch.Generator().manual_seed(10)
    rw = -8 + torch.randn(3, generator=g, dtype=torch.float64)
    rl = -8 + torch.randn(3, generator=g, dtype=torch.float64)
    fused = LinearDPOLoss(beta=0.5, fuse_pairs=True)(
        hw, hl, weight, yw, yl, bb, ref_chosen_logps=rw, ref_rejected_logps=rl
    )
    eager = dpo_loss(
        sequence_log_probs(_logits(hw, weight, bb), yw),
        sequence_log_probs(_logits(hl, weight, bb), yl),
        rw,
        rl,
        beta=0.5,
    )
    _assert_same_value_and_grads(fused * 2.5, eager * 2.5, (hw, hl, weight, bb))
    fused = LinearSimPOLoss(fuse_pairs=True, temperature=0.8)(hw, hl, weight, yw, yl, bb)
    eager = simpo_loss(
        sequence_log_probs(_logits(hw, weight, bb, 0.8), yw, average=True),
        sequence_log_probs(_logits(hl, weight, bb, 0.8), yl, average=True),
    )
    _assert_same_value_and_grads(fused, eager, (hw, hl, weight, bb))


def test_pair_bytes_chooses_between_holding_both_completions_and_forming_the_rejected_twice(monkeypatch):
    hw, hl, weight, bb, yw, yl = _pair_inputs(b=3, tw=3, tl=4)
    yw[:, 0] = 1
    rw, rl = torch.full((3,), -8.0, dtype=torch.float64), torch.full((3,), -9.0, dtype=torch.float64)
    calls = []
    real = lp_kernels.logits_into
    monkeypatch.setattr(
        lp_kernels, "logits_into", lambda z, h, *a: (calls.append(h.shape[0]), real(z, h, *a))
    )
    n_w, n_l = int((yw != -100).sum()), int((yl != -100).sum())  # counted rows (the CPU plan skips the rest)
    # logits rows formed: the rejected completions' twice when a pair may not be held, once when it may
    for pair_bytes, rows in ((1, n_w + 2 * n_l), (10**9, n_w + n_l)):
        calls.clear()
        fused = LinearDPOLoss(fuse_pairs=True, pair_bytes=pair_bytes)(
            hw, hl, weight, yw, yl, bb, ref_chosen_logps=rw, ref_rejected_logps=rl
        )
        assert sum(calls) == rows, calls
        eager = dpo_loss(
            sequence_log_probs(_logits(hw, weight, bb), yw),
            sequence_log_probs(_logits(hl, weight, bb), yl),
            rw,
            rl,
        )
        _assert_same_value_and_grads(fused, eager, (hw, hl, weight, bb))
    with pytest.raises(LossValueError, match=r"pair_bytes"):
        LinearDPOLoss(pair_bytes=0)
