"""MkDocs hooks: pages take their shared text from README.md and the registry at build time.

Markers in a page's Markdown are replaced before the page is rendered:

- ``<!-- readme: HEADING -->``: the body of README.md's section with that heading (up to the next
  heading of the same or a higher level), its sub-headings raised to the page's level-2 headings and
  its links rewritten for the page (``docs/x`` -> ``x`` relative to the page, README anchors of
  sections that have their own page -> that page).
- ``<!-- catalog -->``: the catalog table of every registered loss (``losskit catalog``);
  ``<!-- aliases -->``: the table of aliases (``losskit.aliases()``).

- ``<!-- if-page: NAME.md -->TEXT<!-- end-if -->``: TEXT only when ``docs/NAME.md`` exists; such pages
  (``OPTIONAL_PAGES``) are also added to the nav when present.

So the lab summary table is the README's own (the lab page includes it), and the catalog is always the
registry's. The usage examples, benchmark tables and DDP recipes live in their pages, whose Python blocks the
test suite runs.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# pages that other work adds to docs/: linked from the nav (under the given section) only when present
OPTIONAL_PAGES = {"distributed-lm-head.md": ("Distributed", "FSDP / ZeRO-3 LM head")}
_IF_PAGE = re.compile(r"<!-- if-page: (\S+) -->(.*?)<!-- end-if -->", re.S)
_MARKER = re.compile(r"^<!-- readme: (.+?) -->$", re.M)
_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
# README anchors of sections that are pages of the site (path relative to docs/)
_SECTION_PAGES = {
    "#distributed-training-ddp": "distributed.md",
    "#speed-and-memory": "bench.md",
    "#conventions": "conventions.md",
    "#catalog": "catalog.md",
    "#corrections-to-common-recipes": "conventions.md#corrections-to-common-recipes",
}


def readme_section(heading: str, text: str | None = None) -> str:
    """The body of README.md's section titled ``heading``, its sub-headings raised to level 2."""
    lines = (text if text is not None else (ROOT / "README.md").read_text(encoding="utf-8")).splitlines()
    start, level = None, 0
    in_fence = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if start is None:
            if match and match.group(2) == heading:
                start, level = i + 1, len(match.group(1))
        elif match and len(match.group(1)) <= level:
            return _shift("\n".join(lines[start:i]), level)
    if start is None:
        raise KeyError(f"README.md has no section titled {heading!r}")
    return _shift("\n".join(lines[start:]), level)


def _shift(body: str, level: int) -> str:
    out, in_fence = [], False
    for line in body.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            line = "#" * max(2, len(match.group(1)) - level + 1) + " " + match.group(2)
        out.append(line)
    return "\n".join(out).strip("\n")


def _relink(body: str, page_uri: str) -> str:
    """Rewrite README-relative link targets for the page at ``page_uri`` (relative to docs/)."""
    here = posixpath.dirname(page_uri)

    def target(match: re.Match[str]) -> str:
        url = match.group(2)
        if url in _SECTION_PAGES:
            url = posixpath.relpath(_SECTION_PAGES[url].split("#")[0], here or ".") + (
                "#" + _SECTION_PAGES[url].split("#")[1] if "#" in _SECTION_PAGES[url] else ""
            )
        elif url.startswith("docs/"):
            url = posixpath.relpath(url[len("docs/") :], here or ".")
        return f"{match.group(1)}({url})"

    return re.sub(r"(\]|\]\s?)\(([^)\s]+)\)", target, body)


def on_config(config: Any, **kwargs: Any) -> Any:
    """Add each optional page that exists to its nav section."""
    docs = Path(config["docs_dir"])
    for page, (section, title) in OPTIONAL_PAGES.items():
        if not (docs / page).is_file():
            continue
        for entry in config["nav"] or []:
            if isinstance(entry, dict) and section in entry:
                entry[section].append({title: page})
                break
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    uri = page.file.src_uri
    docs = Path(config["docs_dir"])
    markdown = _IF_PAGE.sub(lambda m: m.group(2) if (docs / m.group(1)).is_file() else "", markdown)
    markdown = _MARKER.sub(lambda m: _relink(readme_section(m.group(1)), uri), markdown)
    if "<!-- catalog -->" in markdown:
        from losskit.registry import catalog_markdown

        markdown = markdown.replace("<!-- catalog -->", catalog_markdown())
    if "<!-- aliases -->" in markdown:
        from losskit.registry import aliases

        rows = "".join(f"| `{alias}` | `{name}` |\n" for alias, name in sorted(aliases().items()))
        markdown = markdown.replace("<!-- aliases -->", "| alias | registered name |\n|---|---|\n" + rows)
    return markdown
