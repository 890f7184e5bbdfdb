"""Multi-task loss and weighting strategies: formulas written out by hand, gradients, short training runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losskit
from ddp_utils import run_distributed
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    roundtrip_modules,
)
from losskit import (
    DWA,
    FixedWeighting,
    GeometricLossStrategy,
    GradNorm,
    LossTypeError,
    LossValueError,
    MultiTaskLoss,
    RandomLossWeighting,
    UncertaintyWeighting,
)


def _seed_batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 10, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        torch.randn(n, 1, generator=g),
        torch.randn(n, 1, generator=g),
        torch.randn(n, 5, generator=g),
        torch.randn(n, 5, generator=g),
    )


def seed_formula(
    cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets, cw=1.0, rw=1.0, aw=1.0
):
    """The seed's MultiTaskLoss.forward, re-typed."""
    cls_loss = F.cross_entropy(cls_preds, cls_targets)
    reg_loss = F.mse_loss(reg_preds, reg_targets)
    aux_loss = F.mse_loss(aux_preds, aux_targets)
    return cw * cls_loss + rw * reg_loss + aw * aux_loss


# ---------------------------------------------------------------- seed form


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.1)])
def test_seed_form_equals_seed_formula(weights):
    args = _seed_batch()
    loss_fn = MultiTaskLoss(*weights)
    assert_matches_reference(
        lambda a, b, c, d, e, f: loss_fn(a, b, c, d, e, f),
        lambda a, b, c, d, e, f: seed_formula(a, b, c, d, e, f, *weights),
        args,
        (0, 2, 3, 4, 5),
    )
    # the seed example, with only the import changed
    cls_preds = torch.randn(16, 10)
    cls_targets = torch.randint(0, 10, (16,))
    reg_preds = torch.randn(16, 1)
    reg_targets = torch.randn(16, 1)
    aux_preds = torch.randn(16, 5)
    aux_targets = torch.randn(16, 5)
    loss_fn = MultiTaskLoss()
    loss = loss_fn(cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets)
    torch.testing.assert_close(
        loss, seed_formula(cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets)
    )
    assert sorted(loss_fn.last_losses) == ["aux", "cls", "reg"]
    torch.testing.assert_close(loss_fn.last_losses["cls"], F.cross_entropy(cls_preds, cls_targets))
    # mappings work in the seed form too
    preds = {"cls": cls_preds, "reg": reg_preds, "aux": aux_preds}
    targets = {"cls": cls_targets, "reg": reg_targets, "aux": aux_targets}
    torch.testing.assert_close(loss_fn(preds, targets), loss)


# ---------------------------------------------------------------- general form, fixed weights, logging


def _two_task_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    preds = {"a": torch.randn(6, 3, generator=g), "b": torch.randn(6, generator=g)}
    targets = {"a": torch.randint(0, 3, (6,), generator=g), "b": torch.randn(6, generator=g) * 5}
    return preds, targets


def test_general_form_fixed_weights_and_logging():
    preds, targets = _two_task_batch()
    mtl = MultiTaskLoss(
        tasks={"a": "cross_entropy", "b": {"name": "huber", "delta": 0.5}}, weights=[2.0, 0.25]
    )
    la = F.cross_entropy(preds["a"], targets["a"])
    lb = F.huber_loss(preds["b"], targets["b"], delta=0.5)
    torch.testing.assert_close(mtl(preds, targets), 2.0 * la + 0.25 * lb)
    assert set(mtl.last_losses) == {"a", "b"}
    torch.testing.assert_close(mtl.last_losses["b"], lb)
    torch.testing.assert_close(mtl.last_weights["a"], torch.tensor(2.0))
    assert not mtl.last_losses["a"].requires_grad and not mtl.last_weights["a"].requires_grad
    # default: equal weights
    eq = MultiTaskLoss(tasks={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()})
    torch.testing.assert_close(eq(preds, targets), la + F.mse_loss(preds["b"], targets["b"]))


