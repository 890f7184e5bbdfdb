"""Package metadata: one version everywhere, the typing marker shipped, a torch lower bound that is tested."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import torch

import losskit

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_matches_pyproject_and_changelog():
    version = PYPROJECT["project"]["version"]
    assert losskit.__version__ == version
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\]", changelog, flags=re.M), "CHANGELOG has no entry for it"


def test_py_typed_marker_is_packaged():
    assert (Path(losskit.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["losskit"]


def test_torch_lower_bound_is_not_above_the_tested_torch():
    spec = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    low = tuple(int(p) for p in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))
    running = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert low[:2] <= running, f"{spec} excludes the torch the tests run on ({torch.__version__})"
