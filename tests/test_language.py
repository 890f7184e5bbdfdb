"""Large-vocabulary losses: fused chunked linear cross-entropy and linear distillation.

References are plain float64 formulas on materialised logits, written per token.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
from harness import (
    COMPILE_BACKEND,
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    extreme_logits,
)
from losskit import LossTypeError, LossValueError, language
from losskit._kernels import linear_ce

IGNORE = -100

# ---------------------------------------------------------------- independent float64 references


def ref_linear_ce(
    hidden, weight, target, bias=None, ignore_index=IGNORE, eps=0.0, z_loss=0.0, softcap=None,
    reduction="mean", normalizer=None,
):  # fmt: skip
    """Per token: lse - (1-eps) s_t - eps mean(s) + z_loss lse^2 on s = cap tanh(x/cap), x = h W^T + b."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = target.reshape(-1)
    logits = h @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    per_token, count = [], 0
    for i in range(h.shape[0]):
        s = logits[i]
        if int(t[i]) == ignore_index:
            per_token.append(s.sum() * 0.0)
            continue
        count += 1
        m = s.max().detach()
        lse = m + torch.log(torch.exp(s - m).sum())
        nll = lse - s[int(t[i])]
        smooth = lse - s.mean()
        per_token.append((1 - eps) * nll + eps * smooth + z_loss * lse**2)
    losses = torch.stack(per_token) if per_token else logits.sum(1)
    if reduction == "none":
        return losses.reshape(target.shape)
    total = losses.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        return total / normalizer
    return total / max(count, 1)


def ref_linear_kd(
    hs, ws, ht, wt, target=None, ignore_index=IGNORE, temperature=1.0, beta=0.0, reduction="mean",
    normalizer=None, bs=None, bt=None,
):  # fmt: skip
    """Forward KL (beta=0), reverse KL (beta=1), else beta KL(pT||M) + (1-beta) KL(pS||M), per token."""
    zs = hs.reshape(-1, hs.shape[-1]) @ ws.T
    zt = (ht.reshape(-1, ht.shape[-1]) @ wt.T).detach()
    if bs is not None:
        zs = zs + bs
    if bt is not None:
        zt = zt + bt.detach()
    per_token, count = [], 0
    for i in range(zs.shape[0]):
        if target is not None and int(target.reshape(-1)[i]) == ignore_index:
            per_token.append(zs[i].sum() * 0.0)
            continue
        count += 1
        ls = torch.log_softmax(zs[i] / temperature, 0)
        lt = torch.log_softmax(zt[i] / temperature, 0)
        ps, pt = ls.exp(), lt.exp()
        if beta == 0.0:
            value = (pt * (lt - ls)).sum()
        elif beta == 1.0:
            value = (ps * (ls - lt)).sum()
        else:
            mix = beta * pt + (1 - beta) * ps
            value = beta * (pt * (lt - mix.log())).sum() + (1 - beta) * (ps * (ls - mix.log())).sum()
        per_token.append(value)
    losses = torch.stack(per_token) if per_token else zs.sum(1)
    if reduction == "none":
        return losses.reshape(hs.shape[:-1])
    total = losses.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        return total / normalizer
    return total / max(count, 1)


