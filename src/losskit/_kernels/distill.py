r"""Fused distillation rows: Hinton KD and the generalised JSD, for 2-D ``(R, C)`` logits (classes last).

KD (Hinton et al. 2015), per row:

.. math::
    \ell = s\,\mathrm{KL}(p_T \| p_S) = s \sum_c p_{T,c}\,(\log p_{T,c} - \log p_{S,c}),\quad
    p = \operatorname{softmax}(z / T)

(``s = T^2`` for :func:`losskit.functional.kd_loss`; ``s = 1`` for the plain KL). Gradients:
``dl/dz_S = (s / T)(p_S - p_T)`` and ``dl/dz_T = (s / T) p_T (log p_T - log p_S - KL)``.

Generalised JSD (GKD, Agarwal et al. 2024) for ``0 < beta < 1``:

.. math::
    M = \beta p_T + (1 - \beta) p_S,\quad
    \ell = \beta\,\mathrm{KL}(p_T \| M) + (1 - \beta)\,\mathrm{KL}(p_S \| M)

with ``log M = logaddexp(log p_T + log beta, log p_S + log(1 - beta))``. Gradients:
``dl/dz_S = (1/T) p_S (g - sum_c p_S g)`` with ``g = (1 - beta)(log p_S - log M)`` and the same for the
teacher with ``g = beta (log p_T - log M)``. (``beta = 0`` / ``1`` are KLs: use :func:`kd_rows` with
``scale=1``, teacher/student swapped for ``beta = 1``.)

Only the two logit tensors are saved; log-sum-exps are recomputed in backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from ._common import float_dtype
from ._compile import run_kernel

__all__ = ["distill_supports", "jsd_rows", "kd_rows"]


def _scaled(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / T`` in the compute dtype, ``-inf`` logits clamped to a finite value first.

    Masked (``-inf``) classes keep probability exactly 0 but a finite log-probability, so they add
    ``0 * finite = 0`` to the divergences and get finite gradients (the public losses do the same).
    """
    zf = z.to(float_dtype(z))
    zf = zf.clamp_min(torch.finfo(zf.dtype).min * min(1.0, temperature))
    if temperature != 1.0:
        zf = zf * (1.0 / temperature)
    return zf


def _log_softmax(z: torch.Tensor, temperature: float) -> torch.Tensor:
    zf = _scaled(z, temperature)
    return zf - torch.logsumexp(zf, dim=1, keepdim=True)


