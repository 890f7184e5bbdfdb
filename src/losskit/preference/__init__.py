"""Preference optimisation: DPO family, SimPO / CPO / ORPO, KTO, reward models, per-token log-probs.

- :mod:`losskit.preference.log_probs`: per-token and per-sequence log-probabilities, from logits or
  from hidden states and the LM-head weight (no ``(tokens, vocab)`` logits).
- :mod:`losskit.preference.losses`: the preference losses on sequence log-probs (DPO family in
  ``dpo``, SimPO / CPO / ORPO in ``reference_free``, ``kto``, ``reward_model``; shared pieces in
  ``_common``).
- :mod:`losskit.preference.fused`: the same losses from hidden states and the LM head.
"""

from __future__ import annotations

from . import fused as _fused
from . import log_probs as _log_probs
from . import losses as _losses
from .fused import *  # noqa: F403
from .log_probs import *  # noqa: F403
from .losses import *  # noqa: F403

__all__ = [*_log_probs.__all__, *_losses.__all__, *_fused.__all__]
