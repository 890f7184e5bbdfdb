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
    rows = {v.role: v for v in case.variants() if v.role in ("losskit", "eager")}
    torch.testing.assert_close(rows["losskit"].fn(*args), rows["eager"].fn(*args), rtol=1e-5, atol=1e-6)


def test_segmentation_cases_run_quick():
    report = cli.run(quick=True, only=NAMES, repeat=1, peak=False)
    assert [c["case"] for c in report["cases"]] == NAMES