def test_missing_extra_keys_and_bad_configs():
    preds, targets = _two_task_batch()
    mtl = MultiTaskLoss(tasks={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()})
    with pytest.raises(
        LossValueError, match=r"preds is missing task\(s\) \['b'\]; expected keys \['a', 'b'\]"
    ):
        mtl({"a": preds["a"]}, targets)
    with pytest.raises(
        LossValueError, match=r"targets has unknown task\(s\) \['c'\]; expected keys \['a', 'b'\]"
    ):
        mtl(preds, {**targets, "c": torch.zeros(1)})
    with pytest.raises(
        LossValueError, match=r"is missing task\(s\) \['b'\] and has unknown task\(s\) \['x'\]"
    ):
        mtl({"a": preds["a"], "x": preds["b"]}, targets)
    with pytest.raises(LossTypeError, match=r"expects \(preds, targets\): two mappings keyed by task name"):
        mtl(preds["a"], targets["a"])
    with pytest.raises(LossTypeError, match=r"expects \(cls_preds, cls_targets, .*got 3 positional"):
        MultiTaskLoss()(1, 2, 3)
    with pytest.raises(LossValueError, match=r"task 'b' returned shape \(6,\); a task loss must be a scalar"):
        MultiTaskLoss(tasks={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss(reduction="none")})(preds, targets)
    with pytest.raises(LossValueError, match="weighting must be one of 'fixed', 'uncertainty', 'dwa', 'rlw'"):
        MultiTaskLoss(tasks={"a": nn.MSELoss()}, weighting="pcgrad")
    with pytest.raises(LossValueError, match="weights are only used with weighting='fixed'"):
        MultiTaskLoss(tasks={"a": nn.MSELoss()}, weighting="dwa", weights=[1.0])
    with pytest.raises(LossValueError, match="cls_weight / reg_weight / aux_weight belong to the seed form"):
        MultiTaskLoss(2.0, tasks={"a": nn.MSELoss()})
    with pytest.raises(LossValueError, match=r"cls_weight must be >= 0.0, got -1"):
        MultiTaskLoss(cls_weight=-1)
    with pytest.raises(LossValueError, match="tasks must be a non-empty mapping"):
        MultiTaskLoss(tasks={})
    with pytest.raises(LossValueError, match="unknown loss 'hubber'"):
        MultiTaskLoss(tasks={"a": "hubber"})
    with pytest.raises(LossValueError, match="form must be one of 'half', 'full'"):
        UncertaintyWeighting(2, form="log")
    with pytest.raises(LossValueError, match="GradNorm needs the shared parameters"):
        g = MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weighting="gradnorm")
        x = torch.randn(4, requires_grad=True)
        g.backward(g({"a": x, "b": 2 * x}, {"a": torch.zeros(4), "b": torch.zeros(4)}))
    with pytest.raises(LossValueError, match=r"DWA.epoch_end\(\) was called but no training losses"):
        DWA(2).epoch_end()


# ---------------------------------------------------------------- uncertainty


@pytest.mark.parametrize("form", ["half", "full"])
def test_uncertainty_value_and_gradients(form):
    s0 = torch.tensor([0.3, -0.7, 1.2], dtype=torch.float64)
    weighting = UncertaintyWeighting(3, form=form).double()
    with torch.no_grad():
        weighting.log_vars.copy_(s0)
    L = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    total, w = weighting(L)
    c = 0.5 if form == "half" else 1.0
    expected = sum(c * math.exp(-float(s0[k])) * float(L.detach()[k]) + c * float(s0[k]) for k in range(3))
    assert abs(float(total.detach()) - expected) < 1e-12
    total.backward()
    for k in range(3):
        e = math.exp(-float(s0[k]))
        # analytic: d/ds = -c e^{-s} L + c ; d/dL = c e^{-s}
        assert abs(float(weighting.log_vars.grad[k]) - (-c * e * float(L.detach()[k]) + c)) < 1e-12
        assert abs(float(L.grad[k]) - c * e) < 1e-12
        assert abs(float(w[k]) - c * e) < 1e-12
    # the total can be negative (small log-variances, small losses)
    with torch.no_grad():
        weighting.log_vars.fill_(-3.0)
    assert float(weighting(torch.full((3,), 0.01, dtype=torch.float64))[0].detach()) < 0


def test_uncertainty_through_multitask_loss_and_state_dict():
    preds, targets = _two_task_batch(1)
    mtl = MultiTaskLoss(tasks={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}, weighting="uncertainty")
    assert "weighting.log_vars" in mtl.state_dict()
    with torch.no_grad():
        mtl.weighting.log_vars.copy_(torch.tensor([0.5, -0.25]))
    loss = mtl(preds, targets)
    loss.backward()
    s = mtl.weighting.log_vars.detach()
    L = torch.stack([mtl.last_losses["a"], mtl.last_losses["b"]])
    torch.testing.assert_close(mtl.weighting.log_vars.grad, -0.5 * torch.exp(-s) * L + 0.5)
    assert_module_matches(mtl, mtl(preds, targets), preds, targets)


