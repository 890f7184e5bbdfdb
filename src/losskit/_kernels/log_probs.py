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
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .linear_ce import RowPlan, Rows, _rows_of, compute_dtype, log_softmax_, logits_into

__all__ = [
    "LinearLogProbs",
    "PairedLinearLoss",
    "linear_log_probs_rows",
    "pair_groups",
    "release_forward_grads",
]


def _targets(target: torch.Tensor, rows: Rows, masked: bool, ignore_index: int) -> torch.Tensor:
    t = _rows_of(target, rows)
    if masked:
        t = t.masked_fill(t == ignore_index, 0)
    return t.unsqueeze(1)


def _store(out: torch.Tensor, rows: Rows, values: torch.Tensor) -> None:
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
        ent_c = None if bg is None else _rows_of(ent, rows)  # type: ignore[arg-type]
        _contract_rows(z, pbuf, t2, lp_c, ent_c, a, bg, inv_t, h_c, weight, zhalf, rows, (gh, gw, gb))
    return gh, gw, gb


def _contract_rows(
    z: torch.Tensor,
    pbuf: torch.Tensor | None,
    t2: torch.Tensor,
    lp_c: torch.Tensor,
    ent_c: torch.Tensor | None,
    a: torch.Tensor | None,
    bg: torch.Tensor | None,
    inv_t: float,
    h_c: torch.Tensor,
    weight: torch.Tensor,
    zhalf: torch.Tensor | None,
    rows: Rows,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> None:
    """Contract the chunk's gradient w.r.t. its logits into the gradients ``grads = (gh, gw, gb)``.

    ``z`` holds the chunk's ``log p`` (``(C, V)``, overwritten), ``a`` / ``bg`` the cotangents of its
    log-probs ``lp_c`` / entropies ``ent_c``; ``gh`` rows are stored, ``gw`` and ``gb`` accumulated.
    """
    gh, gw, gb = grads
    c = z.shape[0]
    cdt = z.dtype
    expm1_t = torch.expm1(lp_c)
    if bg is None:
        # G = p - onehot; row weights a ride on the (C, H) operands
        assert a is not None
        z.exp_()
        z.scatter_(1, t2, expm1_t.unsqueeze(1))
        row_w: torch.Tensor | None = a * (-inv_t)
        gemm_scale = 1.0
    else:
        assert ent_c is not None and pbuf is not None
        a0 = a if a is not None else torch.zeros_like(bg)
        p = torch.exp(z, out=pbuf[:c])
        p_t = p.gather(1, t2).squeeze(1)
        # G = p (a + b H + b log p) - a onehot
        z.mul_(bg.unsqueeze(1)).add_((a0 + bg * ent_c).unsqueeze(1))
        z.mul_(p)
        hit = a0 * expm1_t + bg * p_t * (ent_c + lp_c)
        z.scatter_(1, t2, hit.unsqueeze(1))
        row_w = None
        gemm_scale = -inv_t
    if gh is not None:
        g_in = z if zhalf is None else zhalf[:c].copy_(z)
        out = torch.mm(g_in, weight)
        if row_w is not None:
            out.mul_(row_w.unsqueeze(1).to(out.dtype))
        elif gemm_scale != 1.0:
            out.mul_(gemm_scale)
        _store(gh, rows, out)
    if gw is not None:
        h32 = h_c.to(cdt) if h_c.dtype != cdt else h_c
        rhs = h32 * row_w.unsqueeze(1) if row_w is not None else h32
        gw.addmm_(z.t(), rhs, alpha=gemm_scale)
    if gb is not None:
        vec = row_w if row_w is not None else torch.full((c,), gemm_scale, dtype=cdt, device=z.device)
        gb.addmv_(z.t(), vec)


class LinearLogProbs(torch.autograd.Function):
    """``(logps, entropies)`` of ``(hidden @ weight.T + bias) / T`` at ``target``; see the module notes."""

    @staticmethod
    def forward(
        ctx: Any,
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
    def backward(
        ctx: Any, grad_lp: torch.Tensor | None, grad_ent: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
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
            need,
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
    out: tuple[torch.Tensor, torch.Tensor] = LinearLogProbs.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        hidden, weight, bias, target, plan, float(inv_temperature), ignore_index, entropy
    )
    logps, ent = out
    return logps, (ent if entropy else None)


# ----------------------------------------------------------------------------- pair losses, grads in forward

PairLoss = Callable[[slice, torch.Tensor, torch.Tensor], torch.Tensor]


def pair_groups(n_pairs: int, rows_per_pair: int, vocab: int, budget: int) -> list[slice]:
    """Consecutive groups of whole pairs whose float32 logits fit ``budget`` bytes (at least one pair)."""
    per = max(1, budget // max(1, 4 * vocab * rows_per_pair))
    return [slice(i, min(i + per, n_pairs)) for i in range(0, n_pairs, per)]


class _Part:
    """The counted rows of one completion set within a group of pairs."""

    def __init__(
        self, k: int, h3: torch.Tensor, t2: torch.Tensor, grp: slice, ignore_index: int, compact: bool
    ) -> None:
        g, tlen, hdim = grp.stop - grp.start, h3.shape[1], h3.shape[2]
        dev = h3.device
        h = h3[grp].reshape(-1, hdim)
        t = t2[grp].reshape(-1)
        seq = torch.arange(g, device=dev).repeat_interleave(tlen) + k * g
        self.k, self.row0 = k, grp.start * tlen
        valid = t != ignore_index
        self.rows: torch.Tensor | None = None  # row indices into the flat completion set (compact)
        self.valid: torch.Tensor | None = None  # mask of counted rows (not compact)
        if compact:
            rows = valid.nonzero().squeeze(1)
            h, t, seq = h.index_select(0, rows), t.index_select(0, rows), seq.index_select(0, rows)
            self.rows = rows + self.row0
        else:
            t = t.masked_fill(~valid, 0)
            self.valid = valid
        self.h, self.t, self.seq = h, t.unsqueeze(1), seq
        self.n = h.shape[0]

    def put(self, ghs: list[torch.Tensor | None], out: torch.Tensor, lo: int, hi: int) -> None:
        """Write the hidden-state gradients ``out`` of rows ``lo:hi`` into their completion set's."""
        gh = ghs[self.k]
        if gh is None:
            return
        if self.rows is None:
            gh[self.row0 + lo : self.row0 + hi] = out
        else:
            gh.index_copy_(0, self.rows[lo:hi], out)


class _Joined:
    """Several parts' rows stacked, so that their logits and gradients take one matrix product each
    (larger products run faster than two halves on CPU)."""

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts
        self.h = torch.cat([p.h for p in parts])
        self.t = torch.cat([p.t for p in parts])
        masks = [p.valid for p in parts]
        self.valid = None if all(m is None for m in masks) else torch.cat(masks)  # type: ignore[arg-type]
        self.n = self.h.shape[0]

    def put(self, ghs: list[torch.Tensor | None], out: torch.Tensor, lo: int, hi: int) -> None:
        assert lo == 0 and hi == self.n
        for part, piece in zip(self.parts, out.split([p.n for p in self.parts])):
            part.put(ghs, piece, 0, part.n)


def _part_logps(
    z: torch.Tensor,
    part: _Part | _Joined,
    lo: int,
    hi: int,
    weight: torch.Tensor,
    b: torch.Tensor | None,
    zhalf: torch.Tensor | None,
    inv_t: float,
) -> torch.Tensor:
    """Log-softmax of rows ``lo:hi`` of ``part`` written into ``z``; their target log-probs (0 where
    not counted)."""
    logits_into(z, part.h[lo:hi], weight, b, zhalf)
    if inv_t != 1.0:
        z.mul_(inv_t)
    log_softmax_(z)
    lp = z.gather(1, part.t[lo:hi]).squeeze(1)
    if part.valid is not None:
        lp = torch.where(part.valid[lo:hi], lp, lp.new_zeros(()))
    return lp


def _part_grads(
    z: torch.Tensor,
    part: _Part | _Joined,
    lo: int,
    hi: int,
    lp: torch.Tensor,
    r: torch.Tensor,
    weight: torch.Tensor,
    zhalf: torch.Tensor | None,
    grads: tuple[list[torch.Tensor | None], torch.Tensor | None, torch.Tensor | None],
) -> None:
    """Turn the log-softmax in ``z`` into ``G = p - onehot`` and add ``r``-weighted ``G``'s products
    to the gradients (hidden rows of ``part`` in ``ghs``, weight, bias)."""
    ghs, gw, gb = grads
    z.exp_()
    z.scatter_(1, part.t[lo:hi], torch.expm1(lp).unsqueeze(1))
    h = part.h[lo:hi]
    if any(g is not None for g in ghs):
        g_in = z if zhalf is None else zhalf.copy_(z)
        part.put(ghs, torch.mm(g_in, weight).mul_(r.unsqueeze(1).to(weight.dtype)), lo, hi)
    if gw is not None:
        gw.addmm_(z.t(), h.to(gw.dtype) * r.unsqueeze(1))
    if gb is not None:
        gb.addmv_(z.t(), r)


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
    hold_rejected: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor | None, torch.Tensor | None]:
    """Sum of the per-pair losses times ``scale`` and, when ``need``, its gradients (hidden of each
    completion set, weight, bias), computed group by group.

    ``hold_rejected``: the logits of a whole group stay in memory until the pair losses are known
    (three matrix products per row). Otherwise only the chosen completions' are held: the rejected
    ones are formed once for their log-probs before and once for their gradients after (four
    matrix products on those rows, half the memory for equal lengths).
    """
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
    lens = [h.shape[1] for h in hiddens]
    rows_max = max_g * (sum(lens) if hold_rejected else max(lens))
    zbuf = torch.empty(rows_max, v, dtype=cdt, device=dev)
    zhalf = torch.empty(rows_max, v, dtype=hw.dtype, device=dev) if half else None

    def zs(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return zbuf[lo:hi], None if zhalf is None else zhalf[lo:hi]

    def streamed(part: _Part) -> list[tuple[int, int]]:
        return [(lo, min(lo + rows_max, part.n)) for lo in range(0, part.n, rows_max)]

    for grp in groups:
        g = grp.stop - grp.start
        parts = [_Part(k, h, t, grp, ignore_index, compact) for k, (h, t) in enumerate(zip(hiddens, targets))]
        held = parts if hold_rejected else parts[:1]
        lps: list[torch.Tensor] = []
        lps_r: list[torch.Tensor] = []
        if not hold_rejected:  # rejected log-probs first, through the buffer
            for lo, hi in streamed(parts[1]):
                z, zh = zs(0, hi - lo)
                lps_r.append(_part_logps(z, parts[1], lo, hi, weight, b, zh, inv_t))
        block: _Part | _Joined = _Joined(parts) if hold_rejected else parts[0]
        z, zh = zs(0, block.n)
        lp_block = _part_logps(z, block, 0, block.n, weight, b, zh, inv_t)
        lps.extend(lp_block.split([p.n for p in held]))
        if not hold_rejected:
            lps.append(torch.cat(lps_r) if lps_r else hw.new_zeros(0, dtype=cdt))
        lp_all = torch.cat(lps)
        seq_all = torch.cat([p.seq for p in parts])
        sums = torch.zeros(2 * g, dtype=cdt, device=dev).index_add_(0, seq_all, lp_all)
        counts = None
        if average:
            ones = torch.cat(
                [
                    torch.ones(p.n, dtype=cdt, device=dev) if p.valid is None else p.valid.to(cdt)
                    for p in parts
                ]
            )
            counts = torch.zeros(2 * g, dtype=cdt, device=dev).index_add_(0, seq_all, ones).clamp_min(1.0)
            sums = sums / counts
        with torch.enable_grad():
            sw = sums[:g].detach().requires_grad_(need_grad)
            sl = sums[g:].detach().requires_grad_(need_grad)
            losses = pair_loss(grp, sw, sl)
            if need_grad:
                grads = torch.autograd.grad(losses.sum(), (sw, sl), allow_unused=True)
        total += losses.detach().sum().to(cdt)
        if not need_grad:
            continue
        a = torch.cat([x if x is not None else torch.zeros_like(y) for x, y in zip(grads, (sw, sl))]).to(cdt)
        if counts is not None:
            a = a / counts
        # d(total)/d(logits) of a row = r (p - onehot), r = -scale a_seq / T (0 where not counted)
        rs = []
        for part in parts:
            r = a.index_select(0, part.seq) * (-inv_t * scale)
            rs.append(r if part.valid is None else torch.where(part.valid, r, r.new_zeros(())))
        z, zh = zs(0, block.n)
        r_block = torch.cat(rs[: len(held)]) if hold_rejected else rs[0]
        _part_grads(z, block, 0, block.n, lp_block, r_block, weight, zh, (ghs, gw, gb))
        if not hold_rejected:
            part = parts[1]
            for lo, hi in streamed(part):
                z, zh = zs(0, hi - lo)
                lp = _part_logps(z, part, lo, hi, weight, b, zh, inv_t)
                _part_grads(z, part, lo, hi, lp, rs[1][lo:hi], weight, zh, (ghs, gw, gb))
    return total * scale, ghs, gw, gb


def release_forward_grads(ctx: Any, grad_out: torch.Tensor, what: str) -> tuple[torch.Tensor | None, ...]:
    """The gradients a grads-in-forward Function stored as ``ctx.grads = (..., gw, gb)`` (weight and
    bias last, accumulated in float32), scaled by the scalar ``grad_out`` and cast back to
    ``ctx.dtypes = (weight dtype, bias dtype)``; a second backward raises."""
    grads = ctx.grads
    if grads is None:
        raise RuntimeError(
            f"this fused {what} loss computes its gradients in the forward pass and supports one backward "
            "per forward; recompute the loss to backward again"
        )
    ctx.grads = None
    g = grad_out.reshape(())
    if g.device.type != "cpu" or float(g) != 1.0:
        for t in grads:
            if t is not None:
                t.mul_(g.to(t.dtype))
    *rest, gw, gb = grads
    w_dtype, b_dtype = ctx.dtypes
    if gw is not None and gw.dtype != w_dtype:
        gw = gw.to(w_dtype)
    if gb is not None and b_dtype is not None and gb.dtype != b_dtype:
        gb = gb.to(b_dtype)
    return (*rest, gw, gb)


class PairedLinearLoss(torch.autograd.Function):
    """``scale * sum_j pair_loss(s_w[j], s_l[j])`` of the sequence log-probs of pairs of completions;
    gradients computed during the forward pass (the loss of a pair depends only on that pair), the
    backward rescales them by ``grad_output``."""

    @staticmethod
    def forward(
        ctx: Any,
        chosen_hidden: torch.Tensor,
        rejected_hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: tuple[torch.Tensor, torch.Tensor],
        pair_loss: PairLoss,
        groups: list[slice],
        options: tuple[int, float, bool, float, bool, bool],
    ) -> torch.Tensor:
        ignore_index, inv_t, average, scale, compact, hold_rejected = options
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
            need,
            compact,
            hold_rejected,
        )
        shapes = (chosen_hidden.shape, rejected_hidden.shape)
        ghs = [None if g is None else g.reshape(s) for g, s in zip(ghs, shapes)]
        ctx.grads = (ghs[0], ghs[1], gw, gb)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gh_w, gh_l, gw, gb = release_forward_grads(ctx, grad_out, "pair")
        return gh_w, gh_l, gw, gb, None, None, None, None
