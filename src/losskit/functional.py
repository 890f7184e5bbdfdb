"""Every loss's functional form, like :mod:`torch.nn.functional`.

Example:
    >>> import torch
    >>> import losskit.functional as LF
    >>> LF.huber_loss(torch.tensor([0.5, 3.0]), torch.zeros(2))
    tensor(1.3125)
"""

from __future__ import annotations

import inspect as _inspect

from . import classification as _classification
from . import detection as _detection
from . import distillation as _distillation
from . import embedding as _embedding
from . import image as _image
from . import language as _language
from . import multitask as _multitask
from . import preference as _preference
from . import regression as _regression
from . import rl as _rl
from . import segmentation as _segmentation
from . import torch_losses as _torch_losses

__all__: list[str] = []

for _mod in (
    _classification,
    _detection,
    _distillation,
    _embedding,
    _image,
    _language,
    _multitask,
    _preference,
    _regression,
    _rl,
    _segmentation,
    _torch_losses,
):
    for _name in _mod.__all__:
        _obj = getattr(_mod, _name)
        if _inspect.isfunction(_obj):
            globals()[_name] = _obj
            __all__.append(_name)
__all__.sort()
