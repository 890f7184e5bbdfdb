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

with ``log M = log(beta p_T + (1 - beta) p_S)``. Gradients:
``dl/dz_S = (1/T) p_S (g - sum_c p_S g)`` with ``g = (1 - beta)(log p_S - log M)`` and the same for the
teacher with ``g = beta (log p_T - log M)``; ``(1 - beta) sum_c p_S g`` and ``beta sum_c p_T g`` are the
two halves of the forward value. (``beta = 0`` / ``1`` are KLs: use :func:`kd_rows` with
``scale=1``, teacher/student swapped for ``beta = 1``.)

Saved for backward: the two logit tensors and their per-row log-normalisers
``log sum_c exp(z_c / T)`` (two ``(R,)`` float vectors, ``8 R`` bytes in fp32: 64 KiB at ``R = 8192``,
0.2% of one ``(8192, 1000)`` input); the JSD also keeps the two halves of each row's value (two more
``(R,)`` vectors, 128 KiB in all at ``R = 8192``). With them each gradient is one elementwise pass
and no reduction; recomputing them instead doubled (KD) or tripled (JSD) the backward time.
"""

from __future__ import annotations

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


def _row_log_softmax(z: torch.Tensor, lse: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(z / T)`` from the saved per-row log-normaliser: elementwise, no reduction."""
    return _scaled(z, temperature) - lse.unsqueeze(1)


def _build_kd_forward(temperature: float, scale: float) -> Callable:
    def forward(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # KL = sum_c p_T (b_c - a_c) - log Z_T + log Z_S with a, b the max-shifted scaled logits:
        # two exps per element and no normalised (R, C) tensor
        zs, zt = _scaled(s, temperature), _scaled(t, temperature)
        ms, mt = zs.amax(dim=1, keepdim=True), zt.amax(dim=1, keepdim=True)
        a, b = zs - ms, zt - mt
        eb = torch.exp(b)
        sum_s, sum_t = torch.exp(a).sum(1), eb.sum(1)
        w = (eb * (b - a)).sum(1)
        log_s, log_t = torch.log(sum_s), torch.log(sum_t)
        rows = scale * (w / sum_t - log_t + log_s)
        return rows, ms.squeeze(1) + log_s, mt.squeeze(1) + log_t

    return forward


def _build_kd_backward(temperature: float, scale: float, need_s: bool, need_t: bool) -> Callable:
    def backward(
        s: torch.Tensor, t: torch.Tensor, lse_s: torch.Tensor, lse_t: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        k = (g * (scale / temperature)).unsqueeze(1)
        ls = _row_log_softmax(s, lse_s, temperature)
        lt = _row_log_softmax(t, lse_t, temperature)
        pt = torch.exp(lt)
        gs = (k * (torch.exp(ls) - pt)).to(s.dtype) if need_s else None
        if not need_t:
            return gs, None
        diff = lt - ls
        kl = (pt * diff).sum(1, keepdim=True)
        return gs, (k * pt * (diff - kl)).to(t.dtype)

    return backward


def _jsd_terms(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - beta) p_S (log p_S - log M)`` and ``beta p_T (log p_T - log M)``, elementwise.

    ``M`` is formed from the two probabilities (one log per element, where ``logaddexp`` would add
    an exp and a log1p); where both underflow ``M`` is clamped to the smallest normal number, and
    the terms are ``0 * finite = 0`` there as in exact arithmetic.
    """
    ps, pt = torch.exp(ls), torch.exp(lt)
    lm = _log_mixture(ps, pt, beta)
    return (1.0 - beta) * ps * (ls - lm), beta * pt * (lt - lm)


def _log_mixture(ps: torch.Tensor, pt: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.log((beta * pt + (1.0 - beta) * ps).clamp_min(torch.finfo(ps.dtype).tiny))


def _build_jsd_forward(beta: float, temperature: float) -> Callable:
    def forward(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zs, zt = _scaled(s, temperature), _scaled(t, temperature)
        lse_s, lse_t = torch.logsumexp(zs, dim=1), torch.logsumexp(zt, dim=1)
        term_s, term_t = _jsd_terms(zs - lse_s.unsqueeze(1), zt - lse_t.unsqueeze(1), beta)
        a_s, a_t = term_s.sum(1), term_t.sum(1)
        return a_s + a_t, lse_s, lse_t, a_s, a_t

    return forward


def _build_jsd_backward(beta: float, temperature: float, need_s: bool, need_t: bool) -> Callable:
    def backward(
        s: torch.Tensor,
        t: torch.Tensor,
        lse_s: torch.Tensor,
        lse_t: torch.Tensor,
        a_s: torch.Tensor,
        a_t: torch.Tensor,
        g: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        # dl/dz = (1/T) p (w (log p - log M) - sum_c p w (log p - log M)); the row sums are the two
        # halves of the forward value, saved: one elementwise pass, no reduction
        ls = _row_log_softmax(s, lse_s, temperature)
        lt = _row_log_softmax(t, lse_t, temperature)
        ps, pt = torch.exp(ls), torch.exp(lt)
        lm = _log_mixture(ps, pt, beta)
        k = (g * (1.0 / temperature)).unsqueeze(1)
        gs = (k * ps * ((1.0 - beta) * (ls - lm) - a_s.unsqueeze(1))).to(s.dtype) if need_s else None
        gt = (k * pt * (beta * (lt - lm) - a_t.unsqueeze(1))).to(t.dtype) if need_t else None
        return gs, gt

    return backward


def _rows_forward(ctx, kind: str, build: Callable, s, t, a: float, b: float) -> torch.Tensor:
    """Shared forward of the two row kernels: per-row losses; keeps the logits and the kernel's
    per-row statistics (``(R,)`` float vectors) for backward."""
    rows, *stats = run_kernel((f"{kind}.fwd", a, b), lambda: build(a, b), s.numel(), s, t)
    ctx.save_for_backward(s, t, *stats)
    ctx.conf = (a, b)
    return rows


def _rows_backward(ctx, kind: str, build: Callable, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    s, t, *stats = ctx.saved_tensors
    a, b = ctx.conf
    need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_s or need_t):
        return None, None, None, None
    key = (f"{kind}.bwd", a, b, need_s, need_t)
    gs, gt = run_kernel(key, lambda: build(a, b, need_s, need_t), s.numel(), s, t, *stats, grad)
    return gs, gt, None, None


class _KDRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, temperature, scale):  # type: ignore[override]
        return _rows_forward(ctx, "kd", _build_kd_forward, s, t, temperature, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        return _rows_backward(ctx, "kd", _build_kd_backward, grad)


class _JSDRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, beta, temperature):  # type: ignore[override]
        return _rows_forward(ctx, "jsd", _build_jsd_forward, s, t, beta, temperature)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        return _rows_backward(ctx, "jsd", _build_jsd_backward, grad)


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
