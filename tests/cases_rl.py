"""Input factories of the RL policy losses for the registry-driven tests (see test_conformance.Case)."""

from __future__ import annotations

import torch

from test_conformance import Case, _randn


def _policy_gradient(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(B, T) = (4, 5) per-token log-probs (negative), old log-probs near them, per-sequence advantages.

    Every token counts (mask all True): the registry tests plant NaN / inf in every element.
    """
    logps = -_randn(4, 5, seed=80, dtype=torch.float64).abs()
    old = logps + 0.3 * _randn(4, 5, seed=81, dtype=torch.float64)
    adv = _randn(4, seed=82, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    return logps.to(dtype), old.to(dtype), adv.to(dtype), mask


CASES: dict[str, Case] = {
    "policy_gradient": Case(_policy_gradient, reductions=()),
}