# ---------------------------------------------------------------- DWA


def _softmax_by_hand(r, T):
    e = [math.exp(v / T) for v in r]
    return [len(r) * v / sum(e) for v in e]


def test_dwa_weights_from_epoch_means_by_hand():
    dwa = DWA(2, temperature=2.0)
    # per-step losses; epoch means: [1.0, 2.0], [0.8, 1.0], [0.4, 0.9]
    epochs = [
        [[1.2, 1.5], [0.8, 2.5]],
        [[0.7, 1.0], [0.9, 1.2], [0.8, 0.8]],
        [[0.5, 1.0], [0.3, 0.8]],
    ]
    seen_weights = []
    for steps in epochs:
        for step in steps:
            _, w = dwa(torch.tensor(step))
            seen_weights.append(w.tolist())
        dwa.epoch_end()
    # epochs 1 and 2 use weights 1
    for w in seen_weights[:5]:
        assert w == [1.0, 1.0]
    # epoch 3: r = L(2) / L(1) = [0.8 / 1.0, 1.0 / 2.0]
    exp3 = _softmax_by_hand([0.8, 0.5], 2.0)
    for w in seen_weights[5:]:
        assert w == pytest.approx(exp3, abs=1e-6)
    assert exp3 == pytest.approx([1.07486, 0.92514], abs=1e-5)
    # after three epochs: r = L(3) / L(2) = [0.4 / 0.8, 0.9 / 1.0]
    total, w = dwa(torch.tensor([1.0, 1.0]))
    assert w.tolist() == pytest.approx(_softmax_by_hand([0.5, 0.9], 2.0), abs=1e-6)
    assert float(total) == pytest.approx(2.0, abs=1e-6)
    # eval mode does not record; the state survives a state_dict round trip
    dwa.eval()
    dwa(torch.tensor([100.0, 100.0]))
    copy = DWA(2)
    copy.load_state_dict(dwa.state_dict())
    torch.testing.assert_close(copy.current_weights(), dwa.current_weights())
    assert int(copy.epoch_steps) == 1


# ---------------------------------------------------------------- RLW, GLS


def test_rlw_softmax_of_normal_samples_seeded():
    rlw = RandomLossWeighting(3, seed=7)
    g = torch.Generator().manual_seed(7)
    L = torch.tensor([1.0, 2.0, 3.0])
    for _ in range(3):
        expected = torch.softmax(torch.randn(3, generator=g), 0)
        total, w = rlw(L)
        torch.testing.assert_close(w, expected)
        torch.testing.assert_close(total, (expected * L).sum())
    other = RandomLossWeighting(3, seed=7)
    torch.testing.assert_close(
        other(L)[1], torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(7)), 0)
    )
    rlw.eval()
    torch.testing.assert_close(rlw(L)[1], torch.full((3,), 1 / 3))
    # unseeded: the global generator, still weights on the simplex
    w = RandomLossWeighting(4)(torch.ones(4))[1]
    assert float(w.sum()) == pytest.approx(1.0) and (w > 0).all()


def test_gls_value_gradient_and_zero_loss():
    L = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64, requires_grad=True)
    total, w = GeometricLossStrategy(3)(L)
    expected = (0.5 * 2.0 * 8.0) ** (1 / 3)
    assert abs(float(total.detach()) - expected) < 1e-12
    total.backward()
    for k, v in enumerate((0.5, 2.0, 8.0)):
        assert abs(float(L.grad[k]) - expected / (3 * v)) < 1e-12
        assert abs(float(w[k]) - expected / (3 * v)) < 1e-12
    # scale invariance: one task x100 scales the total by 100^(1/3)
    scaled = GeometricLossStrategy(3)(torch.tensor([50.0, 2.0, 8.0], dtype=torch.float64))[0]
    assert abs(float(scaled) - expected * 100 ** (1 / 3)) < 1e-9
    z = torch.tensor([0.0, 1.0], requires_grad=True)
    t0, _ = GeometricLossStrategy(2)(z)
    assert float(t0.detach()) == 0.0
    assert_finite_with_grads(t0, z)


