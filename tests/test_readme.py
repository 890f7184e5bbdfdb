"""The README's Python examples run as written, and its commands name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)


def test_readme_commands_point_at_existing_files():
    text = README.read_text(encoding="utf-8")
    root = README.parent
    for script in set(re.findall(r"\b((?:scripts|examples|benchmarks)/[\w./-]+\.(?:sh|py))", text)):
        assert (root / script).is_file(), f"README names {script}, which does not exist"
