"""Shared pieces of the fused kernels: dtype rules, reductions, the sigmoid split."""

from __future__ import annotations

import torch

__all__ = [
    "ELEMENT_REDUCTIONS",
    "float_dtype",
    "sigmoid_parts",
    "softmax_parts",
    "supported_float",
    "supported_target",
    "tiny",
]

ELEMENT_REDUCTIONS = ("none", "mean", "sum")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def supported_float(*tensors: torch.Tensor | None) -> bool:
    """Every given tensor is fp32/fp64/fp16/bf16 (half types are computed in float32)."""
    return all(t is None or t.dtype in _FLOATS for t in tensors)


def supported_target(t: torch.Tensor) -> bool:
    """Element-wise targets: a supported float dtype or bool (converted inside the kernel)."""
    return t.dtype == torch.bool or t.dtype in _FLOATS


def float_dtype(x: torch.Tensor) -> torch.dtype:
    """Compute dtype: float64 stays float64, everything else is float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def sigmoid_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p, 1 - p, softplus(x), softplus(-x))`` from a single ``exp``, each accurate in its tail.

    ``e = exp(-|x|)``; ``softplus(+-x) = max(+-x, 0) + log1p(e)`` (never a difference, so
    ``softplus(-x) ~ e^{-x}`` keeps its relative precision for large ``x``); ``p = 1 / (1 + e)`` for
    ``x >= 0`` and ``e / (1 + e)`` otherwise (and ``1 - p`` the other way round), so neither ``p`` nor
    ``1 - p`` is computed as a difference.
    """
    e = torch.exp(-x.abs())
    l1p = torch.log1p(e)
    sp_pos = x.clamp_min(0) + l1p
    sp_neg = (-x).clamp_min(0) + l1p
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = x >= 0
    return torch.where(pos, r, er), torch.where(pos, er, r), sp_pos, sp_neg


def softmax_parts(
    x: torch.Tensor, dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, e, rest, l1p)`` of a softmax over ``dim``, exact in the tail where one entry takes it all.

    ``a = x - max``, ``e = exp(a)``; ``rest`` is the sum of ``e`` over every entry but one maximal one
    (``sum e - 1`` without forming ``1 + small``) and ``l1p = log1p(rest) = log sum e``, both keeping
    ``dim`` (size 1). Then ``log p = a - l1p``, ``p = e / (1 + rest)`` and, for a maximal entry,
    ``1 - p = rest / (1 + rest)``: a probability close to 1 keeps ``log p`` and ``1 - p`` to
    relative precision where ``a - log(sum e)`` would round them to 0.
    """
    m = x.amax(dim=dim, keepdim=True)
    a = x - m
    e = torch.exp(a)
    top = a == 0
    ties = top.to(x.dtype).sum(dim=dim, keepdim=True) - 1.0
    rest = torch.where(top, torch.zeros_like(e), e).sum(dim=dim, keepdim=True) + ties
    return a, e, rest, torch.log1p(rest)


def ipow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """``base ** exponent`` with small integer exponents unrolled into multiplications."""
    e = float(exponent)
    if e == 0.0:
        return torch.ones_like(base)
    if e.is_integer() and 1.0 <= e <= 4.0:
        out = base
        for _ in range(int(e) - 1):
            out = out * base
        return out
    return base.pow(e)


def dpow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """``exponent * base ** (exponent - 1)``, the base clamped at ``tiny`` when the power is negative.

    Callers multiply it by a factor that vanishes at ``base = 0`` (the finite limit), so the clamp
    only turns ``0 * inf`` into ``0``.
    """
    e = float(exponent)
    if e == 0.0:
        return torch.zeros_like(base)
    if e < 1.0:
        return e * base.clamp_min(tiny(base.dtype)).pow(e - 1.0)
    return e * ipow(base, e - 1.0)


def scale_for(reduction: str, numel: int) -> float:
    """Factor applied to the sum: ``1 / max(numel, 1)`` for 'mean', 1 otherwise."""
    return 1.0 / max(numel, 1) if reduction == "mean" else 1.0
