"""Preference losses on sequence log-probs: DPO family, SimPO, CPO, ORPO, KTO, reward models."""

from __future__ import annotations

__all__: list[str] = []
