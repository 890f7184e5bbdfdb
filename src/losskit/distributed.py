r"""Distributed (DDP / FSDP) building blocks: gather with gradient, global sums and counts, normalisers.

Every function here is a no-op when :mod:`torch.distributed` is not initialised: single-process code
runs unchanged (``world_size() == 1``, ``rank() == 0``, gathers return their input, the offset is 0,
global sums are local sums and :func:`ddp_normalizer` returns the local count).

Why losses need this under DDP
------------------------------
:class:`~torch.nn.parallel.DistributedDataParallel` *averages* parameter gradients over the ``W``
ranks. That is exact only for losses that are a plain mean over equally sized per-rank batches.

* **Ratio-of-sums losses** (token-mean cross-entropy with ``ignore_index``, masked regression, losses
  normalised by the number of positive anchors, batch Dice): each rank's mean divides by its *own*
  count, so DDP optimises a mean of per-rank means, which weights a token on a rank with few valid
  tokens more than one on a busy rank. The exact objective is ``sum of all token losses / global
  count``. Give every rank ``local_sum / (global_count / W)``: DDP's ``1/W`` averaging then yields
  exactly ``global_sum / global_count``. :func:`ddp_normalizer` computes ``global_count / W``;
  pass it as ``normalizer=`` to any losskit loss (or divide a ``reduction='sum'`` loss by it).
* **Losses that compare samples across the batch** (NT-Xent/InfoNCE, SupCon, triplet mining): use
  the *local loss* scheme — this rank's anchors against candidates gathered from all ranks with
  :func:`gather_candidates` / :func:`all_gather_with_grad`, whose backward sums every rank's gradient
  for this rank's rows (all-reduce, then take this rank's slice; implemented as a reduce-scatter).
  A non-differentiable ``all_gather`` silently drops the gradient flowing to the other ranks'
  samples: if each rank computes the global loss from such a gather (own slice kept differentiable)
  DDP gets exactly ``1/W`` of the right gradient; with the local-loss scheme the gradient is wrong.
* **Global sums inside a loss** (batch Dice over the whole global batch): :func:`global_sum` is an
  all-reduce whose backward is also an all-reduce, so with DDP's averaging the gradient is exact.

Gradient accumulation + DDP recipe
----------------------------------
Averaging micro-batch token means is a mean of means. The exact objective for one optimizer step is
the sum of the token losses of every micro-batch on every rank divided by the total number of valid
tokens. So, per optimizer step:

1. fetch the step's micro-batches first and count this rank's valid tokens over *all* of them;
2. ``norm = ddp_normalizer(local_count)`` — sums the counts over ranks and divides by the world size
   (pass the list of per-micro-batch masks and it sums them for you);
3. use ``normalizer=norm`` for *every* micro-batch loss and call ``backward()`` on each (no extra
   division by the number of micro-batches; ``model.no_sync()`` on all but the last is optional and
   only saves communication).

.. code-block:: python

    micro_batches = [next(loader) for _ in range(accum_steps)]
    norm = ddp_normalizer([mb["labels"] != -100 for mb in micro_batches])
    for i, mb in enumerate(micro_batches):
        sync = contextlib.nullcontext() if i == accum_steps - 1 else model.no_sync()
        with sync:
            logits = model(mb["input_ids"])
            loss = losskit.functional.cross_entropy_loss(
                logits.flatten(0, 1), mb["labels"].flatten(), ignore_index=-100, normalizer=norm
            )  # or F.cross_entropy(..., reduction="sum") / norm
            loss.backward()
    optimizer.step()
    optimizer.zero_grad()

Without DDP the same code is exact for plain gradient accumulation (``norm`` is then the step's
local count). If the micro-batches cannot be fetched ahead, use ``reduction='sum'`` and scale the
accumulated gradients by ``1 / ddp_normalizer(count_seen)`` before gradient clipping and
``optimizer.step()`` — also exact, since gradients are linear in the loss. FSDP averages gradients
over ranks like DDP, so the same normaliser applies.

The value of ``local_sum / norm`` on one rank is not the global mean; for logging use
``global_sum(loss.detach()) / world_size()`` (a collective: call it on every rank).

All collectives use :mod:`torch.distributed._functional_collectives` (not the deprecated
``torch.distributed.nn`` API). Every rank must make the same calls in the same order, and must run
``backward`` through a gathered tensor, since the backward is a collective too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from ._checks import LossTypeError, LossValueError, check_tensor, shape_str

__all__ = [
    "all_gather_with_grad",
    "ddp_normalizer",
    "gather_candidates",
    "global_count",
    "global_sum",
    "is_initialized",
    "rank",
    "world_size",
]

Group = Any  # a ProcessGroup, or None for the default (WORLD) group


# ----------------------------------------------------------------------------- process helpers


def is_initialized() -> bool:
    """True when :mod:`torch.distributed` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Group = None) -> int:
    """Number of ranks in ``group`` (1 when not distributed).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size(group) if is_initialized() else 1


def rank(group: Group = None) -> int:
    """This process's rank in ``group`` (0 when not distributed).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank(group) if is_initialized() else 0


