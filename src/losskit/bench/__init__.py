"""``losskit bench``: side-by-side speed and memory of losskit's losses (see :mod:`losskit.bench.cli`)."""

from __future__ import annotations

from . import cases_contrastive, cases_embedding, cases_language, cases_preference  # noqa: F401  (register their cases)
from .cases import CASES, Case, Variant, register_case
from .cli import main, run, to_markdown

__all__ = ["CASES", "Case", "Variant", "main", "register_case", "run", "to_markdown"]
