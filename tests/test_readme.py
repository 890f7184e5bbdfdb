"""The README's Python examples run as written, its commands name files that exist, its headline speed
and memory figures are those of the benchmark pages, and it stays short (the details live in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
# the README is an overview: usage, benchmarks, conventions and recipes belong to the documentation pages
LINE_BUDGET = 300
# pages whose measurements the README's speed and memory table summarises
BENCH_PAGES = ("bench.md", "families/language.md", "families/rl.md")


def _section(heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", TEXT, flags=re.S | re.M)
    assert match, f"README has no section {heading!r}"
    return match.group(1)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)


def test_readme_commands_point_at_existing_files():
    for script in set(re.findall(r"\b((?:scripts|examples|benchmarks)/[\w./-]+\.(?:sh|py))", TEXT)):
        assert (ROOT / script).is_file(), f"README names {script}, which does not exist"


def test_readme_stays_within_its_line_budget():
    n = len(TEXT.splitlines())
    assert n <= LINE_BUDGET, f"README.md has {n} lines (budget {LINE_BUDGET}): move details into docs/"


def test_readme_keeps_its_overview_sections():
    headings = re.findall(r"^## (.+)$", TEXT, flags=re.M)
    for heading in ("Quick start", "The lab: what each loss does, on real data", "Speed and memory", "Catalog"):
        assert heading in headings
    quick = _section("Quick start")
    assert "bash scripts/lab.sh" in quick and "bash scripts/test.sh" in quick


def _figures(text: str) -> set[str]:
    """Ratios and sizes (``0.22×``, ``0.14x``, ``187.5 MiB``, ``768 B``, ``22.8 ms``), ``x`` read as ``×``."""
    found = re.findall(r"(?<![\w.])(\d+(?:\.\d+)?(?:×|x(?![\w])| ms| s| [KMG]iB| B))(?![\w])", text)
    # "1537.2 vs 94.5 MiB": the unit of the second figure is the first one's too
    pairs = re.findall(r"(?<![\w.])(\d+(?:\.\d+)?) vs \d+(?:\.\d+)?( ms| s| [KMG]iB)(?![\w])", text)
    return {f.replace("x", "×") for f in found} | {a + unit for a, unit in pairs}


def test_readme_speed_figures_are_the_benchmark_pages_figures():
    table = [line for line in _section("Speed and memory").splitlines() if line.startswith("| ")][2:]
    assert len(table) >= 5, "the README's speed and memory table has too few rows"
    pages = "\n".join((ROOT / "docs" / page).read_text(encoding="utf-8") for page in BENCH_PAGES)
    measured = _figures(pages)
    for row in table:
        figures = _figures(row)
        assert figures, f"README speed row without a figure: {row}"
        missing = figures - measured
        assert not missing, f"README speed row quotes {sorted(missing)}, not on {BENCH_PAGES}: {row}"


def test_figure_parser():
    assert _figures("0.22× eager, 0.14x; 187.5 MiB or 768 B, 22.8 ms; 8192×1000 and (B=512); 7 vs 2.5 s") == {
        "0.22×", "0.14×", "187.5 MiB", "768 B", "22.8 ms", "7 s", "2.5 s"
    }
