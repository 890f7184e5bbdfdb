"""Chunked fused ``linear -> per-token loss`` for large vocabularies (private).

The ``(N, V)`` logits of ``hidden @ weight.T`` are never materialised. Tokens are processed in chunks
of ``C`` rows; each chunk's logits live in one reusable ``(C, V)`` buffer that a *head* turns, in
place, into the per-token losses and the gradient of those losses w.r.t. the logits. The driver then
contracts that gradient at once into the gradients of ``hidden`` (``g @ W``), ``weight``
(``grad_W += g.T @ h``, accumulated in float32 for half inputs) and ``bias`` (``g.sum(0)``).

Two modes of :class:`FusedLinearLoss`:

* ``per_token=False`` (scalar reductions): the forward returns ``scale * sum`` of the token losses
  and computes every needed gradient on the way (grads-in-forward, as Liger-Kernel and Apple's
  cut-cross-entropy do). ``scale`` (a mean's ``1 / count`` when the count is a host number) rides on
  the gradient GEMMs' ``alpha``; the backward rescales the gradients in place by ``grad_output`` (a
  tensor normalizer, ``loss * c``, ...), a pass skipped on CPU when it is exactly 1. A second
  backward through the same graph (``retain_graph=True``) recomputes the gradients exactly from the
  saved inputs instead of reusing buffers already handed to autograd.
* ``per_token=True`` (``reduction='none'``): the forward computes only the losses; the backward
  recomputes each chunk's logits and scales every row by its own cotangent, which is exact for any
  cotangent (precomputed gradients could only be rescaled by one number).

On CPU the ignored tokens are dropped before any matmul (their loss and gradient are zero), which
needs the count of valid tokens on the host; on accelerators that would be a device sync, so all
tokens are processed and the ignored rows are masked instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "CrossEntropyAux",
    "CrossEntropyHead",
    "DistillHead",
    "FusedLinearLoss",
    "RowPlan",
    "auto_chunk_size",
    "linear_token_loss",
    "plan_rows",
    "run_chunks",
]

# Bytes of chunk buffers ((C, V) float32 logits and temporaries). Measured on a 2-core x86 CPU with
# N=4096, H=1024, V=32000 (benchmarks/bench_language.py): CPU time falls as chunks grow (the
# weight-gradient GEMM ``grad_W += g.T @ h`` rereads grad_W once per chunk: K = C must not be small),
# while peak memory grows by the buffer. 48 MiB (C = 384 there) sits between C = 256 and 512.
DEFAULT_CHUNK_BYTES = 48 * 2**20

Rows = slice | torch.Tensor


def auto_chunk_size(n_rows: int, vocab: int, n_buffers: int = 1, budget: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that ``n_buffers`` float32 ``(C, vocab)`` buffers fit in ``budget`` bytes.

    Also at most ``max(64, n_rows // 8)`` so that small problems still save memory (a single chunk
    would be the whole logits matrix). Rounded down to a multiple of 64 from 128 rows up, of 8 from
    16 up (GEMM friendly); at least 1 and at most ``n_rows``.
    """
    c = min(budget // max(1, 4 * vocab * n_buffers), max(64, n_rows // 8))
    if c >= 128:
        c -= c % 64
    elif c >= 16:
        c -= c % 8
    return int(max(1, min(c, max(n_rows, 1))))


@dataclass
class RowPlan:
    """Which rows each chunk processes.

    ``chunks`` are slices (contiguous rows) or index tensors (valid rows only, CPU). When
    ``valid`` is not None the chunks also contain ignored rows that must be masked.
    ``count`` is the number of valid rows: a Python int when known on the host, else a tensor.
    """

    chunks: list[Rows]
    valid: torch.Tensor | None
    count: int | torch.Tensor
    chunk_size: int

    @property
    def masked(self) -> bool:
        return self.valid is not None


def plan_rows(valid: torch.Tensor | None, n: int, chunk_size: int, *, compact: bool) -> RowPlan:
    """Split ``n`` rows into chunks of ``chunk_size``; with ``compact`` skip rows where ``valid`` is False."""
    if valid is None:
        return RowPlan(
            [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)], None, n, chunk_size
        )
    if not compact:
        return RowPlan(
            [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)], valid, valid.sum(), chunk_size
        )
    idx = valid.nonzero().squeeze(1)  # host sync: fine on CPU
    count = int(idx.numel())
    if count == n:
        return plan_rows(None, n, chunk_size, compact=True)
    return RowPlan(list(idx.split(chunk_size)), None, count, chunk_size)