def _data(n=11, h=6, v=13, seed=0, dtype=torch.float32, ignore=(2, 7)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(v, generator=g, dtype=torch.float64).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    for i in ignore:
        if i < n:
            target[i] = IGNORE
    return hidden, weight, bias, target


@pytest.fixture(params=["compact", "masked"])
def row_mode(request, monkeypatch):
    """Both kernel paths: ignored rows dropped (CPU default) or masked in place (accelerator default)."""
    if request.param == "masked":
        monkeypatch.setattr(language, "_COMPACT_DEVICES", ())
    return request.param


CE_OPTIONS = {
    "plain": {},
    "smoothing": {"eps": 0.2},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "all": {"eps": 0.1, "z_loss": 1e-2, "softcap": 4.0},
}


def _ce_kw(opts):
    return {
        "label_smoothing": opts.get("eps", 0.0),
        "z_loss": opts.get("z_loss", 0.0),
        "softcap": opts.get("softcap"),
    }


# ---------------------------------------------------------------- 1. references: values and gradients


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", list(CE_OPTIONS), ids=list(CE_OPTIONS))
def test_linear_ce_matches_reference(opts, reduction, row_mode):
    hidden, weight, bias, target = _data()
    o = CE_OPTIONS[opts]
    kw = _ce_kw(o)
    # grad_output != 1 (x 3.7); 'none' is contracted with a random cotangent by the harness
    assert_matches_reference(
        lambda h, w, b: (
            LF.linear_cross_entropy(h, w, target, b, reduction=reduction, chunk_size=4, **kw) * 3.7
        ),
        lambda h, w, b: ref_linear_ce(h, w, target, b, reduction=reduction, **o) * 3.7,
        (hidden, weight, bias),
        (0, 1, 2),
        rtol=2e-5,
        atol=2e-6,
    )
    # without bias, 3-D hidden (B, L, H), chunk size not dividing N
    h3, t3 = hidden[:10].reshape(2, 5, -1), target[:10].reshape(2, 5)
    assert_matches_reference(
        lambda h, w: LF.linear_cross_entropy(h, w, t3, reduction=reduction, chunk_size=3, **kw),
        lambda h, w: ref_linear_ce(h, w, t3, reduction=reduction, **o),
        (h3, weight),
        (0, 1),
        rtol=2e-5,
        atol=2e-6,
    )


def test_linear_ce_float64_is_exact_and_equals_torch():
    hidden, weight, bias, target = (x.double() if x.is_floating_point() else x for x in _data(seed=3))
    for reduction in ("mean", "sum", "none"):
        for eps in (0.0, 0.3):
            ours = LF.linear_cross_entropy(
                hidden, weight, target, bias, label_smoothing=eps, reduction=reduction
            )
            torch_ce = F.cross_entropy(
                hidden @ weight.T + bias, target, label_smoothing=eps, reduction=reduction
            )
            torch.testing.assert_close(ours, torch_ce, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 11, 64, None])
def test_chunk_size_does_not_change_result(chunk_size, row_mode):
    hidden, weight, bias, target = _data(seed=4)
    kw = {"label_smoothing": 0.1, "z_loss": 1e-3}
    assert_matches_reference(
        lambda h, w, b: LF.linear_cross_entropy(h, w, target, b, chunk_size=chunk_size, **kw),
        lambda h, w, b: ref_linear_ce(h, w, target, b, eps=0.1, z_loss=1e-3),
        (hidden, weight, bias),
        (0, 1, 2),
        rtol=2e-5,
        atol=2e-6,
    )


def test_reduction_none_random_cotangent_and_normalizer():
    hidden, weight, bias, target = _data(seed=5)
    g = torch.Generator().manual_seed(9)
    cot = torch.randn(target.shape, generator=g, dtype=torch.float64)
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    out = LF.linear_cross_entropy(*leaves[:2], target, leaves[2], reduction="none", chunk_size=3)
    grads = torch.autograd.grad(out, leaves, grad_outputs=cot.float())
    leaves64 = [x.double().requires_grad_(True) for x in (hidden, weight, bias)]
    ref = ref_linear_ce(*leaves64[:2], target, leaves64[2], reduction="none")
    ref_grads = torch.autograd.grad(ref, leaves64, grad_outputs=cot)
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert float(out[2].detach()) == 0.0 and float(out[7].detach()) == 0.0  # ignored tokens
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    # normalizer: sum / normalizer, python number or tensor
    for norm in (17, torch.tensor(17.0)):
        assert_matches_reference(
            lambda h, w, norm=norm: LF.linear_cross_entropy(h, w, target, normalizer=norm, chunk_size=4),
            lambda h, w: ref_linear_ce(h, w, target, normalizer=17),
            (hidden, weight),
            (0, 1),
        )