# ---------------------------------------------------------------- GradNorm


def _gradnorm_problem(scale_b=100.0, seed=0):
    """Shared layer W, two linear heads; task b's targets are ``scale_b`` times larger."""
    torch.manual_seed(seed)
    shared = nn.Linear(4, 8)
    head_a, head_b = nn.Linear(8, 1), nn.Linear(8, 1)
    x = torch.randn(32, 4)
    targets = {"a": torch.randn(32, 1), "b": torch.randn(32, 1) * scale_b}
    return shared, head_a, head_b, x, targets


def _task_grad_norms(mtl, shared, head_a, head_b, x, targets):
    h = shared(x)
    la = F.mse_loss(head_a(h), targets["a"])
    lb = F.mse_loss(head_b(h), targets["b"])
    norms = [torch.autograd.grad(lv, shared.weight, retain_graph=True)[0].norm() for lv in (la, lb)]
    w = mtl.weighting.weights.detach()
    return float(w[0] * norms[0]), float(w[1] * norms[1]), torch.stack(norms), torch.stack([la, lb]).detach()


def test_gradnorm_weight_gradient_matches_formula():
    shared, ha, hb, x, targets = _gradnorm_problem(10.0)
    mtl = MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weighting=GradNorm(2, alpha=1.5))
    with torch.no_grad():
        mtl.weighting.weights.copy_(torch.tensor([1.5, 0.5]))
    h = shared(x)
    loss = mtl({"a": ha(h), "b": hb(h)}, targets)
    _, _, norms, L = _task_grad_norms(mtl, shared, ha, hb, x, targets)
    mtl.backward(loss, shared_parameters=shared.weight)
    # first step: L(0) = L, so r = 1 and the target is mean(G) for both tasks
    G = torch.tensor([1.5, 0.5]) * norms
    expected = torch.sign(G - G.mean()) * norms
    torch.testing.assert_close(mtl.weighting.weights.grad, expected, rtol=1e-5, atol=1e-6)
    # the network got the gradient of sum w_k L_k (weights as constants)
    h2 = shared(x)
    ref_total = 1.5 * F.mse_loss(ha(h2), targets["a"]) + 0.5 * F.mse_loss(hb(h2), targets["b"])
    (ref_g,) = torch.autograd.grad(ref_total, shared.weight)
    torch.testing.assert_close(shared.weight.grad, ref_g)
    torch.testing.assert_close(loss, ref_total)
    torch.testing.assert_close(mtl.weighting.initial_losses.float(), L)


def test_gradnorm_balances_weighted_gradient_norms():
    shared, ha, hb, x, targets = _gradnorm_problem(100.0)
    mtl = MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weighting="gradnorm")
    ga0, gb0, _, _ = _task_grad_norms(mtl, shared, ha, hb, x, targets)
    start = abs(math.log(ga0 / gb0))
    assert start > math.log(10.0)  # very different gradient scales to begin with
    opt_w = torch.optim.Adam(mtl.parameters(), lr=0.1)
    opt_net = torch.optim.SGD([*shared.parameters(), *ha.parameters(), *hb.parameters()], lr=1e-5)
    for _ in range(100):
        h = shared(x)
        loss = mtl({"a": ha(h), "b": hb(h)}, targets)
        opt_w.zero_grad()
        opt_net.zero_grad()
        mtl.backward(loss, shared_parameters=shared.parameters())
        opt_w.step()
        opt_net.step()
    mtl({"a": ha(shared(x)), "b": hb(shared(x))}, targets)  # renormalise to sum K
    ga, gb, _, _ = _task_grad_norms(mtl, shared, ha, hb, x, targets)
    end = abs(math.log(ga / gb))
    assert end < 0.25 * start, (start, end)
    w = mtl.weighting.weights.detach()
    assert float(w.sum()) == pytest.approx(2.0, abs=1e-5) and (w > 0).all()
    assert float(w[0]) > float(w[1])  # the task with the small gradients got the larger weight


# ---------------------------------------------------------------- end-to-end training per weighting


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.cls = nn.Linear(32, 3)
        self.reg = nn.Linear(32, 1)
        self.aux = nn.Linear(32, 2)

    def forward(self, x):
        h = self.trunk(x)
        return self.cls(h), self.reg(h), self.aux(h)


