"""Non-finite inputs never give a finite loss (DESIGN.md, conventions: non-finite inputs).

Every registered loss, built by name with the input factories of ``test_conformance.py``, is called
with a NaN (then a ``+inf``) planted in one element of one floating input, for every element of every
floating input in turn. The loss must be non-finite, or raise a :class:`LossValueError` /
:class:`LossTypeError` (a value check). ``-inf`` is not planted: it is a legitimate logit (a masked
class) for the classification losses.

Only elements that enter the loss are planted: a loss may ignore some positions by definition
(:func:`_counts`, e.g. the ignored anchors of the detection loss). With ``reduction='none'`` the
output element that the planted input element belongs to must be non-finite (other elements may
legitimately stay finite).

Losses of other families that still give a finite value are listed in ``KNOWN_FINITE``
(``xfail(strict=True)``: the mark goes away with the fix).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

import losskit
import test_conformance as conformance
from losskit import LossTypeError, LossValueError

BAD = {"nan": math.nan, "inf": math.inf}

KNOWN_FINITE: dict[tuple[str, int, str], str] = {}


def _floating_args(name: str) -> list[int]:
    args = conformance.CASES[name].make(torch.float32)
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


def _params() -> list[Any]:
    out = []
    for name in losskit.available():
        for i in _floating_args(name):
            for kind in BAD:
                key = (name, i, kind)
                marks = (
                    [pytest.mark.xfail(strict=True, reason=KNOWN_FINITE[key])] if key in KNOWN_FINITE else []
                )
                out.append(pytest.param(name, i, kind, marks=marks, id=f"{name}-arg{i}-{kind}"))
    return out


def _counts(name: str, args: tuple[Any, ...], i: int) -> torch.Tensor:
    """Bool mask over ``args[i]``: the elements that enter the loss (documented exclusions only)."""
    mask = torch.ones(args[i].shape, dtype=torch.bool)
    if name == "detection":  # labels (N, A): -1 ignored; boxes count for positive anchors only
        labels, num_classes = args[1], args[0].shape[-1]
        anchors = (labels >= 0) if i == 0 else (labels >= 0) & (labels < num_classes)
        mask &= anchors[..., None]
    return mask


def _call(module: torch.nn.Module, args: list[Any]) -> torch.Tensor | Exception:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kl_div 'mean' warns
            return module(*args)
    except (LossValueError, LossTypeError) as err:
        return err


def _owner(out_shape: torch.Size, in_shape: torch.Size, flat: int) -> tuple[int, ...] | None:
    """Index of the output element an input element belongs to, when the output is a leading block."""
    if tuple(in_shape[: len(out_shape)]) != tuple(out_shape):
        return None
    index = []
    for size in reversed(in_shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))[: len(out_shape)]


@pytest.mark.parametrize(("name", "i", "kind"), _params())
def test_non_finite_input_gives_non_finite_loss_or_error(name, i, kind):
    case = conformance.CASES[name]
    args = case.make(torch.float32)
    module = conformance._module(name)
    none = conformance._module(name, reduction="none") if "none" in case.reductions else None
    counts = _counts(name, args, i).reshape(-1)
    finite = []
    for k in range(args[i].numel()):
        if not counts[k]:
            continue
        call = list(args)
        call[i] = args[i].clone()
        call[i].view(-1)[k] = BAD[kind]
        out = _call(module, call)
        if isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all()):
            finite.append(f"element {k}: {out.tolist()}")
            continue
        if none is None:
            continue
        per = _call(none, call)
        if isinstance(per, Exception):
            continue
        owner = _owner(per.shape, args[i].shape, k)
        part = per[owner] if owner is not None else per
        if bool(torch.isfinite(part).all()):
            finite.append(f"element {k}, reduction='none' at {owner}: {part.tolist()}")
    assert not finite, f"{kind} in argument {i} of {name} gives a finite loss at " + "; ".join(finite[:4])


def test_every_loss_and_floating_input_is_planted():
    planted = {(p.values[0], p.values[1]) for p in _params()}
    for name in losskit.available():
        assert _floating_args(name), f"{name} has no floating input"
        for i in _floating_args(name):
            assert (name, i) in planted
    assert set(KNOWN_FINITE) <= {tuple(p.values) for p in _params()}, "stale KNOWN_FINITE entry"
