r"""Image-text contrastive losses: CLIP (softmax, Radford et al. 2021) and SigLIP (sigmoid, Zhai et al. 2023).

Both take two aligned batches ``image_features`` and ``text_features`` of shape ``(B, D)`` (row ``i`` of
each is a matching pair), a learnable ``logit_scale`` and an optional ``logit_bias``, and score every
image against every text with ``logits_ij = exp(logit_scale) * x_i . y_j + logit_bias``.

Conventions shared by both:

* ``logit_scale`` is the **log** of the multiplier (the inverse temperature), as in open_clip and
  big_vision: the loss uses ``exp(logit_scale)``, capped at ``max_scale`` (default 100, open_clip's
  clamp; ``None`` disables the cap). Above the cap the scale gets no gradient. open_clip clamps the
  parameter in place after each optimizer step instead; the forward value is the same.
* Features are L2-normalised inside (``normalize=True``, the default). Features that are already
  normalised (open_clip's ``encode_image(..., normalize=True)``) give the same value and gradients,
  since normalisation is idempotent; pass ``normalize=False`` to score raw dot products.
* Half-precision inputs are computed in float32; the loss is float32.
* ``gather_distributed=True`` under an initialised :mod:`torch.distributed` group: each rank scores
  its local rows against the features of every rank, gathered with gradient
  (:func:`losskit.distributed.all_gather_with_grad`; open_clip's ``local_loss`` + ``gather_with_grad``),
  so only a ``(B_local, B_global)`` block is formed per rank. ``'mean'`` divides by the DDP
  normaliser (global batch / W) and ``'sum'`` is multiplied by W, so DDP's gradient averaging gives
  exactly the one-process gradient over the concatenated batch, scale and bias included. Ranks may
  hold different batch sizes. No effect without a process group.

The SigLIP exchange uses one all-gather of the text features rather than big_vision's ring of
neighbour swaps, chosen by measurement (``benchmarks/bench_siglip_exchange.py``: 2 gloo ranks x 1
thread on CPU, B = 1024 per rank, D = 512, float32, median of 10 interleaved fwd+bwd): all-gather
242 ms and 24.0 MiB held for backward, ring 234 ms and 26.0 MiB, the same within the noise of a
shared machine. Autograd keeps every received block for backward in either scheme, so the ring saves
no held memory; the gathered tensor composes with ``chunk_size`` (one recomputing kernel over all
texts: 289 ms, 6.0 MiB held), where the ring needs one kernel call and one exchange per hop.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as _dist
from .._checks import (
    LossValueError,
    check_floating,
    check_int,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    shape_str,
)
from .._reduction import reduce_loss, upcast
from ..registry import register
from ._common import FAMILY, _gathering, _mean_or_sum

__all__ = ["CLIPLoss", "SigLIPLoss", "clip_loss", "siglip_loss"]

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)  # SigLIP: t' = log 10
SIGLIP_INIT_LOGIT_BIAS = -10.0
MAX_SCALE = 100.0


# ============================================================================ shared checks


def _check_features(image_features: Any, text_features: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_floating("image_features", image_features)
    check_floating("text_features", text_features)
    check_ndim("image_features", image_features, 2, "(B, D)")
    check_same_shape("text_features", text_features, "image_features", image_features)
    check_same_device(("image_features", image_features), ("text_features", text_features))
    img, txt = upcast(image_features), upcast(text_features)
    return img.contiguous(), txt.to(img.dtype).contiguous()


def _scalar(name: str, value: Any, ref: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor in ``ref``'s dtype on ``ref``'s device (numbers become constants)."""
    if isinstance(value, torch.Tensor):
        check_floating(name, value)
        if value.numel() != 1:
            raise LossValueError(f"{name} must be a scalar (one element), got shape {shape_str(value.shape)}")
        check_same_device(("image_features", ref), (name, value))
        return value.reshape(()).to(ref.dtype)
    check_number(name, value)
    return torch.tensor(float(value), dtype=ref.dtype, device=ref.device)