def test_normalizer_makes_gradient_accumulation_exact():
    hidden, weight, _, target = _data(n=12, seed=6, ignore=(0, 1, 2, 3, 9))
    full = LF.linear_cross_entropy(hidden, weight, target)
    total_valid = int((target != IGNORE).sum())
    parts = [
        LF.linear_cross_entropy(hidden[s], weight, target[s], normalizer=total_valid, chunk_size=2)
        for s in (slice(0, 4), slice(4, 12))
    ]
    torch.testing.assert_close(parts[0] + parts[1], full)
    # the first micro-batch is all ignored: the mean of means would be wrong, not exact
    assert float(parts[0]) == 0.0


def test_double_backward_through_retained_graph_recomputes_exactly():
    hidden, weight, _, target = _data(seed=7)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss = LF.linear_cross_entropy(h, w, target, chunk_size=4)
    (loss * 2.0).backward(retain_graph=True)
    first = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    (loss * 0.5).backward()  # second backward through the same graph
    torch.testing.assert_close(h.grad, first[0] / 4)
    torch.testing.assert_close(w.grad, first[1] / 4)


# ---------------------------------------------------------------- 2. gradcheck


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_ce_gradcheck(reduction):
    hidden, weight, bias, target = _data(n=5, h=3, v=7, seed=8, ignore=(1,))
    assert_gradcheck(
        lambda h, w, b: LF.linear_cross_entropy(
            h, w, target, b, reduction=reduction, chunk_size=2, label_smoothing=0.1, z_loss=0.01, softcap=3.0
        ),
        (hidden, weight, bias),
        (0, 1, 2),
    )


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_linear_kd_gradcheck(beta):
    hs, ws, bs, target = _data(n=4, h=2, v=5, seed=9, ignore=(1,))
    ht, wt, _, _ = _data(n=4, h=3, v=5, seed=10)
    assert_gradcheck(
        lambda h, w, b: LF.linear_kd_loss(
            h, w, ht.double(), wt.double(), target, beta=beta, temperature=1.5, chunk_size=2, student_bias=b
        ),
        (hs, ws, bs),
        (0, 1, 2),
    )


# ---------------------------------------------------------------- 3. properties


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    v=st.integers(2, 9),
    chunk=st.integers(1, 10),
    seed=st.integers(0, 10_000),
    eps=st.sampled_from([0.0, 0.25]),
)
def test_properties_reduction_consistency_and_nonnegativity(n, v, chunk, seed, eps):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(v, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, v, (n,), generator=g)
    target[torch.rand(n, generator=g) < 0.3] = IGNORE
    kw = {"chunk_size": chunk, "label_smoothing": eps}
    none = LF.linear_cross_entropy(hidden, weight, target, reduction="none", **kw)
    total = LF.linear_cross_entropy(hidden, weight, target, reduction="sum", **kw)
    mean = LF.linear_cross_entropy(hidden, weight, target, **kw)
    count = int((target != IGNORE).sum())
    assert (none >= -1e-12).all()
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(mean * max(count, 1), total)
    torch.testing.assert_close(none, ref_linear_ce(hidden, weight, target, eps=eps, reduction="none"))


def test_known_values():
    # uniform logits: CE = log V, z-loss adds z * (log V)^2, label smoothing changes nothing
    v = 8
    hidden, weight = torch.zeros(3, 4), torch.randn(v, 4)
    target = torch.tensor([0, 3, 7])
    torch.testing.assert_close(LF.linear_cross_entropy(hidden, weight, target), torch.tensor(math.log(v)))
    torch.testing.assert_close(
        LF.linear_cross_entropy(hidden, weight, target, z_loss=0.5, label_smoothing=0.3),
        torch.tensor(math.log(v) + 0.5 * math.log(v) ** 2),
    )
    # a huge softcap is no cap
    h, w, b, t = _data(seed=11)
    torch.testing.assert_close(
        LF.linear_cross_entropy(h, w, t, b, softcap=1e6),
        LF.linear_cross_entropy(h, w, t, b),
        rtol=1e-5,
        atol=1e-6,
    )


