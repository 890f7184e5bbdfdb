"""Shared checks for the definition of done of a loss (see DESIGN.md).

References passed to these helpers must be independent of the code under test: plain float64
formulas or loops written in the test file, or a torch built-in with the same semantics.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import torch

# ``LOSSKIT_COMPILE_BACKEND=inductor`` runs the compile checks through the C++ code generator too
# (slow on CPU); the default traces the full graph with AOTAutograd, which is what fullgraph checks.
COMPILE_BACKEND = os.environ.get("LOSSKIT_COMPILE_BACKEND", "aot_eager")


def value_and_grads(
    fn: Callable[..., torch.Tensor], args: Sequence[Any], wrt: Sequence[int], seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Run ``fn(*args)`` and differentiate w.r.t. ``args[i]`` for ``i in wrt``.

    Non-scalar outputs are contracted with a fixed random cotangent so every element's gradient is
    checked, not just their sum.
    """
    leaves = []
    call_args = list(args)
    for i in wrt:
        t = args[i].detach().clone().requires_grad_(True)
        call_args[i] = t
        leaves.append(t)
    out = fn(*call_args)
    if out.dim() == 0:
        scalar = out
    else:
        g = torch.Generator().manual_seed(seed)
        cot = torch.rand(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        scalar = (out * cot).sum()
    grads = torch.autograd.grad(scalar, leaves, allow_unused=True) if leaves else []
    return out.detach(), list(grads)


def assert_matches_reference(
    fn: Callable[..., torch.Tensor],
    ref: Callable[..., torch.Tensor],
    args: Sequence[Any],
    wrt: Sequence[int] = (0,),
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Values and gradients of ``fn`` (on ``args`` as given) equal ``ref`` on float64 copies."""
    out, grads = value_and_grads(fn, args, wrt)
    args64 = [
        a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    ]
    ref_out, ref_grads = value_and_grads(ref, args64, wrt)
    assert out.shape == ref_out.shape, f"shape {tuple(out.shape)} != reference {tuple(ref_out.shape)}"
    torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=atol)
    for i, g, rg in zip(wrt, grads, ref_grads):
        if rg is None:
            assert g is None or torch.count_nonzero(g) == 0, f"arg {i}: reference has no gradient"
            continue
        assert g is not None, f"arg {i}: no gradient but the reference has one"
        torch.testing.assert_close(
            g.double(), rg, rtol=rtol, atol=atol, msg=lambda m, i=i: f"grad of arg {i}: {m}"
        )


def assert_gradcheck(fn: Callable[..., torch.Tensor], args: Sequence[Any], wrt: Sequence[int] = (0,)) -> None:
    """``torch.autograd.gradcheck`` in float64 w.r.t. the given positional arguments."""
    call = [a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    leaves = []
    for i in wrt:
        call[i] = call[i].clone().requires_grad_(True)
        leaves.append(call[i])

    def f(*xs: torch.Tensor) -> torch.Tensor:
        local = list(call)
        for i, x in zip(wrt, xs):
            local[i] = x
        return fn(*local)

    assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-5, rtol=1e-4)


def assert_connected_zero(value: torch.Tensor, *leaves: torch.Tensor) -> None:
    """``value`` is a finite zero whose backward runs and gives finite (zero) gradients."""
    assert torch.isfinite(value).all(), f"expected a finite zero, got {value}"
    assert float(value.detach().abs().sum()) == 0.0, f"expected zero, got {value}"
    assert value.requires_grad, "the zero must stay connected to the graph"
    grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
    for g in grads:
        assert g is None or (torch.isfinite(g).all() and float(g.abs().sum()) == 0.0)


def assert_finite_with_grads(value: torch.Tensor, *leaves: torch.Tensor) -> None:
    """Loss and gradients w.r.t. ``leaves`` are all finite."""
    assert torch.isfinite(value).all(), f"non-finite loss {value}"
    grads = torch.autograd.grad(value.float().sum(), leaves, allow_unused=True)
    for i, g in enumerate(grads):
        assert g is not None, f"leaf {i} got no gradient"
        assert torch.isfinite(g).all(), f"leaf {i} has non-finite gradient"


def roundtrip_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Copies of ``module`` via deepcopy, pickle and a fresh ``state_dict`` load."""
    copies = [copy.deepcopy(module)]
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    copies.append(torch.load(buf, weights_only=False))
    copies.append(pickle.loads(pickle.dumps(module)))
    fresh = copy.deepcopy(module)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p) if p.dim() < 2 else torch.nn.init.normal_(p)
    fresh.load_state_dict(module.state_dict())
    copies.append(fresh)
    return copies


def assert_module_matches(
    module: torch.nn.Module, functional_value: torch.Tensor, *args: Any, **kw: Any
) -> None:
    """Module == functional, and deepcopy / pickle / state_dict round trips give the same value."""
    torch.testing.assert_close(module(*args, **kw), functional_value)
    for m in roundtrip_modules(module):
        torch.testing.assert_close(m(*args, **kw), functional_value)


def assert_compiles(
    fn: Callable[..., torch.Tensor], *args: Any, rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    """``torch.compile(fn, fullgraph=True)`` gives the eager value."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=COMPILE_BACKEND)
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=rtol, atol=atol)


def extreme_logits(shape: Sequence[int], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Logits reaching ±6e4 (fp16) or ±1e4 (bf16/fp32) mixed with ordinary values."""
    big = 6e4 if dtype == torch.float16 else 1e4
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 3
    flat = x.view(-1)
    n = flat.numel()
    if n:
        flat[: max(n // 4, 1)] = big
        flat[max(n // 4, 1) : max(n // 2, 1)] = -big
        flat.copy_(flat[torch.randperm(n, generator=g)])
    return x.to(dtype)