def _mtl_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 6, generator=g)
    y_cls = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    y_reg = 30.0 * torch.tanh(x[:, :3].sum(1, keepdim=True))  # raw scale: MSE in the hundreds
    y_aux = torch.stack([x[:, 3] * x[:, 4], torch.sin(x[:, 5])], 1)
    return x, y_cls, y_reg, y_aux


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "dwa", "rlw", "gls", "gradnorm"])
def test_training_runs_and_task_losses_decrease(weighting):
    torch.manual_seed(0)
    net = _Net()
    options = {"seed": 0} if weighting == "rlw" else None
    mtl = MultiTaskLoss(weighting=weighting, weighting_options=options)  # seed form: CE + MSE + MSE
    x, y_cls, y_reg, y_aux = _mtl_data()
    opt = torch.optim.Adam([*net.parameters(), *mtl.parameters()], lr=1e-2)

    def task_losses():
        with torch.no_grad():
            c, r, a = net(x)
            return torch.stack([F.cross_entropy(c, y_cls), F.mse_loss(r, y_reg), F.mse_loss(a, y_aux)])

    before = task_losses()
    for step in range(200):
        c, r, a = net(x)
        loss = mtl(c, y_cls, r, y_reg, a, y_aux)
        assert torch.isfinite(loss)
        opt.zero_grad()
        mtl.backward(loss, shared_parameters=net.trunk[2].weight)
        opt.step()
        if step % 10 == 9:
            mtl.epoch_end()
    after = task_losses()
    rel = after / before
    assert (rel < 0.8).all(), rel
    assert float(rel.mean()) < 0.5, rel
    assert set(mtl.last_weights) == {"cls", "reg", "aux"}


# ---------------------------------------------------------------- precision, degenerate, module, compile, registry


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "gls"])
def test_half_precision_task_losses(dtype, weighting):
    big = 6e4 if dtype == torch.float16 else 1e4
    p = torch.tensor([big, -big, 0.5], dtype=dtype, requires_grad=True)
    q = torch.tensor([0.1, 0.2, 0.3], dtype=dtype, requires_grad=True)
    mtl = MultiTaskLoss(tasks={"a": losskit.HuberLoss(), "b": losskit.LogCoshLoss()}, weighting=weighting)
    loss = mtl({"a": p, "b": q}, {"a": torch.zeros(3, dtype=dtype), "b": torch.ones(3, dtype=dtype)})
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, p, q)


def test_empty_batch_gives_connected_zero():
    p = torch.zeros(0, 3, requires_grad=True)
    mtl = MultiTaskLoss(tasks={"a": losskit.HuberLoss(), "b": losskit.LogCoshLoss()}, weights=[1.0, 3.0])
    assert_connected_zero(mtl({"a": p, "b": p}, {"a": torch.zeros(0, 3), "b": torch.zeros(0, 3)}), p)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "dwa", "gls", "gradnorm"])
def test_module_roundtrip(weighting):
    preds, targets = _two_task_batch(2)
    mtl = MultiTaskLoss(tasks={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}, weighting=weighting)
    for p in mtl.parameters():
        with torch.no_grad():
            p.copy_(torch.tensor([0.7, 1.3]))
    mtl.eval()
    value = mtl(preds, targets)
    assert_module_matches(mtl, value, preds, targets)
    for m in roundtrip_modules(mtl):
        assert m.task_names == ["a", "b"]


def test_rlw_roundtrip_keeps_generator_state():
    rlw = MultiTaskLoss(
        tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weighting="rlw", weighting_options={"seed": 3}
    )
    preds, targets = {"a": torch.ones(2), "b": torch.ones(2)}, {"a": torch.zeros(2), "b": torch.zeros(2)}
    rlw(preds, targets)
    copies = roundtrip_modules(rlw)[
        :3
    ]  # deepcopy, torch.save, pickle (state_dict does not hold the generator)
    expected = rlw(preds, targets)
    for c in copies:
        torch.testing.assert_close(c(preds, targets), expected)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_compiles(weighting):
    preds, targets = _two_task_batch(3)
    mtl = MultiTaskLoss(tasks={"a": losskit.HuberLoss(), "b": nn.MSELoss()}, weighting=weighting)
    preds = {"a": preds["a"], "b": preds["b"]}
    targets = {"a": torch.randn(6, 3), "b": targets["b"]}
    assert_compiles(lambda p, t: mtl(p, t), preds, targets)