def _active(group: Group) -> bool:
    return is_initialized() and dist.get_world_size(group) > 1


def _pg(group: Group) -> Any:
    return dist.group.WORLD if group is None else group


def _collective_device(group: Group) -> torch.device:
    """Device for tensors we create ourselves (counts given as Python numbers)."""
    if not is_initialized():
        return torch.device("cpu")
    backend = str(dist.get_backend(group)).lower()
    if all(b in ("gloo", "mpi") for b in (p.split(":")[-1] for p in backend.split(","))):
        return torch.device("cpu")
    accel = getattr(torch, "accelerator", None)
    if accel is not None and accel.is_available():
        dev = accel.current_accelerator()
        return torch.device(dev.type, accel.current_device_index())
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- raw collectives


def _fc() -> Any:
    from torch.distributed import _functional_collectives as fc

    return fc


def _wait(t: torch.Tensor) -> torch.Tensor:
    fc = _fc()
    if isinstance(t, fc.AsyncCollectiveTensor):
        waited: torch.Tensor = t.wait()
        return waited
    return t


def _all_gather_dim0(x: torch.Tensor, group: Group) -> torch.Tensor:
    fc = _fc()
    op = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor
    return _wait(op(x.contiguous(), 0, _pg(group)))


def _reduce_scatter_sum_dim0(x: torch.Tensor, group: Group) -> torch.Tensor:
    fc = _fc()
    op = getattr(fc, "reduce_scatter_single", None) or fc.reduce_scatter_tensor
    return _wait(op(x.contiguous(), "sum", 0, _pg(group)))


def _all_reduce_sum(x: torch.Tensor, group: Group) -> torch.Tensor:
    return _wait(_fc().all_reduce(x.contiguous(), "sum", _pg(group)))


# ----------------------------------------------------------------------------- gather with grad


def _gather_sizes(x: torch.Tensor, group: Group) -> list[int]:
    """Every rank's dim-0 size; checks that the other dims agree (one small collective + host sync)."""
    if x.dim() > 7:
        raise LossValueError(f"tensor to gather must have at most 7 dims, got shape {shape_str(x.shape)}")
    shape = torch.tensor([x.dim(), *x.shape], dtype=torch.int64, device=x.device)
    padded = torch.full((8,), -1, dtype=torch.int64, device=x.device)
    padded[: shape.numel()] = shape
    rows = _all_gather_dim0(padded, group).view(-1, 8).tolist()
    shapes = [tuple(r[1 : 1 + r[0]]) for r in rows]
    mine = tuple(x.shape)
    if any(len(s) != len(mine) or s[1:] != mine[1:] for s in shapes):
        listed = ", ".join(f"rank {i}: {shape_str(s)}" for i, s in enumerate(shapes))
        raise LossValueError(
            f"tensors gathered across ranks must agree in every dim but the first, got {listed}"
        )
    return [s[0] for s in shapes]