def _check_max_scale(max_scale: float | None) -> float | None:
    if max_scale is None:
        return None
    return float(check_number("max_scale", max_scale, low=0.0, low_open=True))


def _scale(logit_scale: Any, max_scale: float | None, ref: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale)`` capped at ``max_scale``; a ``+inf`` log-scale stays infinite (never hidden)."""
    ls = _scalar("logit_scale", logit_scale, ref)
    if max_scale is not None:
        cap = math.log(max_scale)
        ls = torch.where(ls == math.inf, ls, ls.clamp(max=cap))
    return ls.exp()


def _prepare(
    image_features: Any,
    text_features: Any,
    logit_scale: Any,
    logit_bias: Any,
    normalize: bool,
    max_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    img, txt = _check_features(image_features, text_features)
    scale = _scale(logit_scale, _check_max_scale(max_scale), img)
    bias = None if logit_bias is None else _scalar("logit_bias", logit_bias, img)
    if normalize:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    return img, txt, scale, bias


def _gather_pairs(img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every rank's image and text rows (one gather with gradient) and this rank's offset."""
    d = img.shape[1]
    both, _, offset = _dist.gather_candidates(torch.cat([img, txt], dim=1))
    return both[:, :d], both[:, d:], offset


def _reduce(per_row: torch.Tensor, reduction: str, gathered: bool) -> torch.Tensor:
    if reduction == "none" or not gathered:
        return reduce_loss(per_row, reduction)
    return _mean_or_sum(per_row.sum(), per_row.shape[0], reduction, gathered)


