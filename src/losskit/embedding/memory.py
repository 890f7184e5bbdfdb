r"""Cross-batch memory (XBM, Wang et al., CVPR 2020): a queue of past embeddings as extra candidates.

Embeddings drift slowly once a model has warmed up, so the embeddings of the last few thousand
samples are still informative negatives (and positives) for the current batch. :class:`CrossBatchMemory`
keeps them in a first-in-first-out queue (MoCo-style) and lets a pair loss compare the current
batch with the batch *and* the memory.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import nn

from .._checks import LossTypeError, LossValueError, check_int, shape_str
from ._common import _candidates, _check_embeddings_labels, _gathering

__all__ = ["CrossBatchMemory"]


class _CandidateLoss(Protocol):
    """What the memory uses of its pair loss: the loss of checked anchors against a candidate set."""

    def _candidate_loss(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        cand: torch.Tensor,
        cand_labels: torch.Tensor,
        offset: int | None,
        gathered: bool,
    ) -> torch.Tensor: ...


class CrossBatchMemory(nn.Module):
    r"""Wrap a pair loss with a memory of the last ``memory_size`` embeddings and labels (XBM).

    ``loss_fn(embeddings, labels)`` computes the wrapped loss with the current batch as queries and
    the batch plus the memory as candidates (each query's own row excluded), then, in training mode,
    enqueues the batch, overwriting the oldest entries once the memory is full. The memory holds
    detached copies (no gradient reaches past batches); the current batch's candidates keep their
    gradient, so with an empty memory the value and gradient are those of the wrapped loss alone.
    The wrapped loss's settings (margins, mining, distance, reduction) apply over the enlarged
    candidate set; its own ``gather_distributed`` flag is not used.

    Supported losses: :class:`ContrastivePairsLoss`, :class:`TripletLoss`,
    :class:`MultiSimilarityLoss`, :class:`CircleLoss`.

    Distributed: with ``gather_distributed=True`` (default; no effect without a process group) the
    candidates are every rank's batch, gathered with gradient, followed by the memory, and the batch
    that is enqueued is that gathered batch, in rank order, on every rank: every rank's memory is
    the same, and ``W`` ranks give the gradients of one process on the concatenated batch with the
    same memory. (A memory filled with each rank's local batch differs across ranks and breaks this.)

    State: the buffers ``embedding_memory`` ``(memory_size, embedding_size)`` (float32 by default;
    ``.double()`` etc. convert it), ``label_memory`` ``(memory_size,)``, ``queue_ptr`` (next slot)
    and ``num_filled`` are in the ``state_dict``: a checkpoint resumes with the same memory.
    :meth:`reset` empties it.

    Args:
        loss: a supported pair-loss module.
        embedding_size: ``D``.
        memory_size: number of past embeddings kept (the paper uses a few thousand up to the
            dataset size; a batch larger than the memory keeps its last ``memory_size`` rows).
        gather_distributed: see above.

    Example:
        >>> import losskit
        >>> xbm = CrossBatchMemory(losskit.MultiSimilarityLoss(), embedding_size=8, memory_size=32)
        >>> emb = torch.randn(6, 8, requires_grad=True)
        >>> xbm(emb, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
        >>> int(xbm.num_filled), xbm(torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])).ndim
        (6, 0)
        >>> int(xbm.num_filled)
        12
    """

    embedding_memory: torch.Tensor
    label_memory: torch.Tensor
    queue_ptr: torch.Tensor
    num_filled: torch.Tensor

    def __init__(
        self, loss: nn.Module, embedding_size: int, memory_size: int, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module) or not callable(getattr(loss, "_candidate_loss", None)):
            raise LossTypeError(
                f"loss must be a pair-loss module (ContrastivePairsLoss, TripletLoss, MultiSimilarityLoss or "
                f"CircleLoss), got {type(loss).__name__}"
            )
        self.loss = loss
        self.embedding_size = check_int("embedding_size", embedding_size, low=1)
        self.memory_size = check_int("memory_size", memory_size, low=1)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_size))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb, labels = _check_embeddings_labels(embeddings, labels)
        if emb.shape[1] != self.embedding_size:
            raise LossValueError(
                f"embeddings has shape {shape_str(emb.shape)}, expected (B, {self.embedding_size}): the "
                f"memory's embedding_size"
            )
        if emb.device != self.embedding_memory.device:
            raise LossValueError(
                f"embeddings is on {emb.device}, expected {self.embedding_memory.device} (the memory's "
                f"device; move the module with .to())"
            )
        gathered = _gathering(self.gather_distributed)
        batch, batch_labels, offset = _candidates(emb, labels, gathered)
        n = int(self.num_filled)
        cand = torch.cat([batch, self.embedding_memory[:n].to(batch.dtype)])
        cand_labels = torch.cat([batch_labels, self.label_memory[:n].to(batch_labels.dtype)])
        pair_loss = cast(_CandidateLoss, self.loss)  # __init__ checked that it has _candidate_loss
        loss = pair_loss._candidate_loss(emb, labels, cand, cand_labels, offset, gathered)
        if self.training:
            self.enqueue(batch.detach(), batch_labels)
        return loss

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write ``embeddings`` ``(N, D)`` and ``labels`` ``(N,)`` over the oldest entries of the memory.

        :meth:`forward` calls it in training mode with the (gathered) batch; call it directly to fill
        the memory from elsewhere (e.g. a warm-up pass), on every rank with the same rows.
        """
        k = min(embeddings.shape[0], self.memory_size)
        if k == 0:
            return
        x, y = embeddings[-k:], labels[-k:]
        slots = (self.queue_ptr + torch.arange(k, device=self.queue_ptr.device)) % self.memory_size
        self.embedding_memory[slots] = x.detach().to(self.embedding_memory.dtype)
        self.label_memory[slots] = y.to(self.label_memory.dtype)
        self.queue_ptr.copy_((self.queue_ptr + k) % self.memory_size)
        self.num_filled.copy_((self.num_filled + k).clamp_max(self.memory_size))

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the memory."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_ptr.zero_()
        self.num_filled.zero_()

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, memory_size={self.memory_size}, "
            f"gather_distributed={self.gather_distributed}"
        )
