"""Options of the fused linear cross-entropy: class and token weights, logit scale, DFT scaling,
shifted labels and side outputs.

References are plain float64 formulas on materialised logits (and ``F.cross_entropy`` where it has
the option).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losskit import LossTypeError, LossValueError
from losskit.language import LinearCrossEntropyLoss, LinearCrossEntropyOutput, linear_cross_entropy

IGNORE = -100
V, H = 11, 5


def ref_loss(
    hidden, weight, target, bias=None, class_weight=None, token_weight=None, eps=0.0, z_loss=0.0,
    softcap=None, logit_scale=1.0, token_scaling=False, reduction="mean", normalizer=None, parts=False,
):  # fmt: skip
    """Per token: m [(1-eps) w_t (lse - s_t) + eps/V sum_j w_j (lse - s_j) + z w_t lse^2], m = u sg(p_t)."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = target.reshape(-1)
    x = h @ weight.T
    if bias is not None:
        x = x + bias
    s = x if softcap is None else softcap * torch.tanh(x / softcap)
    s = s * logit_scale
    n, v = s.shape
    cw = torch.ones(v, dtype=s.dtype) if class_weight is None else class_weight.to(s.dtype)
    u = torch.ones(n, dtype=s.dtype) if token_weight is None else token_weight.reshape(-1).to(s.dtype)
    losses, zs, denom = [], [], 0.0
    for i in range(n):
        ti = int(t[i])
        if ti == IGNORE:
            losses.append(s[i].sum() * 0.0)
            zs.append(s[i].sum() * 0.0)
            continue
        lse = torch.logsumexp(s[i], 0)
        loss = (1 - eps) * cw[ti] * (lse - s[i, ti]) + eps / v * (cw * (lse - s[i])).sum()
        z = z_loss * cw[ti] * lse**2
        m = u[i] * (torch.exp(s[i, ti] - lse).detach() if token_scaling else 1.0)
        losses.append(m * (loss + z))
        zs.append(m * z)
        denom = denom + u[i] * cw[ti]
    losses, zs = torch.stack(losses), torch.stack(zs)

    def red(x):
        if reduction == "none":
            return x.reshape(target.shape)
        if reduction == "sum":
            return x.sum()
        if normalizer is not None:
            return x.sum() / normalizer
        return x.sum() / denom if float(denom) > 0 else x.sum() * 0.0

    return (red(losses), red(zs)) if parts else red(losses)


def make(n=9, dtype=torch.float64, seed=0, bias=True, ignore=(2, 6)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype)
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None
    target = torch.randint(0, V, (n,), generator=g)
    for i in ignore:
        if i < n:
            target[i] = IGNORE
    cw = torch.rand(V, generator=g, dtype=dtype) + 0.1
    tw = torch.rand(n, generator=g, dtype=dtype) * 2
    return hidden, weight, b, target, cw, tw


def grads_of(fn, *leaves):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    out = fn(*leaves)
    cot = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    gs = torch.autograd.grad((out * cot).sum(), leaves)
    return out.detach(), gs


