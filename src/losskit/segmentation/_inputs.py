"""Inputs of the Lovász, distance and topology losses: option checks, probabilities, hard targets."""

from __future__ import annotations

import torch

from .._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_choice,
    check_class_target,
    check_floating,
    check_int,
    check_integer,
    check_min_ndim,
    check_same_device,
    check_tensor,
    shape_str,
    value_range,
)
from .._reduction import upcast

MODES = ("multiclass", "binary", "multilabel")


def check_options(mode: str, ignore_index: int | None, include_background: bool) -> None:
    """Hyperparameters shared by these losses (checked when a module is built and on every call)."""
    check_choice("mode", mode, MODES)
    check_int("ignore_index", ignore_index, allow_none=True)
    if not include_background and mode == "binary":
        raise LossValueError(
            "include_background=False drops channel 0, but mode='binary' has a single channel; "
            "keep include_background=True"
        )


def check_input(
    input: torch.Tensor, target: torch.Tensor | None, mode: str, spatial: tuple[int, ...] | None = None
) -> None:
    """``input`` is floating ``(N, C, d1, ...)``, ``C == 1`` for ``mode='binary'``.

    ``spatial``: the accepted numbers of spatial dimensions (None: any >= 1).
    """
    check_floating("input", input)
    if target is not None:
        check_tensor("target", target)
        check_same_device(("input", input), ("target", target))
    if spatial is None:
        check_min_ndim("input", input, 3, "(N, C, d1, ...) with at least one spatial dimension")
    elif input.dim() - 2 not in spatial:
        kinds = " or ".join(f"{k}-D" for k in spatial)
        raise LossValueError(
            f"input must be (N, C, d1, ...) with {kinds} spatial dimensions, got shape {shape_str(input.shape)}"
        )
    if mode == "binary" and input.shape[1] != 1:
        raise LossValueError(
            f"mode='binary' expects input with one channel (N, 1, ...), got shape {shape_str(input.shape)}; "
            "use mode='multiclass' or 'multilabel' for several channels"
        )


def probabilities(input: torch.Tensor, mode: str, from_logits: bool) -> torch.Tensor:
    """Softmax over dim 1 (``'multiclass'``) or sigmoid, in float32 for half inputs.

    With ``from_logits=False`` the input must already hold probabilities in ``[0, 1]``.
    """
    x = upcast(input)
    if from_logits:
        return torch.softmax(x, dim=1) if mode == "multiclass" else torch.sigmoid(x)
    if can_read_values(x) and x.numel() > 0:
        lo, hi = value_range(x)
        if not (lo >= 0.0 and hi <= 1.0):
            raise LossValueError(
                f"input must hold probabilities in [0, 1] when from_logits=False, got range [{lo:g}, {hi:g}]"
            )
    return x


def hard_target(
    input: torch.Tensor, target: torch.Tensor, mode: str, ignore_index: int | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """0/1 target ``g`` of ``input``'s shape and the valid positions ``(N, 1, d1, ...)`` (None: all).

    ``target`` holds class indices ``(N, d1, ...)`` (for ``'binary'`` the values 0/1) or is a dense
    0/1 tensor of ``input``'s shape (``'multilabel'`` needs the dense form). Ignored positions are 0
    in ``g`` and ``False`` in the mask.
    """
    if target.dim() == input.dim() - 1:
        if mode == "multilabel":
            raise LossValueError(
                f"mode='multilabel' needs a dense target of shape {shape_str(input.shape)}, got class "
                f"indices of shape {shape_str(target.shape)}"
            )
        check_integer("target", target)
        # a (N, 1, ...) binary input is a 2-class problem for the range check: values 0 and 1
        ref = input.expand(input.shape[0], 2, *input.shape[2:]) if mode == "binary" else input
        check_class_target(ref, target, ignore_index=ignore_index)
        valid = None if ignore_index is None else (target != ignore_index).unsqueeze(1)
        if mode == "binary":
            g = (target == 1).unsqueeze(1)
        else:
            classes = torch.arange(input.shape[1], device=target.device)
            g = target.unsqueeze(1) == classes.reshape(1, -1, *([1] * (input.dim() - 2)))
        if valid is not None:
            g = g & valid
        return g.to(dtype), valid
    if ignore_index is not None:
        raise LossValueError(
            "ignore_index is only supported with class-index targets; pass class indices instead of a dense target"
        )
    if target.shape != input.shape:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(input.shape)} (dense) "
            f"or {shape_str((input.shape[0], *input.shape[2:]))} (class indices) to match input"
        )
    if target.is_complex():
        raise LossTypeError(f"target must be real, got dtype {target.dtype}")
    g = target.to(dtype)
    if can_read_values(g) and g.numel() > 0 and not bool(((g == 0) | (g == 1)).all()):
        lo, hi = value_range(g)
        raise LossValueError(f"target must be a 0/1 mask, got values in [{lo:g}, {hi:g}] other than 0 and 1")
    return g, None


def drop_background(t: torch.Tensor, include_background: bool) -> torch.Tensor:
    """``t`` without channel 0 when ``include_background`` is False."""
    if include_background:
        return t
    if t.shape[1] < 2:
        raise LossValueError("include_background=False needs at least 2 channels")
    return t[:, 1:]


def propagate_nonfinite(loss: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """``loss + 0 * sum(input)`` per leading entry: a NaN or inf in ``input`` makes that loss NaN.

    ``input`` is ``(B, ...)`` for a ``(B,)`` loss. For losses whose value can stay finite for an
    infinite logit (a ReLU, a saturated sigmoid).
    """
    guard = upcast(input).flatten(1).sum(1) * 0.0
    return loss + guard.to(loss.dtype)
