"""Validation helpers shared by every loss.

Every user error raises a :class:`LossValueError` (a ``ValueError``) or a :class:`LossTypeError`
(a ``TypeError``) whose message names the argument, what was expected and what was received.

Hyperparameters are checked when a module is built; tensors when the loss is called. Checks that
read tensor *values* (target ranges) need a device sync on accelerators; they can be switched off
with :func:`set_value_checks` (or the environment variable ``LOSSKIT_VALUE_CHECKS=0``) and are
skipped automatically while ``torch.compile`` traces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "LossTypeError",
    "LossValueError",
    "can_read_values",
    "set_value_checks",
    "value_checks_enabled",
]

_VALUE_CHECKS = os.environ.get("LOSSKIT_VALUE_CHECKS", "1") not in ("0", "false", "False")


class LossValueError(ValueError):
    """A loss received an argument with a bad value or shape."""


class LossTypeError(TypeError):
    """A loss received an argument of the wrong type or dtype."""


def set_value_checks(enabled: bool) -> None:
    """Turn on/off the checks that read tensor values (e.g. target ranges).

    They are cheap on CPU but force a host-device sync on accelerators. Shape and dtype checks
    always run.
    """
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def value_checks_enabled() -> bool:
    """True when value checks run (enabled and not inside ``torch.compile`` tracing)."""
    return _VALUE_CHECKS and not torch.compiler.is_compiling()


def can_read_values(*tensors: torch.Tensor | None) -> bool:
    """True when a value check may read these tensors' values.

    False when value checks are off or being traced (:func:`value_checks_enabled`), and for tensors
    on the ``'meta'`` device, which have shapes but no values (shape and dtype checks still run there).
    """
    if not value_checks_enabled():
        return False
    return not any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors)


def shape_str(shape: Sequence[int] | torch.Size) -> str:
    """Format a shape like ``(8, 10)``."""
    dims = tuple(int(d) for d in shape)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


# ----------------------------------------------------------------------------- hyperparameters


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise LossValueError(f"{name} must be one of {opts}, got {value!r}")
    return value


def check_reduction(reduction: str, allowed: Sequence[str] = ("none", "mean", "sum")) -> str:
    """Validate a ``reduction`` argument."""
    if not isinstance(reduction, str):
        raise LossTypeError(
            f"reduction must be a string, one of {list(allowed)}, got {type(reduction).__name__}"
        )
    checked: str = check_choice("reduction", reduction, allowed)
    return checked


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """``value`` must be a real number (bool excluded) inside the given interval."""
    if value is None and allow_none:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        num = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        num = float(value)
    else:
        raise LossTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if num != num:
        raise LossValueError(f"{name} must not be NaN")
    if low is not None and (num < low or (low_open and num == low)):
        rel = ">" if low_open else ">="
        raise LossValueError(f"{name} must be {rel} {low}, got {value!r}")
    if high is not None and (num > high or (high_open and num == high)):
        rel = "<" if high_open else "<="
        raise LossValueError(f"{name} must be {rel} {high}, got {value!r}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None, allow_none: bool = False) -> Any:
    """``value`` must be a Python int (bool excluded), optionally ``>= low``."""
    if value is None and allow_none:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise LossTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise LossValueError(f"{name} must be >= {low}, got {value}")
    return value


# ----------------------------------------------------------------------------- tensors


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise LossTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(name: str, value: Any) -> torch.Tensor:
    """``value`` must be a floating-point tensor."""
    check_tensor(name, value)
    if not value.is_floating_point():
        raise LossTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    tensor: torch.Tensor = value
    return tensor


def check_integer(name: str, value: Any) -> torch.Tensor:
    """``value`` must be an integer (class index) tensor."""
    check_tensor(name, value)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise LossTypeError(f"{name} must be an integer tensor of class indices, got dtype {value.dtype}")
    tensor: torch.Tensor = value
    return tensor


def check_ndim(name: str, value: torch.Tensor, ndims: Sequence[int] | int, what: str = "") -> torch.Tensor:
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if value.dim() not in allowed:
        exp = what or " or ".join(f"{d}-D" for d in allowed)
        raise LossValueError(f"{name} must be {exp}, got shape {shape_str(value.shape)}")
    return value


def check_min_ndim(name: str, value: torch.Tensor, ndim: int, what: str = "") -> torch.Tensor:
    if value.dim() < ndim:
        exp = what or f"at least {ndim}-D"
        raise LossValueError(f"{name} must be {exp}, got shape {shape_str(value.shape)}")
    return value


def check_same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    if value.shape != ref.shape:
        raise LossValueError(
            f"{name} has shape {shape_str(value.shape)}, expected {shape_str(ref.shape)} to match {ref_name}"
        )
    return value


def check_broadcastable(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    try:
        shape = torch.broadcast_shapes(value.shape, ref.shape)
    except RuntimeError:
        shape = None
    if shape != ref.shape:
        raise LossValueError(
            f"{name} has shape {shape_str(value.shape)}, expected a shape broadcastable to "
            f"{shape_str(ref.shape)} ({ref_name})"
        )
    return value


def check_class_weight(name: str, weight: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    """A per-class weight: 1-D floating tensor with ``num_classes`` non-negative entries."""
    if weight is None:
        return None
    check_floating(name, weight)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise LossValueError(
            f"{name} has shape {shape_str(weight.shape)}, expected ({num_classes},): one entry per class"
        )
    if can_read_values(weight) and bool((weight < 0).any()):
        raise LossValueError(f"{name} must be non-negative")
    return weight


def check_class_target(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int | None = -100,
    input_name: str = "input",
    target_name: str = "target",
) -> bool | None:
    """Class-index target for an ``(N, C, d1, ...)`` input: shape ``(N, d1, ...)``, integer, in ``[0, C)``.

    Entries equal to ``ignore_index`` are allowed anywhere. Returns what :func:`check_class_range`
    returns (whether an entry equals ``ignore_index``, ``None`` when values were not read).
    """
    check_integer(target_name, target)
    check_same_device((input_name, input), (target_name, target))
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise LossValueError(
            f"{target_name} has shape {shape_str(target.shape)}, expected {shape_str(expected)} "
            f"to match {input_name} of shape {shape_str(input.shape)} (class axis is dim 1)"
        )
    return check_class_range(target_name, target, input.shape[1], ignore_index)


def check_class_range(
    name: str, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> bool | None:
    """Class indices in ``[0, num_classes)`` (entries equal to ``ignore_index`` allowed); a value check.

    Returns whether some entry equals ``ignore_index`` (``False`` for an empty target), or ``None``
    when the values were not read (value checks off, tracing, meta tensors). Callers may skip
    masking when it is ``False``.
    """
    if target.numel() == 0:
        return False
    if not can_read_values(target):
        return None
    # happy path: one reduction and one host sync
    lo, hi = (int(v) for v in torch.aminmax(target))
    if 0 <= lo and hi < num_classes:
        return ignore_index is not None and lo <= ignore_index <= hi and bool((target == ignore_index).any())
    out = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        out &= target != ignore_index
    if bool(out.any()):
        bad = target[out]
        low = int(bad.min())
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise LossValueError(
            f"{name} contains class index {low if low < 0 else int(bad.max())}, "
            f"expected values in [0, {num_classes}){extra}"
        )
    return True  # the out-of-range entries all equal ignore_index


def value_range(x: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` of a non-empty tensor in one pass (NaN if it holds a NaN), detached."""
    lo, hi = torch.aminmax(x.detach())
    return float(lo), float(hi)


def check_prob_target(name: str, target: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Soft/binary target with values in ``[low, high]``."""
    check_floating(name, target)
    if can_read_values(target) and target.numel() > 0:
        lo, hi = value_range(target)
        if lo < low or hi > high or lo != lo or hi != hi:
            raise LossValueError(f"{name} must have values in [{low}, {high}], got range [{lo:g}, {hi:g}]")
    return target


def check_same_device(*named: tuple[str, torch.Tensor | None]) -> None:
    tensors = [(n, t) for n, t in named if isinstance(t, torch.Tensor)]
    if not tensors:
        return
    first_name, first = tensors[0]
    for name, t in tensors[1:]:
        if t.device != first.device:
            raise LossValueError(f"{name} is on {t.device}, expected {first.device} like {first_name}")
