"""``losskit bench``: side-by-side speed and memory of losskit's losses (see :mod:`losskit.bench.cli`)."""

from __future__ import annotations

from . import (  # noqa: F401  (register their cases)
    cases_contrastive,
    cases_embedding,
    cases_image,
    cases_language,
    cases_preference,
    cases_rl,
    cases_segmentation,
)
from .cases import CASES, Case, Variant, register_case
from .cli import main, run, to_markdown

__all__ = ["CASES", "Case", "Variant", "main", "register_case", "run", "to_markdown"]
