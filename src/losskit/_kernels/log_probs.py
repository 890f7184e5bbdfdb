"""Chunked per-token log-probabilities (and entropies) of a linear head, exact for any cotangent (private).

``z = (hidden @ weight.T + bias) / T`` is never materialised. The forward pass processes ``C`` rows
at a time in one reusable ``(C, V)`` buffer and keeps only, per row, the log-normaliser
``lse = logsumexp(z)``, the target's log-probability ``z_t - lse`` and, when asked, the entropy
``H = -sum_j p_j log p_j``. The losses built on top (DPO, SimPO, ...) are non-linear in these values,
so gradients cannot be formed during the forward pass as the cross-entropy kernel does; the backward
pass recomputes each chunk's logits, turns them into probabilities with the saved ``lse`` (no second
softmax reduction) and contracts the gradient w.r.t. the logits into the gradients of ``hidden``,
``weight`` and ``bias`` (the Cut-Cross-Entropy scheme, Wijmans et al. 2024).

With cotangents ``a`` (of the log-probs) and ``b`` (of the entropies), per row:

.. math::
    \\frac{\\partial}{\\partial z_j} = a (\\delta_{jt} - p_j) - b\\, p_j (\\log p_j + H)

The kernel builds ``G = -T d/dz`` in place, i.e. ``p_j (a + b H + b log p_j) - a delta_jt``, whose
target entry is ``a expm1(log p_t) + b p_t (H + log p_t)`` (``p_t - 1`` as ``expm1`` keeps its precision
for confident tokens), and applies ``-1 / T`` on the GEMMs. Without an entropy cotangent the row
weights ``a`` are applied to the ``(C, H)`` operands instead of the ``(C, V)`` matrix.

Half-precision inputs: GEMMs run in their dtype; softmax, log-probs, entropies and the weight and bias
gradients (accumulated across chunks) are float32. Row planning (ignored rows skipped on CPU, masked
elsewhere) and the chunk-size rule are the cross-entropy kernel's (:mod:`.linear_ce`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .linear_ce import RowPlan, _rows_of, compute_dtype, log_softmax_, logits_into

__all__ = ["LinearLogProbs", "linear_log_probs_rows"]


def _targets(target: torch.Tensor, rows, masked: bool, ignore_index: int) -> torch.Tensor:
    t = _rows_of(target, rows)
    if masked:
        t = t.masked_fill(t == ignore_index, 0)
    return t.unsqueeze(1)


def _store(out: torch.Tensor, rows, values: torch.Tensor) -> None:
    if isinstance(rows, slice):
        out[rows] = values
    else:
        out.index_copy_(0, rows, values)


def _forward_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    plan: RowPlan,
    inv_t: float,
    ignore_index: int,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logps, lse, entropies)``, each ``(N,)`` in the compute dtype, zero at rows the plan skips."""
    n = hidden.shape[0]
    v = weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    dev = hidden.device
    b = None if bias is None else bias.to(cdt)
    logps = torch.zeros(n, dtype=cdt, device=dev)
    lse = torch.zeros(n, dtype=cdt, device=dev)
    ent = torch.zeros(n, dtype=cdt, device=dev) if entropy else None
    if not plan.chunks:
        return logps, lse, ent
    cs = plan.chunk_size
    zbuf = torch.empty(cs, v, dtype=cdt, device=dev)
    zhalf = torch.empty(cs, v, dtype=hidden.dtype, device=dev) if hidden.dtype != cdt else None
    pbuf = torch.empty(cs, v, dtype=cdt, device=dev) if entropy else None
    for rows in plan.chunks:
        h_c = _rows_of(hidden, rows)
        c = h_c.shape[0]
        z = logits_into(zbuf[:c], h_c, weight, b, None if zhalf is None else zhalf[:c])
        if inv_t != 1.0:
            z.mul_(inv_t)
        t2 = _targets(target, rows, plan.masked, ignore_index)
        z_t = z.gather(1, t2).squeeze(1)
        log_softmax_(z)
        lp = z.gather(1, t2).squeeze(1)
        lse_c = z_t - lp
        h_ent = None
        if pbuf is not None:
            p = torch.exp(z, out=pbuf[:c])
            h_ent = -torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).reshape(c)
        if plan.valid is not None:
            keep = _rows_of(plan.valid, rows)
            zero = lp.new_zeros(())
            lp = torch.where(keep, lp, zero)
            if h_ent is not None:
                h_ent = torch.where(keep, h_ent, zero)
        _store(logps, rows, lp)
        _store(lse, rows, lse_c)
        if ent is not None and h_ent is not None:
            _store(ent, rows, h_ent)
    return logps, lse, ent


