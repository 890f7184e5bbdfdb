"""The segmentation experiment trains the Lovász, boundary and clDice variants and compares them with Dice."""

from __future__ import annotations

from pathlib import Path

import torch

from losskit.lab import runner
from losskit.lab.core import LabContext
from losskit.lab.experiments import segmentation as S


def test_tiny_run_measures_the_new_losses_against_dice(tmp_path: Path) -> None:
    ctx = LabContext(mode="tiny", seeds=[0, 1], out_dir=tmp_path, threads=1, progress=False)
    (res,) = runner.run_lab(["segmentation"], ctx)
    assert res.error is None, res.error
    for m in ("lovasz", "dice+boundary", "dice+cldice"):
        assert len(res.methods[m]) == 2
        assert all(0.0 <= v <= 100.0 for v in res.methods[m])
    assert any(n.startswith("Test Dice % against Dice") and "dice+cldice" in n for n in res.notes)


def test_new_losses_give_finite_gradients_on_the_experiment_data() -> None:
    g = torch.Generator().manual_seed(0)
    x, m = S.data.segmentation_images(4, S.SIZE, g)
    net = S.make_net()
    for name, fn in S._losses().items():
        if name not in S.UNTUNED:
            continue
        net.zero_grad()
        loss = fn(net(x), m)
        loss.backward()
        assert torch.isfinite(loss), name
        assert all(torch.isfinite(p.grad).all() for p in net.parameters()), name
