r"""Distributed LM heads: a tensor-parallel (vocabulary-sharded) cross-entropy, and FSDP2 head access.

**Tensor-parallel vocabulary.** Each rank of a process group holds a contiguous slice of the rows of
the head weight ``W`` (``(V_r, H)`` rows ``[o_r, o_r + V_r)`` of the full ``(V, H)``; the bias is
sliced the same way) and the **full, replicated** hidden states and targets, as in Megatron-LM's
vocab-parallel cross-entropy. :func:`vocab_parallel_cross_entropy` never forms the logits of the
whole vocabulary on any rank, nor the ``(N, V_r)`` logits of its own slice: tokens are processed in
chunks of ``C`` rows, and per chunk the row maximum, the sum of exponentials, the target's logit
(and, for label smoothing, the sum of the logits) are reduced over the group. Gradients w.r.t. the
rank's weight and bias slice are local; the gradient w.r.t. ``hidden`` is the **sum over ranks** of
their contributions ``g_r W_r`` (an all-reduce in backward: ``hidden`` is an input replicated on
every rank, like the input of Megatron's ``ColumnParallelLinear``).

**FSDP2.** :func:`unsharded_head` gives the fused losses of :mod:`losskit.language` the full head
weight of a module sharded by ``torch.distributed.fsdp.fully_shard`` when the module's own forward
(which would gather it) is bypassed.

Every rank must make the same calls in the same order (the functions run collectives, and the
hidden gradient's all-reduce runs in backward).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._checks import (
    LossTypeError,
    LossValueError,
    check_int,
    check_number,
    check_reduction,
    shape_str,
)
from ._kernels import linear_ce as _k
from ._reduction import Normalizer, check_normalizer, connected_zero
from .distributed import Group, _active, _all_gather_dim0, _all_reduce_sum, _fc, _pg, _wait
from .distributed import rank as _rank
from .language import _check_head, linear_cross_entropy

__all__ = [
    "VocabParallelCrossEntropyLoss",
    "unsharded_head",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_log_probs",
]


# ----------------------------------------------------------------------------- shard geometry


@dataclass
class _Shard:
    group: Group
    start: int  # first vocabulary row held by this rank
    size: int  # rows held by this rank
    vocab: int  # full vocabulary V
    max_size: int  # largest slice of the group (chunk sizes must agree across ranks)


# Devices on which ignored tokens are dropped before the matmuls (their count is needed on the host).
_COMPACT_DEVICES: tuple[str, ...] = ("cpu",)

# metadata exchanged once per call: one small all-gather and a host sync
_META = ("error", "start", "size", "hidden_dim", "rows", "target_hash", "target_min", "target_max")


def _target_hash(flat: torch.Tensor) -> torch.Tensor:
    """A cheap position-sensitive checksum of the targets (integer wrap-around is deterministic)."""
    if flat.numel() == 0:
        return torch.zeros((), dtype=torch.int64, device=flat.device)
    w = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64) % 1009 + 1
    return (flat.to(torch.int64) * w).sum()


def _exchange(
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    vocab_start: int | None,
    ignore_index: int,
    group: Group,
) -> tuple[_Shard, torch.Tensor]:
    """Check the arguments on every rank and agree on the shard layout; returns it and the flat target.

    Local argument errors are exchanged with the metadata, so every rank raises (instead of the
    others waiting in a collective): the rank that found the error raises it, the others name it.
    """
    error: Exception | None = None
    flat = target.reshape(-1) if isinstance(target, torch.Tensor) else None
    try:
        _check_local(hidden, weight, bias, target, vocab_start)
    except (LossValueError, LossTypeError) as exc:
        error = exc
    meta = [0] * len(_META)
    if error is None:
        assert flat is not None
        valid = flat[flat != ignore_index]
        meta = [
            0,
            -1 if vocab_start is None else int(vocab_start),
            int(weight.shape[0]),
            int(hidden.shape[-1]),
            int(flat.numel()),
            int(_target_hash(flat)),
            int(valid.min()) if valid.numel() else 0,
            int(valid.max()) if valid.numel() else 0,
        ]
    else:
        meta[0] = 1
    from .distributed import _collective_device

    cdev = _collective_device(group)
    rows = _all_gather_dim0(torch.tensor(meta, dtype=torch.int64, device=cdev), group).view(-1, len(_META))
    table = [dict(zip(_META, r)) for r in rows.tolist()]
    me = _rank(group)
    if error is not None:
        raise error
    bad = [i for i, m in enumerate(table) if m["error"]]
    if bad:
        raise LossValueError(
            f"{name}: rank {bad[0]} rejected its arguments (see the error raised on that rank)"
        )
    _check_layout(name, table, ignore_index)
    starts = [m["start"] for m in table]
    sizes = [m["size"] for m in table]
    if all(s < 0 for s in starts):
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
    vocab = sum(sizes)
    if any(m["target_max"] >= vocab or m["target_min"] < 0 for m in table):
        m = table[me]
        bad_value = m["target_max"] if m["target_max"] >= vocab else m["target_min"]
        raise LossValueError(
            f"target contains {bad_value}, expected class indices in [0, {vocab}) (the vocabulary tiled by the "
            f"weight_shard slices of all ranks) or ignore_index={ignore_index}"
        )
    return _Shard(group, starts[me], sizes[me], vocab, max(sizes)), flat


def _check_local(hidden: Any, weight: Any, bias: Any, target: Any, vocab_start: int | None) -> None:
    _check_head("hidden", hidden, "weight_shard", weight, "bias_shard", bias)
    if not isinstance(target, torch.Tensor):
        raise LossTypeError(f"target must be a tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise LossTypeError(f"target must be an integer tensor of class indices, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(hidden.shape[:-1])} to match "
            f"hidden of shape {shape_str(hidden.shape)} without its last dimension"
        )
    if target.device != hidden.device:
        raise LossValueError(f"target is on {target.device}, expected {hidden.device} like hidden")
    check_int("vocab_start", vocab_start, low=0, allow_none=True)


def _check_layout(name: str, table: list[dict[str, int]], ignore_index: int) -> None:
    """Same replicated inputs everywhere, and slices that tile [0, V) without gaps or overlaps."""
    first = table[0]
    for i, m in enumerate(table[1:], start=1):
        if m["hidden_dim"] != first["hidden_dim"] or m["rows"] != first["rows"]:
            raise LossValueError(
                f"{name}: hidden must be replicated on every rank, got {first['rows']} tokens of width "
                f"{first['hidden_dim']} on rank 0 and {m['rows']} of width {m['hidden_dim']} on rank {i}"
            )
        if m["target_hash"] != first["target_hash"]:
            raise LossValueError(
                f"{name}: target must be replicated on every rank, rank {i} differs from rank 0"
            )
    given = [m["start"] >= 0 for m in table]
    if any(given) and not all(given):
        raise LossValueError(
            f"{name}: vocab_start must be given on every rank or on none, got it on ranks "
            f"{[i for i, g in enumerate(given) if g]} only"
        )
    if not all(given):
        return
    spans = sorted((m["start"], m["start"] + m["size"], i) for i, m in enumerate(table))
    held = ", ".join(f"rank {i}: [{m['start']}, {m['start'] + m['size']})" for i, m in enumerate(table))
    end = 0
    for lo, hi, i in spans:
        if lo != end:
            what = "a gap" if lo > end else "an overlap"
            raise LossValueError(
                f"weight_shard slices must tile [0, V) without gaps or overlaps, found {what} at row "
                f"{min(lo, end)} (rank {i} starts at vocab_start={lo}); slices held: {held}"
            )
        end = hi


# ----------------------------------------------------------------------------- chunked kernel


@dataclass
class _Config:
    target: torch.Tensor  # (N,) global class indices
    plan: _k.RowPlan
    shard: _Shard
    ignore_index: int
    eps: float
    z_loss: float


def _all_reduce_max(x: torch.Tensor, group: Group) -> torch.Tensor:
    return _wait(_fc().all_reduce(x.contiguous(), "max", _pg(group)))


def _rows_of(x: torch.Tensor, rows: _k.Rows) -> torch.Tensor:
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def _local_target(cfg: _Config, rows: _k.Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each row's target in this slice ``(C, 1)`` (clamped) and whether this rank owns it."""
    t = _rows_of(cfg.target, rows).to(torch.int64)
    valid = t != cfg.ignore_index
    loc = t - cfg.shard.start
    own = valid & (loc >= 0) & (loc < cfg.shard.size)
    return loc.clamp(0, max(cfg.shard.size - 1, 0)).unsqueeze(1), own


