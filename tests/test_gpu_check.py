"""Smoke test of ``benchmarks/gpu_check.py``: its whole case list on the CPU at tiny shapes."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    bench_dir = str(ROOT / "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gpu_check():
    return _load("gpu_check")


@pytest.fixture(scope="module")
def record(gpu_check, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu") / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--no-compile", "--repeat", "1", "--json", str(path)])
    data = json.loads(path.read_text())
    data["rc"] = rc
    return data


def test_every_case_runs_on_cpu(gpu_check, record):
    assert record["rc"] == 0
    assert record["failures"] == 0
    names = {c.name for c in gpu_check.GPU_CASES}
    assert {r["case"] for r in record["rows"]} == names
    for name in names:
        rows = [r for r in record["rows"] if r["case"] == name]
        assert any(r["phase"] == "time" and r["role"] == "losskit" for r in rows), name
    assert record["meta"]["device"] == "cpu" and record["meta"]["torch"] == torch.__version__


def test_checks_pass_with_finite_errors(record):
    checks = [r for r in record["rows"] if r["phase"] == "check" and r["role"] in ("losskit", "kernel")]
    assert checks
    for r in checks:
        assert r["status"] == "PASS", r
        assert math.isfinite(r["loss_rel"]) and math.isfinite(r["grad_rel"])
    dtypes = {r["dtype"] for r in checks}
    assert dtypes == {"float32", "bfloat16"}


def test_timings_and_ratios(record):
    timed = [r for r in record["rows"] if r["phase"] == "time" and r["status"] == "ok"]
    assert timed
    assert all(r["ms"] > 0 for r in timed)
    groups = {(r["case"], r["dtype"]) for r in timed}
    for case, dtype in groups:
        eager = [r for r in timed if (r["case"], r["dtype"]) == (case, dtype) and r["role"] == "eager"]
        # ratios are to the first eager composition of the case
        assert any(abs(r["vs_eager"] - 1.0) < 1e-12 for r in eager), (case, dtype)


def test_nan_never_passes(gpu_check):
    ref = torch.tensor([1.0, 2.0])
    assert gpu_check.rel_err(torch.tensor([1.0, float("nan")]), ref) == math.inf
    assert gpu_check.rel_err(torch.tensor([1.0, float("inf")]), ref) == math.inf
    assert gpu_check.rel_err(None, ref) == math.inf
    assert gpu_check.rel_err(torch.tensor([1.0, 2.0 + 2e-3]), ref) == pytest.approx(2e-3 / math.sqrt(5), rel=1e-3)


def test_no_cuda_exits_cleanly(gpu_check, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--device", "cuda"]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_unknown_case_is_named(gpu_check):
    with pytest.raises(SystemExit, match="unknown case"):
        gpu_check.select(["not_a_case"])