def _backward_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    plan: RowPlan,
    inv_t: float,
    ignore_index: int,
    logps: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor | None,
    grad_lp: torch.Tensor | None,
    grad_ent: torch.Tensor | None,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``sum(grad_lp * logps + grad_ent * entropies)`` w.r.t. hidden, weight and bias."""
    n, hdim = hidden.shape
    v = weight.shape[0]
    cdt = lse.dtype
    dev = hidden.device
    half = hidden.dtype != cdt
    need_h, need_w, need_b = need
    nothing = not plan.chunks or (grad_lp is None and grad_ent is None)
    compact = any(not isinstance(r, slice) for r in plan.chunks)
    gh = None
    if need_h:
        gh = (torch.zeros if compact or nothing else torch.empty)(n, hdim, dtype=hidden.dtype, device=dev)
    gw = torch.zeros(v, hdim, dtype=cdt, device=dev) if need_w else None
    gb = torch.zeros(v, dtype=cdt, device=dev) if need_b else None
    if nothing:
        return gh, gw, gb
    b_scaled = None if bias is None else bias.to(cdt) * inv_t
    cs = plan.chunk_size
    zbuf = torch.empty(cs, v, dtype=cdt, device=dev)
    zhalf = torch.empty(cs, v, dtype=hidden.dtype, device=dev) if half else None
    pbuf = torch.empty(cs, v, dtype=cdt, device=dev) if grad_ent is not None else None
    for rows in plan.chunks:
        h_c = _rows_of(hidden, rows)
        c = h_c.shape[0]
        t2 = _targets(target, rows, plan.masked, ignore_index)
        lse_c = _rows_of(lse, rows)
        lp_c = _rows_of(logps, rows)
        a = None if grad_lp is None else _rows_of(grad_lp, rows).to(cdt)
        bg = None if grad_ent is None else _rows_of(grad_ent, rows).to(cdt)
        if plan.valid is not None:
            keep = _rows_of(plan.valid, rows)
            a = None if a is None else torch.where(keep, a, a.new_zeros(()))
            bg = None if bg is None else torch.where(keep, bg, bg.new_zeros(()))
        # z = log p = (h W^T + b) / T - lse
        z = zbuf[:c]
        if half:
            logits_into(z, h_c, weight, None if bias is None else bias.to(cdt), zhalf[:c])  # type: ignore[index]
            if inv_t != 1.0:
                z.mul_(inv_t)
            z.sub_(lse_c.unsqueeze(1))
        else:
            shift = -lse_c.unsqueeze(1) if b_scaled is None else b_scaled - lse_c.unsqueeze(1)
            torch.addmm(shift, h_c, weight.t(), alpha=inv_t, out=z)
        expm1_t = torch.expm1(lp_c)
        if bg is None:
            # G = p - onehot; row weights a ride on the (C, H) operands
            assert a is not None
            z.exp_()
            z.scatter_(1, t2, expm1_t.unsqueeze(1))
            row_w = a * (-inv_t)
            gemm_scale = 1.0
        else:
            h_c_ent = _rows_of(ent, rows)  # type: ignore[arg-type]
            a0 = a if a is not None else torch.zeros_like(bg)
            p = torch.exp(z, out=pbuf[:c])  # type: ignore[index]
            p_t = p.gather(1, t2).squeeze(1)
            # G = p (a + b H + b log p) - a onehot
            z.mul_(bg.unsqueeze(1)).add_((a0 + bg * h_c_ent).unsqueeze(1))
            z.mul_(p)
            hit = a0 * expm1_t + bg * p_t * (h_c_ent + lp_c)
            z.scatter_(1, t2, hit.unsqueeze(1))
            row_w = None
            gemm_scale = -inv_t
        if need_h:
            g_in = z if zhalf is None else zhalf[:c].copy_(z)
            out = torch.mm(g_in, weight)
            if row_w is not None:
                out.mul_(row_w.unsqueeze(1).to(out.dtype))
            elif gemm_scale != 1.0:
                out.mul_(gemm_scale)
            _store(gh, rows, out)  # type: ignore[arg-type]
        if need_w:
            h32 = h_c.to(cdt) if half else h_c
            rhs = h32 * row_w.unsqueeze(1) if row_w is not None else h32
            gw.addmm_(z.t(), rhs, alpha=gemm_scale)  # type: ignore[union-attr]
        if need_b:
            vec = row_w if row_w is not None else torch.full((c,), gemm_scale, dtype=cdt, device=dev)
            gb.addmv_(z.t(), vec)  # type: ignore[union-attr]
    return gh, gw, gb


class LinearLogProbs(torch.autograd.Function):
    """``(logps, entropies)`` of ``(hidden @ weight.T + bias) / T`` at ``target``; see the module notes."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        plan: RowPlan,
        inv_t: float,
        ignore_index: int,
        entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logps, lse, ent = _forward_rows(hidden, weight, bias, target, plan, inv_t, ignore_index, entropy)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, bias, target, logps, lse, ent)
        ctx.plan, ctx.inv_t, ctx.ignore_index = plan, inv_t, ignore_index
        if ent is None:
            ent = logps.new_zeros(0)
        if not entropy:
            ctx.mark_non_differentiable(ent)
        return logps, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lp: torch.Tensor | None, grad_ent: torch.Tensor | None):  # type: ignore[override]
        hidden, weight, bias, target, logps, lse, ent = ctx.saved_tensors
        if ent is None:
            grad_ent = None
        need = tuple(ctx.needs_input_grad[:3])
        gh, gw, gb = _backward_rows(
            hidden,
            weight,
            bias,
            target,
            ctx.plan,
            ctx.inv_t,
            ctx.ignore_index,
            logps,
            lse,
            ent,
            grad_lp,
            grad_ent,
            need,  # type: ignore[arg-type]
        )
        if gw is not None and gw.dtype != weight.dtype:
            gw = gw.to(weight.dtype)
        if gb is not None and bias is not None and gb.dtype != bias.dtype:
            gb = gb.to(bias.dtype)
        return gh, gw, gb, None, None, None, None, None


def linear_log_probs_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    plan: RowPlan,
    *,
    inv_temperature: float = 1.0,
    ignore_index: int = -100,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row log-probs ``(N,)`` and, with ``entropy``, entropies ``(N,)`` (compute dtype, zero at
    skipped rows) of ``hidden (N, H)``, ``weight (V, H)``, ``bias (V,)``, ``target (N,)``.

    Differentiable w.r.t. hidden, weight and bias for any cotangent; nothing but ``(N,)`` vectors is
    saved beyond the inputs. Under ``torch.no_grad()`` (or when nothing requires grad) the plain
    chunked forward runs.
    """
    grad_on = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, weight, bias)
    )
    if not grad_on:
        logps, _, ent = _forward_rows(
            hidden, weight, bias, target, plan, inv_temperature, ignore_index, entropy
        )
        return logps, ent
    logps, ent = LinearLogProbs.apply(
        hidden, weight, bias, target, plan, float(inv_temperature), ignore_index, entropy
    )
    return logps, (ent if entropy else None)