def assert_same_values_and_grads(fn, ref, leaves, atol=1e-10, rtol=1e-8):
    out, gs = grads_of(fn, *leaves)
    rout, rgs = grads_of(ref, *leaves)
    torch.testing.assert_close(out, rout, atol=atol, rtol=rtol)
    for g, rg in zip(gs, rgs):
        torch.testing.assert_close(g, rg, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- class weight == torch


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_weight_matches_torch_cross_entropy(eps, reduction):
    hidden, weight, bias, target, cw, _ = make()
    assert_same_values_and_grads(
        lambda h, w, b: linear_cross_entropy(
            h, w, target, b, label_smoothing=eps, reduction=reduction, class_weight=cw, chunk_size=2
        ),
        lambda h, w, b: F.cross_entropy(
            h @ w.T + b, target, weight=cw, label_smoothing=eps, reduction=reduction, ignore_index=IGNORE
        ),
        (hidden, weight, bias),
    )


def test_reference_of_class_weight_with_smoothing_is_torch():
    # the reference's smoothing formula sum_j w_j (lse - s_j) is torch's
    hidden, weight, bias, target, cw, _ = make()
    for red in ("mean", "none"):
        torch.testing.assert_close(
            ref_loss(hidden, weight, target, bias, class_weight=cw, eps=0.3, reduction=red),
            F.cross_entropy(hidden @ weight.T + bias, target, weight=cw, label_smoothing=0.3, reduction=red),
        )


# ---------------------------------------------------------------- every option against the reference

CASES = {
    "token_weight": dict(token_weight=True),
    "class_z_smooth": dict(class_weight=True, z_loss=1e-2, eps=0.2),
    "scale_softcap": dict(logit_scale=0.5, softcap=3.0),
    "scale_only": dict(logit_scale=2.5, eps=0.1, z_loss=1e-3),
    "dft": dict(token_scaling=True),
    "all": dict(class_weight=True, token_weight=True, eps=0.1, z_loss=1e-3, softcap=4.0, logit_scale=0.7,
                token_scaling=True),
}  # fmt: skip


def _kw(case, cw, tw):
    o = dict(CASES[case])
    o["class_weight"] = cw if o.get("class_weight") else None
    o["token_weight"] = tw if o.get("token_weight") else None
    return o


def _call_kw(o):
    o = dict(o)
    o["label_smoothing"] = o.pop("eps", 0.0)
    return o


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_match_reference(case, reduction):
    hidden, weight, bias, target, cw, tw = make(n=13, ignore=(0, 7))
    o = _kw(case, cw, tw)
    assert_same_values_and_grads(
        lambda h, w, b: linear_cross_entropy(h, w, target, b, reduction=reduction, chunk_size=3, **_call_kw(o)),
        lambda h, w, b: ref_loss(h, w, target, b, reduction=reduction, **o),
        (hidden, weight, bias),
    )


def test_token_weight_mean_divides_by_weight_sum_and_normalizer_replaces_it():
    hidden, weight, bias, target, _, tw = make()
    counted = target != IGNORE
    per_tok = F.cross_entropy(hidden @ weight.T + bias, target, reduction="none")
    loss = linear_cross_entropy(hidden, weight, target, bias, token_weight=tw)
    torch.testing.assert_close(loss, (per_tok * tw).sum() / tw[counted].sum())
    loss = linear_cross_entropy(hidden, weight, target, bias, token_weight=tw, normalizer=7.0)
    torch.testing.assert_close(loss, (per_tok * tw).sum() / 7.0)
    # both weights: denominator sum u_i w_{t_i}
    _, _, _, _, cw, _ = make(seed=3)
    loss = linear_cross_entropy(hidden, weight, target, bias, token_weight=tw, class_weight=cw)
    wt = cw[target.clamp_min(0)]
    per_w = F.cross_entropy(hidden @ weight.T + bias, target, weight=cw, reduction="none")
    torch.testing.assert_close(loss, (per_w * tw).sum() / (tw * wt)[counted].sum())


def test_bool_token_weight_is_a_mask():
    hidden, weight, bias, target, _, _ = make()
    mask = torch.arange(target.numel()) % 3 != 0
    loss = linear_cross_entropy(hidden, weight, target, bias, token_weight=mask)
    ref = F.cross_entropy(hidden @ weight.T + bias, target.masked_fill(~mask, IGNORE))
    torch.testing.assert_close(loss, ref)


def test_logit_scale_is_inverse_temperature():
    hidden, weight, bias, target, _, _ = make()
    loss = linear_cross_entropy(hidden, weight, target, bias, logit_scale=1 / 3.0)
    torch.testing.assert_close(loss, F.cross_entropy((hidden @ weight.T + bias) / 3.0, target))


def test_dft_gradient_is_p_target_times_ce_gradient():
    hidden, weight, bias, target, _, _ = make(ignore=())
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, target, bias, token_scaling=True, reduction="sum").backward()
    logits = (h.detach() @ weight.T + bias).requires_grad_()
    p_t = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1).detach()
    (F.cross_entropy(logits, target, reduction="none") * p_t).sum().backward()
    torch.testing.assert_close(h.grad, logits.grad @ weight)


# ---------------------------------------------------------------- shift_labels


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_shift_labels_matches_hf_style_shift(reduction):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 6, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (3, 6), generator=g)
    labels[1, 3] = IGNORE
    tw = torch.rand(3, 6, generator=g, dtype=torch.float64)

    def ref(h, w):
        logits = h[:, :-1] @ w.T
        per = F.cross_entropy(logits.reshape(-1, V), labels[:, 1:].reshape(-1), reduction="none").reshape(3, 5)
        per = per * tw[:, 1:]
        if reduction == "none":
            return torch.cat([per, per.new_zeros(3, 1)], 1)
        if reduction == "sum":
            return per.sum()
        return per.sum() / tw[:, 1:][labels[:, 1:] != IGNORE].sum()

    assert_same_values_and_grads(
        lambda h, w: linear_cross_entropy(
            h, w, labels, reduction=reduction, shift_labels=True, token_weight=tw, chunk_size=4
        ),
        ref,
        (hidden, weight),
    )


