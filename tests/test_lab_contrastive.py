"""The ``contrastive`` lab experiment: data halves, recall@1, a tiny run's results and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from losskit.lab import data, runner
from losskit.lab.core import LabContext
from losskit.lab.experiments import contrastive as C


@pytest.fixture(autouse=True)
def _restore_torch_settings():
    """The lab switches torch to 1 thread and deterministic kernels; give the other test files theirs back."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _ctx(out: Path, seeds: tuple[int, ...] = (0, 1)) -> LabContext:
    return LabContext(mode="tiny", seeds=list(seeds), out_dir=out, threads=1, progress=False)


def test_halves_are_the_top_and_bottom_of_each_digit() -> None:
    d = C._make_data(0)
    X, _ = data.digits()
    assert d["itr"].shape[1] == d["ttr"].shape[1] == 32
    assert len(d["itr"]) + len(d["ite"]) == len(X)
    whole = torch.cat([d["ite"], d["tte"]], dim=1) * 16.0  # rows 0-3 then rows 4-7: the flat 8x8 image
    pixels = {tuple(row) for row in X.astype(np.float32).tolist()}
    assert all(tuple(row) in pixels for row in whole.tolist())


def test_recall_at_1() -> None:
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert C.recall_at_1(x, x) == 100.0
    assert C.recall_at_1(x, -x) == 0.0
    assert C.recall_at_1(x, x.roll(1, dims=0)) == 0.0


def test_tiny_run_results_and_determinism(tmp_path: Path) -> None:
    (res,) = runner.run_lab(["contrastive"], _ctx(tmp_path))
    assert res.error is None and res.skipped is None, res.error or res.skipped
    assert set(res.methods) == {"clip", "siglip", "untrained"}
    for values in res.methods.values():
        assert len(values) == 2 and all(0.0 <= v <= 100.0 for v in values)
    (_, t2i) = res.secondary["text->image recall@1 % on held-out pairs"]
    assert set(t2i) == set(res.methods)
    assert "siglip" in res.conclusion and "untrained" in res.conclusion
    assert len(res.extra["siglip_learned_bias"]) == 2
    assert (tmp_path / "report.md").exists()
    (again,) = runner.run_lab(["contrastive"], _ctx(tmp_path / "again"))
    assert again.methods == res.methods


def test_listed_after_metric_learning() -> None:
    names = list(runner.EXPERIMENTS)
    assert names.index("contrastive") == names.index("metric_learning") + 1
