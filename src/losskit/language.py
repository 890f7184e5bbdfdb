"""Large-vocabulary losses: fused, chunked ``linear -> loss`` for SFT and LLM distillation.

A language-model head turns ``N`` hidden states of width ``H`` into ``N x V`` logits; with ``V`` in
the tens or hundreds of thousands those logits (and their gradient, and the log-softmax eager code
keeps for backward) dominate training memory. The losses here take the hidden states and the head's
weight instead of the logits and never build the ``(N, V)`` matrix: tokens are processed in chunks,
and the gradients w.r.t. ``hidden``, ``weight`` and ``bias`` are computed chunk by chunk during the
forward pass (the backward only rescales them by ``grad_output``). Extra memory is the weight
gradient (which training needs anyway), the hidden gradient, and one chunk of logits.

``reduction='mean'`` divides by the number of tokens that count (``target != ignore_index``);
``normalizer=`` replaces that count (gradient accumulation, DDP: pass the window's / global count).
All-ignored or empty batches give a zero that is still connected to the graph (torch gives NaN).
Half-precision inputs run their GEMMs in their own dtype and everything else in float32; the loss
is float32 and the weight gradient is accumulated in float32 across chunks.

``torch.compile``: ``fullgraph=True`` works and matches eager (values and gradients). While
compiling, the kernel processes every token and masks the ignored ones (no data-dependent shapes),
and Dynamo unrolls the chunk loop, so the compiled graph grows with ``N / chunk_size``; compile
time, not correctness, is the cost of large shapes. Eager mode on CPU skips ignored tokens instead.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, overload

import torch
from torch import nn

from ._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_class_target,
    check_class_weight,
    check_floating,
    check_int,
    check_integer,
    check_min_ndim,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_tensor,
    shape_str,
)
from ._kernels import linear_ce as _k
from ._reduction import Normalizer, check_normalizer, compute_dtype, connected_zero
from .registry import register

__all__ = [
    "LinearCrossEntropyLoss",
    "LinearCrossEntropyOutput",
    "LinearKDLoss",
    "linear_cross_entropy",
    "linear_kd_loss",
]


# ----------------------------------------------------------------------------- shared plumbing


def _is_dtensor(t: torch.Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (without importing torch.distributed when unused)."""
    return any(c.__name__ == "DTensor" and c.__module__.startswith("torch.distributed") for c in type(t).__mro__)


def _check_head(
    hidden_name: str,
    hidden: torch.Tensor,
    weight_name: str,
    weight: torch.Tensor,
    bias_name: str,
    bias: torch.Tensor | None,
) -> None:
    """``hidden`` (..., H), ``weight`` (V, H) of the same dtype, ``bias`` (V,)."""
    check_floating(hidden_name, hidden)
    check_floating(weight_name, weight)
    if _is_dtensor(weight):
        raise LossTypeError(
            f"{weight_name} is a DTensor (a shard of an FSDP2 / fully_shard or tensor-parallel module); pass "
            "the full weight, e.g. with losskit.vocab_parallel.unsharded_head(lm_head), or use "
            "losskit.vocab_parallel.vocab_parallel_cross_entropy on the local vocabulary shard"
        )
    check_min_ndim(hidden_name, hidden, 2, "(N, H) or (B, L, H)")
    check_ndim(weight_name, weight, 2, "(V, H)")
    if weight.shape[1] != hidden.shape[-1]:
        raise LossValueError(
            f"{weight_name} has shape {shape_str(weight.shape)}, expected (V, {hidden.shape[-1]}) to match "
            f"{hidden_name} of shape {shape_str(hidden.shape)} (last dimension H)"
        )
    if weight.dtype != hidden.dtype:
        raise LossTypeError(
            f"{weight_name} has dtype {weight.dtype}, expected {hidden.dtype} like {hidden_name}"
        )
    if bias is not None:
        check_floating(bias_name, bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise LossValueError(
                f"{bias_name} has shape {shape_str(bias.shape)}, expected ({weight.shape[0]},): one entry "
                f"per row of {weight_name}"
            )
    check_same_device((hidden_name, hidden), (weight_name, weight), (bias_name, bias))


def _check_tokens_target(
    target: torch.Tensor, hidden: torch.Tensor, vocab: int, ignore_index: int, hidden_name: str
) -> torch.Tensor:
    """Class-index ``target`` of shape ``hidden.shape[:-1]``, values in ``[0, V)`` or ``ignore_index``."""
    check_integer("target", target)
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(hidden.shape[:-1])} to match "
            f"{hidden_name} of shape {shape_str(hidden.shape)} without its last dimension"
        )
    check_same_device((hidden_name, hidden), ("target", target))
    flat = target.reshape(-1)
    # value check shared with cross-entropy: logits would be (N, V)
    check_class_target(
        torch.empty((), device=flat.device).expand(flat.shape[0], vocab),
        flat,
        ignore_index=ignore_index,
        input_name="logits",
    )
    return flat


