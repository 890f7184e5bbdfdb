"""Per-token and per-sequence log-probabilities, from logits or fused from hidden states."""

from __future__ import annotations

__all__: list[str] = []