def test_never_keeps_logits_for_backward():
    """Autograd keeps only the inputs (saved) and the N x H / V x H gradients: nothing of size N x V."""
    n, hdim, v = 64, 8, 500
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, hdim, generator=g, requires_grad=True)
    weight = torch.randn(v, hdim, generator=g, requires_grad=True)
    target = torch.randint(0, v, (n,), generator=g)
    inputs = {hidden.untyped_storage().data_ptr(), weight.untyped_storage().data_ptr()}
    saved = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            saved.append(t.numel())
        return t

    for reduction in ("mean", "none"):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = LF.linear_cross_entropy(hidden, weight, target, reduction=reduction, chunk_size=8)
        assert all(s < n * v // 4 for s in saved), saved
        node = loss.grad_fn
        while not hasattr(node, "grads"):
            node = node.next_functions[0][0]
        held = [t.numel() for t in (node.grads or ()) if t is not None]
        assert sum(held) <= n * hdim + v * hdim
        loss.sum().backward()


def test_no_grad_and_frozen_weight_skip_gradient_work(monkeypatch):
    calls = []
    real = linear_ce.run_chunks

    def spy(*args, **kw):
        calls.append((kw.get("need_h", False), kw.get("need_w", False), kw.get("need_b", False)))
        return real(*args, **kw)

    monkeypatch.setattr(linear_ce, "run_chunks", spy)
    hidden, weight, bias, target = _data(seed=12)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    with torch.no_grad():
        value = LF.linear_cross_entropy(h, w, target, bias)
    assert calls == [(False, False, False)] and not value.requires_grad
    torch.testing.assert_close(
        value.double(), ref_linear_ce(hidden.double(), weight.double(), target, bias.double())
    )
    calls.clear()
    LF.linear_cross_entropy(h, weight, target, bias).backward()  # frozen head: only grad_hidden
    assert calls == [(True, False, False)]
    assert w.grad is None and h.grad is not None
    calls.clear()
    LF.linear_cross_entropy(hidden, weight, target)  # nothing requires grad
    assert calls == [(False, False, False)]


# ---------------------------------------------------------------- 4. degenerate inputs


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_and_empty_give_connected_zero(reduction, row_mode):
    hidden, weight, bias, target = _data(seed=13)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    ignored = torch.full_like(target, IGNORE)
    assert_connected_zero(LF.linear_cross_entropy(h, w, ignored, b, reduction=reduction), h, w, b)
    assert_connected_zero(LF.linear_kd_loss(h, w, h, w, ignored, reduction=reduction), h, w)
    empty = torch.zeros(0, 6, requires_grad=True)
    assert_connected_zero(LF.linear_cross_entropy(empty, w, target[:0], reduction=reduction), empty, w)
    assert_connected_zero(LF.linear_kd_loss(empty, w, empty, w, reduction=reduction), empty, w)


def test_all_ignored_none_reduction_is_zero_vector():
    hidden, weight, _, _ = _data(seed=14)
    h = hidden.clone().requires_grad_(True)
    out = LF.linear_cross_entropy(h.reshape(1, 11, 6), weight, torch.full((1, 11), IGNORE), reduction="none")
    assert out.shape == (1, 11) and float(out.detach().abs().sum()) == 0.0 and out.requires_grad
    out.sum().backward()
    assert float(h.grad.abs().sum()) == 0.0


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_as_accurate_as_eager(dtype):
    """Error vs float64 no larger than eager ``F.cross_entropy((h @ W.T).float(), t)`` on the same inputs."""
    n, hdim, v = 96, 32, 200
    g = torch.Generator().manual_seed(15)
    hidden = torch.randn(n, hdim, generator=g).to(dtype)
    weight = (torch.randn(v, hdim, generator=g) * 0.5).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    target[::7] = IGNORE

    def run(fn, h, w):
        h = h.detach().clone().requires_grad_(True)
        w = w.detach().clone().requires_grad_(True)
        loss = fn(h, w)
        gh, gw = torch.autograd.grad(loss * 3.0, (h, w))
        return loss.detach().double(), gh.double(), gw.double()

    ref = run(lambda h, w: ref_linear_ce(h, w, target), hidden.double(), weight.double())
    eager = run(lambda h, w: F.cross_entropy((h @ w.T).float(), target), hidden, weight)
    # many small chunks: a half-precision weight-gradient accumulator would drift here
    ours = run(lambda h, w: LF.linear_cross_entropy(h, w, target, chunk_size=4), hidden, weight)
    assert ours[0].dtype == torch.float64
    for name, o, e, r in zip(("loss", "grad_hidden", "grad_weight"), ours, eager, ref):
        err_ours = float((o - r).abs().max())
        err_eager = float((e - r).abs().max())
        assert err_ours <= err_eager + 1e-3 * float(r.abs().max()) + 1e-6, (name, err_ours, err_eager)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_extreme_logits_finite(dtype):
    # weight = 64 * identity, so the logits are 64 x hidden: +-1e4 (bf16) / +-6e4 (fp16). (With the
    # extreme values in hidden itself, the true weight gradient sum_i g_i h_i would exceed fp16's range.)
    v = 16
    hidden = (extreme_logits((12, v), torch.float32) / 64).to(dtype).requires_grad_(True)
    weight = (64 * torch.eye(v)).to(dtype).requires_grad_(True)
    target = torch.randint(0, v, (12,), generator=torch.Generator().manual_seed(0))
    for kw in ({}, {"label_smoothing": 0.1, "z_loss": 1e-4}, {"softcap": 30.0}):
        loss = LF.linear_cross_entropy(hidden, weight, target, chunk_size=5, **kw)
        assert loss.dtype == torch.float32
        assert_finite_with_grads(loss, hidden, weight)
    loss = LF.linear_kd_loss(hidden, weight, hidden.detach().flip(0), weight.detach(), beta=0.5, chunk_size=5)
    assert_finite_with_grads(loss, hidden, weight)


# ---------------------------------------------------------------- 6. bad input


def test_bad_inputs_have_clear_messages():
    hidden, weight, bias, target = _data()
    with pytest.raises(
        LossValueError, match=r"weight has shape \(13, 5\), expected \(V, 6\) to match hidden"
    ):
        LF.linear_cross_entropy(hidden, weight[:, :5], target)
    with pytest.raises(LossValueError, match=r"target has shape \(10,\), expected \(11,\) to match hidden"):
        LF.linear_cross_entropy(hidden, weight, target[:10])
    with pytest.raises(LossValueError, match=r"target contains class index 13, expected values in \[0, 13\)"):
        LF.linear_cross_entropy(hidden, weight, torch.full_like(target, 13))
    with pytest.raises(LossTypeError, match="target must be an integer tensor"):
        LF.linear_cross_entropy(hidden, weight, target.float())
    with pytest.raises(
        LossTypeError, match="weight has dtype torch.float64, expected torch.float32 like hidden"
    ):
        LF.linear_cross_entropy(hidden, weight.double(), target)
    with pytest.raises(LossValueError, match=r"bias has shape \(12,\), expected \(13,\)"):
        LF.linear_cross_entropy(hidden, weight, target, bias[:12])
    with pytest.raises(LossValueError, match=r"hidden must be \(N, H\) or \(B, L, H\), got shape \(6,\)"):
        LF.linear_cross_entropy(hidden[0], weight, target[0])
    with pytest.raises(LossValueError, match="label_smoothing must be <= 1.0, got 1.5"):
        LF.linear_cross_entropy(hidden, weight, target, label_smoothing=1.5)
    with pytest.raises(LossValueError, match="z_loss must be >= 0.0"):
        LF.linear_cross_entropy(hidden, weight, target, z_loss=-1.0)
    with pytest.raises(LossValueError, match="softcap must be > 0.0, got 0"):
        losskit.LinearCrossEntropyLoss(softcap=0)
    with pytest.raises(LossValueError, match="chunk_size must be >= 1, got 0"):
        LF.linear_cross_entropy(hidden, weight, target, chunk_size=0)
    with pytest.raises(LossValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
        LF.linear_cross_entropy(hidden, weight, target, reduction="avg")
    with pytest.raises(LossValueError, match="normalizer is only used with reduction='mean'"):
        LF.linear_cross_entropy(hidden, weight, target, reduction="sum", normalizer=4)
    ht, wt = torch.randn(11, 3), torch.randn(13, 3)
    with pytest.raises(LossValueError, match=r"teacher_weight has 12 rows, expected 13 like student_weight"):
        LF.linear_kd_loss(hidden, weight, ht, wt[:12])
    with pytest.raises(
        LossValueError, match=r"teacher_hidden has shape \(10, 3\), expected leading dimensions"
    ):
        LF.linear_kd_loss(hidden, weight, ht[:10], wt)
    with pytest.raises(LossValueError, match="beta must be <= 1.0, got 2"):
        losskit.LinearKDLoss(beta=2)
    with pytest.raises(LossValueError, match="temperature must be > 0.0, got 0"):
        LF.linear_kd_loss(hidden, weight, ht, wt, temperature=0)


# ---------------------------------------------------------------- 7. module, serialisation, compile


def test_modules_match_functional_and_roundtrip():
    hidden, weight, bias, target = _data(seed=16)
    module = losskit.LinearCrossEntropyLoss(label_smoothing=0.1, z_loss=1e-3, softcap=5.0, chunk_size=4)
    assert list(module.parameters()) == [] and module.state_dict() == {}
    kw = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}
    assert_module_matches(
        module, LF.linear_cross_entropy(hidden, weight, target, bias, **kw), hidden, weight, target, bias
    )
    ht, wt = torch.randn(11, 3), torch.randn(13, 3)
    kd = losskit.LinearKDLoss(temperature=2.0, beta=0.3, reduction="sum")
    expected = LF.linear_kd_loss(hidden, weight, ht, wt, target, temperature=2.0, beta=0.3, reduction="sum")
    assert_module_matches(kd, expected, hidden, weight, ht, wt, target)


def test_compile_fullgraph_matches_eager():
    """``torch.compile(fullgraph=True)`` traces the chunk loop (masked path); values and grads match eager."""
    hidden, weight, bias, target = _data(seed=17)
    cot = torch.rand(11, generator=torch.Generator().manual_seed(1))
    for reduction in ("mean", "none"):
        fn = lambda h, w, b, reduction=reduction: LF.linear_cross_entropy(  # noqa: E731
            h, w, target, b, reduction=reduction, chunk_size=6, label_smoothing=0.1
        )
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, backend=COMPILE_BACKEND)
        results = []
        for f in (fn, compiled):
            leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
            out = f(*leaves)
            (out * (cot if reduction == "none" else 1.7)).sum().backward()
            results.append([out.detach()] + [x.grad for x in leaves])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)
    ht, wt = torch.randn(11, 3), torch.randn(13, 3)
    assert_compiles(
        lambda h, w: LF.linear_kd_loss(h, w, ht, wt, target, beta=0.5, chunk_size=6), hidden, weight
    )


