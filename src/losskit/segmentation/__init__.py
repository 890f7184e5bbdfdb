"""Segmentation losses.

- :mod:`losskit.segmentation.overlap`: region overlap (Dice, Jaccard, Tversky, focal Tversky,
  generalized Dice) on per-class sums; the conventions of the family (``mode``, ``from_logits``,
  ``ignore_index``, soft labels, empty masks, reductions, DDP) are described there.
- :mod:`losskit.segmentation.lovasz`: Lovász hinge and Lovász-Softmax (the Jaccard index through
  its Lovász extension).
- :mod:`losskit.segmentation.distance`: exact distance transform in torch, boundary loss, Hausdorff
  distance-transform loss.
- :mod:`losskit.segmentation.topology`: soft skeleton, clDice and soft Dice + clDice.
- :mod:`losskit.segmentation.mcc`: Matthews correlation loss (binary / multi-label).
- :mod:`losskit.segmentation.presets`: Dice + cross-entropy, Dice + focal, deep supervision.

Every public name is re-exported here, so ``losskit.segmentation.dice_loss`` and
``from losskit.segmentation import DiceLoss`` keep working.
"""

from __future__ import annotations

from . import distance as _distance
from . import lovasz as _lovasz
from . import mcc as _mcc
from . import overlap as _overlap
from . import presets as _presets
from . import topology as _topology
from .distance import *  # noqa: F403
from .lovasz import *  # noqa: F403
from .mcc import *  # noqa: F403
from .overlap import *  # noqa: F403
from .presets import *  # noqa: F403
from .topology import *  # noqa: F403

__all__ = [
    *_overlap.__all__,
    *_lovasz.__all__,
    *_distance.__all__,
    *_topology.__all__,
    *_mcc.__all__,
    *_presets.__all__,
]
