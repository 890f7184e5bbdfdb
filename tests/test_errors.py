"""Bad input of each class, for every registered loss: clear losskit errors, never a raw torch one.

For each name of ``losskit.available()`` (inputs from the conformance factories):

- one tensor argument on another device (``'meta'``: the only second device on a CPU machine) gives a
  :class:`LossValueError` that names the argument and both devices;
- every tensor on ``'meta'`` runs: shape and dtype checks still apply, value checks skip (there are
  no values to read), and the result is a ``'meta'`` tensor;
- a complex floating argument gives a :class:`LossTypeError` naming the argument;
- a Python list where a tensor is expected gives a :class:`LossTypeError`.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import torch

import losskit
from losskit import LossTypeError, LossValueError
from test_conformance import CASES, _module

NAMES = [n for n in losskit.available() if n in CASES]


def _args(name: str) -> list[Any]:
    return list(CASES[name].make(torch.float32))


def _tensor_positions(name: str) -> list[int]:
    return [i for i, a in enumerate(_args(name)) if isinstance(a, torch.Tensor)]


def _arg_names(name: str) -> list[str]:
    """Names an error may use for the arguments: the module's forward and the functional's parameters."""
    names = list(CASES[name].arg_names)
    module = _module(name)
    names += list(inspect.signature(module.forward).parameters)
    fn = losskit.registry.get_spec(name).functional
    if fn is not None:
        names += list(inspect.signature(fn).parameters)
    return names


def _names_an_argument(message: str, name: str) -> bool:
    return any(re.search(rf"\b{re.escape(a)}\b", message) for a in _arg_names(name))


CROSS_DEVICE = [(n, i) for n in NAMES for i in _tensor_positions(n) if len(_tensor_positions(n)) > 1]


@pytest.mark.parametrize(("name", "pos"), CROSS_DEVICE)
def test_an_argument_on_another_device_is_named(name, pos):
    args = _args(name)
    args[pos] = args[pos].to("meta")
    with pytest.raises(LossValueError, match=r"meta") as info:
        _module(name)(*args)
    assert _names_an_argument(str(info.value), name), str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_every_input_on_meta_skips_value_checks(name):
    module = _module(name).to("meta")
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in _args(name)]
    out = module(*args)
    assert out.is_meta
    assert out.dim() == 0


FLOAT_ARGS = [
    (n, i)
    for n in NAMES
    for i, a in enumerate(_args(n))
    if isinstance(a, torch.Tensor) and a.is_floating_point()
]


@pytest.mark.parametrize(("name", "pos"), FLOAT_ARGS)
def test_a_complex_argument_is_a_type_error(name, pos):
    args = _args(name)
    args[pos] = args[pos].to(torch.complex64)
    with pytest.raises(LossTypeError, match=r"complex") as info:
        _module(name)(*args)
    assert _names_an_argument(str(info.value), name), str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_a_list_instead_of_a_tensor_is_a_type_error(name):
    args = _args(name)
    args[0] = args[0].tolist()
    with pytest.raises(LossTypeError, match=r"torch\.Tensor|tensor") as info:
        _module(name)(*args)
    assert _names_an_argument(str(info.value), name), str(info.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"from_logits": False},  # value check on the probabilities
        {"weight": torch.ones(3)},  # value check on the class weight
        {"dense": True},  # value check on a dense target
        {"ignore_index": 1},
    ],
)
def test_dice_options_skip_value_checks_on_meta(kw):
    kw = dict(kw)
    x = torch.rand(2, 3, 4, 4, device="meta")
    t = torch.randint(0, 3, (2, 4, 4)).to("meta")
    if kw.pop("dense", False):
        t = torch.rand(2, 3, 4, 4, device="meta")
    if "weight" in kw:
        kw["weight"] = kw["weight"].to("meta")
    assert losskit.functional.dice_loss(x, t, **kw).is_meta


@pytest.mark.parametrize("fn", ["focal_loss", "sigmoid_focal_loss"])
def test_focal_per_class_alpha_skips_value_checks_on_meta(fn):
    if fn == "focal_loss":
        x, t = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
        out = losskit.functional.focal_loss(x, t, alpha=torch.ones(3, device="meta"))
    else:
        x = torch.randn(4, 3, device="meta")
        out = losskit.functional.sigmoid_focal_loss(x, torch.ones(4, 3, device="meta"), reduction="mean")
    assert out.is_meta
