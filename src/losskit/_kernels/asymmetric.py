r"""Fused asymmetric loss (Ridnik et al., ICCV 2021, "ASL") for multi-label classification.

.. math::
    \ell = -t\,(1 - p)^{\gamma_+} \log p \;-\; (1 - t)\, p_m^{\gamma_-} \log(1 - p_m),
    \qquad p = \sigma(x),\quad p_m = \max(p - m, 0)

with ``log p = -softplus(-x)`` and ``log(1 - p_m) = log(min(sigmoid(-x) + m, 1))`` (``-softplus(x)``
when ``m = 0``). Gradients flow through the focusing weights; backward recomputes everything from
the saved inputs:

.. math::
    \frac{\partial \ell}{\partial x} = t\,(1 - p)^{\gamma_+}\big(\gamma_+ p \log p - (1 - p)\big)
    + (1 - t)\,[p > m]\; p (1 - p) \Big(\gamma_- p_m^{\gamma_- - 1} (-\log(1 - p_m))
    + \frac{p_m^{\gamma_-}}{1 - p_m}\Big)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._common import (
    ELEMENT_REDUCTIONS,
    dpow,
    float_dtype,
    ipow,
    scale_for,
    sigmoid_parts,
    supported_float,
    supported_target,
)
from ._compile import run_kernel

__all__ = ["asymmetric", "asymmetric_supports"]


def _terms(x: torch.Tensor, t: torch.Tensor, clip: float) -> tuple[torch.Tensor, ...]:
    dt = float_dtype(x)
    x, t = x.to(dt), t.to(dt)
    p, pn, sp_pos, sp_neg = sigmoid_parts(x)
    if clip > 0.0:
        one_m_pm = (pn + clip).clamp_max(1.0)
        pm = (p - clip).clamp_min(0.0)
        nlog_neg = -torch.log(one_m_pm)
    else:
        one_m_pm, pm, nlog_neg = pn, p, sp_pos
    return t, p, pn, sp_neg, pm, one_m_pm, nlog_neg


def _build_forward(gamma_neg: float, gamma_pos: float, clip: float, reduction: str) -> Callable[..., torch.Tensor]:
    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t, _, pn, sp_neg, pm, _, nlog_neg = _terms(x, t, clip)
        loss = t * ipow(pn, gamma_pos) * sp_neg + (1.0 - t) * ipow(pm, gamma_neg) * nlog_neg
        return loss if reduction == "none" else loss.sum()

    return forward


def _build_backward(gamma_neg: float, gamma_pos: float, clip: float) -> Callable[..., torch.Tensor]:
    def backward(x: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x0 = x
        t, p, pn, sp_neg, pm, one_m_pm, nlog_neg = _terms(x, t, clip)
        d_pos = ipow(pn, gamma_pos) * (-gamma_pos * p * sp_neg - pn)
        if clip > 0.0:
            # 1 - p_m >= clip: the division is safe
            d_neg = (p * pn) * (dpow(pm, gamma_neg) * nlog_neg + ipow(pm, gamma_neg) / one_m_pm)
            d_neg = torch.where(p > clip, d_neg, torch.zeros_like(d_neg))
        else:
            # p_m = p and 1 - p_m = 1 - p, cancelled analytically (1 - p underflows to 0 for large x)
            d_neg = p * (pn * dpow(p, gamma_neg) * nlog_neg + ipow(p, gamma_neg))
        return ((t * d_pos + (1.0 - t) * d_neg) * g).to(x0.dtype)

    return backward


class _Asymmetric(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        gamma_neg: float,
        gamma_pos: float,
        clip: float,
        reduction: str,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, t)
        ctx.conf = (gamma_neg, gamma_pos, clip, reduction)
        key = ("asymmetric.fwd", gamma_neg, gamma_pos, clip, reduction)
        out: torch.Tensor = run_kernel(
            key, lambda: _build_forward(gamma_neg, gamma_pos, clip, reduction), x.numel(), x, t
        )
        return out * scale_for(reduction, x.numel()) if reduction == "mean" else out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        x, t = ctx.saved_tensors
        gamma_neg, gamma_pos, clip, reduction = ctx.conf
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        g = grad * scale_for(reduction, x.numel()) if reduction == "mean" else grad
        key = ("asymmetric.bwd", gamma_neg, gamma_pos, clip)
        gx: torch.Tensor = run_kernel(key, lambda: _build_backward(gamma_neg, gamma_pos, clip), x.numel(), x, t, g)
        return gx, None, None, None, None, None


def asymmetric_supports(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> bool:
    """Whether :func:`asymmetric` covers this call: fp32/fp64/fp16/bf16 ``input``, float or bool ``target`` of
    the same shape and device, no ``weight``/``mask``, ``reduction`` in ('none', 'mean', 'sum'), target
    not requiring grad, not inside an outer ``torch.compile`` trace. (A ``normalizer`` is
    ``asymmetric(..., reduction='sum') / normalizer``.)"""
    if weight is not None or mask is not None or reduction not in ELEMENT_REDUCTIONS:
        return False
    if torch.compiler.is_compiling():
        return False
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    return (
        supported_float(input)
        and supported_target(target)
        and target.shape == input.shape
        and target.device == input.device
        and not target.requires_grad
    )


def asymmetric(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Asymmetric loss (module docstring formula) keeping only the inputs for backward.

    Returns the element-wise loss (``'none'``), its sum, or its mean over all elements (0 when
    empty); float32 for half inputs. Only ``input`` receives a gradient. Call only when
    :func:`asymmetric_supports` is true; arguments are not validated here.

    Example:
        >>> asymmetric(torch.tensor([[3.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]), reduction="sum")
        tensor(0.1404)
    """
    out: torch.Tensor = _Asymmetric.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        input, target, float(gamma_neg), float(gamma_pos), float(clip), reduction
    )
    return out
