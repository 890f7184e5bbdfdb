r"""The global denominator of one optimisation step of a policy-gradient loss (accumulation and DDP).

A step's batch may be processed at once, in gradient-accumulation micro-batches of uneven sizes and
lengths, or on several DDP ranks. :func:`policy_gradient_normalizer` computes, once per step, the
denominator the loss type would use on the whole step's batch, divided by the world size (DDP
*averages* gradients over the ``W`` ranks, so every rank divides by ``global / W``). Passing it as
``normalizer=`` to every micro-batch call on every rank, then calling ``backward()`` on each (no
division by the number of micro-batches), makes the step's gradient the gradient of the full-batch
loss.

What is layout-invariant, per loss type:

- ``dapo``, ``cispo``: the token mean over the step: fully layout-invariant (global token count).
- ``dr_grpo``: ``sum / (B * max_len)`` with ``B`` the step's sequences: fully layout-invariant when
  every call uses the same ``max_len`` (the generation's maximum completion length, required here;
  the width ``T`` of each micro-batch differs with padding, so it cannot stand in).
- ``grpo``, ``gspo``: the per-sequence part (token mean of each sequence, GSPO's sequence ratio) is
  per sequence by definition and a sequence is never split, so it is the same in every layout; the
  mean over sequences takes the step's global sequence count, which makes the whole loss
  layout-invariant. What it does *not* make invariant is the token weighting itself: a token of a
  long completion weighs less than one of a short completion (the length bias of Liu et al. 2025),
  a property of the objective, not of the layout.
- ``bnpo``: the token mean of each call's own batch, by definition; its step depends on the
  layout and it refuses a normaliser (use ``dapo`` for the global token mean).

Without the global normaliser, the per-micro-batch means of ``dapo`` / ``cispo`` / ``grpo`` weight the
tokens (sequences) of a small micro-batch or rank more than those of a large one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import LossValueError, check_int, check_ndim, check_tensor
from ..distributed import Group, ddp_normalizer
from .policy_gradient import FIXED_DENOMINATOR_TYPES, _check_loss_type

__all__ = ["policy_gradient_normalizer"]


def _masks(mask: Any) -> list[torch.Tensor]:
    items = list(mask) if isinstance(mask, (list, tuple)) else [mask]
    if not items:
        raise LossValueError("mask is an empty sequence, expected one (B, T) mask per micro-batch")
    out = []
    for i, m in enumerate(items):
        name = "mask" if not isinstance(mask, (list, tuple)) else f"mask[{i}]"
        check_tensor(name, m)
        check_ndim(name, m, 2, "2-D (B, T)")
        out.append(m if m.dtype == torch.bool else m != 0)
    return out


def policy_gradient_normalizer(
    mask: torch.Tensor | Sequence[torch.Tensor] | None,
    loss_type: str,
    *,
    max_len: int | None = None,
    num_sequences: int | None = None,
    group: Group = None,
) -> torch.Tensor:
    r"""The ``normalizer=`` of one optimisation step: the loss type's denominator over every
    micro-batch of the step and every DDP rank, divided by the world size.

    ======================  =========================================================
    loss type               value (sums over this step's micro-batches and all ranks)
    ======================  =========================================================
    ``dapo``, ``cispo``     valid tokens ``/ W``
    ``grpo``, ``gspo``      sequences ``/ W``
    ``dr_grpo``             sequences ``* max_len / W``
    ``bnpo``                error: its denominator is each call's own token count
    ======================  =========================================================

    A count of zero is replaced by 1 (the loss is then a finite 0). The module docstring of
    :mod:`losskit.rl.normalizer` says what is and is not layout-invariant for each loss type.
    Under DDP this is a collective (one all-reduce): call it on every rank.

    Args:
        mask: this rank's ``(B, T)`` completion mask, or the list of the step's micro-batch masks
            (their widths may differ); may be ``None`` for the sequence-counting types when
            ``num_sequences`` is given.
        loss_type: the loss type of :func:`~losskit.rl.policy_gradient_loss`.
        max_len: ``dr_grpo``'s length constant (required for it), the same on every rank.
        num_sequences: this rank's number of sequences in the step (default: the rows of the masks).
        group: process group (default: the world).

    Returns:
        a floating 0-d tensor without gradient, equal on every rank.

    Example:
        >>> masks = [torch.tensor([[True, True, False]]), torch.tensor([[True, False], [True, True]])]
        >>> policy_gradient_normalizer(masks, "dapo")  # 5 valid tokens in 2 micro-batches
        tensor(5.)
        >>> policy_gradient_normalizer(masks, "grpo")  # 3 sequences
        tensor(3.)
        >>> policy_gradient_normalizer(masks, "dr_grpo", max_len=4)
        tensor(12.)
    """
    lt = _check_loss_type(loss_type)
    if lt in FIXED_DENOMINATOR_TYPES:
        raise LossValueError(
            f"loss_type {lt!r} fixes its own denominator (the valid tokens of each call), so it has no "
            "step normaliser; use loss_type='dapo' for the token mean over the whole step"
        )
    check_int("max_len", max_len, low=1, allow_none=True)
    check_int("num_sequences", num_sequences, low=0, allow_none=True)
    if lt in ("dapo", "cispo"):
        if mask is None:
            raise LossValueError(f"mask is required for loss_type {lt!r} (it counts the valid tokens)")
        return ddp_normalizer(_masks(mask), group=group)
    if num_sequences is None:
        if mask is None:
            raise LossValueError(f"mask or num_sequences is required for loss_type {lt!r}")
        num_sequences = sum(m.shape[0] for m in _masks(mask))
    elif mask is not None:
        _masks(mask)
    count = num_sequences
    if lt == "dr_grpo":
        if max_len is None:
            raise LossValueError(
                "max_len is required for loss_type 'dr_grpo': the generation's maximum completion length, "
                "the same for every micro-batch and rank"
            )
        count = num_sequences * max_len
    return ddp_normalizer(count, group=group)
