r"""Fused softmax focal loss rows (Lin et al. 2017) for ``(N, C)`` logits and class-index targets.

.. math::
    \ell_i = -c_{y_i}\,(1 - p_{i y_i})^\gamma \log p_{i y_i},\qquad p_i = \operatorname{softmax}(x_i)

with ``c`` a per-class coefficient (``alpha_c w_c`` of :func:`losskit.functional.focal_loss`) or a
number, and ``l_i = 0`` where ``y_i == ignore_index``. Forward keeps no ``(N, C)`` tensor: it needs
one log-sum-exp per row. Backward recomputes it from the saved inputs and writes

.. math::
    \frac{\partial \ell_i}{\partial x_{ij}} = k_i\,(\delta_{j y_i} - p_{ij}),\quad
    k_i = -c_{y_i}\big[(1 - p)^\gamma - \gamma (1 - p)^{\gamma - 1} p \log p\big]_{p = p_{i y_i}}

(``log p`` from :func:`~losskit._kernels._common.softmax_parts` and ``1 - p = -expm1(log p)``, both
accurate as ``p -> 1``; for ``gamma < 1`` its power ``gamma - 1`` uses a base clamped at the
smallest normal number, the finite limit at saturation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._common import dpow, float_dtype, ipow, softmax_parts
from ._compile import run_kernel

__all__ = ["softmax_focal_mean", "softmax_focal_rows", "softmax_focal_supports"]


def _row_terms(
    x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor | None, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y_safe, e, z, log p_y, 1 - p_y, c)`` with ``e = exp(x - max)``, ``z = sum e`` per row.

    ``log p_y = (x_y - max) - log1p(rest)`` (:func:`~losskit._kernels._common.softmax_parts`): a
    confident correct row keeps its small loss, which ``x_y - logsumexp(x)`` rounds to 0.
    """
    xf = x.to(float_dtype(x))
    valid = y != ignore_index
    yc = torch.where(valid, y, torch.zeros_like(y)).long()
    a, e, rest, l1p = softmax_parts(xf, 1)
    lp = (a.gather(1, yc.unsqueeze(1)) - l1p).squeeze(1)
    omp = -torch.expm1(lp)
    c = valid.to(xf.dtype)
    if coef is not None:
        c = c * coef.to(xf.dtype)[yc]
    return xf, yc, e, 1.0 + rest, lp, omp, c


def _build_forward(gamma: float, ignore_index: int, scalar: float) -> Callable[..., torch.Tensor]:
    def forward(x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor | None = None) -> torch.Tensor:
        _, _, _, _, lp, omp, c = _row_terms(x, y, coef, ignore_index)
        out: torch.Tensor = -(scalar * c) * ipow(omp, gamma) * lp
        return out

    return forward


def _build_backward(gamma: float, ignore_index: int, scalar: float) -> Callable[..., torch.Tensor]:
    def backward(
        x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, coef: torch.Tensor | None = None
    ) -> torch.Tensor:
        xf, yc, e, z, lp, omp, c = _row_terms(x, y, coef, ignore_index)
        dl = ipow(omp, gamma)
        if gamma != 0.0:
            dl = dl - dpow(omp, gamma) * torch.exp(lp) * lp
        k = (-(scalar * c) * dl * g).unsqueeze(1)
        classes = torch.arange(xf.shape[1], device=xf.device).unsqueeze(0)
        # k (onehot - p), with 1 - p_y taken from log p_y (no cancellation as p_y -> 1)
        onehot = classes == yc.unsqueeze(1)
        gx: torch.Tensor = (k * torch.where(onehot, omp.unsqueeze(1), -e / z)).to(x.dtype)
        return gx

    return backward