def _gather_rows(x: torch.Tensor, sizes: list[int], group: Group) -> torch.Tensor:
    """Concatenate every rank's ``x`` (sizes[i] rows on rank i) along dim 0, padding to the max."""
    longest = max(sizes)
    if all(s == longest for s in sizes):
        return _all_gather_dim0(x, group)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = _all_gather_dim0(padded, group)
    return torch.cat([out[i * longest : i * longest + s] for i, s in enumerate(sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: this rank's slice of the all-reduced (summed) grad."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], group: Group) -> torch.Tensor:
        ctx.sizes = sizes
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        return _gather_rows(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        sizes, group = ctx.sizes, ctx.group
        longest = max(sizes)
        if all(s == longest for s in sizes):
            return _reduce_scatter_sum_dim0(grad, group), None, None
        padded = grad.new_zeros((len(sizes) * longest, *grad.shape[1:]))
        start = 0
        for i, s in enumerate(sizes):
            padded[i * longest : i * longest + s] = grad[start : start + s]
            start += s
        mine = _reduce_scatter_sum_dim0(padded, group)
        return mine[: sizes[ctx.rank]], None, None


def _check_gatherable(name: str, x: Any) -> torch.Tensor:
    check_tensor(name, x)
    if x.dim() == 0:
        raise LossValueError(f"{name} must have a batch dimension (dim 0), got a 0-d tensor")
    tensor: torch.Tensor = x
    return tensor


def _sizes(x: torch.Tensor, group: Group, equal_sizes: bool) -> list[int]:
    if equal_sizes:
        return [x.shape[0]] * dist.get_world_size(group)
    return _gather_sizes(x, group)


def all_gather_with_grad(x: torch.Tensor, *, group: Group = None, equal_sizes: bool = False) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the gradient for every rank's rows.

    The result is identical on all ranks, ordered by rank. In backward, the gradient of ``x`` is this
    rank's slice of the *sum over ranks* of the gradients of their gathered copies (an all-reduce
    followed by a slice, done as one reduce-scatter) — the ``gather_with_grad`` semantics of
    open_clip. Used with the local-loss scheme (this rank's anchors against all gathered samples)
    and DDP's gradient averaging, the parameter gradient equals the single-process gradient on the
    concatenated batch.

    Args:
        x: tensor with a batch dim 0. Ranks may hold different batch sizes (including 0); every
            other dim and the dtype must agree across ranks.
        group: process group (default: the world).
        equal_sizes: promise that every rank has the same dim-0 size; skips the size exchange (one
            small all-gather and a host sync per call). A false promise is undefined behaviour.

    Returns:
        ``x`` itself when not distributed (or a group of one rank), else the ``(sum of sizes, ...)``
        concatenation.

    Example:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> all_gather_with_grad(x) is x  # identity without torch.distributed
        True
    """
    _check_gatherable("x", x)
    if not _active(group):
        return x
    gathered: torch.Tensor = _AllGatherWithGrad.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        x, _sizes(x, group, equal_sizes), group
    )
    return gathered


def gather_candidates(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    group: Group = None,
    equal_sizes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Gather the candidate set of a contrastive loss from every rank.

    Returns ``(all_embeddings, all_labels, offset)``: ``all_embeddings`` from
    :func:`all_gather_with_grad`, ``all_labels`` gathered without gradient (``None`` if ``labels`` is
    ``None``) and ``offset`` (a Python int), the index of this rank's first row in the gathered batch:
    local anchor ``i`` is candidate ``offset + i`` (exclude it as its own candidate/positive).

    Compute the loss over the *local* anchors only, against all candidates, and normalise by
    :func:`ddp_normalizer` of the local anchor count (``= n`` when every rank has ``n`` anchors, so a
    plain mean is fine for equal batch sizes). Single process: returns ``(embeddings, labels, 0)``.

    Example:
        >>> emb, lab = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
        >>> all_emb, all_lab, offset = gather_candidates(emb, lab)
        >>> all_emb is emb, all_lab is lab, offset
        (True, True, 0)
    """
    _check_gatherable("embeddings", embeddings)
    if labels is not None:
        _check_gatherable("labels", labels)
        if labels.shape[0] != embeddings.shape[0]:
            raise LossValueError(
                f"labels has shape {shape_str(labels.shape)}, expected {embeddings.shape[0]} rows to "
                f"match embeddings of shape {shape_str(embeddings.shape)}"
            )
    if not _active(group):
        return embeddings, labels, 0
    sizes = _sizes(embeddings, group, equal_sizes)
    all_embeddings: torch.Tensor = _AllGatherWithGrad.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        embeddings, sizes, group
    )
    all_labels = None
    if labels is not None:
        with torch.no_grad():
            all_labels = _gather_rows(labels.detach(), sizes, group)
    offset = sum(sizes[: dist.get_rank(group)])
    return all_embeddings, all_labels, offset


# ----------------------------------------------------------------------------- global sums / counts


class _AllReduceSum(torch.autograd.Function):
    """Forward: all-reduce sum. Backward: all-reduce sum of the gradients of every rank's copy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _all_reduce_sum(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduce_sum(grad, ctx.group), None


def _as_tensor(name: str, value: Any, group: Group) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    return torch.tensor(value, device=_collective_device(group))


def global_sum(x: torch.Tensor | float, *, group: Group = None) -> torch.Tensor:
    """Element-wise sum of ``x`` over ranks (all-reduce SUM), differentiable.

    Every rank gets the same value. The gradient of ``x`` is the sum over ranks of the gradients of
    their copies of the result, so a loss built from global sums (e.g. batch Dice over the global
    batch: ``1 - 2 * global_sum(I) / global_sum(P + G)``) computed identically on every rank gets,
    after DDP's gradient averaging, exactly the single-process gradient. Pass a detached tensor for
    statistics (logging, counts). Single process: returns ``x`` (a Python number becomes a tensor).

    Example:
        >>> global_sum(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
    """
    t = _as_tensor("x", x, group)
    if not _active(group):
        return t
    if t.requires_grad:
        summed: torch.Tensor = _AllReduceSum.apply(t, group)  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
        return summed
    return _all_reduce_sum(t, group)


def _local_count(name: str, value: Any, group: Group) -> torch.Tensor:
    """A detached scalar count: bool masks count their ``True`` entries, other tensors are summed."""
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise LossValueError(f"{name} is an empty sequence, expected one count or mask per micro-batch")
        parts = [_local_count(f"{name}[{i}]", v, group) for i, v in enumerate(value)]
        total = parts[0]
        for p in parts[1:]:
            dtype = torch.promote_types(total.dtype, p.dtype)
            total = total.to(dtype) + p.to(device=total.device, dtype=dtype)
        return total
    t = _as_tensor(name, value, group).detach()
    if t.is_complex():
        raise LossTypeError(f"{name} must be a real count or a bool mask, got dtype {t.dtype}")
    if t.is_floating_point():
        return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).sum()
    return t.sum(dtype=torch.int64)


def global_count(mask: torch.Tensor | float | Sequence[Any], *, group: Group = None) -> torch.Tensor:
    """Number of elements that count, summed over ranks; never carries a gradient.

    Args:
        mask: a bool tensor (its ``True`` entries are counted), a count (int/float or tensor,
            summed if it has several entries, e.g. a weight tensor), or a list/tuple of these
            (summed: one per micro-batch).

    Returns:
        a scalar tensor (int64 for masks and integer counts, floating for floating counts), equal on
        every rank. Single process: the local count.

    Example:
        >>> global_count(torch.tensor([True, False, True]))
        tensor(2)
    """
    count = _local_count("mask", mask, group)
    if not _active(group):
        return count
    return _all_reduce_sum(count, group)


def ddp_normalizer(
    local_count: torch.Tensor | float | Sequence[Any],
    *,
    group: Group = None,
    min_value: float | None = None,
) -> torch.Tensor:
    """The ``normalizer=`` that makes a ratio-of-sums loss exact under DDP (and accumulation).

    Returns ``global_count(local_count) / world_size()`` as a floating scalar tensor, identical on
    every rank, without gradient. Using ``loss = local_sum / ddp_normalizer(local_count)`` on each
    rank, DDP's gradient averaging (``1/W``) gives the gradient of ``global_sum / global_count``, the
    loss of one process over the concatenated batch. Works for any count: valid tokens
    (``target != ignore_index``), mask entries, positive anchors (detection), summed weights.

    For gradient accumulation, ``local_count`` must cover every micro-batch of the optimizer step
    (pass the list of per-micro-batch masks or counts; they are summed) and the same normaliser is
    used for every micro-batch; see the module docstring for the full recipe.

    Args:
        local_count: this rank's count — a bool mask, a number, a tensor (summed), or a list/tuple
            of those (summed).
        group: process group (default: the world).
        min_value: if given, the result is at least this (``1.0`` reproduces Detectron2's
            ``max(num_pos / W, 1)``).

    A global count of zero (nothing valid on any rank) is replaced by 1, giving ``1 / W``: the loss
    is a finite ``0`` rather than NaN, and for integer counts the result is ``max(1, N) / W``, the
    exact DDP form of the one-process ``max(1, N_pos)`` of RetinaNet-style detection losses (no
    ``min_value`` needed; ``min_value=1.0`` is Detectron2's coarser ``max(N / W, 1)``).

    Example:
        >>> ddp_normalizer(torch.tensor([True, True, False]))  # single process: the local count
        tensor(2.)
        >>> ddp_normalizer([torch.tensor([True, False]), torch.tensor([True, True])])  # 2 micro-batches
        tensor(3.)
    """
    if min_value is not None and (
        isinstance(min_value, bool) or not isinstance(min_value, (int, float)) or not min_value > 0
    ):
        raise LossValueError(f"min_value must be a number > 0, got {min_value!r}")
    count = _local_count("local_count", local_count, group)
    if _active(group):
        count = _all_reduce_sum(count, group)
    dtype = count.dtype if count.is_floating_point() else torch.get_default_dtype()
    count = count.to(dtype)
    count = torch.where(count > 0, count, torch.ones_like(count))
    norm = count / world_size(group)
    if min_value is not None:
        norm = norm.clamp_min(float(min_value))
    return norm