# ---------------------------------------------------------------- side outputs


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["plain", "all"])
def test_aux_outputs_match_full_logit_formulas(reduction, case):
    hidden, weight, bias, target, cw, tw = make(n=14, ignore=(1, 9))
    o = _kw("all", cw, tw) if case == "all" else dict(z_loss=1e-2)
    h = hidden.clone().requires_grad_()
    out = linear_cross_entropy(h, weight, target, bias, reduction=reduction, chunk_size=4, return_aux=True,
                               **_call_kw(o))  # fmt: skip
    assert isinstance(out, LinearCrossEntropyOutput)
    plain = linear_cross_entropy(h, weight, target, bias, reduction=reduction, chunk_size=4, **_call_kw(o))
    torch.testing.assert_close(out.loss, plain, atol=0, rtol=0)
    ref, ref_z = ref_loss(hidden, weight, target, bias, reduction=reduction, parts=True, **o)
    torch.testing.assert_close(out.loss.detach(), ref)
    torch.testing.assert_close(out.z_loss, ref_z)
    x = hidden @ weight.T + bias
    s = x if o.get("softcap") is None else o["softcap"] * torch.tanh(x / o["softcap"])
    s = s * o.get("logit_scale", 1.0)
    counted = target != IGNORE
    lse = torch.logsumexp(s, 1)
    torch.testing.assert_close(out.lse, torch.where(counted, lse, 0.0))
    p = torch.softmax(s, 1)
    ent = -(p * torch.log_softmax(s, 1)).sum(1)
    torch.testing.assert_close(out.entropy, ent[counted].mean())
    acc = (s.argmax(1) == target)[counted].double().mean()
    torch.testing.assert_close(out.accuracy, acc)
    assert not any(t.requires_grad for t in out[1:])
    out.loss.sum().backward()  # the loss is still differentiable
    assert h.grad is not None


def test_aux_accuracy_counts_argmax_hits():
    weight = torch.eye(4, dtype=torch.float64)
    hidden = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]], dtype=torch.float64)
    target = torch.tensor([0, 2, IGNORE, 3])
    out = linear_cross_entropy(hidden, weight, target, return_aux=True)
    assert float(out.accuracy) == pytest.approx(2 / 3)


def test_aux_with_shift_labels_is_aligned_with_hidden():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 4, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (2, 4), generator=g)
    out = linear_cross_entropy(hidden, weight, labels, shift_labels=True, return_aux=True)
    lse = torch.logsumexp(hidden @ weight.T, -1)
    torch.testing.assert_close(out.lse[:, :-1], lse[:, :-1])
    assert bool((out.lse[:, -1] == 0).all())


# ---------------------------------------------------------------- gradcheck, half precision


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_all_options(reduction):
    hidden, weight, bias, target, cw, tw = make(n=6, ignore=(2,))
    # without token_scaling: its detached p_t makes the gradient differ from the numerical one by design
    o = _call_kw(_kw("all", cw, tw))
    o["token_scaling"] = False
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, target, b, reduction=reduction, chunk_size=4, **o), leaves
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_against_float64(dtype):
    hidden, weight, bias, target, cw, tw = make(n=40, ignore=(3, 17))
    o = _kw("all", cw, tw)
    low = [x.to(dtype).requires_grad_() for x in (hidden, weight, bias)]
    out = linear_cross_entropy(*low[:2], target, low[2], chunk_size=16, **_call_kw(o))
    assert out.dtype == torch.float32
    out.backward()
    ref_leaves = [x.detach().double().requires_grad_() for x in low]
    ref = ref_loss(ref_leaves[0], ref_leaves[1], target, ref_leaves[2], **o)
    ref.backward()
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for x, r in zip(low, ref_leaves):
        torch.testing.assert_close(x.grad.double(), r.grad, **tol)


# ---------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("return_aux", [False, True])
def test_all_token_weights_zero_gives_zero_mean_and_zero_grads(return_aux):
    hidden, weight, bias, target, _, tw = make()
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    out = linear_cross_entropy(*leaves[:2], target, leaves[2], token_weight=torch.zeros_like(tw),
                               return_aux=return_aux)  # fmt: skip
    loss = out.loss if return_aux else out
    assert float(loss.detach()) == 0.0
    loss.backward()
    for x in leaves:
        assert x.grad is not None and bool((x.grad == 0).all())
    if return_aux:  # the side outputs are still those of the counted tokens
        counted = target != IGNORE
        torch.testing.assert_close(out.lse[counted], torch.logsumexp(hidden @ weight.T + bias, 1)[counted])


def test_zero_class_weight_denominator_with_smoothing_gives_zero():
    # every counted target has class weight 0 but smoothing still weighs other classes: defined as 0
    hidden, weight, bias, target, cw, _ = make()
    cw = cw.clone()
    cw[target[target != IGNORE]] = 0.0
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, target, bias, class_weight=cw, label_smoothing=0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert bool((h.grad == 0).all())


