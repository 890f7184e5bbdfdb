"""The documentation site's own pieces: its Python examples run, the files its commands name exist, its
README markers resolve, and the docstring rewriting (reST math, roles, tables, ``Example:``) gives the
Markdown the site renders."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# pages written for the site (the other pages in docs/ have their own owners and checks)
_SITE_PAGES = ("index", "getting-started", "conventions", "catalog", "lab", "bench", "distributed")
PAGES = sorted([*(DOCS / f"{name}.md" for name in _SITE_PAGES), *(DOCS / "families").glob("*.md")])
BLOCKS = [
    (page, i, block)
    for page in PAGES
    for i, block in enumerate(
        re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    )
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", DOCS / "_ext" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pages_have_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{p.stem}-{i}" for p, i, _ in BLOCKS])
def test_page_example_runs(page, index, block):
    torch.manual_seed(0)
    exec(compile(block, f"{page.name}[python block {index}]", "exec"), {"__name__": f"docs_{page.stem}"})


def test_page_examples_cover_every_family():
    pages = {page.stem for page, _, _ in BLOCKS}
    families = {page.stem for page in (DOCS / "families").glob("*.md")} - {"index"}
    assert families <= pages, f"family pages without a runnable example: {sorted(families - pages)}"
    assert {"distributed", "getting-started"} <= pages


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_commands_point_at_existing_files(page):
    text = page.read_text(encoding="utf-8")
    for path in set(re.findall(r"\b((?:scripts|examples|benchmarks|tests)/[\w./-]+\.(?:sh|py))", text)):
        assert (ROOT / path).is_file(), f"{page.name} names {path}, which does not exist"


def test_readme_markers_resolve():
    hooks = _load("hooks")
    markers = [
        (page, heading)
        for page in PAGES
        for heading in re.findall(r"^<!-- readme: (.+?) -->$", page.read_text(encoding="utf-8"), flags=re.M)
    ]
    assert markers, "no page includes a README section"
    for page, heading in markers:
        body = hooks.readme_section(heading)
        assert body.strip(), f"{page.name}: README section {heading!r} is empty"
        prose = re.sub(r"```.*?```", "", body, flags=re.S)
        assert not re.search(r"^# ", prose, flags=re.M), f"{page.name}: {heading!r} keeps a level-1 heading"


def test_readme_section_bounds_and_levels():
    hooks = _load("hooks")
    text = "# T\n\n## A\n\na\n\n### B\n\n```python\n# not a heading\n```\n\n## C\n\nc\n"
    assert hooks.readme_section("A", text) == "a\n\n## B\n\n```python\n# not a heading\n```"
    assert hooks.readme_section("C", text) == "c"
    with pytest.raises(KeyError, match="no section titled 'D'"):
        hooks.readme_section("D", text)


def test_relink_for_a_page_in_a_subfolder():
    hooks = _load("hooks")
    body = "see [r](docs/lab/report.md), [d](#distributed-training-ddp) and [x](https://example.org)"
    out = hooks._relink(body, "families/classification.md")
    assert out == "see [r](../lab/report.md), [d](../distributed.md) and [x](https://example.org)"


def test_rst_math_roles_and_examples():
    convert = _load("rst_markup").convert
    text = (
        "Loss.\n\n.. math::\n    a = b,\n    \\quad c\n\n    d = e\nwith :math:`x^2` and :func:`~losskit.f`,"
        " :class:`.G`.\n\nExample:\n    >>> 1 + 1\n    2\n"
    )
    assert convert(text) == (
        "Loss.\n\n$$\na = b,\n\\quad c\n$$\n\n$$\nd = e\n$$\n\nwith $x^2$ and `losskit.f`, `G`.\n\n"
        "Examples:\n    >>> 1 + 1\n    2"
    )


def test_rst_math_inside_a_section_keeps_its_indent():
    convert = _load("rst_markup").convert
    text = "Args:\n    x: the input\n\n        .. math::\n            y = x\n"
    assert convert(text) == "Args:\n    x: the input\n\n        $$\n        y = x\n        $$"


def test_rst_simple_table():
    convert = _load("rst_markup").convert
    text = "Types:\n\n=====  =======\nname   weight\n=====  =======\ngrpo   1 / B\ndapo   1 / N\n=====  =======\nend"
    assert convert(text) == (
        "Types:\n\n| name | weight |\n|---|---|\n| grpo | 1 / B |\n| dapo | 1 / N |\n\nend"
    )


def test_rst_literal_block():
    convert = _load("rst_markup").convert
    text = "Usage (needs ``x``)::\n\n    from a import b\n\n    b()\nAfter."
    assert convert(text) == "Usage (needs ``x``):\n\n```python\nfrom a import b\n\nb()\n```\n\nAfter."


def test_grouped_arguments_get_one_entry_each():
    convert = _load("rst_markup").convert
    text = "Args:\n    pred, target: boxes ``(..., 4)``\n        in ``box_format``.\n    eps: small.\n\nReturns:\n    x, y: z"
    assert convert(text) == (
        "Args:\n    pred: boxes ``(..., 4)``\n        in ``box_format``.\n"
        "    target: boxes ``(..., 4)``\n        in ``box_format``.\n    eps: small.\n\nReturns:\n    x, y: z"
    )
