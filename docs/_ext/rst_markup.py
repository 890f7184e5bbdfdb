"""Griffe extension for the documentation site: turns the reST markup of losskit's docstrings into Markdown.

The docstrings are Google style (``Args:`` / ``Returns:`` / ``Example:``) with a few reST constructs
that Markdown does not know. Before mkdocstrings parses a docstring this extension rewrites:

- ``.. math::`` blocks into ``$$ ... $$`` blocks (rendered by ``pymdownx.arithmatex``),
- ``:math:`x``` into ``$x$``,
- ``:func:`` / ``:class:`` / ``:mod:`` / ``:meth:`` / ``:attr:`` / ``:data:`` roles into inline code,
- ``.. code-block:: lang`` into a fenced code block,
- a paragraph ending in ``::`` and its indented literal block into ``:`` and a fenced block,
- ``a, b: text`` entries of ``Args:`` sections into one entry per name,
- reST simple tables (``===  ===`` borders) into Markdown tables,
- an ``Example:`` section header into ``Examples:``, so that doctest lines become code.

The source files are not touched; only the text mkdocstrings renders changes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?\.?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_DIRECTIVE = re.compile(r"^(\s*)\.\. (math|code-block)::\s*(\S*)\s*$")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_LITERAL = re.compile(r"^(\s*)(\S.*?[^:\s]):: *$")
_ARGS = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
_GROUPED = re.compile(r"^(\s+)(\**\w+(?:, \**\w+)+)(\s*\([^)]*\))?: ?(.*)$")
_BORDER = re.compile(r"^(\s*)=+( +=+)+\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    bounds = [start for start, _ in spans[1:]] + [len(line) + 1]
    return [line[start:stop].strip() for (start, _), stop in zip(spans, bounds)]


def _tables(lines: list[str]) -> list[str]:
    """Rewrite reST simple tables (``===  ===`` borders, one header row) as Markdown tables."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = _BORDER.match(lines[i])
        if border is None or i + 2 >= len(lines) or lines[i + 2].strip() != lines[i].strip():
            out.append(lines[i])
            i += 1
            continue
        spans = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[i])]
        pad = border.group(1)
        rows = [_cells(lines[i + 1], spans)]
        j = i + 3
        while j < len(lines) and not _BORDER.match(lines[j]):
            if lines[j].strip():
                rows.append(_cells(lines[j], spans))
            j += 1
        if out and out[-1].strip():
            out.append("")
        out.append(pad + "| " + " | ".join(rows[0]) + " |")
        out.append(pad + "|" + "---|" * len(spans))
        out.extend(pad + "| " + " | ".join(row) + " |" for row in rows[1:])
        out.append("")
        i = j + 1
    return out


def _split_grouped_args(lines: list[str]) -> list[str]:
    """In ``Args:`` sections, give ``a, b: text`` one entry per name (griffe takes one name per entry)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = _ARGS.match(lines[i])
        out.append(lines[i])
        i += 1
        if header is None:
            continue
        base = len(header.group(1))
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            item = _GROUPED.match(lines[i])
            if item is None:
                out.append(lines[i])
                i += 1
                continue
            pad, names, annotation, text = item.group(1), item.group(2), item.group(3) or "", item.group(4)
            i += 1
            more: list[str] = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(pad):
                more.append(lines[i])
                i += 1
            for name in names.split(", "):
                out.append(f"{pad}{name}{annotation}: {text}".rstrip())
                out.extend(more)
    return out


def convert(text: str) -> str:
    """Return ``text`` (a docstring) with its reST markup rewritten as Markdown."""
    lines = _split_grouped_args(_tables(text.splitlines()))
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _DIRECTIVE.match(line)
        literal = _LITERAL.match(line) if match is None and not line.lstrip().startswith("..") else None
        if match is None and literal is None:
            example = _EXAMPLE.match(line)
            out.append(f"{example.group(1)}Examples:" if example else line)
            i += 1
            continue
        if literal is not None:  # "text::" + indented block: "text:" + a fenced block
            out.append(f"{literal.group(1)}{literal.group(2)}:")
            pad, kind, arg = literal.group(1), "code-block", "python"
        else:
            pad, kind, arg = match.group(1), match.group(2), match.group(3)
        base = len(pad)
        body: list[str] = []
        if kind == "math" and arg:  # ".. math:: x = y" on one line
            body.append(arg)
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        inner = min((_indent(b) for b in body if b.strip()), default=0)
        body = [b[inner:] if b.strip() else "" for b in body]
        if out and out[-1].strip():
            out.append("")
        if kind == "math":  # one $$ block per paragraph of the directive (blank lines end a block)
            for n, paragraph in enumerate("\n".join(body).split("\n\n")):
                if n:
                    out.append("")
                out.append(f"{pad}$$")
                out.extend(f"{pad}{b}" for b in paragraph.splitlines() if b.strip())
                out.append(f"{pad}$$")
        else:
            out.append(f"{pad}```{arg or 'text'}")
            out.extend(f"{pad}{b}" if b else "" for b in body)
            out.append(f"{pad}```")
        if i < len(lines) and lines[i].strip():
            out.append("")
    text = "\n".join(out)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(lambda m: f"`{m.group(1)}`", text)


class RstMarkup(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`convert`."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
