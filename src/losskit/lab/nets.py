"""Seed-batched small models: S independent models (one per seed) trained in one forward/backward.

Each seed's model has its own parameters, data and initialisation (drawn from a generator for that seed
alone, so seed ``s`` starts from the same weights for every method). Losses are computed per seed with
the public losskit functions and summed; since the models share no parameters, the sum gives every model
exactly its own gradient, and Adam (element-wise) updates each one as if it were trained alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from .core import _stable_hash

__all__ = ["SeedLinear", "SeedMLP", "seed_generators"]


def seed_generators(experiment: str, seeds: Sequence[int], stream: str = "init") -> list[torch.Generator]:
    """One torch generator per seed, independent of which other seeds run."""
    return [
        torch.Generator().manual_seed((s * 1_000_003 + _stable_hash(experiment, stream)) % (2**63 - 1))
        for s in seeds
    ]


class SeedLinear(nn.Module):
    """``S`` linear layers: input ``(S, n, in)`` -> ``(S, n, out)``; init as :class:`torch.nn.Linear`."""

    def __init__(self, in_features: int, out_features: int, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        w = [torch.empty(in_features, out_features).uniform_(-bound, bound, generator=g) for g in generators]
        b = [torch.empty(1, out_features).uniform_(-bound, bound, generator=g) for g in generators]
        self.weight = nn.Parameter(torch.stack(w))
        self.bias = nn.Parameter(torch.stack(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class SeedMLP(nn.Module):
    """``S`` MLPs ``sizes[0] -> ... -> sizes[-1]`` with ReLU; ``features(x)`` is the last hidden layer."""

    def __init__(self, sizes: Sequence[int], generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SeedLinear(a, b, generators) for a, b in itertools.pairwise(sizes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers[-1](self.features(x))
        return out
