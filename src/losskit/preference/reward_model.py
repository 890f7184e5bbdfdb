"""Reward-model training: the Bradley-Terry pairwise loss."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import (
    check_number,
)
from .._reduction import Normalizer, check_normalizer, reduce_loss
from ._common import (
    _check_optional_sequence,
    _check_reduction_args,
    _check_sequences,
    _non_finite_guard,
    _pair_metrics,
    _PreferenceLoss,
    _Terms,
)


def _reward_terms(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None,
    center_rewards_coefficient: float | None,
) -> _Terms:
    c, r = _check_sequences(("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards))
    diff = c - r
    if isinstance(margin, torch.Tensor):
        m = _check_optional_sequence("margin", margin, "chosen_rewards", c)
        diff = diff - m
    else:
        m = c.new_zeros(())
        if margin is not None:
            diff = diff - float(check_number("margin", margin))
    loss = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (c + r) ** 2
    loss = _non_finite_guard(loss, c, r, m)
    return _Terms(loss, lambda: _pair_metrics(c, r))


def _check_center(coefficient: Any) -> float | None:
    check_number(
        "center_rewards_coefficient", coefficient, low=0.0, high=math.inf, high_open=True, allow_none=True
    )
    return None if coefficient is None else float(coefficient)


def reward_model_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    reduction: str = "mean",
    *,
    center_rewards_coefficient: float | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Bradley-Terry reward-model loss (Ouyang et al. 2022, InstructGPT; Bradley & Terry 1952).

    .. math::
        \ell = -\log\sigma(r_w - r_l - m) + c\,(r_w + r_l)^2

    ``margin`` :math:`m` is an optional per-pair margin (Llama 2's graded preferences: larger for
    clearly better answers), a ``(B,)`` tensor or a number. ``center_rewards_coefficient`` :math:`c`
    pulls the rewards towards zero mean (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``,
    e.g. ``0.01``); ``None`` or 0 leaves it out. ``'mean'`` of the per-pair sum equals TRL's
    ``mean(-logsigmoid) + c * mean((r_w + r_l)^2)``.

    Args:
        chosen_rewards, rejected_rewards: ``(B,)`` scalar rewards of the chosen / rejected answers
            (squeeze a reward head's ``(B, 1)`` output).
        margin: optional ``(B,)`` tensor or number. center_rewards_coefficient: ``>= 0`` or ``None``.
        reduction: ``'none' | 'mean' | 'sum'``. normalizer: see :mod:`losskit._reduction`.

    Example:
        >>> reward_model_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))  # log 2
        tensor(0.6931)
        >>> reward_model_loss(torch.tensor([1.0]), torch.tensor([-1.0]), margin=2.0)  # log 2
        tensor(0.6931)
    """
    coef = _check_center(center_rewards_coefficient)
    _check_reduction_args(reduction, normalizer)
    terms = _reward_terms(chosen_rewards, rejected_rewards, margin, coef)
    return reduce_loss(terms.loss, reduction, normalizer=normalizer)


class RewardModelLoss(_PreferenceLoss):
    """Module form of :func:`reward_model_loss`; :attr:`last_metrics` holds ``chosen_rewards`` /
    ``rejected_rewards`` (batch means), ``reward_accuracy`` (fraction with ``r_w > r_l``) and
    ``reward_margin`` (mean ``r_w - r_l``).

    Example:
        >>> loss_fn = RewardModelLoss()
        >>> loss_fn(torch.tensor([1.0]), torch.tensor([1.0]))
        tensor(0.6931)
        >>> loss_fn.last_metrics["reward_accuracy"]
        tensor(0.)
    """

    def __init__(self, *, center_rewards_coefficient: float | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.center_rewards_coefficient = _check_center(center_rewards_coefficient)

    def forward(
        self,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        margin: torch.Tensor | float | None = None,
        *,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        check_normalizer(normalizer, self.reduction)
        terms = _reward_terms(chosen_rewards, rejected_rewards, margin, self.center_rewards_coefficient)
        return self._finish(terms, normalizer)

    def extra_repr(self) -> str:
        return f"center_rewards_coefficient={self.center_rewards_coefficient}, reduction={self.reduction!r}"
