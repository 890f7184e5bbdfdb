r"""Fused sigmoid focal loss (Lin et al. 2017, RetinaNet; torchvision ``sigmoid_focal_loss`` semantics).

.. math::
    \ell = \alpha_t\, \mathrm{CE}(x, t)\, q^\gamma,\qquad
    \mathrm{CE} = w_+\, t\, \mathrm{softplus}(-x) + (1 - t)\, \mathrm{softplus}(x),\qquad
    q = p (1 - t) + (1 - p)\, t,\quad p = \sigma(x)

with ``alpha_t = alpha t + (1 - alpha)(1 - t)`` (``alpha=None`` or ``alpha < 0``: ``alpha_t = 1``) and
``w_+ = pos_weight`` (``None``: 1) broadcast against ``x``. ``q = 1 - p_t`` is torchvision's
``1 - (p t + (1 - p)(1 - t))``. Targets may be soft (``t`` in [0, 1]).

The gradient is computed in closed form in backward from the saved inputs only:

.. math::
    \frac{\partial \ell}{\partial x} = \alpha_t \Big[\big((1 - t)p - w_+ t (1 - p)\big) q^\gamma
        + \mathrm{CE}\,\gamma q^{\gamma - 1}\, p (1 - p)(1 - 2t)\Big]

(for ``gamma < 1`` the base of ``q^{gamma - 1}`` is clamped at the smallest normal number, so the
term is 0 instead of ``0 * inf`` where ``p`` saturates onto a hard target).
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

__all__ = ["sigmoid_focal", "sigmoid_focal_supports"]


def _alpha_t(t: torch.Tensor, alpha: float | None) -> torch.Tensor | float:
    if alpha is None or alpha < 0:
        return 1.0
    return alpha * t + (1.0 - alpha) * (1.0 - t)


def _terms(x: torch.Tensor, t: torch.Tensor, pw: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    dt = float_dtype(x)
    x, t = x.to(dt), t.to(dt)
    p, pn, sp_pos, sp_neg = sigmoid_parts(x)
    tpos = t if pw is None else t * pw.to(dt)
    ce = (1.0 - t) * sp_pos + tpos * sp_neg
    q = p * (1.0 - t) + pn * t
    return x, t, p, pn, tpos, ce, q


def _build_forward(alpha: float | None, gamma: float, reduction: str) -> Callable[..., torch.Tensor]:
    def forward(x: torch.Tensor, t: torch.Tensor, pw: torch.Tensor | None = None) -> torch.Tensor:
        _, t, _, _, _, ce, q = _terms(x, t, pw)
        loss = _alpha_t(t, alpha) * ce * ipow(q, gamma)
        return loss if reduction == "none" else loss.sum()

    return forward


def _build_backward(alpha: float | None, gamma: float) -> Callable[..., torch.Tensor]:
    def backward(
        x: torch.Tensor, t: torch.Tensor, g: torch.Tensor, pw: torch.Tensor | None = None
    ) -> torch.Tensor:
        x0 = x
        _, t, p, pn, tpos, ce, q = _terms(x, t, pw)
        dce = (1.0 - t) * p - tpos * pn
        d = dce * ipow(q, gamma)
        if gamma != 0.0:
            d = d + ce * dpow(q, gamma) * (p * pn * (1.0 - 2.0 * t))
        return (_alpha_t(t, alpha) * d * g).to(x0.dtype)

    return backward


class _SigmoidFocal(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        pw: torch.Tensor | None,
        alpha: float | None,
        gamma: float,
        reduction: str,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, t, pw)
        ctx.conf = (alpha, gamma, reduction)
        key = ("sigmoid_focal.fwd", alpha, gamma, reduction, pw is not None)
        args = (x, t) if pw is None else (x, t, pw)
        out: torch.Tensor = run_kernel(key, lambda: _build_forward(alpha, gamma, reduction), x.numel(), *args)
        return out * scale_for(reduction, x.numel()) if reduction == "mean" else out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        x, t, pw = ctx.saved_tensors
        alpha, gamma, reduction = ctx.conf
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        g = grad * scale_for(reduction, x.numel()) if reduction == "mean" else grad
        key = ("sigmoid_focal.bwd", alpha, gamma, pw is not None)
        args = (x, t, g) if pw is None else (x, t, g, pw)
        gx: torch.Tensor = run_kernel(key, lambda: _build_backward(alpha, gamma), x.numel(), *args)
        return gx, None, None, None, None, None


def sigmoid_focal_supports(
    input: torch.Tensor,
    target: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    normalizer: object = None,
    reduction: str = "mean",
) -> bool:
    """Whether :func:`sigmoid_focal` covers this call.

    Covered: float32/float64/float16/bfloat16 ``input``, a float or bool ``target`` of the same shape on the same
    device, ``pos_weight`` (optional) broadcastable to it, no ``mask``/``weight``/``normalizer``,
    ``reduction`` in ('none', 'mean', 'sum'), targets and ``pos_weight`` not requiring grad, and not
    inside an outer ``torch.compile`` trace (there the eager composition is compiled as a whole).
    """
    if mask is not None or weight is not None or normalizer is not None:
        return False
    if reduction not in ELEMENT_REDUCTIONS or torch.compiler.is_compiling():
        return False
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    if not supported_float(input) or not supported_target(target):
        return False
    if target.shape != input.shape or target.requires_grad:
        return False
    if target.device != input.device:
        return False
    if pos_weight is not None:
        if not isinstance(pos_weight, torch.Tensor) or not supported_float(pos_weight):
            return False
        if pos_weight.requires_grad or pos_weight.device != input.device:
            return False
        try:
            if torch.broadcast_shapes(pos_weight.shape, input.shape) != input.shape:
                return False
        except RuntimeError:
            return False
    return True


def sigmoid_focal(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sigmoid focal loss with nothing but the inputs kept for backward.

    Computes the formula of the module docstring element-wise and returns it as is
    (``reduction='none'``), its sum, or its mean over all elements (an empty input gives 0).
    Half-precision inputs are computed in float32 and the result is float32; the gradient has the
    input's dtype. Only ``input`` receives a gradient. Call only when
    :func:`sigmoid_focal_supports` is true; arguments are not validated here.

    Example:
        >>> x = torch.tensor([[2.0, -1.0]], requires_grad=True)
        >>> sigmoid_focal(x, torch.tensor([[1.0, 0.0]]), alpha=-1, gamma=0.0, reduction="sum")
        tensor(0.4402, grad_fn=<_SigmoidFocalBackward>)
    """
    a = None if alpha is None or float(alpha) < 0 else float(alpha)
    out: torch.Tensor = _SigmoidFocal.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        input, target, pos_weight, a, float(gamma), reduction
    )
    return out
