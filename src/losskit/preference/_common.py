"""Shared pieces of the preference losses: checks, the logistic loss, metrics, the module base."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union, overload

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    LossValueError,
    check_floating,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    shape_str,
)
from .._reduction import Normalizer, check_normalizer, compute_dtype, reduce_loss
from ..distributed import Group, global_sum

Baseline = Union[float, torch.Tensor, None]
Metrics = dict[str, torch.Tensor]


def _check_beta(beta: Any) -> float:
    return float(check_number("beta", beta, low=0.0, high=math.inf, low_open=True, high_open=True))


def _check_label_smoothing(label_smoothing: Any, loss_types: Sequence[str] = ("sigmoid",)) -> float:
    eps = float(check_number("label_smoothing", label_smoothing, low=0.0, high=0.5))
    if eps == 0.5 and "robust" in loss_types:
        raise LossValueError(
            "label_smoothing must be < 0.5 for loss_type 'robust' (it divides by 1 - 2 * label_smoothing), "
            f"got {label_smoothing!r}"
        )
    return eps


def _check_sequences(*named: tuple[str, Any]) -> list[torch.Tensor]:
    """1-D floating tensors of one shape and device, upcast to one compute dtype (float32 for half)."""
    for name, t in named:
        check_floating(name, t)
        check_ndim(name, t, 1, "1-D (one value per sequence)")
    first_name, first = named[0]
    for name, t in named[1:]:
        check_same_shape(name, t, first_name, first)
    check_same_device(*named)
    dtype = compute_dtype(first)
    for _, t in named[1:]:
        dtype = torch.promote_types(dtype, compute_dtype(t))
    return [t.to(dtype) for _, t in named]


@overload
def _check_optional_sequence(name: str, value: None, ref_name: str, ref: torch.Tensor) -> None: ...


@overload
def _check_optional_sequence(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor: ...


def _check_optional_sequence(name: str, value: Any, ref_name: str, ref: torch.Tensor) -> torch.Tensor | None:
    """An optional ``(B,)`` companion of ``ref`` (a per-pair margin, an NLL), in ``ref``'s dtype."""
    if value is None:
        return None
    tensor = check_floating(name, value)
    check_same_shape(name, tensor, ref_name, ref)
    check_same_device((ref_name, ref), (name, tensor))
    return tensor.to(ref.dtype)


def _check_reduction_args(reduction: str, normalizer: Normalizer) -> None:
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)


def _sigmoid_loss(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``: the logistic loss with smoothed labels."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def _non_finite_guard(loss: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``loss`` plus ``x - x`` of every input: unchanged (``+ 0``, no gradient) for finite inputs, NaN
    where an input is NaN or infinite.

    A log-prob or reward of ``+-inf`` is never valid, but the saturating forms would turn it into a
    finite limit (``-log sigmoid(+inf) = 0``); this keeps it visible without a device sync. Inputs
    are ``(B,)`` rows of ``loss`` or 0-d (batch-level quantities such as KTO's KL estimate).
    """
    for x in inputs:
        loss = loss + (x - x)
    return loss


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Detached mean; 0 for an empty tensor (a metric, never NaN for lack of rows)."""
    x = x.detach()
    return x.sum() / max(x.numel(), 1)


def _batch_mean(values: torch.Tensor, gather_distributed: bool, group: Group) -> torch.Tensor:
    """Detached mean of ``values`` over the batch, over every DDP rank's rows with ``gather_distributed``.

    With the flag the mean is ``(sum over ranks of the sums) / (sum over ranks of the counts)`` (one
    all-reduce), the mean one process would compute on the concatenated batch; 0 when no rank has a row.
    """
    values = values.detach()
    if not gather_distributed:
        return _mean(values)
    stats = torch.stack([values.sum(), values.new_tensor(float(values.numel()))])
    total, count = global_sum(stats, group=group).unbind()
    return total / count.clamp_min(1.0)


def _as_scalar(name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    """A Python number or a one-element tensor as a detached 0-d tensor in ``like``'s dtype."""
    if isinstance(value, torch.Tensor):
        check_floating(name, value)
        if value.numel() != 1:
            raise LossValueError(
                f"{name} must be a number or a one-element tensor, got shape {shape_str(value.shape)}"
            )
        check_same_device(("policy log-probs", like), (name, value))
        return value.detach().reshape(()).to(like.dtype)
    check_number(name, value)
    return like.new_tensor(float(value))


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    """Trainer metrics of paired implicit rewards: means, accuracy (chosen > rejected) and margin."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "chosen_rewards": _mean(c),
        "rejected_rewards": _mean(r),
        "reward_accuracy": _mean((c > r).to(c.dtype)),
        "reward_margin": _mean(c - r),
    }


@dataclass
class _Terms:
    """What a loss computes on the way: the per-row loss and the detached metrics' raw material."""

    loss: torch.Tensor
    metrics: Callable[[], Metrics]


class _PreferenceLoss(nn.Module):
    """Base of the modules: ``reduction`` and ``last_metrics`` (detached 0-d tensors of the last call)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.last_metrics: Metrics = {}

    def _finish(self, terms: _Terms, normalizer: Normalizer) -> torch.Tensor:
        with torch.no_grad():
            self.last_metrics = terms.metrics()
        return reduce_loss(terms.loss, self.reduction, normalizer=normalizer)
