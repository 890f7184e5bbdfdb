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

Saved for backward: the two logit tensors and, per row and tensor, the maximum of ``z / T`` and
``log sum_c exp(z_c / T - max)`` (four ``(R,)`` float vectors, ``16 R`` bytes in fp32: 128 KiB at
``R = 8192``, 0.4% of one ``(8192, 1000)`` input; kept apart so that the tail of a confident row is
not rounded into the maximum); the JSD also keeps, per row and tensor, the gap ``g_m`` of the most likely
class and ``sum_c p (g - g_m)`` (four more ``(R,)`` vectors, see :func:`_pivoted`). With them each gradient is one elementwise pass and no reduction; recomputing
them instead doubled (KD) or tripled (JSD) the backward time.

Precision: log-probabilities come from :func:`~losskit._kernels._common.softmax_parts`, ``p_S - p_T``
and ``log p - log M`` are formed through ``expm1`` / ``log1p`` (see :func:`_prob_diff`,
:func:`_jsd_gaps`, :func:`_pivoted`), so rows whose distributions put almost all their mass on one class keep their
small values and gradients to relative precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._common import float_dtype, softmax_parts
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


def _log_softmax(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log softmax(z / T), max, log1p(rest))`` per row: the two ``(R,)`` statistics rebuild the
    log-probabilities elementwise in backward; kept apart, ``max + log1p(rest)`` does not round the
    tail of a confident row away (:func:`~losskit._kernels._common.softmax_parts`)."""
    zf = _scaled(z, temperature)
    a, _, _, l1p = softmax_parts(zf, 1)
    # the row max as its own (R,) tensor: a view of zf - a would keep that (R, C) storage alive
    return a - l1p, zf[:, 0] - a[:, 0], l1p.squeeze(1)


def _row_log_softmax(z: torch.Tensor, m: torch.Tensor, l1p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(z / T)`` from the saved per-row statistics: elementwise, no reduction."""
    return (_scaled(z, temperature) - m.unsqueeze(1)) - l1p.unsqueeze(1)