# ---------------------------------------------------------------- distillation references


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_linear_kd_matches_reference(beta, reduction, row_mode):
    hs, ws, bs, target = _data(seed=18)
    ht, wt, bt, _ = _data(h=9, seed=19)
    teacher_hidden = ht.clone().requires_grad_(True)  # must not receive a gradient
    assert_matches_reference(
        lambda h, w, b: LF.linear_kd_loss(
            h, w, teacher_hidden, wt, target, temperature=2.0, beta=beta, reduction=reduction,
            chunk_size=4, student_bias=b, teacher_bias=bt,
        ) * 1.3,
        lambda h, w, b: ref_linear_kd(
            h, w, ht.double(), wt.double(), target, temperature=2.0, beta=beta, reduction=reduction,
            bs=b, bt=bt.double(),
        ) * 1.3,
        (hs, ws, bs),
        (0, 1, 2),
        rtol=2e-5,
        atol=1e-5 if reduction == "sum" else 2e-6,  # 'sum' grads add fp32 rounding of every token
    )  # fmt: skip
    assert teacher_hidden.grad is None
    # without target every token counts; 3-D inputs
    assert_matches_reference(
        lambda h, w: LF.linear_kd_loss(
            h, w, ht[:10].reshape(2, 5, -1), wt, beta=beta, reduction=reduction, chunk_size=3
        ),
        lambda h, w: ref_linear_kd(
            h, w, ht[:10].double().reshape(2, 5, -1), wt.double(), beta=beta, reduction=reduction
        ),
        (hs[:10].reshape(2, 5, -1), ws),
        (0, 1),
        rtol=2e-5,
        atol=1e-5 if reduction == "sum" else 2e-6,  # grads of size ~3 here; eager fp32 errs by 4e-6
    )


