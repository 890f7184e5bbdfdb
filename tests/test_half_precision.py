"""Half-precision inputs mean the float32 values: every registered loss, fp16 and bf16, both code paths.

For each name of ``losskit.available()`` (inputs from the conformance factories, read first in float32
and rounded once to the half dtype): the loss of the half tensors must be the float32 loss of the same
(rounded) values, and their gradients the float32 gradients rounded once to the half dtype, up to
float32 rounding. Checked on

- the conformance inputs (``typical``);
- extreme-but-finite inputs (``extreme``): logit arguments at +-6e4 (fp16) / +-1e4 (bf16) mixed with
  ordinary values, the differentiable inputs of the other losses scaled by 1000 (100 for the fused
  linear losses, which multiply in the half dtype), and a low temperature (``T = 0.1``) where the
  loss has one (a guard that clamps in the input's dtype moves finite logits there);
- both the fused-kernel path (the suite's ``"always"``) and the plain path (``fused_kernels(False)``).

A case whose loss lives outside the distillation / detection / multitask modules and that fails is
marked ``xfail(strict=True)`` with the cause, so the fix is visible when it lands.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

import losskit
from harness import extreme_logits
from losskit._kernels import fused_kernels
from losskit.registry import get_spec
from test_conformance import CASES, _module, _with_grad

NAMES = [n for n in losskit.available() if n in CASES]
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
PATHS = {"fused": "always", "plain": False}
# inputs with a bounded domain (probabilities) are not scaled in the extreme variant
UNSCALED = {"bce"}
SCALE = 1000.0  # non-logit inputs in the extreme variant: up to ~6e3

# (name, dtype, path, variant) -> reason, for failures whose fix belongs to another module's owner
KNOWN: dict[tuple[str, str, str, str], str] = {}


def _takes_temperature(name: str) -> bool:
    module = get_spec(name).module
    target = module.__init__ if isinstance(module, type) else module
    return "temperature" in inspect.signature(target).parameters


def _floating(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point()


def _inputs(name: str, dtype: torch.dtype, variant: str) -> tuple[list[Any], dict[str, Any]]:
    """The half-precision arguments of one case and the module's keyword arguments."""
    case = CASES[name]
    args = list(case.make(torch.float32))
    kw: dict[str, Any] = {}
    if variant == "extreme":
        if case.logits:
            for k, i in enumerate(case.logits):
                args[i] = extreme_logits(args[i].shape, dtype, seed=k).float()
        elif name not in UNSCALED:
            # the differentiable inputs; for the fused linear losses only the hidden states, by 100:
            # they multiply in the inputs' dtype (documented), so their logits (~1e3 here) carry the
            # half dtype's rounding, which grows with their size
            scaled, factor = (case.wrt[:1], 100.0) if case.shared else (case.wrt, SCALE)
            args = [a * factor if i in scaled else a for i, a in enumerate(args)]
        if _takes_temperature(name):
            kw["temperature"] = 0.1
    return [a.to(dtype) if _floating(a) else a for a in args], kw


def _loss_and_grads(name: str, args: list[Any], kw: dict[str, Any]) -> tuple[torch.Tensor, tuple]:
    call, leaves = _with_grad(tuple(args), CASES[name].wrt)
    loss = _module(name, **kw)(*call)
    return loss, torch.autograd.grad(loss, leaves)


def _params() -> list[Any]:
    out = []
    for name in NAMES:
        for dname in HALF:
            for path in PATHS:
                for variant in ("typical", "extreme"):
                    key = (name, dname, path, variant)
                    marks = ()
                    if key in KNOWN:
                        marks = (pytest.mark.xfail(strict=True, reason=KNOWN[key]),)
                    out.append(pytest.param(*key, marks=marks, id="-".join(key)))
    return out


@pytest.mark.parametrize(("name", "dname", "path", "variant"), _params())
def test_half_inputs_mean_their_float32_values(name, dname, path, variant):
    dtype = HALF[dname]
    args, kw = _inputs(name, dtype, variant)
    args32 = [a.float() if _floating(a) else a for a in args]
    with fused_kernels(PATHS[path]):
        loss, grads = _loss_and_grads(name, args, kw)
        loss32, grads32 = _loss_and_grads(name, args32, kw)
    assert loss.dtype == torch.float32, f"{dname} inputs gave a {loss.dtype} loss"
    # the language losses multiply in the inputs' dtype (as a half-precision linear layer does)
    rtol = 1e-3 if CASES[name].shared else 1e-6
    torch.testing.assert_close(loss, loss32, rtol=rtol, atol=1e-6, equal_nan=True)
    eps = torch.finfo(dtype).eps
    for i, g, g32 in zip(CASES[name].wrt, grads, grads32):
        assert g.dtype == dtype, f"gradient of argument {i} is {g.dtype}"
        ok = torch.isfinite(g32)
        assert torch.equal(torch.isfinite(g), ok), f"gradient of argument {i}: non-finite entries differ"
        err = float((g.float() - g32)[ok].abs().max()) if bool(ok.any()) else 0.0
        scale = float(g32[ok].abs().max()) if bool(ok.any()) else 0.0
        assert err <= 2 * eps * scale + 1e-6, f"gradient of argument {i} off by {err} (max {scale})"
