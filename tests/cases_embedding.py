"""Conformance input factories of the metric-learning losses added beside the ones in test_conformance
(multi-similarity, circle, Proxy-Anchor, sub-centre ArcFace)."""

from __future__ import annotations

from typing import Any

import torch

import losskit
import losskit.functional as LF
from test_conformance import Case, _balanced_labels, _randn

PROXY_KW = {"num_classes": 3, "embedding_dim": 3}
SUB_CENTER_KW = {"embedding_dim": 3, "num_classes": 3, "sub_centers": 2, "scale": 8.0}


def _labelled(seed: int) -> Any:
    return lambda d: (_randn(8, 3, seed=seed, dtype=d), _balanced_labels(8, 3))


def _built(name: str, kw: dict[str, Any]) -> torch.nn.Module:
    # the conformance tests build parametrised losses under seed 0: the reference reads the same parameters
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return losskit.build(name, **kw)


def _proxy_ref(emb: torch.Tensor, labels: torch.Tensor, **kw: Any) -> torch.Tensor:
    return LF.proxy_anchor_loss(emb, labels, _built("proxy_anchor", PROXY_KW).proxies.detach(), **kw)


def _sub_center_ref(emb: torch.Tensor, labels: torch.Tensor, **kw: Any) -> torch.Tensor:
    module = _built("sub_center_arcface", SUB_CENTER_KW)
    return LF.angular_margin_loss(emb, module.weight.detach(), labels, 8.0, module.margin, "arcface", **kw)


CASES: dict[str, Case] = {
    # every anchor has a positive and a negative: 'mean' is over the 8 anchors
    "multi_similarity": Case(_labelled(40), per_sample=False),
    "circle": Case(_labelled(41), per_sample=False),
    # learnable proxies / sub-centres: the module owns them, the reference reads them
    "proxy_anchor": Case(
        _labelled(42),
        reductions=(),
        module_kw=PROXY_KW,
        ref=_proxy_ref,
        arg_names=("embeddings", "labels"),
        per_sample=False,
    ),
    "sub_center_arcface": Case(
        lambda d: (_randn(6, 3, seed=43, dtype=d), _balanced_labels(6, 3)),
        module_kw=SUB_CENTER_KW,
        ref=_sub_center_ref,
        arg_names=("embeddings", "labels"),
    ),
}