def _shifted(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z / T - max, exp(z / T - max))`` per row: one max pass, one exp per element."""
    zf = _scaled(z, temperature)
    sh = zf - zf.amax(dim=1, keepdim=True)
    return sh, torch.exp(sh)


def _build_kd_forward(temperature: float, scale: float) -> Callable:
    def forward(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # KL = sum_c p_T (b_c - a_c) - log Z_T + log Z_S with a, b the max-shifted scaled logits:
        # two exps per element and no normalised (R, C) tensor
        a, ea = _shifted(s, temperature)
        b, eb = _shifted(t, temperature)
        zs, zt = ea.sum(1), eb.sum(1)
        w = (eb * (b - a)).sum(1)
        return scale * (w / zt - torch.log(zt) + torch.log(zs))

    return forward


def _build_kd_backward(temperature: float, scale: float, need_s: bool, need_t: bool) -> Callable:
    def backward(s: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        k = (g * (scale / temperature)).unsqueeze(1)
        if not need_t:
            _, ea = _shifted(s, temperature)
            _, eb = _shifted(t, temperature)
            ps = ea / ea.sum(1, keepdim=True)
            pt = eb / eb.sum(1, keepdim=True)
            return (k * (ps - pt)).to(s.dtype), None
        ls, lt = _log_softmax(s, temperature), _log_softmax(t, temperature)
        pt = torch.exp(lt)
        gs = (k * (torch.exp(ls) - pt)).to(s.dtype) if need_s else None
        diff = lt - ls
        kl = (pt * diff).sum(1, keepdim=True)
        return gs, (k * pt * (diff - kl)).to(t.dtype)

    return backward


def _build_jsd_forward(beta: float, temperature: float) -> Callable:
    lb, l1b = math.log(beta), math.log1p(-beta)

    def forward(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ls, lt = _log_softmax(s, temperature), _log_softmax(t, temperature)
        lm = torch.logaddexp(lt + lb, ls + l1b)
        return (beta * torch.exp(lt) * (lt - lm) + (1.0 - beta) * torch.exp(ls) * (ls - lm)).sum(1)

    return forward


def _build_jsd_backward(beta: float, temperature: float, need_s: bool, need_t: bool) -> Callable:
    lb, l1b = math.log(beta), math.log1p(-beta)

    def backward(s: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ls, lt = _log_softmax(s, temperature), _log_softmax(t, temperature)
        lm = torch.logaddexp(lt + lb, ls + l1b)
        k = (g * (1.0 / temperature)).unsqueeze(1)
        out: list[torch.Tensor | None] = []
        for need, lp, w, like in ((need_s, ls, 1.0 - beta, s), (need_t, lt, beta, t)):
            if not need:
                out.append(None)
                continue
            p = torch.exp(lp)
            gg = w * (lp - lm)
            out.append((k * p * (gg - (p * gg).sum(1, keepdim=True))).to(like.dtype))
        return tuple(out)

    return backward


class _KDRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, temperature, scale):  # type: ignore[override]
        ctx.save_for_backward(s, t)
        ctx.conf = (temperature, scale)
        key = ("kd.fwd", temperature, scale)
        return run_kernel(key, lambda: _build_kd_forward(temperature, scale), s.numel(), s, t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        s, t = ctx.saved_tensors
        temperature, scale = ctx.conf
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_s or need_t):
            return None, None, None, None
        key = ("kd.bwd", temperature, scale, need_s, need_t)
        build = lambda: _build_kd_backward(temperature, scale, need_s, need_t)  # noqa: E731
        gs, gt = run_kernel(key, build, s.numel(), s, t, grad)
        return gs, gt, None, None


class _JSDRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, beta, temperature):  # type: ignore[override]
        ctx.save_for_backward(s, t)
        ctx.conf = (beta, temperature)
        key = ("jsd.fwd", beta, temperature)
        return run_kernel(key, lambda: _build_jsd_forward(beta, temperature), s.numel(), s, t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        s, t = ctx.saved_tensors
        beta, temperature = ctx.conf
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_s or need_t):
            return None, None, None, None
        key = ("jsd.bwd", beta, temperature, need_s, need_t)
        build = lambda: _build_jsd_backward(beta, temperature, need_s, need_t)  # noqa: E731
        gs, gt = run_kernel(key, build, s.numel(), s, t, grad)
        return gs, gt, None, None


def distill_supports(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Whether :func:`kd_rows` / :func:`jsd_rows` cover the pair: 2-D ``(R, C)`` fp32/fp64/fp16/bf16
    logits of the same shape, dtype and device, not inside an outer ``torch.compile`` trace. Reshape
    ``(B, L, V)`` language-model logits to ``(B * L, V)`` (a view) first; for an ``(N, C, d1, ...)``
    input with classes on dim 1 the eager code avoids a transposed copy."""
    if torch.compiler.is_compiling():
        return False
    if not (isinstance(student, torch.Tensor) and isinstance(teacher, torch.Tensor)):
        return False
    return (
        student.dim() == 2
        and student.shape == teacher.shape
        and student.dtype == teacher.dtype
        and student.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and student.device == teacher.device
    )


def kd_rows(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0, scale: float | None = None
) -> torch.Tensor:
    r"""Per-row ``scale * KL(p_T || p_S)``, ``(R,)``, with ``p = softmax(z / T)`` over dim 1.

    ``scale=None`` means ``T^2`` (Hinton KD). Both logit tensors get gradients when they require
    them. Float32 result for half inputs. Call only when :func:`distill_supports` is true.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> t = torch.tensor([[0.0, 2.0, -1.0]])
        >>> kd_rows(s, t, temperature=1.0)
        tensor([1.4592])
    """
    temperature = float(temperature)
    sc = temperature * temperature if scale is None else float(scale)
    return _KDRows.apply(student, teacher, temperature, sc)


def jsd_rows(
    student: torch.Tensor, teacher: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    r"""Per-row generalised JSD, ``(R,)``, for ``0 < beta < 1`` (module docstring formula).

    Both logit tensors get gradients when they require them. Call only when
    :func:`distill_supports` is true and ``0 < beta < 1``.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> t = torch.tensor([[0.0, 2.0, -1.0]])
        >>> jsd_rows(s, t, beta=0.5)
        tensor([0.3140])
    """
    return _JSDRows.apply(student, teacher, float(beta), float(temperature))