# ============================================================================ CLIP


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    *,
    normalize: bool = True,
    max_scale: float | None = MAX_SCALE,
    chunk_size: int | None = None,
    reduction: str = "mean",
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""CLIP's symmetric contrastive loss (Radford et al. 2021, "Learning Transferable Visual Models").

    With ``s = min(exp(logit_scale), max_scale)``, ``x``, ``y`` the (L2-normalised) image and text
    features and ``l_ij = s x_i . y_j + b``:

    .. math::
        \ell_i = \tfrac12 \Big( -\log \frac{e^{l_{ii}}}{\sum_j e^{l_{ij}}}
                               -\log \frac{e^{l_{ii}}}{\sum_j e^{l_{ji}}} \Big)

    the image->text and text->image cross-entropies with the matching pair as the class; ``'mean'``
    is open_clip's ``(CE(logits_per_image) + CE(logits_per_text)) / 2``. A bias (open_clip's
    ``init_logit_bias``) shifts every logit alike, so it cancels in the softmax and gets no gradient.
    ``B = 1`` gives 0 (one candidate), ``B = 0`` a graph-connected 0.

    Args:
        image_features, text_features: ``(B, D)``, row ``i`` of both is a matching pair.
        logit_scale: log of the multiplier, a number or a scalar tensor (learnable: :class:`CLIPLoss`
            owns it, initialised at ``log(1 / 0.07)``).
        logit_bias: optional additive bias.
        normalize: L2-normalise the features first (see the module notes).
        max_scale: cap on ``exp(logit_scale)`` (open_clip: 100); ``None``: no cap.
        chunk_size: compute ``chunk_size`` rows at a time in a custom autograd function that keeps
            only the features and the ``B`` log-normalisers of each direction for backward and
            recomputes the blocks there: O(B D) held instead of the two ``(B, B)`` softmax outputs,
            at the cost of recomputing the similarity matrix (first-order gradients only). ``None``:
            ordinary ops (fastest; what open_clip does).
        reduction: ``'mean' | 'sum' | 'none'`` (``'none'``: the ``(B,)`` per-pair losses).
        gather_distributed: local rows against every rank's features, gathered with gradient (see
            the module notes); ``'none'`` returns this rank's rows.

    Example:
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> clip_loss(img, img, logit_scale=0.0)
        tensor(0.3133)
    """
    check_reduction(reduction)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, low=1)
    img, txt, scale, bias = _prepare(
        image_features, text_features, logit_scale, logit_bias, normalize, max_scale
    )
    gathered = _gathering(gather_distributed)
    img_all, txt_all, offset = _gather_pairs(img, txt) if gathered else (img, txt, 0)
    if chunk_size is not None:
        b = img.new_zeros(()) if bias is None else bias
        i2t: torch.Tensor = _PairBlocks.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
            img, txt_all, scale, b, offset, chunk_size, "softmax"
        )
        t2i: torch.Tensor = _PairBlocks.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
            txt, img_all, scale, b, offset, chunk_size, "softmax"
        )
        per_pair = 0.5 * (i2t + t2i)
        return _reduce(per_pair, reduction, gathered)
    labels = torch.arange(img.shape[0], device=img.device) + offset
    logits_i2t = (img * scale) @ txt_all.T
    logits_t2i = (txt * scale) @ img_all.T if gathered else logits_i2t.T
    if bias is not None:
        logits_i2t, logits_t2i = logits_i2t + bias, logits_t2i + bias
    per_pair = 0.5 * (
        F.cross_entropy(logits_i2t, labels, reduction="none")
        + F.cross_entropy(logits_t2i, labels, reduction="none")
    )
    return _reduce(per_pair, reduction, gathered)


class CLIPLoss(nn.Module):
    """:func:`clip_loss` with a learnable ``logit_scale`` (and optional ``logit_bias``) parameter.

    ``loss_fn(image_features, text_features)``. The scale is a log (``exp`` taken inside, capped at
    ``max_scale``), initialised at ``log(1 / 0.07)`` as in CLIP; add ``loss_fn.parameters()`` to the
    optimizer. ``init_logit_bias=None`` (default) has no bias parameter.

    Example:
        >>> loss_fn = CLIPLoss()
        >>> loss = loss_fn(torch.randn(4, 8), torch.randn(4, 8))
        >>> loss.backward()
        >>> loss_fn.logit_scale.grad is not None
        True
    """

    logit_scale: nn.Parameter
    logit_bias: nn.Parameter | None

    def __init__(
        self,
        init_logit_scale: float = CLIP_INIT_LOGIT_SCALE,
        init_logit_bias: float | None = None,
        *,
        max_scale: float | None = MAX_SCALE,
        normalize: bool = True,
        chunk_size: int | None = None,
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _init_params(self, init_logit_scale, init_logit_bias)
        self.max_scale = _check_max_scale(max_scale)
        self.normalize = bool(normalize)
        self.chunk_size = check_int("chunk_size", chunk_size, low=1, allow_none=True)
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return clip_loss(
            image_features,
            text_features,
            self.logit_scale,
            self.logit_bias,
            normalize=self.normalize,
            max_scale=self.max_scale,
            chunk_size=self.chunk_size,
            reduction=self.reduction,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return _repr(self)


def _init_params(module: CLIPLoss | SigLIPLoss, init_scale: float, init_bias: float | None) -> None:
    check_number("init_logit_scale", init_scale)
    module.logit_scale = nn.Parameter(torch.tensor(float(init_scale)))
    if init_bias is None:
        module.logit_bias = None
    else:
        check_number("init_logit_bias", init_bias)
        module.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))


def _repr(module: nn.Module) -> str:
    return (
        f"max_scale={module.max_scale}, normalize={module.normalize}, reduction={module.reduction!r}, "
        f"bias={module.logit_bias is not None}, chunk_size={module.chunk_size}"
    )


# ============================================================================ SigLIP


def _block_logits(
    q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, first_pos: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, rows, pos_cols)`` of one row block: row ``i``'s positive is column ``first_pos + i``."""
    logits = (q @ k.T).mul_(scale).add_(bias)
    rows = torch.arange(q.shape[0], device=q.device)
    return logits, rows, rows + first_pos


