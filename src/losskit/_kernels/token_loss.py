"""Token-local losses of a linear head's log-probs, gradients formed during the forward pass (private).

A loss ``L = sum_r f_r(log p_r, H_r)`` whose term of token ``r`` depends only on that token's
log-probability and entropy (the policy-gradient losses with a known normaliser) has cotangents
``a_r = df_r/dlog p_r`` and ``b_r = df_r/dH_r`` as soon as a chunk's logits are formed. Each chunk's
gradient w.r.t. its logits is then contracted into the gradients of ``hidden``, ``weight`` and
``bias`` at once, with the formulas of :mod:`.log_probs`: three ``(C, H) x (H, V)`` products per row,
as eager autograd, instead of four when the backward recomputes the logits. The backward pass only
rescales the stored gradients by ``grad_output`` (one backward per forward).

The entropies are summed over column blocks (no second ``(C, V)`` buffer); the probabilities
buffer is allocated only when the loss has an entropy term.

``row_loss(rows, logps, entropies)`` gives the loss of one chunk's rows from their ``(C,)`` log-probs
and entropies (``None`` without entropies); autograd on those ``(C,)`` leaves yields ``a`` and ``b``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .linear_ce import RowPlan, Rows, _rows_of, compute_dtype, log_softmax_, logits_into
from .log_probs import _contract_rows, _store, _targets, release_forward_grads

__all__ = ["RowLoss", "TokenLocalLinearLoss"]

RowLoss = Callable[[Rows, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# columns per block of the entropy's ``sum_j p_j log p_j`` (a small temporary instead of a second
# ``(C, V)`` buffer)
_ENTROPY_BLOCK = 4096


def _entropy(logp: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """``-sum_j exp(logp_j) logp_j`` per row of ``logp (C, V)``, through ``tmp (C, block)``."""
    out = logp.new_zeros(logp.shape[0])
    block = tmp.shape[1]
    for j in range(0, logp.shape[1], block):
        zb = logp[:, j : j + block]
        t = torch.exp(zb, out=tmp[:, : zb.shape[1]])
        out.sub_(t.mul_(zb).sum(1))
    return out


def _forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    plan: RowPlan,
    inv_t: float,
    ignore_index: int,
    entropy: bool,
    row_loss: RowLoss,
    need: tuple[bool, bool, bool],
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
]:
    n, hdim = hidden.shape
    v = weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    dev = hidden.device
    need_h, need_w, need_b = need
    need_grad = any(need)
    b = None if bias is None else bias.to(cdt)
    logps = torch.zeros(n, dtype=cdt, device=dev)
    ent = torch.zeros(n, dtype=cdt, device=dev) if entropy else None
    compact = any(not isinstance(r, slice) for r in plan.chunks)
    gh = None
    if need_h:
        gh = (torch.zeros if compact or not plan.chunks else torch.empty)(
            n, hdim, dtype=hidden.dtype, device=dev
        )
    gw = torch.zeros(v, hdim, dtype=cdt, device=dev) if need_w else None
    gb = torch.zeros(v, dtype=cdt, device=dev) if need_b else None
    total = torch.zeros((), dtype=cdt, device=dev)
    if not plan.chunks:
        return total, logps, ent, (gh, gw, gb)
    cs = plan.chunk_size
    zbuf = torch.empty(cs, v, dtype=cdt, device=dev)
    zhalf = torch.empty(cs, v, dtype=hidden.dtype, device=dev) if hidden.dtype != cdt else None
    pbuf: torch.Tensor | None = None  # probabilities, only when an entropy cotangent needs them
    block = min(v, _ENTROPY_BLOCK)
    tmp = torch.empty(cs, block, dtype=cdt, device=dev) if entropy else None
    for rows in plan.chunks:
        h_c = _rows_of(hidden, rows)
        c = h_c.shape[0]
        z = logits_into(zbuf[:c], h_c, weight, b, None if zhalf is None else zhalf[:c])
        if inv_t != 1.0:
            z.mul_(inv_t)
        t2 = _targets(target, rows, plan.masked, ignore_index)
        log_softmax_(z)
        lp = z.gather(1, t2).squeeze(1)
        h_ent = None if tmp is None else _entropy(z, tmp[:c])
        keep = None if plan.valid is None else _rows_of(plan.valid, rows)
        if keep is not None:
            lp = torch.where(keep, lp, lp.new_zeros(()))
            h_ent = None if h_ent is None else torch.where(keep, h_ent, h_ent.new_zeros(()))
        _store(logps, rows, lp)
        if ent is not None and h_ent is not None:
            _store(ent, rows, h_ent)
        with torch.enable_grad():
            lp_leaf = lp.detach().requires_grad_(need_grad)
            ent_leaf = None if h_ent is None else h_ent.detach().requires_grad_(need_grad)
            loss_c = row_loss(rows, lp_leaf, ent_leaf)
            grads: tuple[torch.Tensor | None, ...] = (None, None)
            if need_grad and loss_c.requires_grad:
                leaves = [lp_leaf] if ent_leaf is None else [lp_leaf, ent_leaf]
                grads = (*torch.autograd.grad(loss_c, leaves, allow_unused=True), None)[:2]
        total += loss_c.detach().to(cdt)
        a, bg = (None if g is None else g.detach().to(cdt) for g in grads)
        if a is None and bg is None:
            continue
        if keep is not None:
            a = None if a is None else torch.where(keep, a, a.new_zeros(()))
            bg = None if bg is None else torch.where(keep, bg, bg.new_zeros(()))
        if a is None:
            a = torch.zeros_like(bg)  # type: ignore[arg-type]
        if bg is not None and pbuf is None:
            pbuf = torch.empty(cs, v, dtype=cdt, device=dev)
        _contract_rows(z, pbuf, t2, lp, h_ent, a, bg, inv_t, h_c, weight, zhalf, rows, (gh, gw, gb))
    return total, logps, ent, (gh, gw, gb)


class TokenLocalLinearLoss(torch.autograd.Function):
    """``(loss, logps, entropies)``: the sum of ``row_loss`` over the plan's chunks, and the per-row
    log-probs / entropies it was computed from (not differentiable); see the module notes."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        plan: RowPlan,
        options: tuple[float, int, bool],
        row_loss: RowLoss,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inv_t, ignore_index, entropy = options
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        total, logps, ent, grads = _forward(
            hidden, weight, bias, target, plan, inv_t, ignore_index, entropy, row_loss, need
        )
        ctx.grads = grads
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ent = logps.new_zeros(0) if ent is None else ent
        ctx.mark_non_differentiable(logps, ent)
        return total, logps, ent

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gh, gw, gb = release_forward_grads(ctx, grad_total, "token")
        return gh, gw, gb, None, None, None, None