def _chunk_stats(
    z: torch.Tensor, idx: torch.Tensor, own: torch.Tensor, cfg: _Config
) -> tuple[torch.Tensor, ...]:
    """Turn the chunk's logits ``z`` into ``exp(z - M)`` in place, ``M`` the global row maximum.

    Returns per row ``(S, rest, logp_t, lse, loss)``: the global sum of exponentials ``S``, the
    probability mass off the target ``rest = 1 - p_t`` (summed without the target: keeps the digits of
    a confident token), ``log p_t``, ``lse = M + log S`` and the token loss.
    """
    group = cfg.shard.group
    c, vr = z.shape
    m = z.amax(1) if vr else z.new_full((c,), -math.inf)
    m = _all_reduce_max(m, group)
    if vr:
        s_t = torch.where(own, z.gather(1, idx).squeeze(1), 0.0)
        sum_s = z.sum(1) if cfg.eps else None
        z.sub_(m.unsqueeze(1)).exp_()
        e = z.gather(1, idx)
        z.scatter_(1, idx, torch.where(own.unsqueeze(1), 0.0, e))
        rest = z.sum(1)
        z.scatter_(1, idx, e)
        e_t = torch.where(own, e.squeeze(1), 0.0)
    else:
        s_t = e_t = rest = z.new_zeros(c)
        sum_s = z.new_zeros(c) if cfg.eps else None
    cols = [rest, e_t, s_t] + ([sum_s] if sum_s is not None else [])
    red = _all_reduce_sum(torch.stack(cols), group)
    rest, e_t, s_t = red[0], red[1], red[2]
    total = rest + e_t
    lse = m + total.log()
    rest = rest / total
    logp_t = torch.where(rest < 0.5, torch.log1p(-rest), s_t - lse)
    eps = cfg.eps
    loss = logp_t * (eps - 1.0)
    if eps:
        loss = loss + eps * (lse - red[3] / cfg.shard.vocab)
    if cfg.z_loss:
        loss = loss + cfg.z_loss * lse * lse
    return total, rest, logp_t, lse, loss


