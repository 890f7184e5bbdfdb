"""losskit: correct, fast, memory-lean PyTorch training objectives.

Every loss comes as a functional (``losskit.functional.focal_loss``) and a module
(``losskit.FocalLoss``); :func:`build` makes one by name and :func:`available` lists the names.
"""

from __future__ import annotations

from . import distributed, functional, registry, vocab_parallel
from ._checks import LossTypeError, LossValueError, set_value_checks
from ._kernels.warmup import warmup
from .classification import *
from .classification import __all__ as _classification_all
from .detection import *
from .detection import __all__ as _detection_all
from .distillation import *
from .distillation import __all__ as _distillation_all
from .embedding import *
from .embedding import __all__ as _embedding_all
from .image import *
from .image import __all__ as _image_all
from .language import *
from .language import __all__ as _language_all
from .multitask import *
from .multitask import __all__ as _multitask_all
from .preference import *
from .preference import __all__ as _preference_all
from .registry import WeightedSum, aliases, available, build
from .regression import *
from .regression import __all__ as _regression_all
from .rl import *
from .rl import __all__ as _rl_all
from .segmentation import *
from .segmentation import __all__ as _segmentation_all
from .torch_losses import *
from .torch_losses import __all__ as _torch_losses_all

__version__ = "0.1.0"

__all__ = [
    "LossTypeError",
    "LossValueError",
    "WeightedSum",
    "aliases",
    "available",
    "build",
    "distributed",
    "functional",
    "registry",
    "set_value_checks",
    "vocab_parallel",
    "warmup",
    *_classification_all,
    *_detection_all,
    *_distillation_all,
    *_embedding_all,
    *_image_all,
    *_language_all,
    *_multitask_all,
    *_preference_all,
    *_regression_all,
    *_rl_all,
    *_segmentation_all,
    *_torch_losses_all,
]