def _rows_of(x: torch.Tensor, rows: Rows) -> torch.Tensor:
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


class _Buffers:
    """Per-call reusable chunk buffers, allocated on first use."""

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def get(self, key: str, rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        buf = self._store.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.dtype != dtype:
            buf = torch.empty(rows, cols, dtype=dtype, device=like.device)
            self._store[key] = buf
        return buf[:rows]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def logits_into(
    out: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    half_buf: torch.Tensor | None,
) -> torch.Tensor:
    """``out = h @ weight.T (+ bias)`` in ``out``'s dtype. Half inputs: GEMM in their dtype, then upcast."""
    if half_buf is None:
        if bias is None:
            torch.mm(h, weight.t(), out=out)
        else:
            torch.addmm(bias, h, weight.t(), out=out)
        return out
    torch.mm(h, weight.t(), out=half_buf)
    out.copy_(half_buf)
    if bias is not None:
        out.add_(bias)
    return out


_log_softmax_out = torch.ops.aten._log_softmax.out


def log_softmax_(z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax written over ``z`` itself (one fused kernel, no temporary)."""
    _log_softmax_out(z, 1, False, out=z)
    return z


def log_softmax_tail_(z: torch.Tensor, tmp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`log_softmax_` whose most likely entry keeps its digits as its probability nears 1.

    ``log p_m = s_m - lse`` rounds to 0 once ``1 - p_m`` is below float32's epsilon; it is rewritten
    as ``log1p(-rest)`` with ``rest`` the sum of the other probabilities (where ``p_m > 1/2``).
    Returns the index ``m`` ``(C, 1)`` and ``rest`` ``(C, 1)``; ``tmp`` is scratch of ``z``'s shape.
    """
    log_softmax_(z)
    idx = z.argmax(dim=1, keepdim=True)
    torch.exp(z, out=tmp)
    tmp.scatter_(1, idx, 0.0)
    rest = tmp.sum(1, keepdim=True)
    z.scatter_(1, idx, torch.where(rest < 0.5, torch.log1p(-rest), z.gather(1, idx)))
    return idx, rest


def _pivot_grad_(
    p: torch.Tensor, g: torch.Tensor, pg: torch.Tensor, idx: torch.Tensor, rest: torch.Tensor
) -> None:
    """``p <- p (g - sum_c p g)`` evaluated as ``p ((g - g_m) - sum_{c != m} p (g - g_m))`` with ``m``
    the most likely class (the same since ``sum_c p = 1``; ``rest = sum_{c != m} p``): the
    dominant class leaves the sum, so its small gradient keeps its digits. ``pg`` holds ``p * g``
    and is overwritten."""
    g_m = g.gather(1, idx)
    pg.scatter_(1, idx, 0.0)
    piv = pg.sum(1, keepdim=True) - g_m * rest
    g.sub_(g_m).sub_(piv)
    p.mul_(g)


class TokenHead(Protocol):
    """Turns a chunk of logits into per-token losses and, in place, into d(loss)/d(logits)."""

    n_buffers: int

    def __call__(
        self,
        z: torch.Tensor,
        rows: Rows,
        row_scale: torch.Tensor | None,
        need_grad: bool,
        masked: bool,
        bufs: _Buffers,
    ) -> torch.Tensor: ...

    def reference(self, logits: torch.Tensor) -> torch.Tensor:
        """Plain per-token losses ``(N,)`` of full logits ``(N, V)`` (autograd-differentiable)."""
        ...


@dataclass
class CrossEntropyAux:
    """Per-token side outputs a :class:`CrossEntropyHead` fills while it computes the losses.

    All ``(N,)``, in the compute dtype (``correct`` is bool), zero for rows the plan skips:
    ``lse`` the log-normaliser ``logsumexp(s)``, ``z_term`` the token's z-loss contribution to its
    loss (``z_loss lse^2`` times its class and token weights), ``correct`` whether
    ``argmax s == target``, ``entropy`` the softmax entropy ``lse - sum_j p_j s_j``.
    """

    lse: torch.Tensor
    z_term: torch.Tensor
    correct: torch.Tensor
    entropy: torch.Tensor

    @classmethod
    def zeros(cls, n: int, dtype: torch.dtype, device: torch.device) -> CrossEntropyAux:
        def z() -> torch.Tensor:
            return torch.zeros(n, dtype=dtype, device=device)

        return cls(z(), z(), torch.zeros(n, dtype=torch.bool, device=device), z())

    def store(
        self, rows: Rows, lse: torch.Tensor, z_term: torch.Tensor, correct: torch.Tensor, entropy: torch.Tensor
    ) -> None:
        pairs = ((self.lse, lse), (self.z_term, z_term), (self.correct, correct), (self.entropy, entropy))
        for dst, src in pairs:
            if isinstance(rows, slice):
                dst[rows] = src
            else:
                dst.index_copy_(0, rows, src.to(dst.dtype))


class CrossEntropyHead:
    r"""Token cross-entropy with label smoothing, z-loss, logit soft-capping and scaling, class and
    token weights and DFT scaling.

    With ``s = a * cap * tanh(x / cap)`` (or ``s = a x``; ``a = logit_scale``), ``lse = logsumexp(s)``,
    ``p = softmax(s)`` and class weights ``w`` (all 1 when None, ``W = sum_j w_j``):
    ``loss = m * [(1 - eps) w_t (lse - s_t) + eps / V * sum_j w_j (lse - s_j) + z_loss w_t lse^2]``
    (for ``w = 1``: ``lse - (1 - eps) s_t - eps / V * sum_j s_j + z_loss lse^2``), with the row
    multiplier ``m = token_weight * (p_t if token_scaling else 1)``, ``p_t`` treated as a constant.
    ``d loss / d s = m * [p ((1 - eps) w_t + eps W / V + 2 z_loss w_t lse) - (1 - eps) w_t onehot_t
    - eps / V * w]``, times ``a (1 - tanh^2)`` for the soft cap (``a`` without it).

    ``class_weight`` ``(V,)`` and ``token_weight`` ``(N,)`` (indexed like ``target``) are constants in
    the compute dtype; ``aux`` (a :class:`CrossEntropyAux`) receives the side outputs of every chunk.
    """

    def __init__(
        self,
        target: torch.Tensor,
        *,
        vocab: int,
        ignore_index: int,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        class_weight: torch.Tensor | None = None,
        token_weight: torch.Tensor | None = None,
        logit_scale: float = 1.0,
        token_scaling: bool = False,
        aux: CrossEntropyAux | None = None,
    ) -> None:
        self.target = target
        self.vocab = vocab
        self.ignore_index = ignore_index
        self.eps = float(label_smoothing)
        self.z_loss = float(z_loss)
        self.softcap = None if softcap is None else float(softcap)
        self.class_weight = class_weight
        self.class_weight_sum = None if class_weight is None else class_weight.sum()
        self.token_weight = token_weight
        self.logit_scale = float(logit_scale)
        self.token_scaling = bool(token_scaling)
        self.aux = aux
        self.n_buffers = 1 if softcap is None else 2
        if aux is not None:
            self.n_buffers += 1

    def __call__(
        self,
        z: torch.Tensor,
        rows: Rows,
        row_scale: torch.Tensor | None,
        need_grad: bool,
        masked: bool,
        bufs: _Buffers,
    ) -> torch.Tensor:
        c = z.shape[0]
        t = _rows_of(self.target, rows)
        if masked:
            t = t.masked_fill(t == self.ignore_index, 0)
        t2 = t.unsqueeze(1)
        cap = self.softcap
        a = self.logit_scale
        tb = None
        if cap is not None:
            tb = bufs.get("tanh", c, z.shape[1], z, z.dtype)
            torch.div(z, cap, out=tb)
            tb.tanh_()
            torch.mul(tb, cap * a, out=z)
        elif a != 1.0:
            z.mul_(a)
        aux = self.aux
        z_t = z.gather(1, t2).squeeze(1) if (self.z_loss or aux is not None) else None
        log_softmax_(z)
        logp_t = z.gather(1, t2).squeeze(1)
        eps = self.eps
        cw = self.class_weight
        w_t = None if cw is None else cw[t]
        if eps:
            sum_logp = z.sum(1) if cw is None else torch.mv(z, cw)
        else:
            sum_logp = None
        entropy = correct = None
        if aux is not None:
            correct = z.argmax(1) == t
            tmp = bufs.get("aux", c, z.shape[1], z, z.dtype)
            torch.exp(z, out=tmp)
            entropy = tmp.mul_(z).sum(1).neg_()
        # 1 - p_t as the sum of the other probabilities: a confident token keeps its small loss and
        # gradient, which log p_t = s_t - lse and p_t - 1 round to 0
        z.exp_()  # softmax probabilities
        z.scatter_(1, t2, 0.0)
        rest = z.sum(1)
        logp_t = torch.where(rest < 0.5, torch.log1p(-rest), logp_t)
        loss = logp_t * (eps - 1.0)
        if w_t is not None:
            loss = loss * w_t
        if sum_logp is not None:
            loss = loss - (eps / self.vocab) * sum_logp
        lse = None
        z_term = None
        if z_t is not None:
            lse = z_t - logp_t
            if self.z_loss:
                z_term = self.z_loss * lse * lse
                if w_t is not None:
                    z_term = z_term * w_t
                loss = loss + z_term
        # row multiplier: token weights and DFT's detached p_t
        mult = None if self.token_weight is None else _rows_of(self.token_weight, rows)
        p_t = None
        if self.token_scaling:
            p_t = torch.exp(logp_t)
            mult = p_t if mult is None else mult * p_t
        if mult is not None:
            loss = loss * mult
        if aux is not None:
            assert lse is not None and correct is not None and entropy is not None
            if z_term is None:
                zt_out = torch.zeros_like(loss)
            else:
                zt_out = z_term if mult is None else z_term * mult
            aux.store(rows, lse, zt_out, correct, entropy)
        if not need_grad:
            return loss
        if mult is not None:
            row_scale = mult if row_scale is None else row_scale * mult
        if cw is None:
            factor = None if lse is None or not self.z_loss else 1.0 + (2.0 * self.z_loss) * lse
        else:
            assert w_t is not None and self.class_weight_sum is not None
            factor = (1.0 - eps) * w_t + (eps / self.vocab) * self.class_weight_sum
            if self.z_loss:
                assert lse is not None
                factor = factor + (2.0 * self.z_loss) * w_t * lse
        if row_scale is not None:
            factor = row_scale if factor is None else factor * row_scale
        if factor is not None:
            z.mul_(factor.unsqueeze(1))
        if cw is None:
            # target entry: p_t (1 + 2 z_loss lse) - (1 - eps) = eps - (1 - p_t) + 2 z_loss lse p_t
            hit = eps - rest
            if self.z_loss:
                assert lse is not None
                hit = hit + (2.0 * self.z_loss) * lse * (torch.exp(logp_t) if p_t is None else p_t)
            if row_scale is not None:
                hit = hit * row_scale
            z.scatter_(1, t2, hit.unsqueeze(1))
            if eps:
                if row_scale is None:
                    z.sub_(eps / self.vocab)
                else:
                    z.sub_((row_scale * (eps / self.vocab)).unsqueeze(1))
        else:
            # every entry: - eps / V w_j; then the target's whole entry
            # (1 - eps) w_t (p_t - 1) + eps / V (W p_t - w_t) + 2 z_loss w_t lse p_t
            assert w_t is not None and self.class_weight_sum is not None
            if p_t is None:
                p_t = torch.exp(logp_t)
            if eps:
                if row_scale is None:
                    z.sub_(cw, alpha=eps / self.vocab)
                else:
                    z.addr_(row_scale, cw, alpha=-eps / self.vocab)
            hit = (eps - 1.0) * w_t * rest
            if eps:
                hit = hit + (eps / self.vocab) * (self.class_weight_sum * p_t - w_t)
            if self.z_loss:
                assert lse is not None
                hit = hit + (2.0 * self.z_loss) * w_t * lse * p_t
            if row_scale is not None:
                hit = hit * row_scale
            z.scatter_(1, t2, hit.unsqueeze(1))
        if tb is not None:
            tb.mul_(tb)
            z.addcmul_(z, tb, value=-1.0)  # z * (1 - tanh^2)
        if a != 1.0:
            z.mul_(a)
        return loss

    def reference(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-token losses ``(N,)`` of the full ``(N, V)`` logits in plain, differentiable tensor code
        (ignored tokens are computed with class 0; the caller masks them)."""
        t = self.target.masked_fill(self.target == self.ignore_index, 0).long().unsqueeze(1)
        s = logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)
        if self.logit_scale != 1.0:
            s = s * self.logit_scale
        lse = torch.logsumexp(s, 1)
        nll = lse - s.gather(1, t).squeeze(1)
        cw = self.class_weight
        if cw is None:
            loss = nll * (1.0 - self.eps)
            if self.eps:
                loss = loss + self.eps * (lse - s.mean(1))
            if self.z_loss:
                loss = loss + self.z_loss * lse * lse
        else:
            w_t = cw.to(s.dtype)[t.squeeze(1)]
            loss = nll * w_t * (1.0 - self.eps)
            if self.eps:
                loss = loss + (self.eps / self.vocab) * ((lse.unsqueeze(1) - s) * cw.to(s.dtype)).sum(1)
            if self.z_loss:
                loss = loss + self.z_loss * w_t * lse * lse
        if self.token_weight is not None:
            loss = loss * self.token_weight.to(s.dtype)
        if self.token_scaling:
            loss = loss * torch.exp(s.gather(1, t).squeeze(1) - lse).detach()
        return loss


class DistillHead:
    r"""Generalised Jensen-Shannon divergence between teacher and student token distributions.

    ``p_S = softmax(z_S / T)``, ``p_T = softmax(z_T / T)``, ``M = beta p_T + (1 - beta) p_S``;
    ``beta = 0``: ``KL(p_T || p_S)``; ``beta = 1``: ``KL(p_S || p_T)``; otherwise
    ``beta KL(p_T || M) + (1 - beta) KL(p_S || M)``. Teacher logits are recomputed per chunk from
    the teacher's hidden states and head weight and never receive gradients.
    """

    def __init__(
        self,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        teacher_bias: torch.Tensor | None,
        *,
        temperature: float,
        beta: float,
    ) -> None:
        self.th = teacher_hidden
        self.tw = teacher_weight
        cdt = compute_dtype(teacher_hidden.dtype)
        self.tb = None if teacher_bias is None else teacher_bias.to(cdt)
        self.temperature = float(temperature)
        self.beta = float(beta)
        # teacher, difference and scratch buffers; the mixture's gaps take temporaries of that size
        self.n_buffers = 3 if self.beta in (0.0, 1.0) else 9
        self.n_buffers += 1 if teacher_hidden.dtype != cdt else 0

    def __call__(
        self,
        z: torch.Tensor,
        rows: Rows,
        row_scale: torch.Tensor | None,
        need_grad: bool,
        masked: bool,
        bufs: _Buffers,
    ) -> torch.Tensor:
        c, v = z.shape
        b = self.beta
        half = self.th.dtype != z.dtype
        tz = bufs.get("teacher", c, v, z, z.dtype)
        hb = bufs.get("teacher_half", c, v, z, self.th.dtype) if half else None
        logits_into(tz, _rows_of(self.th, rows), self.tw, self.tb, hb)
        inv_t = 1.0 / self.temperature
        if inv_t != 1.0:
            z.mul_(inv_t)
            tz.mul_(inv_t)
        tmp = bufs.get("extra", c, v, z, z.dtype)
        idx_s, rest_s = log_softmax_tail_(z, tmp)  # log p_S
        log_softmax_tail_(tz, tmp)  # log p_T
        d = bufs.get("diff", c, v, z, z.dtype)
        if b == 0.0:  # forward KL(p_T || p_S); d/dz_S = p_S - p_T
            torch.sub(tz, z, out=d)  # log p_T - log p_S
            torch.exp(tz, out=tmp)  # p_T
            loss = torch.mul(d, tmp, out=tz).sum(1)
            if need_grad:  # p_S - p_T = expm1(-|d|) * (p_T if d > 0 else -p_S): no cancellation near 1
                z.exp_().neg_()
                torch.where(d > 0, tmp, z, out=tz)
                d.abs_().neg_().expm1_()
                torch.mul(tz, d, out=z)
        elif b == 1.0:  # reverse KL(p_S || p_T); d/dz_S = p_S (g - KL), g = log p_S - log p_T
            torch.sub(z, tz, out=d)
            z.exp_()
            torch.mul(z, d, out=tz)
            loss = tz.sum(1)
            if need_grad:
                _pivot_grad_(z, d, tz, idx_s, rest_s)
        else:
            torch.sub(z, tz, out=d)  # log p_S - log p_T
            s_big = d >= 0
            a = d.abs().neg_()
            corr = torch.log1p(torch.where(s_big, b, 1.0 - b) * torch.expm1(a))  # u - log M
            gap_s = torch.where(s_big, -corr, a - corr).mul_(1.0 - b)  # (1 - beta)(log p_S - log M)
            gap_t = torch.where(s_big, a - corr, -corr).mul_(b)  # beta (log p_T - log M)
            z.exp_()
            tz.exp_()
            terms = z * gap_s
            loss = terms.sum(1) + tz.mul_(gap_t).sum(1)
            if need_grad:  # d/dz_S = p_S (gap_S - sum_c p_S gap_S)
                _pivot_grad_(z, gap_s, terms, idx_s, rest_s)
        if need_grad:
            if row_scale is not None:
                z.mul_((row_scale * inv_t).unsqueeze(1))
            elif inv_t != 1.0:
                z.mul_(inv_t)
        return loss

    def reference(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-token divergences ``(N,)`` of the full ``(N, V)`` student logits in plain, differentiable
        tensor code (the teacher's logits are formed whole as well)."""
        zt = self.th.to(logits.dtype) @ self.tw.to(logits.dtype).t()
        if self.tb is not None:
            zt = zt + self.tb
        ls = torch.log_softmax(logits / self.temperature, 1)
        lt = torch.log_softmax(zt / self.temperature, 1)
        b = self.beta
        if b == 0.0:
            return (lt.exp() * (lt - ls)).sum(1)
        if b == 1.0:
            return (ls.exp() * (ls - lt)).sum(1)
        lm = torch.logaddexp(lt + math.log(b), ls + math.log1p(-b))
        return b * (lt.exp() * (lt - lm)).sum(1) + (1.0 - b) * (ls.exp() * (ls - lm)).sum(1)


def run_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    head: TokenHead,
    plan: RowPlan,
    *,
    need_h: bool = False,
    need_w: bool = False,
    need_b: bool = False,
    row_scale: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-token losses ``(N,)`` (zero where ignored) and the requested gradients of their weighted sum.

    ``row_scale`` (``(N,)``) weights each token's gradient (the cotangent of ``reduction='none'``);
    ``scale`` multiplies every gradient (the ``1 / count`` of a mean), the losses are not scaled.
    Gradients: ``grad_h`` in ``hidden``'s dtype, ``grad_w`` and ``grad_b`` in the compute dtype
    (float32 for half inputs).
    """
    n, hdim = hidden.shape
    v = weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    dev = hidden.device
    b = None if bias is None else bias.to(cdt)

    losses = torch.zeros(n, dtype=cdt, device=dev)
    grad_h = grad_w = grad_b = None
    compact = any(not isinstance(r, slice) for r in plan.chunks)
    if need_h:
        grad_h = (torch.zeros if compact else torch.empty)(n, hdim, dtype=hidden.dtype, device=dev)
    if need_w:
        grad_w = torch.zeros(v, hdim, dtype=cdt, device=dev)
    if need_b:
        grad_b = torch.zeros(v, dtype=cdt, device=dev)
    if not plan.chunks:
        return losses, grad_h, grad_w, grad_b
    _chunk_loop(hidden, weight, b, head, plan, losses, grad_h, grad_w, grad_b, row_scale, scale)
    return losses, grad_h, grad_w, grad_b


def _chunk_loop(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    b: torch.Tensor | None,
    head: TokenHead,
    plan: RowPlan,
    losses: torch.Tensor,
    grad_h: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    scale: float,
) -> None:
    hdim = hidden.shape[1]
    v = weight.shape[0]
    cdt = losses.dtype
    dev = hidden.device
    half = hidden.dtype != cdt
    need_h, need_w, need_b = grad_h is not None, grad_w is not None, grad_b is not None
    need_grad = need_h or need_w or need_b
    compact = any(not isinstance(r, slice) for r in plan.chunks)
    cs = plan.chunk_size
    zbuf = torch.empty(cs, v, dtype=cdt, device=dev)
    zhalf = torch.empty(cs, v, dtype=hidden.dtype, device=dev) if half else None
    ghbuf = torch.empty(cs, hdim, dtype=hidden.dtype, device=dev) if (need_h and compact) else None
    bufs = _Buffers()  # the head's temporaries, freed when the pass ends

    for rows in plan.chunks:
        h_c = _rows_of(hidden, rows)
        c = h_c.shape[0]
        z = zbuf[:c]
        zh = None if zhalf is None else zhalf[:c]
        logits_into(z, h_c, weight, b, zh)

        rs = None
        valid_c = None
        if plan.valid is not None:
            valid_c = _rows_of(plan.valid, rows)
            rs = valid_c.to(cdt)
        if row_scale is not None:
            r = _rows_of(row_scale, rows).to(cdt)
            rs = r if rs is None else rs * r

        loss_c = head(z, rows, rs, need_grad, plan.masked, bufs)
        if valid_c is not None:
            loss_c = torch.where(valid_c, loss_c, loss_c.new_zeros(()))
        if isinstance(rows, slice):
            losses[rows] = loss_c
        else:
            losses.index_copy_(0, rows, loss_c)
        if not need_grad:
            continue

        # ``scale`` rides on the GEMMs' alpha: no extra pass over the gradients
        if need_h:
            g_in = z if zh is None else zh.copy_(z)
            gh = grad_h[rows] if isinstance(rows, slice) else ghbuf[:c]  # type: ignore[index]
            if scale == 1.0:
                torch.mm(g_in, weight, out=gh)
            else:
                torch.addmm(gh, g_in, weight, beta=0.0, alpha=scale, out=gh)
            if not isinstance(rows, slice):
                grad_h.index_copy_(0, rows, gh)  # type: ignore[union-attr]
        if need_w:
            grad_w.addmm_(z.t(), h_c if not half else h_c.to(cdt), alpha=scale)  # type: ignore[union-attr]
        if need_b:
            grad_b.add_(z.sum(0), alpha=scale)  # type: ignore[union-attr]


def _valid_rows(plan: RowPlan, n: int, device: torch.device) -> torch.Tensor | None:
    """The rows that ``plan`` counts as a bool ``(n,)`` mask, or None when it counts every row."""
    if plan.valid is not None:
        return plan.valid
    if all(isinstance(r, slice) for r in plan.chunks):
        return None
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    if plan.chunks:
        mask[torch.cat([r for r in plan.chunks if isinstance(r, torch.Tensor)])] = True
    return mask


def _reference_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    head: TokenHead,
    plan: RowPlan,
    per_token: bool,
    scale: float,
    need: tuple[bool, bool, bool],
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients that autograd can differentiate again (double backward), from the full logits.

    The chunked kernel writes its gradients into buffers that autograd does not see; here the
    ``(N, V)`` logits are formed whole, the head's plain :meth:`reference` code gives the losses and
    ``torch.autograd.grad(..., create_graph=True)`` their gradients. Memory is that of the eager
    computation (the logits and what autograd keeps for them), in exchange for exact higher-order
    derivatives.
    """
    cdt = compute_dtype(hidden.dtype)
    z = hidden.to(cdt) @ weight.to(cdt).t()
    if bias is not None:
        z = z + bias.to(cdt)
    losses = head.reference(z)
    valid = _valid_rows(plan, hidden.shape[0], hidden.device)
    if valid is not None:
        losses = torch.where(valid, losses, torch.zeros_like(losses))
    if per_token:
        total = (losses * grad_out.reshape(-1).to(cdt)).sum()
    else:
        total = losses.sum() * (grad_out.reshape(()).to(cdt) * scale)
    inputs = [x for x, n in zip((hidden, weight, bias), need) if n and x is not None]
    grads = iter(torch.autograd.grad(total, inputs, create_graph=True, allow_unused=True))
    out = [next(grads) if n else None for n in need]
    return tuple(g if g is None or x is None else g.to(x.dtype) for g, x in zip(out, (hidden, weight, bias)))


class FusedLinearLoss(torch.autograd.Function):
    """``scale * sum_i loss_i`` (``per_token=False``) or ``(loss_i)_i`` of ``head(hidden @ weight.T + b)``."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        head: TokenHead,
        plan: RowPlan,
        per_token: bool,
        scale: float,
        need_h: bool,
        need_w: bool,
        need_b: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight, bias)
        ctx.head, ctx.plan, ctx.per_token, ctx.scale = head, plan, per_token, scale
        ctx.need = (need_h, need_w, need_b)
        if per_token:
            losses = run_chunks(hidden, weight, bias, head, plan)[0]
            ctx.grads = None
            return losses
        losses, gh, gw, gb = run_chunks(
            hidden, weight, bias, head, plan, need_h=need_h, need_w=need_w, need_b=need_b, scale=scale
        )
        ctx.grads = (gh, gw, gb)
        return losses.sum() * scale

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias = ctx.saved_tensors
        need_h, need_w, need_b = ctx.need
        if torch.is_grad_enabled():  # backward with create_graph=True
            gh, gw, gb = _reference_grads(
                hidden, weight, bias, ctx.head, ctx.plan, ctx.per_token, ctx.scale, ctx.need, grad_out
            )
            return gh, gw, gb, None, None, None, None, None, None, None
        if ctx.per_token:
            _, gh, gw, gb = run_chunks(
                hidden,
                weight,
                bias,
                ctx.head,
                ctx.plan,
                need_h=need_h,
                need_w=need_w,
                need_b=need_b,
                row_scale=grad_out.reshape(-1),
            )
        else:
            grads = ctx.grads
            # The buffers are handed to autograd (and may become ``.grad``): never touch them again.
            ctx.grads = None
            if grads is None:  # second backward through a retained graph: recompute, exactly
                _, gh, gw, gb = run_chunks(
                    hidden,
                    weight,
                    bias,
                    ctx.head,
                    ctx.plan,
                    need_h=need_h,
                    need_w=need_w,
                    need_b=need_b,
                    scale=ctx.scale,
                )
            else:
                gh, gw, gb = grads
            # One in-place pass per gradient, skipped for the usual grad_output == 1 where reading the
            # value is free (CPU; elsewhere it would be a device sync).
            g = grad_out.reshape(())
            if g.device.type != "cpu" or torch.compiler.is_compiling() or float(g) != 1.0:
                for t in (gh, gw, gb):
                    if t is not None:
                        t.mul_(g.to(t.dtype))
        if gw is not None and gw.dtype != weight.dtype:
            gw = gw.to(weight.dtype)
        if gb is not None and bias is not None and gb.dtype != bias.dtype:
            gb = gb.to(bias.dtype)
        return gh, gw, gb, None, None, None, None, None, None, None


def linear_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    head: TokenHead,
    plan: RowPlan,
    *,
    per_token: bool,
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale *`` sum (or the per-token vector) of ``head``'s losses, differentiable w.r.t. hidden,
    weight and bias. ``scale`` (for the sum only) is folded into the gradient GEMMs.

    Gradient work is done only for inputs that require grad, and none under ``torch.no_grad()``.
    """
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    need_b = grad_on and bias is not None and bias.requires_grad
    if not (need_h or need_w or need_b):
        losses = run_chunks(hidden, weight, bias, head, plan)[0]
        return losses if per_token else losses.sum() * scale
    out: torch.Tensor = FusedLinearLoss.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        hidden, weight, bias, head, plan, per_token, scale, need_h, need_w, need_b
    )
    return out