def test_linear_kd_consistent_with_materialised_jsd_and_ends_jump():
    hs, ws, _, target = _data(seed=20)
    ht, wt, _, _ = _data(h=9, seed=21)
    for beta in (0.0, 0.5, 1.0):
        fused = LF.linear_kd_loss(hs, ws, ht, wt, target, beta=beta, temperature=3.0)
        eager = LF.jsd_loss(hs @ ws.T, ht @ wt.T, beta=beta, temperature=3.0, target=target)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
    # generalised JSD tends to 0 at both ends; the special-cased ends are the full KLs
    near0 = LF.linear_kd_loss(hs, ws, ht, wt, beta=1e-4)
    near1 = LF.linear_kd_loss(hs, ws, ht, wt, beta=1 - 1e-4)
    assert float(near0) < 0.01 * float(LF.linear_kd_loss(hs, ws, ht, wt, beta=0.0))
    assert float(near1) < 0.01 * float(LF.linear_kd_loss(hs, ws, ht, wt, beta=1.0))
    # identical student and teacher: zero divergence for every beta
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(
            LF.linear_kd_loss(hs, ws, hs, ws, beta=beta), torch.tensor(0.0), atol=1e-6, rtol=0
        )


# ---------------------------------------------------------------- 8. registry


def test_registry():
    assert {"linear_cross_entropy", "linear_kd"} <= set(losskit.available("language"))
    assert isinstance(losskit.build("linear_cross_entropy", z_loss=1e-4), losskit.LinearCrossEntropyLoss)
    kd = losskit.build({"name": "linear_kd", "beta": 0.5, "temperature": 2.0})
    assert isinstance(kd, losskit.LinearKDLoss) and kd.beta == 0.5