class _SoftmaxFocalRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        coef: torch.Tensor | None,
        scalar: float,
        gamma: float,
        ignore_index: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, y, coef)
        ctx.conf = (scalar, gamma, ignore_index)
        key = ("softmax_focal.fwd", gamma, ignore_index, scalar, coef is not None)
        args = (x, y) if coef is None else (x, y, coef)
        out: torch.Tensor = run_kernel(
            key, lambda: _build_forward(gamma, ignore_index, scalar), x.numel(), *args
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        x, y, coef = ctx.saved_tensors
        scalar, gamma, ignore_index = ctx.conf
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        key = ("softmax_focal.bwd", gamma, ignore_index, scalar, coef is not None)
        args = (x, y, grad) if coef is None else (x, y, grad, coef)
        gx: torch.Tensor = run_kernel(
            key, lambda: _build_backward(gamma, ignore_index, scalar), x.numel(), *args
        )
        return gx, None, None, None, None, None


def _mean_denominator(
    y: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, dtype: torch.dtype
) -> torch.Tensor:
    """``sum_i w_{y_i}`` over non-ignored rows (their count without ``weight``), at least ``tiny``."""
    valid = y != ignore_index
    if weight is None:
        den = valid.sum().to(dtype)
    else:
        w_y = weight.to(dtype)[torch.where(valid, y, torch.zeros_like(y)).long()]
        den = torch.where(valid, w_y, torch.zeros_like(w_y)).sum()
    # nothing counts -> every row is 0 and so is the mean (no NaN)
    return den.clamp_min(torch.finfo(dtype).tiny)


class _SoftmaxFocalMean(torch.autograd.Function):
    """Rows reduced to ``sum_i l_i / sum_i w_{y_i}`` inside the Function: the denominator is
    recomputed from the targets in backward, so autograd keeps nothing but the inputs."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        coef: torch.Tensor | None,
        weight: torch.Tensor | None,
        scalar: float,
        gamma: float,
        ignore_index: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, y, coef, weight)
        ctx.conf = (scalar, gamma, ignore_index)
        key = ("softmax_focal.fwd", gamma, ignore_index, scalar, coef is not None)
        args = (x, y) if coef is None else (x, y, coef)
        rows: torch.Tensor = run_kernel(
            key, lambda: _build_forward(gamma, ignore_index, scalar), x.numel(), *args
        )
        return rows.sum() / _mean_denominator(y, weight, ignore_index, rows.dtype)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None, None, None, None]:
        x, y, coef, weight = ctx.saved_tensors
        scalar, gamma, ignore_index = ctx.conf
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        g = (grad / _mean_denominator(y, weight, ignore_index, grad.dtype)).expand(y.shape[0]).contiguous()
        key = ("softmax_focal.bwd", gamma, ignore_index, scalar, coef is not None)
        args = (x, y, g) if coef is None else (x, y, g, coef)
        gx: torch.Tensor = run_kernel(
            key, lambda: _build_backward(gamma, ignore_index, scalar), x.numel(), *args
        )
        return gx, None, None, None, None, None, None


def softmax_focal_supports(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    coef: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> bool:
    """Whether :func:`softmax_focal_rows` / :func:`softmax_focal_mean` cover this call.

    Covered: 2-D ``(N, C)`` fp32/fp64/fp16/bf16 logits, 1-D integer class-index targets ``(N,)`` on
    the same device, ``label_smoothing == 0`` (smoothing and probability targets use the eager code),
    ``coef`` and ``weight`` (if any) ``(C,)`` tensors on that device not requiring grad, not inside
    an outer ``torch.compile``.
    """
    if label_smoothing != 0.0 or torch.compiler.is_compiling():
        return False
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    if input.dim() != 2 or input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    if target.is_floating_point() or target.dtype == torch.bool or target.shape != input.shape[:1]:
        return False
    if target.device != input.device:
        return False
    for vec in (coef, weight):
        if vec is not None:
            if vec.shape != input.shape[1:] or vec.requires_grad or vec.device != input.device:
                return False
    return True


def _split_coef(coef: torch.Tensor | float | None) -> tuple[torch.Tensor | None, float]:
    """A per-class ``(C,)`` factor as a tensor, or a number (``None`` = 1) as a Python float."""
    if isinstance(coef, torch.Tensor) and coef.dim() > 0:
        return coef, 1.0
    return None, 1.0 if coef is None else float(coef)


def softmax_focal_rows(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    ignore_index: int = -100,
    coef: torch.Tensor | float | None = None,
) -> torch.Tensor:
    r"""Per-sample softmax focal loss ``(N,)`` (module docstring formula), 0 on ignored rows.

    ``coef`` is a ``(C,)`` per-class factor (``alpha * weight`` in the public loss), a number, or
    ``None`` (1). Reduce the rows as the public function does (e.g. ``sum / sum_i w_{y_i}`` over
    non-ignored rows for torch's weighted mean). Float32 result for half inputs; only ``input`` gets
    a gradient. Call only when :func:`softmax_focal_supports` is true; targets are not validated.

    Example:
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> softmax_focal_rows(x, torch.tensor([0, -100]), gamma=0.0)
        tensor([0.1698, 0.0000])
    """
    tensor_coef, scalar = _split_coef(coef)
    out: torch.Tensor = _SoftmaxFocalRows.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        input, target, tensor_coef, scalar, float(gamma), int(ignore_index)
    )
    return out


def softmax_focal_mean(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    ignore_index: int = -100,
    coef: torch.Tensor | float | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``sum_i l_i / sum_i w_{y_i}`` over the non-ignored rows of :func:`softmax_focal_rows`.

    ``weight`` (``(C,)`` or ``None`` = 1) forms torch's weighted-mean denominator; the numerator's
    per-class factor is ``coef`` as in :func:`softmax_focal_rows` (the public loss passes
    ``alpha * weight``). All rows ignored gives 0. The denominator is recomputed from the targets
    in backward, so autograd keeps only the inputs. Call only when :func:`softmax_focal_supports`
    is true.

    Example:
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> softmax_focal_mean(x, torch.tensor([0, -100]), gamma=0.0)
        tensor(0.1698)
    """
    tensor_coef, scalar = _split_coef(coef)
    out: torch.Tensor = _SoftmaxFocalMean.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        input, target, tensor_coef, weight, scalar, float(gamma), int(ignore_index)
    )
    return out
