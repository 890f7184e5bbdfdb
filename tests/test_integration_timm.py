"""The timm example: class-balanced focal loss on an imbalanced digits set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "timm_digits.py"


def _example():
    spec = importlib.util.spec_from_file_location("timm_digits", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_data_is_imbalanced():
    x, y = _example().imbalanced_digits()
    assert x.shape[1:] == (1, 32, 32) and x.shape[0] == y.shape[0]
    counts = torch.bincount(y, minlength=10)
    assert counts[:5].min() > 3 * counts[5:].max()


def test_training_loop_with_any_classifier():
    """The losskit side of the example (data, class weights, focal loss, loop) with a plain CNN."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    losses = _example().train(net, steps=30)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])


def test_timm_model_trains():
    pytest.importorskip("timm")
    ex = _example()
    torch.manual_seed(0)
    losses = ex.train(ex.timm_model("resnet10t"), steps=10)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
