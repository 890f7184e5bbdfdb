"""Regression losses: Huber, Smooth L1, log-cosh, Charbonnier, quantile (:mod:`.basic`) and the robust
M-estimators with Barron's general robust loss (:mod:`.robust`)."""

from __future__ import annotations

from . import basic as _basic
from . import robust as _robust
from .basic import *  # noqa: F403
from .robust import *  # noqa: F403

__all__ = [*_basic.__all__, *_robust.__all__]