def _prob_diff(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    """``p_S - p_T`` from the log-probabilities, relative-accurate when both are close to 1.

    ``p_S (1 - p_T / p_S)`` or ``p_T (p_S / p_T - 1)``, i.e. ``-+exp(max) expm1(-|log p_S - log p_T|)``
    (no overflow): the direct difference of two rounded probabilities near 1 keeps no digits.
    """
    d = ls - lt
    mag = torch.exp(torch.maximum(ls, lt)) * torch.expm1(-d.abs())
    return torch.where(d >= 0, -mag, mag)


def _build_kd_forward(temperature: float, scale: float) -> Callable[..., tuple[torch.Tensor, ...]]:
    def forward(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # KL = sum_c e_T (a_T - a_S) / (1 + rest_T) - log1p(rest_T) + log1p(rest_S) with a the
        # max-shifted scaled logits and e_T = exp(a_T) (sum_c e_T = 1 + rest_T): every row sum in one
        # loop after the maxima, no normalised (R, C) tensor
        zs, zt = _scaled(s, temperature), _scaled(t, temperature)
        a_s, _, _, l1s = softmax_parts(zs, 1)
        a_t, e_t, rest_t, l1t = softmax_parts(zt, 1)
        w = (e_t * (a_t - a_s)).sum(1, keepdim=True)
        rows = scale * (w / (1.0 + rest_t) - l1t + l1s).squeeze(1)
        return rows, zs[:, 0] - a_s[:, 0], l1s.squeeze(1), zt[:, 0] - a_t[:, 0], l1t.squeeze(1)

    return forward


def _build_kd_backward(
    temperature: float, scale: float, need_s: bool, need_t: bool
) -> Callable[..., tuple[torch.Tensor | None, ...]]:
    def backward(
        s: torch.Tensor,
        t: torch.Tensor,
        ms: torch.Tensor,
        l1s: torch.Tensor,
        mt: torch.Tensor,
        l1t: torch.Tensor,
        g: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        k = (g * (scale / temperature)).unsqueeze(1)
        ls = _row_log_softmax(s, ms, l1s, temperature)
        lt = _row_log_softmax(t, mt, l1t, temperature)
        gs = (k * _prob_diff(ls, lt)).to(s.dtype) if need_s else None
        if not need_t:
            return gs, None
        pt = torch.exp(lt)
        diff = lt - ls
        kl = (pt * diff).sum(1, keepdim=True)
        return gs, (k * pt * (diff - kl)).to(t.dtype)

    return backward


def _jsd_gaps(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - beta)(log p_S - log M)`` and ``beta (log p_T - log M)``, elementwise.

    With ``u`` the larger and ``v`` the smaller of ``log p_S``, ``log p_T`` and ``w`` the mixture
    weight of the smaller, ``log M = u + log1p(w expm1(v - u))``: ``u - log M`` and ``v - log M``
    come out without a difference of two rounded logarithms (which, for two probabilities close to 1,
    keeps no digits), and nothing overflows or needs a clamp where both probabilities underflow.
    """
    d = ls - lt
    s_big = d >= 0
    a = -d.abs()
    corr = torch.log1p(torch.where(s_big, beta, 1.0 - beta) * torch.expm1(a))
    gap_s = torch.where(s_big, -corr, a - corr)  # log p_S - log M
    gap_t = torch.where(s_big, a - corr, -corr)  # log p_T - log M
    return (1.0 - beta) * gap_s, beta * gap_t


def _pivoted(lp: torch.Tensor, gap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum_c p g, g_m, sum_{c != m} p (g - g_m))`` per row with ``m`` the class of ``p_m > 1/2``.

    The gradient ``p_k (g_k - sum_c p g)`` is evaluated as ``p_k ((g_k - g_m) - sum_{c != m} p (g - g_m))``
    (equal since ``sum_c p = 1``; ``g_m = 0`` and the sum over all classes where no class has half the
    mass): the dominant class leaves the sum, so a row with ``p_m`` close to 1 keeps its small
    gradients. Masked sums, all in the loop of the row's value (argmax and gather were slower).
    """
    p = torch.exp(lp)
    dom = p > 0.5
    zero = torch.zeros_like(p)
    pg = p * gap
    g_m = torch.where(dom, gap, zero).sum(1)
    s_pg = torch.where(dom, zero, pg).sum(1)
    s_p = torch.where(dom, zero, p).sum(1)
    return pg.sum(1), g_m, s_pg - g_m * s_p


def _build_jsd_forward(beta: float, temperature: float) -> Callable[..., tuple[torch.Tensor, ...]]:
    def forward(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ls, ms, l1s = _log_softmax(s, temperature)
        lt, mt, l1t = _log_softmax(t, temperature)
        gap_s, gap_t = _jsd_gaps(ls, lt, beta)
        a_s, piv_s, b_s = _pivoted(ls, gap_s)
        a_t, piv_t, b_t = _pivoted(lt, gap_t)
        return a_s + a_t, ms, l1s, mt, l1t, piv_s, b_s, piv_t, b_t

    return forward


def _build_jsd_backward(
    beta: float, temperature: float, need_s: bool, need_t: bool
) -> Callable[..., tuple[torch.Tensor | None, ...]]:
    def backward(
        s: torch.Tensor,
        t: torch.Tensor,
        ms: torch.Tensor,
        l1s: torch.Tensor,
        mt: torch.Tensor,
        l1t: torch.Tensor,
        piv_s: torch.Tensor,
        b_s: torch.Tensor,
        piv_t: torch.Tensor,
        b_t: torch.Tensor,
        g: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        # dl/dz = (1/T) p ((g - g_m) - sum_c p (g - g_m)) (see _pivoted); the row sums are saved:
        # one elementwise pass, no reduction
        ls = _row_log_softmax(s, ms, l1s, temperature)
        lt = _row_log_softmax(t, mt, l1t, temperature)
        gap_s, gap_t = _jsd_gaps(ls, lt, beta)
        k = (g * (1.0 / temperature)).unsqueeze(1)

        def grad(
            lp: torch.Tensor, gap: torch.Tensor, piv: torch.Tensor, b: torch.Tensor, like: torch.Tensor
        ) -> torch.Tensor:
            return (k * torch.exp(lp) * ((gap - piv.unsqueeze(1)) - b.unsqueeze(1))).to(like.dtype)

        gs = grad(ls, gap_s, piv_s, b_s, s) if need_s else None
        gt = grad(lt, gap_t, piv_t, b_t, t) if need_t else None
        return gs, gt

    return backward


_BuildForward = Callable[[float, float], Callable[..., tuple[torch.Tensor, ...]]]
_BuildBackward = Callable[[float, float, bool, bool], Callable[..., tuple[torch.Tensor | None, ...]]]


def _rows_forward(
    ctx: Any, kind: str, build: _BuildForward, s: torch.Tensor, t: torch.Tensor, a: float, b: float
) -> torch.Tensor:
    """Shared forward of the two row kernels: per-row losses; keeps the logits and the kernel's
    per-row statistics (``(R,)`` float vectors) for backward."""
    out: tuple[torch.Tensor, ...] = run_kernel((f"{kind}.fwd", a, b), lambda: build(a, b), s.numel(), s, t)
    rows, *stats = out
    ctx.save_for_backward(s, t, *stats)
    ctx.conf = (a, b)
    return rows


def _rows_backward(
    ctx: Any, kind: str, build: _BuildBackward, build_fwd: _BuildForward, grad: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    s, t, *stats = ctx.saved_tensors
    a, b = ctx.conf
    need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_s or need_t):
        return None, None, None, None
    if torch.is_grad_enabled():
        # double backward: the saved statistics are constants to autograd; recompute them from the
        # logits so that the gradient is differentiable in them as well
        stats = list(build_fwd(a, b)(s, t)[1:])
    key = (f"{kind}.bwd", a, b, need_s, need_t)
    gs, gt = run_kernel(key, lambda: build(a, b, need_s, need_t), s.numel(), s, t, *stats, grad)
    return gs, gt, None, None


class _KDRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, t: torch.Tensor, temperature: float, scale: float) -> torch.Tensor:
        return _rows_forward(ctx, "kd", _build_kd_forward, s, t, temperature, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _rows_backward(ctx, "kd", _build_kd_backward, _build_kd_forward, grad)


class _JSDRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, t: torch.Tensor, beta: float, temperature: float) -> torch.Tensor:
        return _rows_forward(ctx, "jsd", _build_jsd_forward, s, t, beta, temperature)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _rows_backward(ctx, "jsd", _build_jsd_backward, _build_jsd_forward, grad)


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
    out: torch.Tensor = _KDRows.apply(student, teacher, temperature, sc)  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
    return out


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
    out: torch.Tensor = _JSDRows.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        student, teacher, float(beta), float(temperature)
    )
    return out