def test_auto_chunk_size():
    assert linear_ce.auto_chunk_size(4096, 32000) == 384  # 48 MiB of float32 logits, multiple of 64
    assert linear_ce.auto_chunk_size(4096, 32000, budget=2**20) == 8
    assert linear_ce.auto_chunk_size(10, 32000) == 10
    assert linear_ce.auto_chunk_size(1024, 8000) == 128  # at most 1/8 of the tokens per chunk
    assert linear_ce.auto_chunk_size(4096, 10**8) == 1
    assert linear_ce.auto_chunk_size(0, 100) == 1


# ---------------------------------------------------------------- tails: relative precision


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_linear_ce_confident_tokens_keep_relative_precision(reduction, target):
    """Logits ``[x, 0, -x/2]`` for x in [-80, 80] (identity head): per-token losses and gradients to
    relative precision against exact values (mpmath), also where p_t is within float32's epsilon of 1."""
    import mpmath as mp

    mp.mp.dps = 60
    x = torch.linspace(-80.0, 80.0, 161)
    hidden = torch.stack([x, torch.zeros_like(x), -x / 2], 1).requires_grad_()
    weight = torch.eye(3)
    tgt = torch.full((x.numel(),), target)
    out = LF.linear_cross_entropy(hidden, weight, tgt, reduction=reduction)
    (gh,) = torch.autograd.grad(out.sum(), hidden)

    def f(*row):
        lse = mp.log(mp.fsum(mp.exp(v) for v in row))
        return lse - row[target]

    rows = [[mp.mpf(float(v)) for v in r] for r in hidden.detach().tolist()]
    ref_loss = [f(*r) for r in rows]
    ref_grad = [mp.diff(f, r, tuple(int(j == k) for j in range(3))) for r in rows for k in range(3)]
    got_grad = gh.double().reshape(-1).tolist()
    if reduction == "none":
        got = out.double().tolist()
        for g, r in zip(got, ref_loss):
            assert abs(g - float(r)) <= 2e-5 * abs(float(r)) or abs(float(r)) < 1e-30, (g, r)
    else:
        torch.testing.assert_close(out.double(), torch.tensor(float(mp.fsum(ref_loss)), dtype=torch.float64))
    for g, r in zip(got_grad, ref_grad):
        r = float(r)
        assert abs(g) <= 1e-30 if abs(r) < 1e-30 else abs(g - r) <= 2e-5 * abs(r), (g, r)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_linear_kd_confident_tokens_keep_relative_precision(beta):
    """Student logits ``[x, 0, -x/2]``, teacher ``[x/2, 1, -x/4]`` for x in [-80, 80] (identity heads):
    per-token divergences and student gradients to relative precision against exact values (mpmath)."""
    import mpmath as mp

    mp.mp.dps = 60
    x = torch.linspace(-80.0, 80.0, 161)
    hs = torch.stack([x, torch.zeros_like(x), -x / 2], 1).requires_grad_()
    ht = torch.stack([x / 2, torch.ones_like(x), -x / 4], 1)
    eye = torch.eye(3)
    out = LF.linear_kd_loss(hs, eye, ht, eye, beta=beta, reduction="none")
    (gh,) = torch.autograd.grad(out.sum(), hs)

    def f(*v):
        lse_s = mp.log(mp.fsum(mp.exp(u) for u in v[:3]))
        lse_t = mp.log(mp.fsum(mp.exp(u) for u in v[3:]))
        ls = [u - lse_s for u in v[:3]]
        lt = [u - lse_t for u in v[3:]]
        if beta == 0.0:
            return mp.fsum(mp.exp(b) * (b - a) for a, b in zip(ls, lt))
        if beta == 1.0:
            return mp.fsum(mp.exp(a) * (a - b) for a, b in zip(ls, lt))
        lm = [mp.log(beta * mp.exp(b) + (1 - beta) * mp.exp(a)) for a, b in zip(ls, lt)]
        return beta * mp.fsum(mp.exp(b) * (b - m) for b, m in zip(lt, lm)) + (1 - beta) * mp.fsum(
            mp.exp(a) * (a - m) for a, m in zip(ls, lm)
        )

    rows = [[mp.mpf(float(v)) for v in a + b] for a, b in zip(hs.detach().tolist(), ht.tolist())]
    ref = [float(f(*r)) for r in rows]
    ref_g = [float(mp.diff(f, r, tuple(int(j == k) for j in range(6)))) for r in rows for k in range(3)]
    for got, exact in ((out.double().tolist(), ref), (gh.double().reshape(-1).tolist(), ref_g)):
        bad = [
            (g, r)
            for g, r in zip(got, exact)
            if not (abs(g) <= 1e-30 if abs(r) < 1e-30 else abs(g - r) <= 2e-5 * abs(r))
        ]
        assert not bad, bad[:4]
