"""Fused autograd kernels (private); the public losses in the family modules choose them.

Submodules are imported on use (``from losskit._kernels.sigmoid_focal import sigmoid_focal``), so
importing :mod:`losskit` does not pay for them. Compilation switches live in
:mod:`losskit._kernels._compile` (``LOSSKIT_COMPILE_KERNELS=0`` keeps every kernel eager;
``LOSSKIT_FUSED_KERNELS=0`` or ``fused_kernels(False)`` makes the public losses use their eager
reference code instead of the kernels).
"""

from __future__ import annotations

from ._compile import (
    compile_kernels_enabled,
    fused_kernels,
    fused_kernels_enabled,
    set_compile_kernels,
    set_fused_kernels,
    use_fused_kernel,
)

__all__ = [
    "compile_kernels_enabled",
    "fused_kernels",
    "fused_kernels_enabled",
    "set_compile_kernels",
    "set_fused_kernels",
    "use_fused_kernel",
]
