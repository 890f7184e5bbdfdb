"""Double backward (``create_graph=True``) through every kernel-backed public loss, at every size.

The kernels' backward runs their plain tensor code under autograd when a graph is requested, so
second derivatives exist whether the loss took its fused kernel (always at the test suite's
setting, and by default from the compile threshold up) or its eager reference code. Checked with
``torch.autograd.gradgradcheck`` in float64 and by comparing a Hessian-vector product with the one
of the eager reference path.
"""

from __future__ import annotations

import pytest
import torch

import losskit.functional as LF
from losskit._kernels import _compile, fused_kernels


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cases():
    """(name, loss of one differentiable tensor, that tensor) in float64."""
    g = gen(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    t = (torch.rand(6, 5, generator=g) < 0.4).double()
    y = torch.randint(0, 5, (6,), generator=g)
    y[1] = -100
    teacher = torch.randn(6, 5, generator=g, dtype=torch.float64)
    seg = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.randint(0, 3, (2, 3, 4), generator=g)
    hid = torch.randn(7, 4, generator=g, dtype=torch.float64)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64)
    tok = torch.randint(0, 9, (7,), generator=g)
    tok[2] = -100
    th, tw = (
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(9, 3, generator=g, dtype=torch.float64),
    )
    return [
        ("sigmoid_focal", lambda a: LF.sigmoid_focal_loss(a, t, reduction="mean"), x),
        ("sigmoid_focal_none", lambda a: (LF.sigmoid_focal_loss(a, t, 0.4, 1.5) * t.flip(0)).sum(), x),
        ("focal", lambda a: LF.focal_loss(a, y, gamma=2.0), x),
        (
            "focal_sum_weighted",
            lambda a: LF.focal_loss(
                a, y, reduction="sum", weight=torch.rand(5, generator=gen(1), dtype=torch.float64)
            ),
            x,
        ),
        ("asymmetric", lambda a: LF.asymmetric_loss(a, t), x),
        (
            "asymmetric_noclip",
            lambda a: LF.asymmetric_loss(a, t, gamma_pos=1.0, clip=0.0, reduction="sum"),
            x,
        ),
        ("kd", lambda a: LF.kd_loss(a, teacher, temperature=2.0), x),
        ("kd_teacher", lambda a: LF.kd_loss(teacher, a, temperature=2.0), x),
        ("jsd", lambda a: LF.jsd_loss(a, teacher, beta=0.3), x),
        ("jsd_teacher", lambda a: LF.jsd_loss(teacher, a, beta=0.3), x),
        ("reverse_kl", lambda a: LF.jsd_loss(a, teacher, beta=1.0), x),
        ("dkd", lambda a: LF.dkd_loss(a, teacher, y.clamp_min(0)), x),
        ("distillation", lambda a: LF.distillation_loss(a, teacher, y.clamp_min(0), alpha=0.5), x),
        ("dice", lambda a: LF.dice_loss(a, mask), seg),
        ("dice_ignore_squared", lambda a: LF.dice_loss(a, mask, ignore_index=2, squared=True), seg),
        ("tversky", lambda a: LF.tversky_loss(a, mask, alpha=0.3, beta=0.7), seg),
        ("linear_ce", lambda a: LF.linear_cross_entropy(a, w, tok, chunk_size=3), hid),
        (
            "linear_ce_weight",
            lambda a: LF.linear_cross_entropy(hid, a, tok, label_smoothing=0.1, z_loss=1e-2, softcap=3.0),
            w,
        ),
        (
            "linear_ce_none",
            lambda a: (
                LF.linear_cross_entropy(a, w, tok, reduction="none") * torch.arange(7.0, dtype=torch.float64)
            ).sum(),
            hid,
        ),
        ("linear_kd", lambda a: LF.linear_kd_loss(a, w, th, tw, tok, beta=0.5, chunk_size=4), hid),
        ("linear_kd_forward", lambda a: LF.linear_kd_loss(a, w, th, tw, temperature=2.0), hid),
    ]


CASES = [c[0] for c in _cases()]


def _case(name):
    return next(c for c in _cases() if c[0] == name)


def _grad_and_hvp(fn, x, v):
    x = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return g.detach(), h


@pytest.fixture(params=["small", "large"])
def size_mode(request):
    """'small': the kernels at the suite's 'always' setting (eager kernel code); 'large': the default
    dispatch above the compile threshold (lowered to 0 here; the cheap aot_eager backend compiles)."""
    if request.param == "small":
        yield "small"
        return
    saved = (_compile._ENABLED, _compile._MIN_NUMEL, _compile._BACKEND)
    _compile.set_compile_kernels(True, min_numel=0, backend="aot_eager")
    try:
        with fused_kernels("auto"):
            yield "large"
    finally:
        _compile.set_compile_kernels(saved[0], min_numel=saved[1], backend=saved[2])


@pytest.mark.parametrize("name", CASES)
def test_hessian_vector_product_matches_eager_path(name, size_mode):
    _, fn, x = _case(name)
    v = torch.randn(x.shape, generator=gen(7), dtype=x.dtype)
    g, h = _grad_and_hvp(fn, x, v)
    with fused_kernels(False):
        g_ref, h_ref = _grad_and_hvp(fn, x, v)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(h, h_ref)


@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck_on_kernel_path(name):
    _, fn, x = _case(name)
    assert torch.autograd.gradgradcheck(fn, (x.detach().clone().requires_grad_(),))


def test_default_threshold_float32_double_backward():
    """At the default dispatch and a size above the threshold, with compilation switched off so that
    the test stays fast: the kernel path gives a second derivative (it used to raise 'element 0 of
    tensors does not require grad')."""
    saved = _compile._ENABLED
    _compile.set_compile_kernels(False)
    try:
        x = torch.randn(_compile._MIN_NUMEL // 512, 512, generator=gen(3))
        t = (torch.rand(x.shape, generator=gen(4)) < 0.3).float()
        with fused_kernels("always"):
            g, h = _grad_and_hvp(
                lambda a: LF.sigmoid_focal_loss(a, t, reduction="sum"), x, torch.ones_like(x)
            )
        with fused_kernels(False):
            g_ref, h_ref = _grad_and_hvp(
                lambda a: LF.sigmoid_focal_loss(a, t, reduction="sum"), x, torch.ones_like(x)
            )
    finally:
        _compile.set_compile_kernels(saved)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)
