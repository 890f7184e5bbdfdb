"""CLIP, SigLIP (plain and chunked), VICReg and Barlow Twins under real DDP (2 gloo processes, different data, SGD).

Two small float64 encoders (an "image" and a "text" tower) and the loss module (which owns CLIP's and
SigLIP's logit scale and bias) form one model wrapped in DistributedDataParallel. Each rank holds
different rows of the global batch, unevenly split (5 + 3). With ``gather_distributed=True`` the
gradients at every step and the parameters after the last one (scale and bias included) must equal
those of one process training on the concatenated batch; without the flag each rank's loss only sees
its own rows and the run differs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import losskit
from ddp_utils import run_distributed
from test_distributed import (
    DT,
    _assert_ranks_agree,
    _assert_same_run,
    _grad_gap,
    _rank_or_none,
    _rows,
    _train,
)

N_ROWS = 8
SIZES = [5, 3]


def _loss_module(kind: str, gather: bool) -> nn.Module:
    kw = {"gather_distributed": gather}
    if kind == "clip":
        return losskit.CLIPLoss(init_logit_scale=1.0, **kw)
    if kind == "clip_bias":
        return losskit.CLIPLoss(init_logit_scale=1.0, init_logit_bias=-1.0, **kw)
    if kind == "clip_chunked":
        return losskit.CLIPLoss(init_logit_scale=1.0, init_logit_bias=-1.0, chunk_size=2, **kw)
    if kind == "clip_sum":
        return losskit.CLIPLoss(init_logit_scale=1.0, reduction="sum", **kw)
    if kind == "siglip":
        return losskit.SigLIPLoss(init_logit_scale=1.0, init_logit_bias=-2.0, **kw)
    if kind == "siglip_chunked":
        return losskit.SigLIPLoss(init_logit_scale=1.0, init_logit_bias=-2.0, chunk_size=2, **kw)
    if kind == "vicreg":
        return losskit.VICRegLoss(**kw)
    if kind == "barlow_twins":
        return losskit.BarlowTwinsLoss(lambd=0.05, **kw)
    raise ValueError(kind)


class TwoTowers(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
        self.text = nn.Linear(3, 4)
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.image(x), self.text(y))


def pair_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired "images" (8, 5) and "texts" (8, 3): the text is a noisy linear view of the image."""
    g = torch.Generator().manual_seed(300 + step)
    x = torch.randn(N_ROWS, 5, generator=g, dtype=DT)
    y = x[:, :3] + 0.5 * torch.randn(N_ROWS, 3, generator=g, dtype=DT)
    return x, y


def _run(kind: str, gather: bool, sizes: list[int] | None = SIZES) -> dict[str, Any]:
    rows = _rows(N_ROWS, sizes, _rank_or_none())

    def step_loss(model: nn.Module, step: int) -> None:
        x, y = pair_batch(step)
        model(x[rows], y[rows]).backward()

    return _train(lambda: TwoTowers(_loss_module(kind, gather)).to(DT), step_loss)


def _worker(rank: int, world: int, runs: list[tuple[str, bool, list[int] | None]]) -> list[dict[str, Any]]:
    return [_run(kind, gather, sizes) for kind, gather, sizes in runs]


KINDS = [
    "clip",
    "clip_bias",
    "clip_chunked",
    "clip_sum",
    "siglip",
    "siglip_chunked",
    "vicreg",
    "barlow_twins",
]


@pytest.fixture(scope="module")
def ddp_results() -> dict[tuple[str, bool, Any], dict[str, Any]]:
    """One group of 2 processes runs every case (forking is the slow part)."""
    runs = [(k, g, SIZES) for k in KINDS for g in (True, False)]
    runs += [(k, True, None) for k in ("clip", "siglip_chunked", "vicreg")]  # equal halves 4 + 4
    results = run_distributed(_worker, runs)
    out = {}
    for i, (kind, gather, sizes) in enumerate(runs):
        _assert_ranks_agree([r[i] for r in results])
        out[(kind, gather, None if sizes is None else tuple(sizes))] = results[0][i]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_ddp_gather_matches_single_process_uneven(ddp_results, kind):
    ref = _run(kind, True, None)  # one process on the concatenated batch (the flag is a no-op there)
    _assert_same_run(ddp_results[(kind, True, tuple(SIZES))], ref)


@pytest.mark.parametrize("kind", ["clip", "siglip_chunked", "vicreg"])
def test_ddp_gather_matches_single_process_equal_halves(ddp_results, kind):
    _assert_same_run(ddp_results[(kind, True, None)], _run(kind, True, None))


@pytest.mark.parametrize("kind", KINDS)
def test_ddp_without_the_flag_differs(ddp_results, kind):
    """Each rank on its own rows only: a different objective, visibly different gradients."""
    assert _grad_gap(ddp_results[(kind, False, tuple(SIZES))], _run(kind, True, None)) > 0.05


def test_scale_and_bias_are_trained_under_ddp(ddp_results):
    run = ddp_results[("clip_bias", True, tuple(SIZES))]
    ref = _run("clip_bias", True, None)
    # parameters: image tower (4), text tower (2), then logit_scale and logit_bias
    scale, bias = run["params"][-2], run["params"][-1]
    assert float(scale) != 1.0
    torch.testing.assert_close(scale, ref["params"][-2], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bias, ref["params"][-1], rtol=1e-9, atol=1e-12)
    sig = ddp_results[("siglip_chunked", True, tuple(SIZES))]
    assert float(sig["params"][-1]) != -2.0  # SigLIP's bias gets a gradient


def test_flag_without_process_group_changes_nothing():
    for kind in ("clip", "clip_chunked", "siglip_chunked", "vicreg", "barlow_twins"):
        _assert_same_run(_run(kind, True, None), _run(kind, False, None))