def _check_options(chunk_size: int | None, ignore_index: int, reduction: str, normalizer: Normalizer) -> None:
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_int("ignore_index", ignore_index)
    check_int("chunk_size", chunk_size, low=1, allow_none=True)


# Devices on which ignored tokens are dropped before the matmuls (needs their count on the host).
_COMPACT_DEVICES: tuple[str, ...] = ("cpu",)


def _plan(
    valid: torch.Tensor | None,
    n: int,
    vocab: int,
    n_buffers: int,
    chunk_size: int | None,
    device: torch.device,
) -> _k.RowPlan:
    cs = chunk_size if chunk_size is not None else _k.auto_chunk_size(n, vocab, n_buffers)
    # Dropping ignored rows needs their count on the host: free on CPU, a sync elsewhere.
    compact = device.type in _COMPACT_DEVICES and not torch.compiler.is_compiling()
    return _k.plan_rows(valid, n, cs, compact=compact)


def _sum_scale(
    plan: _k.RowPlan, reduction: str, normalizer: Normalizer, denominator: float | torch.Tensor | None = None
) -> float:
    """The mean's ``1 / denominator`` when it is a host number (folded into the kernel's GEMMs), else 1.

    ``denominator`` (weighted means) replaces the count; a zero weighted denominator gives 0 (the
    mean of nothing that weighs anything is defined as 0)."""
    if reduction != "mean":
        return 1.0
    if normalizer is None:
        if denominator is not None:
            if isinstance(denominator, torch.Tensor):
                return 1.0
            return 1.0 / denominator if denominator > 0 else 0.0
        return 1.0 / max(plan.count, 1) if isinstance(plan.count, int) else 1.0
    if isinstance(normalizer, torch.Tensor):
        return 1.0
    return 1.0 / float(normalizer)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """``1 / d`` where ``d > 0``, else 0."""
    return torch.where(d > 0, d.reciprocal(), torch.zeros_like(d))


