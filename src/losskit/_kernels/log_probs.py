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

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from .linear_ce import RowPlan, _rows_of, compute_dtype, log_softmax_, logits_into

__all__ = ["LinearLogProbs", "PairedLinearLoss", "linear_log_probs_rows", "pair_groups"]


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
            if b_scaled is None:
                torch.addmm(-lse_c.unsqueeze(1), h_c, weight.t(), alpha=inv_t, out=z)
            else:  # z = b / T - lse, then z += h W^T / T (no (C, V) temporary)
                torch.sub(b_scaled.expand(c, v), lse_c.unsqueeze(1), out=z)
                z.addmm_(h_c, weight.t(), alpha=inv_t)
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


# ----------------------------------------------------------------------------- pair losses, grads in forward

PairLoss = Callable[[slice, torch.Tensor, torch.Tensor], torch.Tensor]


def pair_groups(n_pairs: int, rows_per_pair: int, vocab: int, budget: int) -> list[slice]:
    """Consecutive groups of whole pairs whose float32 logits fit ``budget`` bytes (at least one pair)."""
    per = max(1, budget // max(1, 4 * vocab * rows_per_pair))
    return [slice(i, min(i + per, n_pairs)) for i in range(0, n_pairs, per)]


def _pair_forward(
    hiddens: tuple[torch.Tensor, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pair_loss: PairLoss,
    groups: list[slice],
    ignore_index: int,
    inv_t: float,
    average: bool,
    scale: float,
    need: tuple[bool, bool, bool],
    compact: bool,
) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor | None, torch.Tensor | None]:
    """Sum of the per-pair losses times ``scale`` and, when ``need``, its gradients (hidden of each
    completion set, weight, bias), computed group by group: three matrix products per row."""
    hw = hiddens[0]
    hdim = hw.shape[-1]
    v = weight.shape[0]
    cdt = compute_dtype(hw.dtype)
    dev = hw.device
    half = hw.dtype != cdt
    need_h, need_w, need_b = need
    need_grad = any(need)
    b = None if bias is None else bias.to(cdt)
    ghs: list[torch.Tensor | None] = [
        torch.zeros(h.shape[0] * h.shape[1], hdim, dtype=h.dtype, device=dev) if need_h else None
        for h in hiddens
    ]
    gw = torch.zeros(v, hdim, dtype=cdt, device=dev) if need_w else None
    gb = torch.zeros(v, dtype=cdt, device=dev) if need_b else None
    total = torch.zeros((), dtype=cdt, device=dev)
    max_g = max((g.stop - g.start for g in groups), default=0)
    rows_max = max_g * sum(h.shape[1] for h in hiddens)
    zbuf = torch.empty(rows_max, v, dtype=cdt, device=dev)
    zhalf = torch.empty(rows_max, v, dtype=hw.dtype, device=dev) if half else None
    for grp in groups:
        g = grp.stop - grp.start
        parts = []  # (which, rows or None, h, t, seq, valid)
        off = 0
        for k, (h3, t2) in enumerate(zip(hiddens, targets)):
            tlen = h3.shape[1]
            h = h3[grp].reshape(-1, hdim)
            t = t2[grp].reshape(-1)
            seq = torch.arange(g, device=dev).repeat_interleave(tlen) + k * g
            row0 = grp.start * tlen
            valid = t != ignore_index
            rows: torch.Tensor | None = None
            if compact:
                rows = valid.nonzero().squeeze(1)
                h, t, seq = h.index_select(0, rows), t.index_select(0, rows), seq.index_select(0, rows)
                rows = rows + row0
                valid = None
            else:
                t = t.masked_fill(~valid, 0)
            parts.append((k, rows, row0, h, t, seq, valid, slice(off, off + h.shape[0])))
            off += h.shape[0]
        z_all = zbuf[:off]
        for _, _, _, h, _, _, _, sl in parts:
            logits_into(z_all[sl], h, weight, b, None if zhalf is None else zhalf[sl])
        if inv_t != 1.0:
            z_all.mul_(inv_t)
        log_softmax_(z_all)
        t_all = torch.cat([p[4] for p in parts]).unsqueeze(1)
        seq_all = torch.cat([p[5] for p in parts])
        lp = z_all.gather(1, t_all).squeeze(1)
        if not compact:
            lp = torch.where(torch.cat([p[6] for p in parts]), lp, lp.new_zeros(()))
        sums = torch.zeros(2 * g, dtype=cdt, device=dev).index_add_(0, seq_all, lp)
        counts = None
        if average:
            ones = torch.ones_like(lp) if compact else torch.cat([p[6] for p in parts]).to(cdt)
            counts = torch.zeros(2 * g, dtype=cdt, device=dev).index_add_(0, seq_all, ones).clamp_min(1.0)
            sums = sums / counts
        with torch.enable_grad():
            sw = sums[:g].detach().requires_grad_(need_grad)
            sl_ = sums[g:].detach().requires_grad_(need_grad)
            losses = pair_loss(grp, sw, sl_)
            if need_grad:
                grads = torch.autograd.grad(losses.sum(), (sw, sl_), allow_unused=True)
        total += losses.detach().sum().to(cdt)
        if not need_grad:
            continue
        a = torch.cat([x if x is not None else torch.zeros_like(s) for x, s in zip(grads, (sw, sl_))]).to(cdt)
        if counts is not None:
            a = a / counts
        row_w = a.index_select(0, seq_all) * (-inv_t * scale)
        if not compact:
            row_w = torch.where(torch.cat([p[6] for p in parts]), row_w, row_w.new_zeros(()))
        # G = p - onehot (target entry expm1(log p_t)); d(total)/d(logits) = row_w * G
        z_all.exp_()
        z_all.scatter_(1, t_all, torch.expm1(lp).unsqueeze(1))
        for k, rows, row0, h, _, _, _, sl in parts:
            z = z_all[sl]
            r = row_w[sl]
            if need_h:
                g_in = z if zhalf is None else zhalf[sl].copy_(z)
                out = torch.mm(g_in, weight).mul_(r.unsqueeze(1).to(hw.dtype))
                gh = ghs[k]
                assert gh is not None
                if rows is None:
                    gh[row0 : row0 + out.shape[0]] = out
                else:
                    gh.index_copy_(0, rows, out)
            if need_w:
                assert gw is not None
                gw.addmm_(z.t(), (h.to(cdt) if half else h) * r.unsqueeze(1))
            if need_b:
                assert gb is not None
                gb.addmv_(z.t(), r)
    return total * scale, ghs, gw, gb


class PairedLinearLoss(torch.autograd.Function):
    """``scale * sum_j pair_loss(s_w[j], s_l[j])`` of the sequence log-probs of pairs of completions;
    gradients computed during the forward pass (the loss of a pair depends only on that pair), the
    backward rescales them by ``grad_output``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        chosen_hidden: torch.Tensor,
        rejected_hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: tuple[torch.Tensor, torch.Tensor],
        pair_loss: PairLoss,
        groups: list[slice],
        options: tuple[int, float, bool, float, bool],
    ) -> torch.Tensor:
        ignore_index, inv_t, average, scale, compact = options
        need = (
            ctx.needs_input_grad[0] or ctx.needs_input_grad[1],
            ctx.needs_input_grad[2],
            ctx.needs_input_grad[3],
        )
        total, ghs, gw, gb = _pair_forward(
            (chosen_hidden, rejected_hidden),
            targets,
            weight,
            bias,
            pair_loss,
            groups,
            ignore_index,
            inv_t,
            average,
            scale,
            need,  # type: ignore[arg-type]
            compact,
        )
        shapes = (chosen_hidden.shape, rejected_hidden.shape)
        ghs = [None if g is None else g.reshape(s) for g, s in zip(ghs, shapes)]
        ctx.grads = (ghs[0], ghs[1], gw, gb)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "this fused pair loss computes its gradients in the forward pass and supports one backward "
                "per forward; recompute the loss to backward again"
            )
        ctx.grads = None
        g = grad_out.reshape(())
        if g.device.type != "cpu" or float(g) != 1.0:
            for t in grads:
                if t is not None:
                    t.mul_(g.to(t.dtype))
        gh_w, gh_l, gw, gb = grads
        w_dtype, b_dtype = ctx.dtypes
        if gw is not None and gw.dtype != w_dtype:
            gw = gw.to(w_dtype)
        if gb is not None and b_dtype is not None and gb.dtype != b_dtype:
            gb = gb.to(b_dtype)
        return gh_w, gh_l, gw, gb, None, None, None, None
