"""Fused autograd kernels (private); the public losses in the family modules choose them.

Submodules are imported on use (``from losskit._kernels.sigmoid_focal import sigmoid_focal``), so
importing :mod:`losskit` does not pay for them. Compilation switches live in
:mod:`losskit._kernels._compile` (``LOSSKIT_COMPILE_KERNELS=0`` keeps every kernel eager).
"""

from __future__ import annotations

from ._compile import compile_kernels_enabled, set_compile_kernels

__all__ = ["compile_kernels_enabled", "set_compile_kernels"]