def _run(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    head: _k.TokenHead,
    plan: _k.RowPlan,
    reduction: str,
    normalizer: Normalizer,
    out_shape: tuple[int, ...],
    zero_of: tuple[torch.Tensor | None, ...],
    denominator: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel and apply the reduction; nothing to count gives a graph-connected zero.

    ``denominator`` replaces the count of a mean (weighted means); ``normalizer`` replaces both."""
    if hidden.shape[0] == 0 or (isinstance(plan.count, int) and plan.count == 0):
        zero = connected_zero(*zero_of)
        zero = zero.to(compute_dtype(zero))
        return zero.expand(out_shape).clone() if reduction == "none" else zero
    if reduction == "none":
        out = _k.linear_token_loss(hidden, weight, bias, head, plan, per_token=True)
        return out.reshape(out_shape)
    scale = _sum_scale(plan, reduction, normalizer, denominator)
    out = _k.linear_token_loss(hidden, weight, bias, head, plan, per_token=False, scale=scale)
    if reduction == "sum" or scale != 1.0:
        return out
    if normalizer is not None:
        return out / normalizer
    if denominator is not None:
        if isinstance(denominator, torch.Tensor):
            return out * _inverse(denominator.to(out.dtype))
        return out  # denominator == 1
    count = plan.count
    if isinstance(count, int):
        return out  # count == 1
    return out / count.to(out.dtype).clamp_min(1.0)


# ----------------------------------------------------------------------------- cross-entropy


class LinearCrossEntropyOutput(NamedTuple):
    """What :func:`linear_cross_entropy` returns with ``return_aux=True``; every field but ``loss`` is
    detached and computed in the same chunked pass (no logits are kept).

    Attributes:
        loss: the loss, exactly what the call returns without ``return_aux``.
        lse: per-token log-normaliser ``logsumexp(s)`` of the logits that enter the softmax (after
            ``softcap`` and ``logit_scale``), shape of ``target``, 0 where a token does not count.
        z_loss: the z-loss part of ``loss`` (``z_loss * lse^2`` with the same class / token weights,
            DFT factor and reduction as ``loss``; 0 when ``z_loss=0``), so ``loss - z_loss`` is the
            cross-entropy part.
        accuracy: scalar, fraction of counted tokens (``target != ignore_index``) whose most likely
            class is the target (``argmax`` ties go to the lowest index), unweighted; 0 when none count.
        entropy: scalar, mean softmax entropy ``lse - sum_j p_j s_j`` over counted tokens,
            unweighted; 0 when none count.
    """

    loss: torch.Tensor
    lse: torch.Tensor
    z_loss: torch.Tensor
    accuracy: torch.Tensor
    entropy: torch.Tensor


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise LossTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _check_constant(name: str, value: torch.Tensor) -> None:
    if value.requires_grad and torch.is_grad_enabled():
        raise LossValueError(
            f"{name} requires grad, but it is used as a constant (no gradient flows to it): pass "
            f"{name}.detach()"
        )


def _check_token_weight(token_weight: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor | None:
    if token_weight is None:
        return None
    check_tensor("token_weight", token_weight)
    if not (token_weight.is_floating_point() or token_weight.dtype == torch.bool):
        raise LossTypeError(
            f"token_weight must be a floating-point (or bool) tensor, got dtype {token_weight.dtype}"
        )
    if tuple(token_weight.shape) != tuple(target.shape):
        raise LossValueError(
            f"token_weight has shape {shape_str(token_weight.shape)}, expected {shape_str(target.shape)}: "
            "one weight per entry of target"
        )
    check_same_device(("target", target), ("token_weight", token_weight))
    _check_constant("token_weight", token_weight)
    if token_weight.is_floating_point() and can_read_values(token_weight) and token_weight.numel():
        if not bool((token_weight >= 0).all()):
            raise LossValueError("token_weight must be non-negative (and not NaN)")
    return token_weight


def _shift(x: torch.Tensor, fill: float | int, dtype: torch.dtype) -> torch.Tensor:
    """``out[..., t] = x[..., t + 1]``, ``out[..., -1] = fill``."""
    out = torch.full(x.shape, fill, dtype=dtype, device=x.device)
    out[..., :-1] = x[..., 1:]
    return out


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    reduction: str = ...,
    normalizer: Normalizer = ...,
    chunk_size: int | None = ...,
    *,
    class_weight: torch.Tensor | None = ...,
    token_weight: torch.Tensor | None = ...,
    logit_scale: float = ...,
    token_scaling: bool = ...,
    shift_labels: bool = ...,
    return_aux: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    reduction: str = ...,
    normalizer: Normalizer = ...,
    chunk_size: int | None = ...,
    *,
    class_weight: torch.Tensor | None = ...,
    token_weight: torch.Tensor | None = ...,
    logit_scale: float = ...,
    token_scaling: bool = ...,
    shift_labels: bool = ...,
    return_aux: Literal[True],
) -> LinearCrossEntropyOutput: ...


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    reduction: str = ...,
    normalizer: Normalizer = ...,
    chunk_size: int | None = ...,
    *,
    class_weight: torch.Tensor | None = ...,
    token_weight: torch.Tensor | None = ...,
    logit_scale: float = ...,
    token_scaling: bool = ...,
    shift_labels: bool = ...,
    return_aux: bool = ...,
) -> torch.Tensor | LinearCrossEntropyOutput: ...


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    normalizer: Normalizer = None,
    chunk_size: int | None = None,
    *,
    class_weight: torch.Tensor | None = None,
    token_weight: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    token_scaling: bool = False,
    shift_labels: bool = False,
    return_aux: bool = False,
) -> torch.Tensor | LinearCrossEntropyOutput:
    r"""Cross-entropy of a linear head, ``CE(hidden @ weight.T + bias, target)``, without the logits.

    .. math::
        s = a \cdot (h W^\top + b),\quad \text{or with softcap } c:\ s = a \cdot c \tanh((h W^\top + b) / c),
        \quad \operatorname{lse} = \log\sum_j e^{s_j}

        \ell = m \Big[(1 - \varepsilon)\, w_t (\operatorname{lse} - s_t)
               + \tfrac{\varepsilon}{V} \textstyle\sum_j w_j (\operatorname{lse} - s_j)
               + \lambda_z\, w_t \operatorname{lse}^2\Big],
        \qquad m = u \cdot (\operatorname{sg}[p_t] \text{ if token\_scaling else } 1)

    with ``a = logit_scale``, ``w = class_weight`` and ``u = token_weight`` (1 when not given) and
    ``sg`` a stop-gradient. Without weights this is
    ``(1 - eps)(lse - s_t) + eps (lse - mean_j s_j) + lambda_z lse^2``.

    Label smoothing ``eps`` follows :func:`torch.nn.functional.cross_entropy`; the z-loss
    ``lambda_z lse^2`` is PaLM's (Chowdhery et al. 2022) auxiliary term that keeps the softmax
    normaliser near 1; ``softcap`` is Gemma 2's logit soft-capping. Tokens whose target is
    ``ignore_index`` contribute nothing and leave the mean's denominator. The fused, chunked
    computation follows Liger-Kernel (Hsu et al. 2024) and Cut Your Losses (Wijmans et al. 2024):
    the ``(N, V)`` logits are never materialised, only one ``(C, V)`` chunk at a time.

    Options (keyword-only):

    * ``class_weight`` ``(V,)``: torch's ``F.cross_entropy(weight=...)``. The target term is weighted
      by ``w_t``; with label smoothing the smoothing term is weighted per class, ``sum_j w_j (lse -
      s_j)``, exactly as torch does; the z-loss term is weighted by ``w_t`` (a class of weight 0 adds
      no z-loss either). ``'mean'`` divides by ``sum w_t`` over counted tokens (torch's weighted mean).
    * ``token_weight`` (shape of ``target``): multiplies each token's whole loss (and its gradient).
      ``'mean'`` divides by ``sum u_i w_{t_i}`` over counted tokens (``sum u_i`` without class weights)
      unless ``normalizer`` is given. Class and token weights are constants (no gradient; one that
      requires grad is refused).
    * Weighted means whose denominator is 0 (all counted tokens weigh 0) are **0**, with zero
      gradients, where torch gives NaN.
    * ``logit_scale`` ``a > 0``: multiplies the logits that enter the softmax (after the soft cap),
      e.g. ``1 / temperature`` for a softmax temperature; every output (loss, ``lse``, entropy) is
      that of the scaled logits.
    * ``token_scaling=True``: Dynamic Fine-Tuning (DFT, Wu et al. 2025): each token's loss is multiplied
      by its own probability of the target ``p_t = softmax(s)_t``, detached (a constant for the
      gradient). ``p_t`` does not enter the mean's denominator (DFT averages over tokens).
    * ``shift_labels=True``: causal-LM targets for ``(B, T, H)`` hidden states and ``(B, T)`` labels,
      as Hugging Face models do: position ``t`` predicts ``target[:, t + 1]``, the last position
      counts for nothing. ``token_weight`` is given aligned with ``target`` and shifted with it; the
      ``'none'`` output (and ``lse``) stay aligned with ``hidden``: ``(B, T)``, 0 at ``t = T - 1``.
    * ``return_aux=True``: returns a :class:`LinearCrossEntropyOutput` ``(loss, lse, z_loss,
      accuracy, entropy)`` computed in the same pass instead of the loss alone.

    Args:
        hidden: ``(N, H)`` or ``(B, L, H)`` hidden states (float32/float64/bfloat16/float16).
        weight: ``(V, H)`` head weight, same dtype as ``hidden`` (e.g. ``lm_head.weight``).
        target: ``(N,)`` / ``(B, L)`` class indices in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)`` head bias.
        ignore_index: target value that is ignored.
        label_smoothing: ``eps`` in ``[0, 1]``.
        z_loss: ``lambda_z >= 0`` (PaLM uses ``1e-4``).
        softcap: ``c > 0`` or None (Gemma 2 uses 30 for the final logits).
        reduction: ``'mean'`` (over counted tokens, weighted as above), ``'sum'``, or ``'none'`` (shape
            of ``target``, zero at ignored tokens).
        normalizer: with ``'mean'``, divide the sum by this instead (e.g. the number of counted tokens
            in the whole accumulation window).
        chunk_size: tokens per chunk; default: as many as fit a 48 MiB float32 logits buffer.
        class_weight: optional ``(V,)`` non-negative per-class weights.
        token_weight: optional non-negative per-token weights, shape of ``target`` (bool allowed).
        logit_scale: ``a > 0`` multiplying the logits (``1 / temperature``).
        token_scaling: DFT scaling by the detached target probability.
        shift_labels: next-token targets from ``(B, T)`` labels.
        return_aux: also return the side outputs (see :class:`LinearCrossEntropyOutput`).

    Returns:
        float32 loss (float64 for float64 inputs), scalar or of ``target``'s shape; a
        :class:`LinearCrossEntropyOutput` with ``return_aux=True``.

    Memory and time: the forward pass also computes the gradients (the backward rescales them in
    place by ``grad_output``), so the autograd graph holds ``grad_hidden`` and ``grad_weight``
    (float32) instead of logits. With ``reduction='none'`` the forward saves nothing but the inputs
    and the backward recomputes each chunk, exact for any per-token cotangent. On CPU the ignored
    tokens (and tokens of ``token_weight`` 0, unless ``return_aux``) are skipped before the matmuls.
    Under ``torch.no_grad()`` (or when no input requires grad) no gradient work is done; inputs that
    do not require grad (a frozen head) get none either. The options cost no extra pass over the
    logits except ``return_aux`` (one, for the entropy) and ``class_weight`` with label smoothing
    (one matrix-vector product).

    Double backward (``create_graph=True``, e.g. a gradient penalty) works: that backward forms the
    whole ``(N, V)`` logits once and differentiates plain tensor code, so it costs the memory of the
    eager computation. A second backward through a retained graph recomputes the gradients (exact,
    costs another pass). ``torch.compile(fullgraph=True)``
    traces it (see the module notes).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(6, 4, generator=g, requires_grad=True)
        >>> weight = torch.randn(10, 4, generator=g, requires_grad=True)
        >>> target = torch.tensor([1, 2, -100, 4, 9, 0])
        >>> loss = linear_cross_entropy(hidden, weight, target, chunk_size=4)
        >>> eager = torch.nn.functional.cross_entropy(hidden @ weight.T, target)
        >>> torch.allclose(loss, eager)
        True
        >>> loss.backward()
        >>> weight.grad.shape
        torch.Size([10, 4])

        Class weights, a temperature of 2 and the side outputs:

        >>> cw = torch.rand(10, generator=g)
        >>> out = linear_cross_entropy(hidden, weight, target, class_weight=cw, logit_scale=0.5, return_aux=True)
        >>> logits = (hidden @ weight.T).detach() / 2
        >>> torch.allclose(out.loss, torch.nn.functional.cross_entropy(logits, target, weight=cw))
        True
        >>> torch.allclose(out.lse[target != -100], torch.logsumexp(logits, -1)[target != -100])
        True

        Causal-LM labels, shifted as Hugging Face models do:

        >>> h3, labels = torch.randn(2, 5, 4, generator=g), torch.randint(0, 10, (2, 5), generator=g)
        >>> loss = linear_cross_entropy(h3, weight.detach(), labels, shift_labels=True)
        >>> eager = torch.nn.functional.cross_entropy(
        ...     (h3[:, :-1] @ weight.detach().T).reshape(-1, 10), labels[:, 1:].reshape(-1))
        >>> torch.allclose(loss, eager)
        True
    """
    _check_options(chunk_size, ignore_index, reduction, normalizer)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    check_number("z_loss", z_loss, low=0.0)
    check_number("softcap", softcap, low=0.0, low_open=True, allow_none=True)
    check_number("logit_scale", logit_scale, low=0.0, low_open=True)
    _check_flag("token_scaling", token_scaling)
    _check_flag("shift_labels", shift_labels)
    _check_flag("return_aux", return_aux)
    _check_head("hidden", hidden, "weight", weight, "bias", bias)
    vocab = weight.shape[0]
    if shift_labels and (hidden.dim() < 3 or target.dim() < 2):
        raise LossValueError(
            "shift_labels=True needs (B, T, H) hidden states and (B, T) labels (the shift runs along T), "
            f"got hidden of shape {shape_str(hidden.shape)} and target of shape {shape_str(target.shape)}"
        )
    flat_t = _check_tokens_target(target, hidden, vocab, ignore_index, "hidden")
    check_class_weight("class_weight", class_weight, vocab)
    if class_weight is not None:
        check_same_device(("weight", weight), ("class_weight", class_weight))
        _check_constant("class_weight", class_weight)
    _check_token_weight(token_weight, target)
    cdt = compute_dtype(hidden)
    if shift_labels:
        flat_t = _shift(target, ignore_index, torch.long).reshape(-1)
        if token_weight is not None:
            token_weight = _shift(token_weight.to(cdt), 0.0, cdt)
    tw = None if token_weight is None else token_weight.reshape(-1).to(cdt)
    cw = None if class_weight is None else class_weight.to(cdt)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    n = h2.shape[0]
    aux = _k.CrossEntropyAux.zeros(n, cdt, hidden.device) if return_aux else None
    head = _k.CrossEntropyHead(
        flat_t,
        vocab=vocab,
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        z_loss=float(z_loss),
        softcap=None if softcap is None else float(softcap),
        class_weight=cw,
        token_weight=tw,
        logit_scale=float(logit_scale),
        token_scaling=token_scaling,
        aux=aux,
    )
    counted = flat_t != ignore_index
    valid = counted if (tw is None or aux is not None) else counted & (tw != 0)
    plan = _plan(valid, n, vocab, head.n_buffers, chunk_size, hidden.device)
    # weighted mean: sum of u_i w_{t_i} over counted tokens (a host number on CPU)
    denominator: float | torch.Tensor | None = None
    if reduction == "mean" and normalizer is None and (cw is not None or tw is not None):
        tok = torch.ones(n, dtype=cdt, device=hidden.device) if tw is None else tw
        if cw is not None:
            tok = tok * cw[flat_t.masked_fill(~counted, 0)]
        d = torch.where(counted, tok, torch.zeros_like(tok)).sum()
        denominator = float(d) if _plan_is_host(plan) else d
    out_shape = tuple(target.shape)
    loss = _run(h2, weight, bias, head, plan, reduction, normalizer, out_shape, (hidden, weight, bias), denominator)
    if aux is None:
        return loss
    return _aux_output(loss, aux, counted, reduction, normalizer, denominator, out_shape)


def _plan_is_host(plan: _k.RowPlan) -> bool:
    """Whether the plan's count is known on the host (then weighted denominators are read there too)."""
    return isinstance(plan.count, int)


def _aux_output(
    loss: torch.Tensor,
    aux: _k.CrossEntropyAux,
    counted: torch.Tensor,
    reduction: str,
    normalizer: Normalizer,
    denominator: float | torch.Tensor | None,
    out_shape: tuple[int, ...],
) -> LinearCrossEntropyOutput:
    zero = aux.lse.new_zeros(())
    lse = torch.where(counted, aux.lse, zero)
    z_tok = torch.where(counted, aux.z_term, zero)
    count = counted.sum().to(lse.dtype)
    inv_count = _inverse(count)
    if reduction == "none":
        z = z_tok.reshape(out_shape)
    elif reduction == "sum":
        z = z_tok.sum()
    elif normalizer is not None:
        z = z_tok.sum() / normalizer
    elif denominator is None:
        z = z_tok.sum() * inv_count
    elif isinstance(denominator, torch.Tensor):
        z = z_tok.sum() * _inverse(denominator.to(lse.dtype))
    else:
        z = z_tok.sum() * (1.0 / denominator if denominator > 0 else 0.0)
    accuracy = (aux.correct & counted).sum().to(lse.dtype) * inv_count
    entropy = torch.where(counted, aux.entropy, zero).sum() * inv_count
    return LinearCrossEntropyOutput(loss, lse.reshape(out_shape), z, accuracy, entropy)


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`; holds configuration only (the head weight is an input).

    ``class_weight`` is kept as a buffer (it follows ``.to()``); ``token_weight`` and ``normalizer``
    are per-call arguments of ``forward``. With ``return_aux=True`` ``forward`` returns a
    :class:`LinearCrossEntropyOutput`.

    Example:
        >>> loss_fn = LinearCrossEntropyLoss(label_smoothing=0.1)
        >>> hidden, weight = torch.randn(2, 5, 8), torch.randn(50, 8)
        >>> loss_fn(hidden, weight, torch.randint(0, 50, (2, 5))).shape
        torch.Size([])
        >>> causal = LinearCrossEntropyLoss(shift_labels=True, class_weight=torch.ones(50), return_aux=True)
        >>> causal(hidden, weight, torch.randint(0, 50, (2, 5))).lse.shape
        torch.Size([2, 5])
    """

    class_weight: torch.Tensor | None

    def __init__(
        self,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        reduction: str = "mean",
        chunk_size: int | None = None,
        *,
        class_weight: torch.Tensor | None = None,
        logit_scale: float = 1.0,
        token_scaling: bool = False,
        shift_labels: bool = False,
        return_aux: bool = False,
    ) -> None:
        super().__init__()
        _check_options(chunk_size, ignore_index, reduction, None)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        check_number("z_loss", z_loss, low=0.0)
        check_number("softcap", softcap, low=0.0, low_open=True, allow_none=True)
        check_number("logit_scale", logit_scale, low=0.0, low_open=True)
        _check_flag("token_scaling", token_scaling)
        _check_flag("shift_labels", shift_labels)
        _check_flag("return_aux", return_aux)
        if class_weight is not None:
            check_floating("class_weight", class_weight)
            check_ndim("class_weight", class_weight, 1, "(V,)")
            check_class_weight("class_weight", class_weight, class_weight.shape[0])
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.z_loss = float(z_loss)
        self.softcap = None if softcap is None else float(softcap)
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.register_buffer("class_weight", None if class_weight is None else class_weight.detach().clone())
        self.logit_scale = float(logit_scale)
        self.token_scaling = token_scaling
        self.shift_labels = shift_labels
        self.return_aux = return_aux

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
        normalizer: Normalizer = None,
        token_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | LinearCrossEntropyOutput:
        return linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            reduction=self.reduction,
            normalizer=normalizer,
            chunk_size=self.chunk_size,
            class_weight=self.class_weight,
            token_weight=token_weight,
            logit_scale=self.logit_scale,
            token_scaling=self.token_scaling,
            shift_labels=self.shift_labels,
            return_aux=self.return_aux,
        )

    def extra_repr(self) -> str:
        extra = ""
        if self.class_weight is not None:
            extra += f", class_weight=({self.class_weight.shape[0]},)"
        if self.logit_scale != 1.0:
            extra += f", logit_scale={self.logit_scale}"
        for name in ("token_scaling", "shift_labels", "return_aux"):
            if getattr(self, name):
                extra += f", {name}=True"
        return (
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, reduction={self.reduction!r}{extra}"
        )


# ----------------------------------------------------------------------------- distillation


def linear_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    beta: float = 0.0,
    reduction: str = "mean",
    normalizer: Normalizer = None,
    chunk_size: int | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Token-level distillation through both LM heads without materialising either logits matrix.

    With ``p_S = softmax(z_S / T)``, ``p_T = softmax(z_T / T)``, ``z = h W^T + b``, and
    ``M = beta p_T + (1 - beta) p_S`` (generalised JSD of GKD, Agarwal et al. 2024):

    .. math::
        \ell = \begin{cases}
            \mathrm{KL}(p_T \,\|\, p_S) & \beta = 0 \text{ (forward KL, Hinton KD)} \\
            \mathrm{KL}(p_S \,\|\, p_T) & \beta = 1 \text{ (reverse KL, MiniLLM)} \\
            \beta\,\mathrm{KL}(p_T \,\|\, M) + (1 - \beta)\,\mathrm{KL}(p_S \,\|\, M) & \text{otherwise}
        \end{cases}

    As in TRL's ``generalized_jsd_loss``, ``beta = 0`` and ``beta = 1`` are special-cased: the
    mixture form tends to 0 at both ends, so the value jumps there (``beta = 0.5`` is the JSD).

    Temperature: the value is the divergence between the *softened* distributions, **not**
    multiplied by ``T^2`` (like TRL's GKD and Liger's fused JSD). For Hinton's scaling, which keeps
    gradient magnitudes comparable across temperatures, multiply the result by ``T**2``.

    Only the student receives gradients (hidden, weight, bias); the teacher's inputs are detached.
    Tokens with ``target == ignore_index`` are excluded (``target=None``: every token counts).
    Chunking, grads-in-forward, ``reduction``/``normalizer`` and the compile note are as in
    :func:`linear_cross_entropy`.

    Args:
        student_hidden: ``(N, Hs)`` or ``(B, L, Hs)``; student_weight: ``(V, Hs)``.
        teacher_hidden: ``(N, Ht)`` or ``(B, L, Ht)``; teacher_weight: ``(V, Ht)`` (same ``V``).
        target: optional class indices ``(N,)`` / ``(B, L)``, only used for masking.
        temperature: ``T > 0``. beta: in ``[0, 1]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hs, ws = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g)
        >>> ht, wt = torch.randn(6, 8, generator=g), torch.randn(10, 8, generator=g)
        >>> loss = linear_kd_loss(hs, ws, ht, wt, temperature=2.0)
        >>> log_ps = torch.log_softmax(hs @ ws.T / 2, -1)
        >>> log_pt = torch.log_softmax(ht @ wt.T / 2, -1)
        >>> eager = torch.nn.functional.kl_div(log_ps, log_pt, log_target=True, reduction="sum") / 6
        >>> torch.allclose(loss, eager)
        True
    """
    _check_options(chunk_size, ignore_index, reduction, normalizer)
    check_number("temperature", temperature, low=0.0, low_open=True)
    check_number("beta", beta, low=0.0, high=1.0)
    _check_head(
        "student_hidden", student_hidden, "student_weight", student_weight, "student_bias", student_bias
    )
    _check_head(
        "teacher_hidden", teacher_hidden, "teacher_weight", teacher_weight, "teacher_bias", teacher_bias
    )
    if tuple(teacher_hidden.shape[:-1]) != tuple(student_hidden.shape[:-1]):
        raise LossValueError(
            f"teacher_hidden has shape {shape_str(teacher_hidden.shape)}, expected leading dimensions "
            f"{shape_str(student_hidden.shape[:-1])} to match student_hidden of shape "
            f"{shape_str(student_hidden.shape)}"
        )
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise LossValueError(
            f"teacher_weight has {teacher_weight.shape[0]} rows, expected {student_weight.shape[0]} like "
            "student_weight (teacher and student must share the vocabulary)"
        )
    check_same_device(("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden))
    vocab = student_weight.shape[0]
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    valid = None
    out_shape = tuple(student_hidden.shape[:-1])
    if target is not None:
        flat_t = _check_tokens_target(target, student_hidden, vocab, ignore_index, "student_hidden")
        valid = flat_t != ignore_index
    head = _k.DistillHead(
        ht,
        teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        temperature=float(temperature),
        beta=float(beta),
    )
    plan = _plan(valid, hs.shape[0], vocab, head.n_buffers + 1, chunk_size, student_hidden.device)
    zero_of = (student_hidden, student_weight, student_bias)
    return _run(hs, student_weight, student_bias, head, plan, reduction, normalizer, out_shape, zero_of)


class LinearKDLoss(nn.Module):
    """Module form of :func:`linear_kd_loss`; holds configuration only.

    Example:
        >>> loss_fn = LinearKDLoss(temperature=2.0, beta=0.5)
        >>> hs, ws, ht, wt = torch.randn(3, 4), torch.randn(20, 4), torch.randn(3, 6), torch.randn(20, 6)
        >>> float(loss_fn(hs, ws, ht, wt)) >= 0
        True
    """

    def __init__(
        self,
        temperature: float = 1.0,
        beta: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_options(chunk_size, ignore_index, reduction, None)
        check_number("temperature", temperature, low=0.0, low_open=True)
        check_number("beta", beta, low=0.0, high=1.0)
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        target: torch.Tensor | None = None,
        student_bias: torch.Tensor | None = None,
        teacher_bias: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        return linear_kd_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            target,
            ignore_index=self.ignore_index,
            temperature=self.temperature,
            beta=self.beta,
            reduction=self.reduction,
            normalizer=normalizer,
            chunk_size=self.chunk_size,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, beta={self.beta}, reduction={self.reduction!r}"


_FAMILY = "language"
register(
    "linear_cross_entropy",
    LinearCrossEntropyLoss,
    family=_FAMILY,
    functional=linear_cross_entropy,
    source="Liger-Kernel (Hsu et al. 2024); Cut Your Losses (Wijmans et al. 2024)",
    notes="fused chunked LM-head CE: no (N, V) logits; label smoothing, PaLM z-loss, softcap, class and token weights, logit scale, DFT, shift_labels, side outputs (lse, z-loss, accuracy, entropy)",
)
register(
    "linear_kd",
    LinearKDLoss,
    family=_FAMILY,
    functional=linear_kd_loss,
    source="GKD (Agarwal et al. 2024)",
    notes="fused chunked LM-head distillation: forward/reverse KL, generalised JSD; no T^2 factor",
)