def _grad_from_probs_(
    p: torch.Tensor,
    idx: torch.Tensor,
    own: torch.Tensor,
    rest: torch.Tensor,
    logp_t: torch.Tensor,
    lse: torch.Tensor,
    rs: torch.Tensor,
    cfg: _Config,
) -> torch.Tensor:
    r"""``p`` (softmax probabilities of this slice) becomes ``rs * d loss / d s``, in place:
    ``p_j (1 + 2 z lse) - (1 - eps) [j = t] - eps / V``; the target entry is written as
    ``eps - rest + 2 z lse p_t`` (no cancellation for a confident token)."""
    eps, zl = cfg.eps, cfg.z_loss
    factor = rs if not zl else rs * (1.0 + (2.0 * zl) * lse)
    p.mul_(factor.unsqueeze(1))
    if p.shape[1]:
        hit = eps - rest
        if zl:
            hit = hit + (2.0 * zl) * lse * torch.exp(logp_t)
        hit = hit * rs
        p.scatter_(1, idx, torch.where(own.unsqueeze(1), hit.unsqueeze(1), p.gather(1, idx)))
        if eps:
            p.sub_((rs * (eps / cfg.shard.vocab)).unsqueeze(1))
    return p


def _run_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: _Config,
    *,
    need: tuple[bool, bool, bool],
    row_scale: torch.Tensor | None,
    saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None, list[torch.Tensor | None]]:
    """One pass over the chunks.

    Forward (``saved is None``): the per-token losses, the per-row ``(rest, logp_t, lse)`` and, with
    ``row_scale``, the gradients of ``sum_i row_scale_i loss_i``. Backward (``saved`` given): the
    logits are recomputed and turned into probabilities with the saved ``lse`` (no collective), and
    only the gradients are returned. ``grad_h`` is this rank's partial contribution.
    """
    n, hdim = hidden.shape
    cdt = _k.compute_dtype(hidden.dtype)
    dev = hidden.device
    plan = cfg.plan
    need_h, need_w, need_b = need
    want_grad = row_scale is not None and (need_h or need_w or need_b)
    compact = any(not isinstance(r, slice) for r in plan.chunks)
    forward = saved is None
    losses = torch.zeros(n, dtype=cdt, device=dev) if forward else None
    stats = [torch.zeros(n, dtype=cdt, device=dev) for _ in range(3)] if forward else None
    gh = gw = gb = None
    if want_grad and need_h:
        gh = (torch.zeros if compact else torch.empty)(n, hdim, dtype=hidden.dtype, device=dev)
    if want_grad and need_w:
        gw = torch.zeros(weight.shape[0], hdim, dtype=cdt, device=dev)
    if want_grad and need_b:
        gb = torch.zeros(weight.shape[0], dtype=cdt, device=dev)
    half = hidden.dtype != cdt
    b = None if bias is None else bias.to(cdt)
    cs = plan.chunk_size
    vr = weight.shape[0]
    zbuf = torch.empty(cs, vr, dtype=cdt, device=dev)
    zhalf = torch.empty(cs, vr, dtype=hidden.dtype, device=dev) if half else None
    for rows in plan.chunks:
        h_c = _rows_of(hidden, rows)
        c = h_c.shape[0]
        z = zbuf[:c]
        zh = None if zhalf is None else zhalf[:c]
        if vr:
            _k.logits_into(z, h_c, weight, b, zh)
        idx, own = _local_target(cfg, rows)
        if forward:
            total, rest, logp_t, lse, loss = _chunk_stats(z, idx, own, cfg)
            if plan.valid is not None:
                loss = torch.where(_rows_of(plan.valid, rows), loss, 0.0)
            for out, val in zip((losses, *stats), (loss, rest, logp_t, lse)):  # type: ignore[misc]
                if isinstance(rows, slice):
                    out[rows] = val
                else:
                    out.index_copy_(0, rows, val)
            if not want_grad:
                continue
            z.div_(total.unsqueeze(1))  # exp(s - M) / S: the probabilities
        else:
            assert saved is not None
            rest, logp_t, lse = (_rows_of(s, rows) for s in saved)
            z.sub_(lse.unsqueeze(1)).exp_()
        assert row_scale is not None
        rs = _rows_of(row_scale, rows).to(cdt)
        if plan.valid is not None:
            rs = rs * _rows_of(plan.valid, rows).to(cdt)
        g = _grad_from_probs_(z, idx, own, rest, logp_t, lse, rs, cfg)
        if gh is not None:
            g_in = g if zh is None else zh.copy_(g)
            part = g_in @ weight if vr else h_c.new_zeros(c, hdim)
            if isinstance(rows, slice):
                gh[rows] = part
            else:
                gh.index_copy_(0, rows, part)
        if gw is not None:
            gw.addmm_(g.t(), h_c.to(cdt) if half else h_c)
        if gb is not None:
            gb.add_(g.sum(0))
    return losses, None if stats is None else tuple(stats), [gh, gw, gb]


