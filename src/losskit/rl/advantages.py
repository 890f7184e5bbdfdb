r"""Advantages from verifiable rewards: group-relative (GRPO / Dr. GRPO) and leave-one-out (RLOO).

Rewards come as one number per completion, ``(B,)``, with the ``group_size`` completions of one
prompt next to each other (rows ``[k * G, (k + 1) * G)`` are prompt ``k``'s group), the layout GRPO
trainers generate. A group whose rewards are all equal carries no learning signal: its advantages
are exactly ``0`` (never NaN, whatever ``eps``).
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import (
    LossTypeError,
    LossValueError,
    check_choice,
    check_int,
    check_number,
    check_tensor,
    shape_str,
)
from .._reduction import compute_dtype

__all__ = ["group_advantages", "rloo_advantages"]


def _grouped(rewards: Any, group_size: Any, min_group: int = 1) -> torch.Tensor:
    """``rewards`` as a ``(B / G, G)`` floating tensor (bool / integer rewards become floats)."""
    check_tensor("rewards", rewards)
    if rewards.is_complex():
        raise LossTypeError(f"rewards must be a real tensor, got dtype {rewards.dtype}")
    check_int("group_size", group_size, low=min_group)
    if rewards.dim() != 1:
        raise LossValueError(
            f"rewards must be 1-D (one reward per completion), got shape {shape_str(rewards.shape)}"
        )
    n = rewards.shape[0]
    if n % group_size:
        raise LossValueError(
            f"rewards has shape {shape_str(rewards.shape)}: the batch ({n}) must be a multiple of "
            f"group_size={group_size} (the completions of one prompt are consecutive rows)"
        )
    grouped: torch.Tensor = rewards.to(compute_dtype(rewards)).reshape(-1, group_size)
    return grouped


def _equal_groups(r: torch.Tensor) -> torch.Tensor:
    """``(groups, 1)`` bool: every reward of the group is the same (exactly)."""
    return r.amax(1, keepdim=True) == r.amin(1, keepdim=True)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-6
) -> torch.Tensor:
    r"""Group-relative advantages: each reward minus its group's mean, optionally over the group's std.

    .. math::
        A_i = \frac{r_i - \operatorname{mean}_{g(i)}(r)}{\operatorname{std}_{g(i)}(r) + \epsilon}
        \quad(\texttt{scale='std'}, \text{GRPO, Shao et al. 2024}),\qquad
        A_i = r_i - \operatorname{mean}_{g(i)}(r) \quad(\texttt{scale='none'}, \text{Dr. GRPO, Liu et al. 2025})

    The std is the unbiased one (``torch.std``, as TRL); a group of one completion, or one whose
    rewards are all equal, gets advantage ``0``.

    Args:
        rewards: ``(B,)`` rewards, ``B`` a multiple of ``group_size``; bool / integer rewards are
            converted to floats.
        group_size: completions per prompt ``G >= 1``.
        scale: ``'std'`` or ``'none'``.
        eps: ``>= 0``, added to the std.

    Returns:
        ``(B,)`` advantages (float32 for half or integer rewards).

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2)
        tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
        >>> group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2, scale="none")
        tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    check_choice("scale", scale, ("std", "none"))
    check_number("eps", eps, low=0.0)
    r = _grouped(rewards, group_size)
    centered = r - r.mean(1, keepdim=True)
    if scale == "std":
        if group_size == 1 or r.shape[0] == 0:
            centered = torch.zeros_like(r)
        else:
            std = r.std(1, keepdim=True)
            centered = centered / (std + eps)
    equal = _equal_groups(r)
    return torch.where(equal, torch.zeros_like(centered), centered).reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    r"""Leave-one-out advantages (RLOO; Kool et al. 2019, Ahmadian et al. 2024).

    .. math::
        A_i = r_i - \frac{1}{G - 1}\sum_{j \in g(i),\, j \ne i} r_j = \frac{G}{G - 1}\,(r_i - \bar r_{g(i)})

    Args:
        rewards: ``(B,)`` rewards, ``B`` a multiple of ``group_size``.
        group_size: completions per prompt ``G >= 2``.

    Returns:
        ``(B,)`` advantages; ``0`` for a group whose rewards are all equal.

    Example:
        >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 3.0]), group_size=3)
        tensor([ 1.0000, -0.5000, -0.5000,  0.0000,  0.0000,  0.0000])
    """
    r = _grouped(rewards, group_size, min_group=2)
    baseline = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    adv = r - baseline
    return torch.where(_equal_groups(r), torch.zeros_like(adv), adv).reshape(-1)