class _PairBlocks(torch.autograd.Function):
    """Per-row losses of queries ``q`` against keys ``k`` (row ``i``'s positive is key ``offset + i``),
    computed ``chunk`` rows at a time and recomputed block by block in backward.

    ``kind='sigmoid'`` (SigLIP): row sum of ``-log sigmoid(+-l)``; ``kind='softmax'`` (one direction of
    CLIP): the row's cross-entropy ``logsumexp(l) - l_pos`` (the ``B_local`` log-normalisers are kept).
    Only the inputs are kept for backward, never a ``(B, B)`` block: O((B_local + B_all) D) held, a
    transient O(chunk * B_all).
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        offset: int,
        chunk: int,
        kind: str,
    ) -> torch.Tensor:
        out = q.new_empty(q.shape[0])
        lse = q.new_empty(q.shape[0]) if kind == "softmax" else None
        for start in range(0, q.shape[0], chunk):
            stop = min(start + chunk, q.shape[0])
            logits, rows, pos = _block_logits(q[start:stop], k, scale, bias, offset + start)
            pos_logit = logits[rows, pos]
            if lse is not None:
                lse[start:stop] = torch.logsumexp(logits, dim=1)
                out[start:stop] = lse[start:stop] - pos_logit
                continue
            # every pair is a negative (softplus(l) = -log sigmoid(-l)) except the positive: -log sigmoid(l)
            loss = F.softplus(logits)
            loss[rows, pos] = F.softplus(-pos_logit)
            out[start:stop] = loss.sum(dim=1)
        ctx.save_for_backward(q, k, scale, bias, *(() if lse is None else (lse,)))
        ctx.offset, ctx.chunk, ctx.kind = offset, chunk, kind
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[Any, ...]:
        q, k, scale, bias, *rest = ctx.saved_tensors
        need_q, need_k, need_scale, need_bias = ctx.needs_input_grad[:4]
        g_q = torch.zeros_like(q) if need_q or need_scale else None
        g_k = torch.zeros_like(k) if need_k else None
        g_bias = q.new_zeros(())
        for start in range(0, q.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, q.shape[0])
            blk = q[start:stop]
            logits, rows, pos = _block_logits(blk, k, scale, bias, ctx.offset + start)
            if ctx.kind == "softmax":  # d CE / d l = softmax(l) - onehot(pos)
                d = logits.sub_(rest[0][start:stop, None]).exp_()
                d[rows, pos] -= 1.0
            else:  # d / d l = sigmoid(l) for a negative, -sigmoid(-l) for the positive
                pos_logit = logits[rows, pos]
                d = logits.sigmoid_()
                d[rows, pos] = -torch.sigmoid(-pos_logit)
            d.mul_(grad_rows[start:stop, None])
            if need_bias:
                g_bias = g_bias + d.sum()
            if g_q is not None:
                g_q[start:stop] = d @ k  # times scale below
            if g_k is not None:
                g_k.addmm_(d.T, blk)
        g_scale = (g_q * q).sum() if need_scale and g_q is not None else None
        if g_q is not None:
            g_q.mul_(scale)
        if g_k is not None:
            g_k.mul_(scale)
        return (g_q if need_q else None, g_k, g_scale, g_bias if need_bias else None, None, None, None)


def _siglip_rows(
    img: torch.Tensor,
    txt_all: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    offset: int,
    chunk_size: int | None,
) -> torch.Tensor:
    """``(B_local,)`` row sums of ``-log sigmoid(z_ij l_ij)`` against all texts."""
    if chunk_size is not None:
        rows: torch.Tensor = _PairBlocks.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
            img, txt_all, scale, bias, offset, chunk_size, "sigmoid"
        )
        return rows
    logits = (img * scale) @ txt_all.T + bias
    pos = (torch.arange(img.shape[0], device=img.device) + offset)[:, None]
    # flip the sign of the positive logit: the loss of every entry is then softplus(entry)
    signed = logits.scatter(1, pos, -logits.gather(1, pos))
    return F.softplus(signed).sum(dim=1)


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    *,
    normalize: bool = True,
    max_scale: float | None = MAX_SCALE,
    chunk_size: int | None = None,
    reduction: str = "mean",
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_{i=1}^{B} \sum_{j=1}^{B}
            \log \sigma\big(z_{ij} (t\, x_i \cdot y_j + b)\big),
        \qquad z_{ij} = \begin{cases} 1 & i = j \\ -1 & i \ne j \end{cases}

    with ``t = min(exp(logit_scale), max_scale)``; the paper initialises ``log t = log 10`` and
    ``b = -10`` (:class:`SigLIPLoss`). Every image-text pair is an independent binary problem, summed
    and divided by the batch size as in the paper (``'mean'``); computed as ``softplus`` of the signed
    logits (no ``log`` of a probability).

    ``chunk_size``: compute ``chunk_size`` image rows at a time with a custom autograd function that
    keeps only the features for backward and recomputes each block there: the memory held for
    backward drops from O(B^2) to O(B D) (no block's logits are kept, unlike a loop of ordinary ops,
    whose graph keeps every block). First-order gradients only. ``None``: one block, ordinary ops.

    Args:
        image_features, text_features: ``(B, D)``, row ``i`` of both is a matching pair.
        logit_scale: log of ``t``, a number or a scalar tensor.
        logit_bias: the bias ``b`` (``None``: 0).
        normalize: L2-normalise the features first.
        max_scale: cap on ``t`` (default 100, as open_clip); ``None``: no cap.
        chunk_size: rows per recomputed block (see above), or ``None``.
        reduction: ``'mean'`` (sum over pairs / B) ``| 'sum' | 'none'`` (``(B,)`` per-image sums over
            its ``B`` texts).
        gather_distributed: this rank's images against every rank's texts (gathered with
            gradient): the other ranks' blocks hold negatives only. See the module notes.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> siglip_loss(x, x, logit_scale=math.log(10.0), logit_bias=-10.0)  # positives at logit 0
        tensor(0.6932)
    """
    check_reduction(reduction)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, low=1)
    img, txt, scale, bias = _prepare(
        image_features, text_features, logit_scale, logit_bias, normalize, max_scale
    )
    if bias is None:
        bias = img.new_zeros(())
    gathered = _gathering(gather_distributed)
    offset = 0
    txt_all = txt
    if gathered:
        txt_all, _, offset = _dist.gather_candidates(txt)
    rows = _siglip_rows(img, txt_all, scale, bias, offset, chunk_size)
    return _reduce(rows, reduction, gathered)


