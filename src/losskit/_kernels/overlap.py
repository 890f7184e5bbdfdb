r"""Fused per-image, per-class soft overlap sums for multi-class Dice / Tversky from logits.

For logits ``x`` of shape ``(N, C, d1, ...)`` and class indices ``y`` of shape ``(N, d1, ...)``, with
``p = softmax(x, dim=1)`` and ``v_i = [y_i != ignore_index]``:

.. math::
    TP_{nc} = \sum_i v_i\, p_{nci}\, [y_{ni} = c],\qquad
    P_{nc} = \sum_i v_i\, p_{nci}^{k},\qquad
    G_{nc} = \sum_i v_i\, [y_{ni} = c]

(``k = 2`` with ``squared=True``, else 1). Any Dice/Tversky/Jaccard formula is then a cheap function of
these ``(N, C)`` tensors (``FP = P - TP``, ``FN = G - TP``) left to ordinary autograd. Nothing of size
``(N, C, d1, ...)`` is kept: backward recomputes the softmax from the saved logits and writes

.. math::
    \frac{\partial L}{\partial x_{nki}} = v_i\, p_{nki}\,\big(w_{nki} - \textstyle\sum_c w_{nci}\, p_{nci}\big),\quad
    w_{nci} = \bar P_{nc}\, k\, p_{nci}^{k-1} + \overline{TP}_{nc}\, [y_{ni} = c]

where the bars are the incoming gradients of ``TP`` and ``P`` (``G`` has no gradient). The bracket is
evaluated as ``(w_k - w_m) - sum_c (w_c - w_m) p_c`` with ``m`` the class with ``p_m > 1/2`` at ``i``
(if any; the same by ``sum_c p_c = 1``), which does not cancel where ``p_m`` is close to 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._common import float_dtype
from ._compile import run_kernel

__all__ = ["class_sums", "class_sums_supports"]


def _prep(
    x: torch.Tensor, y: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    n, c = x.shape[0], x.shape[1]
    xf = x.reshape(n, c, -1).to(float_dtype(x))
    yf = y.reshape(n, 1, -1)
    p = torch.softmax(xf, dim=1)
    if ignore_index is None:
        valid = None
        yc = yf
    else:
        valid = yf != ignore_index
        yc = torch.where(valid, yf, torch.zeros_like(yf))
    classes = torch.arange(c, device=x.device).view(1, c, 1)
    hit = classes == yc
    if valid is not None:
        hit = hit & valid
    return p, valid, hit


def _build_forward(
    ignore_index: int | None, squared: bool
) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    def forward(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, valid, hit = _prep(x, y, ignore_index)
        pv = p if valid is None else torch.where(valid, p, torch.zeros_like(p))
        tp = torch.where(hit, pv, torch.zeros_like(pv)).sum(2)
        ps = (pv * pv if squared else pv).sum(2)
        gs = hit.to(p.dtype).sum(2)
        return tp, ps, gs

    return forward


def _build_backward(ignore_index: int | None, squared: bool) -> Callable[..., torch.Tensor]:
    def backward(x: torch.Tensor, y: torch.Tensor, gtp: torch.Tensor, gps: torch.Tensor) -> torch.Tensor:
        p, valid, hit = _prep(x, y, ignore_index)
        gps3 = gps.unsqueeze(2)
        w = gps3 * (2.0 * p) if squared else gps3.expand_as(p)
        w = w + torch.where(hit, gtp.unsqueeze(2), torch.zeros_like(p))
        # w_k - sum_c w_c p_c = (w_k - w_m) - sum_{c != m} (w_c - w_m) p_c with m the class of
        # p_m > 1/2 (if any): the dominant class leaves the sum, so p_m -> 1 keeps the small
        # gradients' digits. The three masked sums share one loop over the classes.
        zero = torch.zeros_like(p)
        dom = p > 0.5
        w_m = torch.where(dom, w, zero).sum(1, keepdim=True)
        s_wp = torch.where(dom, zero, w * p).sum(1, keepdim=True)
        s_p = torch.where(dom, zero, p).sum(1, keepdim=True)
        grad = p * ((w - w_m) - (s_wp - w_m * s_p))
        if valid is not None:
            grad = torch.where(valid, grad, torch.zeros_like(grad))
        return grad.reshape(x.shape).to(x.dtype)

    return backward


class _ClassSums(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, y: torch.Tensor, ignore_index: int | None, squared: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, y)
        ctx.conf = (ignore_index, squared)
        key = ("class_sums.fwd", ignore_index, squared)
        tp, ps, gs = run_kernel(key, lambda: _build_forward(ignore_index, squared), x.numel(), x, y)
        ctx.mark_non_differentiable(gs)
        return tp, ps, gs

    @staticmethod
    def backward(
        ctx: Any, gtp: torch.Tensor | None, gps: torch.Tensor | None, _ggs: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None, None]:
        x, y = ctx.saved_tensors
        ignore_index, squared = ctx.conf
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        shape = (x.shape[0], x.shape[1])
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        gtp = torch.zeros(shape, dtype=dt, device=x.device) if gtp is None else gtp
        gps = torch.zeros(shape, dtype=dt, device=x.device) if gps is None else gps
        key = ("class_sums.bwd", ignore_index, squared)
        gx: torch.Tensor = run_kernel(key, lambda: _build_backward(ignore_index, squared), x.numel(), x, y, gtp, gps)
        return gx, None, None, None


def class_sums_supports(input: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether :func:`class_sums` covers the pair: fp32/fp64/fp16/bf16 logits ``(N, C, d1, ...)`` with
    at least one spatial dim, integer class-index targets ``(N, d1, ...)`` on the same device, not
    inside an outer ``torch.compile`` trace. (Multi-class softmax mode from logits only; dense or
    soft targets, sigmoid modes and probabilities use the eager code.)"""
    if torch.compiler.is_compiling():
        return False
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    if input.dim() < 3 or input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        return False
    return tuple(target.shape) == (input.shape[0], *input.shape[2:]) and target.device == input.device


def class_sums(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    squared: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(TP, P, G)`` per image and class, each ``(N, C)`` (module docstring formula).

    Computed in float32 for half inputs; only ``TP`` and ``P`` carry gradients (to ``input``). Call
    only when :func:`class_sums_supports` is true; target values are not validated here.

    Example:
        >>> x = torch.zeros(1, 2, 4)  # p = 0.5 everywhere
        >>> tp, p, g = class_sums(x, torch.tensor([[0, 0, 1, -1]]), ignore_index=-1)
        >>> tp, p, g
        (tensor([[1.0000, 0.5000]]), tensor([[1.5000, 1.5000]]), tensor([[2., 1.]]))
    """
    ii = None if ignore_index is None else int(ignore_index)
    sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = _ClassSums.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        input, target, ii, bool(squared)
    )
    return sums
