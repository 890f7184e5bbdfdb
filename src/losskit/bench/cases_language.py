"""``losskit bench`` case for the large-vocabulary head loss.

Shape ``(N, H, V)``: ``N`` tokens (``N * 500 / 4096`` of them ``ignore_index``, i.e. 500 at
``N = 4096``), hidden size ``H``, vocabulary ``V``; gradients for the hidden states and the head
weight.

* ``losskit``: :func:`losskit.functional.linear_cross_entropy` (chunked, the logits never exist whole);
* ``eager``: ``F.cross_entropy(hidden @ weight.T, target)`` (materialises the ``(N, V)`` logits);
* ``native``: torch's own ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())`` when
  the installed torch has it (2.13+).

One step at the full shape takes seconds on a CPU, so this case times at most 10 rounds (the minimum
for a median here) whatever ``--repeat`` asks. For the chunk-size sweep and per-process CPU time, see
``benchmarks/bench_language.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cases import Case, Inputs, Shape, Variant, _lf, register_case

__all__ = ["make_head"]


def make_head(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(hidden (N, H), weight (V, H), target (N,))`` with ``N * 500 // 4096`` ignored targets."""
    n, h, v = shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    target[torch.randperm(n, generator=g)[: n * 500 // 4096]] = -100
    return (hidden, weight, target), (0, 1)


def _variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.linear_cross_entropy", "losskit", lambda h, w, t: LF.linear_cross_entropy(h, w, t)),
        Variant(
            "eager (F.cross_entropy(hidden @ weight.T))", "eager", lambda h, w, t: F.cross_entropy(h @ w.T, t)
        ),
    ]
    native = getattr(F, "linear_cross_entropy", None)
    if native is not None:  # torch builds that ship a fused linear cross-entropy
        out.append(Variant("F.linear_cross_entropy (torch native)", "native", lambda h, w, t: native(h, w, t)))
    return out


register_case(
    Case(
        "linear_ce",
        make_head,
        (4096, 1024, 32000),
        (64, 32, 128),
        _variants,
        [(1024, 1024, 32000), (4096, 1024, 8000), (4096, 1024, 32000)],
        note="N tokens, hidden size H, vocabulary V; gradients for hidden and weight",
        max_repeat=10,
    )
)