def test_all_ignored_with_options():
    hidden, weight, bias, _, cw, tw = make()
    target = torch.full((hidden.shape[0],), IGNORE)
    h = hidden.clone().requires_grad_()
    out = linear_cross_entropy(h, weight, target, bias, class_weight=cw, token_weight=tw, token_scaling=True,
                               return_aux=True)  # fmt: skip
    assert float(out.loss.detach()) == 0.0 and float(out.accuracy) == 0.0 and float(out.entropy) == 0.0
    out.loss.backward()
    assert bool((h.grad == 0).all())
    none = linear_cross_entropy(h, weight, target, bias, token_weight=tw, reduction="none")
    assert none.shape == target.shape and bool((none == 0).all())


# ---------------------------------------------------------------- errors


def test_bad_options_raise_naming_the_argument():
    hidden, weight, bias, target, cw, tw = make()
    cases = [
        (dict(class_weight=cw[:-1]), LossValueError, "class_weight"),
        (dict(class_weight=-cw), LossValueError, "class_weight"),
        (dict(class_weight=torch.ones(V, dtype=torch.long)), LossTypeError, "class_weight"),
        (dict(token_weight=tw[:-1]), LossValueError, "token_weight"),
        (dict(token_weight=-tw), LossValueError, "token_weight"),
        (dict(token_weight=tw.clone().fill_(float("nan"))), LossValueError, "token_weight"),
        (dict(token_weight=torch.ones(tw.shape, dtype=torch.long)), LossTypeError, "token_weight"),
        (dict(token_weight=tw.clone().requires_grad_()), LossValueError, "token_weight"),
        (dict(logit_scale=0.0), LossValueError, "logit_scale"),
        (dict(logit_scale=-1.0), LossValueError, "logit_scale"),
        (dict(token_scaling=1), LossTypeError, "token_scaling"),
        (dict(shift_labels=True), LossValueError, "shift_labels"),
        (dict(return_aux="yes"), LossTypeError, "return_aux"),
    ]
    for kw, exc, name in cases:
        with pytest.raises(exc, match=name):
            linear_cross_entropy(hidden, weight, target, bias, **kw)
    with pytest.raises(LossValueError, match="token_weight"):
        linear_cross_entropy(hidden.reshape(3, 3, H), weight, target.reshape(3, 3), shift_labels=True,
                             token_weight=tw)  # fmt: skip
    with pytest.raises(LossValueError, match="class_weight"):
        LinearCrossEntropyLoss(class_weight=-torch.ones(V))
    with pytest.raises(LossValueError, match="logit_scale"):
        LinearCrossEntropyLoss(logit_scale=0)


# ---------------------------------------------------------------- module form


def test_module_accepts_the_options():
    hidden, weight, bias, target, cw, tw = make(n=12, ignore=(4,))
    o = _kw("all", cw, tw)
    mod = LinearCrossEntropyLoss(
        label_smoothing=o["eps"], z_loss=o["z_loss"], softcap=o["softcap"], class_weight=cw,
        logit_scale=o["logit_scale"], token_scaling=True, chunk_size=5, return_aux=True,
    )  # fmt: skip
    assert "class_weight" in repr(mod) and "token_scaling=True" in repr(mod)
    assert mod.class_weight is not None and "class_weight" in dict(mod.named_buffers())
    out = mod(hidden, weight, target, bias, token_weight=tw)
    assert isinstance(out, LinearCrossEntropyOutput)
    torch.testing.assert_close(out.loss, ref_loss(hidden, weight, target, bias, **o))
    causal = LinearCrossEntropyLoss(shift_labels=True, reduction="none")
    h3 = hidden.reshape(3, 4, H)
    t3 = target.reshape(3, 4).clamp_min(0)
    per = causal(h3, weight, t3)
    ref = F.cross_entropy((h3[:, :-1] @ weight.T).reshape(-1, V), t3[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(per[:, :-1], ref.reshape(3, 3))


def test_double_backward_with_options():
    hidden, weight, bias, target, cw, tw = make(n=8, ignore=(3,))
    o = _kw("all", cw, tw)

    def penalty(fn):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        (gh,) = torch.autograd.grad(fn(h, w), h, create_graph=True)
        (gw,) = torch.autograd.grad(gh.square().sum(), w)
        return gh.detach(), gw

    gh, gw = penalty(lambda h, w: linear_cross_entropy(h, w, target, bias, chunk_size=3, **_call_kw(o)))
    rgh, rgw = penalty(lambda h, w: ref_loss(h, w, target, bias, **o))
    torch.testing.assert_close(gh, rgh)
    torch.testing.assert_close(gw, rgw)