def _finish_grads(
    grads: list[torch.Tensor | None],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group: Group,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    gh, gw, gb = grads
    if gh is not None:
        gh = _all_reduce_sum(gh, group)  # hidden is replicated: its gradient is the sum of the ranks'
    if gw is not None and gw.dtype != weight.dtype:
        gw = gw.to(weight.dtype)
    if gb is not None and bias is not None and gb.dtype != bias.dtype:
        gb = gb.to(bias.dtype)
    return gh, gw, gb


class _VocabParallelCE(torch.autograd.Function):
    """Per-token losses (``per_token``) or ``scale * sum`` of them, over a vocabulary-sharded head."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        cfg: _Config,
        per_token: bool,
        scale: float,
        need: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        n = hidden.shape[0]
        row_scale = None if per_token else torch.full((n,), scale, dtype=torch.float64, device=hidden.device)
        losses, stats, grads = _run_chunks(
            hidden, weight, bias, cfg, need=need, row_scale=row_scale, saved=None
        )
        assert losses is not None and stats is not None
        ctx.save_for_backward(hidden, weight, bias, *stats)
        ctx.cfg, ctx.per_token, ctx.scale, ctx.need = cfg, per_token, scale, need
        ctx.grads = None if per_token else grads
        return losses if per_token else losses.sum() * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, *stats = ctx.saved_tensors
        cfg = ctx.cfg
        grads = ctx.grads
        ctx.grads = None  # handed to autograd: never reused (a retained graph recomputes)
        if grads is None:
            n = hidden.shape[0]
            if ctx.per_token:
                row_scale = grad_out.reshape(-1)
            else:
                row_scale = (grad_out.reshape(()) * ctx.scale).expand(n)
            _, _, grads = _run_chunks(
                hidden, weight, bias, cfg, need=ctx.need, row_scale=row_scale, saved=tuple(stats)
            )
        else:
            g = grad_out.reshape(())
            if g.device.type != "cpu" or float(g) != 1.0:
                for t in grads:
                    if t is not None:
                        t.mul_(g.to(t.dtype))
        gh, gw, gb = _finish_grads(grads, weight, bias, cfg.shard.group)
        return gh, gw, gb, None, None, None, None


# ----------------------------------------------------------------------------- public functions


def _check_options(
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    reduction: str,
    normalizer: Normalizer,
    chunk_size: int | None,
) -> None:
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_int("ignore_index", ignore_index)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    check_number("z_loss", z_loss, low=0.0)
    check_int("chunk_size", chunk_size, low=1, allow_none=True)


def _single_process_start(vocab_start: int | None) -> None:
    check_int("vocab_start", vocab_start, low=0, allow_none=True)
    if vocab_start not in (None, 0):
        raise LossValueError(
            f"vocab_start={vocab_start} but the group has one rank: weight_shard must be the whole head "
            "(vocab_start None or 0)"
        )


def _token_losses(
    name: str,
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    target: torch.Tensor,
    bias_shard: torch.Tensor | None,
    group: Group,
    vocab_start: int | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    reduction: str,
    normalizer: Normalizer,
    chunk_size: int | None,
) -> torch.Tensor:
    shard, flat = _exchange(name, hidden, weight_shard, bias_shard, target, vocab_start, ignore_index, group)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    n = h2.shape[0]
    # the same chunk plan on every rank (the collectives run once per chunk)
    cs = chunk_size if chunk_size is not None else _k.auto_chunk_size(n, max(shard.max_size, 1), 1)
    compact = hidden.device.type in _COMPACT_DEVICES and not torch.compiler.is_compiling()
    plan = _k.plan_rows(flat != ignore_index, n, cs, compact=compact)
    cfg = _Config(flat, plan, shard, ignore_index, float(label_smoothing), float(z_loss))
    out_shape = tuple(target.shape)
    if n == 0 or (isinstance(plan.count, int) and plan.count == 0):
        zero = connected_zero(hidden, weight_shard, bias_shard)
        zero = zero.to(_k.compute_dtype(zero.dtype))
        return zero.expand(out_shape).clone() if reduction == "none" else zero
    grad_on = torch.is_grad_enabled()
    need = (
        grad_on and hidden.requires_grad,
        grad_on and weight_shard.requires_grad,
        grad_on and bias_shard is not None and bias_shard.requires_grad,
    )
    per_token = reduction == "none"
    scale = 1.0
    if reduction == "mean":
        if normalizer is None and isinstance(plan.count, int):
            scale = 1.0 / plan.count
        elif normalizer is not None and not isinstance(normalizer, torch.Tensor):
            scale = 1.0 / float(normalizer)
    if any(need):
        out: torch.Tensor = _VocabParallelCE.apply(  # type: ignore[no-untyped-call]
            h2, weight_shard, bias_shard, cfg, per_token, scale, need
        )
    else:
        losses = _run_chunks(h2, weight_shard, bias_shard, cfg, need=need, row_scale=None, saved=None)[0]
        assert losses is not None
        out = losses if per_token else losses.sum() * scale
    if per_token:
        return out.reshape(out_shape)
    if reduction == "mean" and scale == 1.0:
        if isinstance(normalizer, torch.Tensor):
            return out / normalizer
        if normalizer is None and isinstance(plan.count, torch.Tensor):
            return out / plan.count.to(out.dtype).clamp_min(1.0)
    return out


def vocab_parallel_cross_entropy(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    target: torch.Tensor,
    bias_shard: torch.Tensor | None = None,
    *,
    group: Group = None,
    vocab_start: int | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    normalizer: Normalizer = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Cross-entropy of a linear head whose vocabulary rows are split over the ranks of ``group``.

    Rank ``r`` holds ``W_r = W[o_r : o_r + V_r]`` (and ``b_r``), a contiguous slice of the full
    ``(V, H)`` head, and the same (replicated) ``hidden`` and ``target`` as every other rank. With the
    local logits ``s^{(r)} = h W_r^\top + b_r``, each token's loss is assembled from group
    reductions:

    .. math::
        M = \max_r \max_j s^{(r)}_j,\qquad
        S = \sum_r \sum_j e^{s^{(r)}_j - M},\qquad \operatorname{lse} = M + \log S,

        s_t = \sum_r [t \in \text{slice } r]\, s^{(r)}_{t - o_r},\qquad
        \ell = (1 - \varepsilon)(\operatorname{lse} - s_t)
              + \varepsilon\,\Big(\operatorname{lse} - \tfrac1V \sum_r \sum_j s^{(r)}_j\Big)
              + \lambda_z \operatorname{lse}^2

    which is :func:`losskit.language.linear_cross_entropy` of the full head (same label smoothing
    ``eps``, PaLM z-loss ``lambda_z``, ``ignore_index``, reductions and ``normalizer``). Gradients:
    ``d l / d s_j = p_j (1 + 2 lambda_z lse) - (1 - eps)[j = t] - eps / V`` is local to the slice, so
    the weight and bias slices get theirs directly and ``d l / d h = sum_r g_r W_r`` is all-reduced in
    backward (**the returned loss is the same on every rank; call backward on every rank**, and treat
    ``hidden`` as replicated: its gradient is already the full one on each rank).

    Tokens are processed ``chunk_size`` at a time: no rank holds more than one ``(C, V_r)`` chunk of
    logits, and each chunk costs two small collectives (an all-reduce MAX of ``C`` numbers and an
    all-reduce SUM of 3 or 4 rows of ``C``), with the weight and bias gradients computed during the
    forward pass as in :func:`~losskit.language.linear_cross_entropy`. ``reduction='none'`` saves the
    per-token ``lse`` and recomputes each chunk in backward (exact for any cotangent, no collective but
    the hidden gradient's all-reduce). Each call also all-gathers a few integers per rank (host sync)
    to find the slices' offsets and check the inputs.

    Args:
        hidden: ``(N, H)`` or ``(B, L, H)`` hidden states, identical on every rank.
        weight_shard: ``(V_r, H)`` this rank's rows of the head weight, same dtype as ``hidden``.
            Slices may be uneven (``V`` not divisible by the world size) and may be empty.
        target: ``(N,)`` / ``(B, L)`` indices in ``[0, V)`` or ``ignore_index``, identical on every
            rank (checked with a checksum).
        bias_shard: optional ``(V_r,)`` slice of the head bias.
        group: process group over which the vocabulary is split (default: the world).
        vocab_start: this rank's first row ``o_r``. ``None`` (on every rank): the slices follow the
            rank order, ``o_r = V_0 + ... + V_{r-1}``, from an all-gather of the slice sizes. Given:
            the slices must tile ``[0, V)`` exactly (a gap or an overlap raises).
        ignore_index, label_smoothing, z_loss, reduction, normalizer, chunk_size: as in
            :func:`~losskit.language.linear_cross_entropy` (``reduction='mean'`` counts the valid
            tokens of the replicated target once, not once per rank).

    Returns:
        float32 loss (float64 for float64 inputs), scalar or of ``target``'s shape; equal on all ranks.

    Without an initialised process group (or with a group of one rank) this is exactly
    :func:`~losskit.language.linear_cross_entropy` on ``weight_shard`` as the full head.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(6, 4, generator=g, dtype=torch.float64)
        >>> weight = torch.randn(11, 4, generator=g, dtype=torch.float64)
        >>> target = torch.tensor([1, 2, -100, 4, 10, 0])
        >>> loss = vocab_parallel_cross_entropy(hidden, weight, target, label_smoothing=0.1)  # one process
        >>> ref = torch.nn.functional.cross_entropy(hidden @ weight.T, target, label_smoothing=0.1)
        >>> torch.allclose(loss, ref)
        True

        On two ranks (``torchrun --nproc-per-node 2``), rank ``r`` passes its rows, e.g. 6 + 5:

        .. code-block:: python

            rows = slice(0, 6) if rank == 0 else slice(6, 11)
            loss = vocab_parallel_cross_entropy(hidden, weight[rows], target)  # same on both ranks
    """
    _check_options(ignore_index, label_smoothing, z_loss, reduction, normalizer, chunk_size)
    if not _active(group):
        _single_process_start(vocab_start)
        return linear_cross_entropy(
            hidden,
            weight_shard,
            target,
            bias_shard,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            reduction=reduction,
            normalizer=normalizer,
            chunk_size=chunk_size,
        )
    return _token_losses(
        "vocab_parallel_cross_entropy",
        hidden,
        weight_shard,
        target,
        bias_shard,
        group,
        vocab_start,
        ignore_index,
        label_smoothing,
        z_loss,
        reduction,
        normalizer,
        chunk_size,
    )


def vocab_parallel_log_probs(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    target: torch.Tensor,
    bias_shard: torch.Tensor | None = None,
    *,
    group: Group = None,
    vocab_start: int | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Per-token ``log p(target)`` of a vocabulary-sharded linear head (the input of DPO, GRPO, ...).

    .. math::
        \log p_t = s_t - \operatorname{lse},\qquad
        \operatorname{lse} = M + \log \sum_r \sum_j e^{s^{(r)}_j - M}

    with the group reductions of :func:`vocab_parallel_cross_entropy` (whose ``reduction='none'``
    loss without smoothing or z-loss is ``-log p_t``). The result has ``target``'s shape, is 0 where
    ``target == ignore_index`` and is identical on every rank. The backward pass recomputes each
    chunk from the saved ``lse``, so gradients are exact for any upstream gradient; the gradient of
    ``hidden`` is summed over ranks (all-reduce), those of the weight and bias slices are local.
    Without a process group this is :func:`losskit.preference.linear_log_probs` on the full head.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden, weight = torch.randn(5, 4, generator=g), torch.randn(10, 4, generator=g)
        >>> target = torch.tensor([1, 2, -100, 4, 9])
        >>> logps = vocab_parallel_log_probs(hidden, weight, target)
        >>> eager = torch.log_softmax(hidden @ weight.T, -1)
        >>> torch.allclose(logps[[0, 1, 3, 4]], eager[[0, 1, 3, 4], [1, 2, 4, 9]]), logps[2].item()
        (True, 0.0)
    """
    check_int("ignore_index", ignore_index)
    check_int("chunk_size", chunk_size, low=1, allow_none=True)
    if not _active(group):
        _single_process_start(vocab_start)
        from .preference.log_probs import linear_log_probs

        out = linear_log_probs(hidden, weight_shard, target, bias_shard, ignore_index, chunk_size=chunk_size)
        assert isinstance(out, torch.Tensor)
        return out
    nll = _token_losses(
        "vocab_parallel_log_probs",
        hidden,
        weight_shard,
        target,
        bias_shard,
        group,
        vocab_start,
        ignore_index,
        0.0,
        0.0,
        "none",
        None,
        chunk_size,
    )
    return -nll


class VocabParallelCrossEntropyLoss(nn.Module):
    """Module form of :func:`vocab_parallel_cross_entropy`; holds the configuration and the group.

    Example:
        >>> loss_fn = VocabParallelCrossEntropyLoss(z_loss=1e-4)
        >>> hidden, weight = torch.randn(2, 5, 8), torch.randn(50, 8)
        >>> loss_fn(hidden, weight, torch.randint(0, 50, (2, 5))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        group: Group = None,
        vocab_start: int | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_options(ignore_index, label_smoothing, z_loss, reduction, None, chunk_size)
        check_int("vocab_start", vocab_start, low=0, allow_none=True)
        self.group = group
        self.vocab_start = vocab_start
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.z_loss = float(z_loss)
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: torch.Tensor,
        weight_shard: torch.Tensor,
        target: torch.Tensor,
        bias_shard: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        return vocab_parallel_cross_entropy(
            hidden,
            weight_shard,
            target,
            bias_shard,
            group=self.group,
            vocab_start=self.vocab_start,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            reduction=self.reduction,
            normalizer=normalizer,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"vocab_start={self.vocab_start}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, reduction={self.reduction!r}"
        )


# ----------------------------------------------------------------------------- FSDP2


@contextlib.contextmanager
def unsharded_head(module: nn.Module, name: str = "weight") -> Iterator[torch.Tensor]:
    """The full (unsharded) ``module.<name>`` of an FSDP2 module, for a loss that bypasses its forward.

    ``fully_shard(lm_head)`` stores ``lm_head.weight`` as a ``DTensor`` shard and gathers it only in the
    module's forward pre-hook, which a fused loss such as
    :func:`~losskit.language.linear_cross_entropy` (reading ``lm_head.weight`` directly) skips. Inside
    this context the module is unsharded (``FSDPModule.unshard()``, an all-gather), and the yielded
    tensor is the full parameter that FSDP2 itself uses in forward. Its gradient is accumulated there
    and reduce-scattered into the sharded ``.grad`` (averaged over ranks, like any FSDP2 gradient) by
    FSDP2's post-backward pass, which also reshards the module; the root module must have run forward
    in the same iteration (its backward hook drives that pass). When no gradient is being recorded
    (``torch.no_grad()``, a frozen head) the module is resharded on exit instead.

    A module that is not an ``FSDPModule`` yields ``getattr(module, name)`` unchanged, so the same
    code runs without FSDP. Every rank must enter the context (the unshard is a collective).

    Example:
        >>> head = torch.nn.Linear(8, 50, bias=False)
        >>> with unsharded_head(head) as weight:  # plain module: its own weight
        ...     loss = linear_cross_entropy(torch.randn(3, 8), weight, torch.tensor([1, 2, 3]))
        >>> weight is head.weight
        True
    """
    if not isinstance(module, nn.Module):
        raise LossTypeError(f"module must be an nn.Module, got {type(module).__name__}")
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        FSDPModule = ()  # type: ignore[assignment,misc]
    if not hasattr(module, name):
        raise LossValueError(f"module {type(module).__name__} has no parameter {name!r}")
    if not isinstance(module, FSDPModule):
        yield getattr(module, name)
        return
    module.unshard()
    full = getattr(module, name)
    try:
        from torch.distributed.tensor import DTensor

        if isinstance(full, DTensor):  # pragma: no cover - defensive: unshard left a DTensor
            raise LossValueError(
                f"{type(module).__name__}.{name} is still a DTensor after unshard(); is {name!r} managed "
                "by this module's fully_shard?"
            )
        yield full
    finally:
        if not (torch.is_grad_enabled() and full.requires_grad):
            module.reshard()
