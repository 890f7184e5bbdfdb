"""The segmentation bench cases compute the same loss as their eager baselines (values, quick shapes)."""

from __future__ import annotations

import pytest
import torch

from losskit.bench import CASES, cli

NAMES = ["lovasz_softmax", "boundary", "boundary_maps"]


@pytest.mark.parametrize("name", NAMES)
def test_losskit_rows_equal_the_eager_row(name):
    pytest.importorskip("scipy.ndimage")
    case = CASES[name]
    args, _ = case.make(case.quick_shape, torch.float32, 0)
    variants = case.variants()
    first = {role: next(v for v in variants if v.role == role) for role in ("losskit", "eager")}
    torch.testing.assert_close(first["losskit"].fn(*args), first["eager"].fn(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "peer", "ours"),
    [
        ("lovasz_softmax", "kornia lovasz_softmax_loss", "per_image=True"),
        ("ssim", "kornia ssim_loss", "losskit.ssim_loss"),
        ("ssim", "MONAI SSIMLoss", "losskit.ssim_loss"),
    ],
)
def test_peer_rows_compute_the_same_loss(name, peer, ours):
    """A peer row is timed on the same loss: its value equals the matching losskit row."""
    case = CASES[name]
    variants = case.variants()
    peers = [v for v in variants if v.role == "peer" and v.name.startswith(peer)]
    if not peers:
        pytest.skip(f"{peer} not installed")
    mine = next(v for v in variants if v.role == "losskit" and ours in v.name)
    args, _ = case.make(case.quick_shape, torch.float64, 0)
    torch.testing.assert_close(peers[0].fn(*args).double(), mine.fn(*args).double(), rtol=1e-6, atol=1e-7)


def test_segmentation_cases_run_quick():
    report = cli.run(quick=True, only=NAMES, repeat=1, peak=False)
    assert [c["case"] for c in report["cases"]] == NAMES
