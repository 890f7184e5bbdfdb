"""Glue between losskit and training stacks.

Each submodule imports its framework lazily, so ``import losskit.integrations.<name>`` works
without the framework installed; only the objects that need it raise (with the extra to install).

* :mod:`losskit.integrations.transformers`: Hugging Face ``Trainer`` with the fused, chunked
  causal-LM loss (no ``(N, V)`` logits); extra ``losskit[hf]``.
"""

from __future__ import annotations

__all__: list[str] = []
