"""Segmentation losses.

- :mod:`losskit.segmentation.overlap`: region overlap (Dice, Jaccard, Tversky, focal Tversky,
  generalized Dice) on per-class sums; the conventions of the family (``mode``, ``from_logits``,
  ``ignore_index``, soft labels, empty masks, reductions, DDP) are described there.

Every public name is re-exported here, so ``losskit.segmentation.dice_loss`` and
``from losskit.segmentation import DiceLoss`` keep working.
"""

from __future__ import annotations

from . import overlap as _overlap
from .overlap import *  # noqa: F403

__all__ = [*_overlap.__all__]