def test_registry():
    assert "multitask" in losskit.available("multitask")
    m = losskit.build("multitask", cls_weight=2.0)
    args = _seed_batch(8, 1)
    torch.testing.assert_close(m(*args), seed_formula(*args, cw=2.0))
    g = losskit.build("multitask", tasks={"x": "huber", "y": "l1"}, weighting="dwa")
    assert isinstance(g.weighting, DWA) and g.task_names == ["x", "y"]
    assert isinstance(MultiTaskLoss(weighting=FixedWeighting([1, 2, 3])).weighting, FixedWeighting)


def test_gradcheck_weightings():
    L = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64)
    unc = UncertaintyWeighting(3).double()
    assert_gradcheck(lambda x: unc(x)[0], (L,))
    assert_gradcheck(
        lambda s: 0.5 * (torch.exp(-s) * L).sum() + 0.5 * s.sum(), (torch.tensor([0.1, -0.3, 0.5]),)
    )
    assert_gradcheck(lambda x: GeometricLossStrategy(3)(x)[0], (L,))
    assert_gradcheck(lambda x: DWA(3)(x)[0], (L,))
    assert_gradcheck(lambda x: FixedWeighting([1.0, 0.5, 2.0]).double()(x)[0], (L,))


def test_dwa_does_not_record_validation():
    dwa = DWA(2)
    dwa(torch.tensor([1.0, 2.0]))
    with torch.no_grad():
        dwa(torch.tensor([100.0, 100.0]))  # validation in train mode but without gradients
    dwa.eval()
    dwa(torch.tensor([100.0, 100.0]))
    assert int(dwa.epoch_steps) == 1
    torch.testing.assert_close(dwa.epoch_sum, torch.tensor([1.0, 2.0], dtype=torch.float64))


_DWA_STEPS = {  # different data and a different number of steps per rank, three epochs
    0: [[[1.0, 2.0], [1.4, 2.2]], [[0.9, 1.5]], [[0.5, 1.1], [0.7, 1.3]]],
    1: [[[1.2, 1.6], [0.8, 2.4], [1.0, 2.0]], [[0.7, 1.1], [0.8, 1.0]], [[0.4, 0.9]]],
}


def _dwa_worker(rank, world):
    dwa = DWA(2)
    for epoch in _DWA_STEPS[rank]:
        for step in epoch:
            dwa(torch.tensor(step))
        dwa.epoch_end()
    return dwa.current_weights()


def test_dwa_under_ddp_equals_one_process_over_all_steps():
    got = run_distributed(_dwa_worker, world_size=2)
    ref = DWA(2)
    for e in range(3):
        for step in _DWA_STEPS[0][e] + _DWA_STEPS[1][e]:
            ref(torch.tensor(step))
        ref.epoch_end()
    for w in got:
        torch.testing.assert_close(w, ref.current_weights())
    # without the all-reduce the ranks would disagree
    local = [DWA(2), DWA(2)]
    for r in (0, 1):
        for epoch in _DWA_STEPS[r]:
            for step in epoch:
                local[r](torch.tensor(step))
            local[r].epoch_end(sync=False)
    assert not torch.allclose(local[0].current_weights(), local[1].current_weights())


def test_last_weights_is_a_snapshot_not_the_live_parameter():
    torch.manual_seed(0)
    trunk, head_a, head_b = nn.Linear(4, 8), nn.Linear(8, 1), nn.Linear(8, 1)
    mtl = MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weighting="gradnorm")
    opt = torch.optim.SGD([*mtl.parameters()], lr=10.0)
    x = torch.randn(16, 4)
    h = trunk(x)
    loss = mtl({"a": head_a(h), "b": head_b(h)}, {"a": torch.randn(16, 1), "b": 50 * torch.randn(16, 1)})
    seen = {k: v.clone() for k, v in mtl.last_weights.items()}
    mtl.backward(loss, shared_parameters=list(trunk.parameters()))
    before = [p.detach().clone() for p in mtl.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, mtl.parameters()))  # the weights did move
    for k, v in mtl.last_weights.items():
        torch.testing.assert_close(v, seen[k], rtol=0, atol=0)


# ---------------------------------------------------------------- devices, dtypes and argument names in errors

SEED_ARGS = ("cls_preds", "cls_targets", "reg_preds", "reg_targets", "aux_preds", "aux_targets")