class SigLIPLoss(nn.Module):
    """:func:`siglip_loss` with learnable ``logit_scale`` (init ``log 10``) and ``logit_bias`` (init -10).

    ``loss_fn(image_features, text_features)``; add ``loss_fn.parameters()`` to the optimizer.

    Example:
        >>> loss_fn = SigLIPLoss(chunk_size=2)
        >>> loss = loss_fn(torch.randn(4, 8), torch.randn(4, 8))
        >>> loss.backward()
        >>> loss_fn.logit_bias.grad is not None
        True
    """

    logit_scale: nn.Parameter
    logit_bias: nn.Parameter | None

    def __init__(
        self,
        init_logit_scale: float = SIGLIP_INIT_LOGIT_SCALE,
        init_logit_bias: float | None = SIGLIP_INIT_LOGIT_BIAS,
        *,
        max_scale: float | None = MAX_SCALE,
        normalize: bool = True,
        chunk_size: int | None = None,
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _init_params(self, init_logit_scale, init_logit_bias)
        self.max_scale = _check_max_scale(max_scale)
        self.normalize = bool(normalize)
        self.chunk_size = check_int("chunk_size", chunk_size, low=1, allow_none=True)
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return siglip_loss(
            image_features,
            text_features,
            self.logit_scale,
            self.logit_bias,
            normalize=self.normalize,
            max_scale=self.max_scale,
            chunk_size=self.chunk_size,
            reduction=self.reduction,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return _repr(self)


# ============================================================================ registry

register(
    "clip",
    CLIPLoss,
    family=FAMILY,
    functional=clip_loss,
    source="Radford et al. 2021 (CLIP); open_clip",
    notes="learnable log-scale (capped at 100), optional bias; chunk_size: O(B D) held; exact under DDP",
)
register(
    "siglip",
    SigLIPLoss,
    family=FAMILY,
    functional=siglip_loss,
    source="Zhai et al. 2023 (SigLIP)",
    notes="sigmoid over all pairs / B; t = log 10, b = -10; chunk_size recomputes blocks in backward",
)
