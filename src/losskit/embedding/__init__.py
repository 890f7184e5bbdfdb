"""Metric-learning (embedding) losses: cosine embedding, contrastive, triplet with batch mining,
NT-Xent (SimCLR / InfoNCE) and supervised contrastive (SupCon).

Modules: :mod:`~losskit.embedding.pairs` (cosine embedding, contrastive), :mod:`~losskit.embedding.triplet`
(triplet with mining), :mod:`~losskit.embedding.similarity` (multi-similarity, circle),
:mod:`~losskit.embedding.ntxent` (NT-Xent, supervised NT-Xent, SupCon), :mod:`~losskit.embedding.angular`
(ArcFace, CosFace, sub-centre ArcFace), :mod:`~losskit.embedding.proxies` (Proxy-Anchor),
:mod:`~losskit.embedding.memory` (cross-batch memory); shared distances, masks and checks in ``_common``.

Pair losses (:func:`cosine_embedding_loss`, :func:`contrastive_loss`) take two aligned batches and a
per-pair target. Batch losses (:func:`contrastive_pairs_loss`, :func:`triplet_loss`,
:func:`nt_xent_loss`, :func:`supcon_loss`) take one batch of embeddings with class labels and compare
every sample with every other one.

Classification-style metric losses (:func:`angular_margin_loss`: ArcFace / CosFace) compare each
embedding with learnable class centres (:class:`ArcFaceLoss`, :class:`CosFaceLoss`).

Internally every batch loss is written as *local anchors against a set of candidates*: the anchors'
embeddings and labels, the candidates' embeddings and labels, and the anchors' offset among the
candidates (to exclude each anchor's own copy). On one process the candidates are the batch itself and
the offset is 0. With ``gather_distributed=True`` under an initialised :mod:`torch.distributed` group,
the candidates are every rank's samples, gathered with gradient (:mod:`losskit.distributed`), and
``mean`` divides by the global count over the world size, so DDP's gradient averaging reproduces the
one-process gradient over the concatenated batch.

Common rules:

* Half-precision inputs are computed in float32; the loss is returned in float32.
* Masks never use ``float('inf')``: excluded entries are replaced with ``torch.where`` or with the
  finite ``torch.finfo(dtype).min`` before a ``logsumexp``.
* Euclidean distances use a safe square root: the gradient is finite (zero) at ``d = 0``, e.g. for
  duplicate embeddings.
* Identical embeddings are at distance exactly 0 (every distance, any memory layout): the rounding
  noise of the ``|a|^2 + |c|^2 - 2 a.c`` distance matrix is set to 0, and inputs are made
  contiguous, so the loss does not depend on strides.
* A NaN or inf in an input gives a non-finite loss, never a finite value that hides it; the batch
  losses that mine or hinge (:func:`contrastive_pairs_loss`, :func:`triplet_loss`) return NaN when a
  candidate holds one even if no selected pair reads it.
* A batch with nothing to compare (``B = 0``, ``B = 1``, a single class, no positive pair) gives a zero
  that is still connected to the graph, never NaN. :func:`contrastive_pairs_loss` is a sum of two
  independent terms: the one without pairs is 0, the other one still counts (negatives are pushed
  apart in a batch without positive pairs).
"""

from __future__ import annotations

from . import angular as _angular
from . import contrastive as _contrastive
from . import memory as _memory
from . import ntxent as _ntxent
from . import pairs as _pairs
from . import proxies as _proxies
from . import selfsupervised as _selfsupervised
from . import similarity as _similarity
from . import triplet as _triplet

# internal building blocks, kept importable from the package (tests and DDP wiring use them)
from ._common import _distance_matrix, _pair_masks, _paired_distance  # noqa: F401
from .angular import *  # noqa: F403
from .contrastive import *  # noqa: F403
from .memory import *  # noqa: F403
from .ntxent import *  # noqa: F403
from .ntxent import _nt_xent_terms, _supcon_terms  # noqa: F401
from .pairs import *  # noqa: F403
from .pairs import _contrastive_pairs_terms  # noqa: F401
from .proxies import *  # noqa: F403
from .selfsupervised import *  # noqa: F403
from .similarity import *  # noqa: F403
from .triplet import *  # noqa: F403
from .triplet import _triplet_terms  # noqa: F401

__all__ = sorted(
    [
        *_pairs.__all__,
        *_triplet.__all__,
        *_ntxent.__all__,
        *_angular.__all__,
        *_similarity.__all__,
        *_proxies.__all__,
        *_memory.__all__,
        *_contrastive.__all__,
        *_selfsupervised.__all__,
    ]
)