@pytest.mark.parametrize("moved", range(6))
def test_seed_form_input_on_another_device_is_named(moved):
    args = list(_seed_batch(8, 30))
    args[moved] = args[moved].to("meta")
    if moved == 0:
        expected = r"cls_targets is on cpu, expected meta like cls_preds"
    else:
        expected = rf"{SEED_ARGS[moved]} is on meta, expected cpu like cls_preds"
    with pytest.raises(LossValueError, match=expected):
        MultiTaskLoss()(*args)
    out = MultiTaskLoss().to("meta")(*[a.to("meta") for a in _seed_batch(8, 30)])
    assert out.is_meta and out.dim() == 0


def test_seed_form_messages_name_the_seed_arguments():
    cp, ct, rp, rt, ap, at = _seed_batch(8, 31)
    with pytest.raises(
        LossValueError, match=r"cls_preds must be \(N, C\) or \(N, C, d1, \.\.\.\), got shape \(10,\)"
    ):
        MultiTaskLoss()(cp[0], ct[0], rp, rt, ap, at)
    with pytest.raises(LossValueError, match=r"cls_targets must have values in \[0.0, 1.0\], got range"):
        MultiTaskLoss()(cp, torch.rand(8, 10) * 3, rp, rt, ap, at)
    for i, name in enumerate(SEED_ARGS):
        args = list(_seed_batch(8, 31))
        if not args[i].is_floating_point():
            continue
        args[i] = args[i].to(torch.complex64)
        with pytest.raises(
            LossTypeError, match=rf"{name} must be a floating-point tensor, got dtype torch.complex64"
        ):
            MultiTaskLoss()(*args)
    with pytest.raises(
        LossTypeError,
        match="cls_targets must be an integer tensor of class indices, got dtype torch.complex64",
    ):
        MultiTaskLoss()(cp, ct.to(torch.complex64), rp, rt, ap, at)


def test_general_form_errors_name_the_task():
    preds, targets = _two_task_batch(32)
    mtl = MultiTaskLoss(tasks={"a": "cross_entropy", "b": "huber"})
    with pytest.raises(LossValueError, match=r"task 'a': target contains class index 9"):
        mtl(preds, {**targets, "a": torch.full((6,), 9)})
    # tasks whose losses end up on different devices
    with pytest.raises(LossValueError, match=r"task 'b' returned a loss on cpu, expected meta like task 'a'"):
        mtl({**preds, "a": preds["a"].to("meta")}, {**targets, "a": targets["a"].to("meta")})


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "dwa", "gradnorm"])
def test_weighting_on_another_device_than_the_losses_is_named(weighting):
    preds, targets = _two_task_batch(33)
    mtl = MultiTaskLoss(tasks={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}, weighting=weighting).to("meta")
    with pytest.raises(LossValueError, match=r"preds is on cpu, expected meta like the weighting's \w+"):
        mtl(preds, targets)
    with pytest.raises(LossValueError, match=r"losses is on cpu, expected meta like the weighting's \w+"):
        mtl.weighting(torch.ones(2))
    with pytest.raises(LossValueError, match=r"losses has shape \(3,\), expected \(2,\): one loss per task"):
        mtl.weighting.to_empty(device="cpu")(torch.ones(3))
    with pytest.raises(LossTypeError, match=r"losses must be a floating-point tensor"):
        mtl.weighting(torch.ones(2, dtype=torch.long))


def test_task_count_messages_name_the_argument():
    with pytest.raises(LossValueError, match=r"weights has 3 entries, expected 2: one per task \['a', 'b'\]"):
        MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weights=[1, 2, 3])
    with pytest.raises(LossValueError, match=r"weights has 3 entries, expected num_tasks=2"):
        FixedWeighting([1.0, 2.0, 3.0], num_tasks=2)
    with pytest.raises(
        LossValueError, match=r"weighting is built for 3 tasks, expected 1: one per task \['a'\]"
    ):
        MultiTaskLoss(tasks={"a": nn.MSELoss()}, weighting=DWA(3))
    with pytest.raises(LossTypeError, match=r"tasks has a key that is not a string: 1"):
        MultiTaskLoss(tasks={1: nn.MSELoss()})


def test_dwa_epoch_end_on_meta_skips_its_value_check():
    dwa = DWA(2).to("meta")
    dwa(torch.ones(2, device="meta"))
    dwa.epoch_end()  # the "no losses recorded" check reads a count: skipped on 'meta'
    assert dwa.epochs.is_meta
