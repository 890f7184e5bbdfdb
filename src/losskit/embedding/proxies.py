r"""Proxy-based metric losses: Proxy-Anchor (Kim et al. 2020) with learnable class proxies.

A proxy loss compares every embedding with ``C`` learnable proxies (one per class) instead of with
the other samples, so it needs no pair mining and its cost is ``O(B C)``. Proxy-Anchor uses each
proxy as an anchor and pools the batch's samples into one log-sum-exp per proxy, so the loss is a
sum over proxies of functions of the *whole* batch: it does not split into per-sample terms.

Under DDP (``gather_distributed=True``) every rank therefore computes the loss of the global batch
from every rank's embeddings, gathered with gradient. Its value is the one-process loss on the
concatenated batch on every rank; the gather's backward sums the ``W`` identical copies of each
sample's gradient, and DDP's ``1/W`` averaging of the encoder and proxy gradients gives exactly the
one-process gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import LossValueError, check_class_range, check_floating, check_int, check_number, shape_str
from .._reduction import connected_zero, upcast
from ..registry import register
from ._common import (
    FAMILY,
    _candidates,
    _check_embeddings_labels,
    _gathering,
    _log1p_sum_exp,
    _non_finite_guard,
)

__all__ = ["ProxyAnchorLoss", "proxy_anchor_loss"]


def _check_proxies(emb: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    check_floating("proxies", proxies)
    if proxies.dim() != 2 or proxies.shape[1] != emb.shape[1] or proxies.shape[0] == 0:
        raise LossValueError(
            f"proxies has shape {shape_str(proxies.shape)}, expected (C, {emb.shape[1]}) with C >= 1: "
            f"one proxy per class with the embeddings' dimension"
        )
    if proxies.device != emb.device:
        raise LossValueError(
            f"proxies is on {proxies.device}, expected {emb.device} (the embeddings' device)"
        )
    return upcast(proxies).to(emb.dtype)


def proxy_anchor_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    proxies: torch.Tensor,
    margin: float = 0.1,
    alpha: float = 32.0,
    *,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Proxy-Anchor loss (Kim, Kim, Cho & Kwak, CVPR 2020).

    With ``s(x, p)`` the cosine similarity of an embedding and a proxy, ``P`` the ``C`` proxies,
    ``P^+`` those with at least one sample of their class in the batch, ``X_p^+`` the samples of
    proxy ``p``'s class and ``X_p^-`` the others:

    .. math::
        L = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Big)
          + \frac{1}{|P|} \sum_{p \in P} \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Big)

    ``delta = margin``. Defaults are the paper's (``alpha = 32``, ``delta = 0.1``). Every proxy is
    an anchor, so hard samples get a larger weight through the log-sum-exp, relative to the other
    samples of the batch. An empty batch gives a zero connected to the embeddings and proxies.

    Args:
        embeddings: ``(B, D)`` (L2-normalised inside).
        labels: ``(B,)`` integer class indices in ``[0, C)``.
        proxies: ``(C, D)`` class proxies (the module owns them as a parameter).
        margin: ``delta >= 0``.
        alpha: ``> 0``, the scale.
        gather_distributed: under an initialised :mod:`torch.distributed` group, compute the loss of
            the global batch (every rank's embeddings, gathered with gradient) on every rank; DDP's
            gradient averaging then gives the one-process gradient over the concatenated batch,
            proxies included (see the module docstring). No effect without a process group.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> proxy_anchor_loss(emb, torch.tensor([0, 1, 1]), proxies, alpha=4.0)
        tensor(1.9828)
    """
    check_number("margin", margin, low=0.0)
    check_number("alpha", alpha, low=0.0, low_open=True)
    emb, labels = _check_embeddings_labels(embeddings, labels)
    w = _check_proxies(emb, proxies)
    check_class_range("labels", labels, w.shape[0])
    if _gathering(gather_distributed):
        emb, labels, _ = _candidates(emb, labels, True)
    if emb.shape[0] == 0:
        return connected_zero(emb, w)
    a, m = float(alpha), float(margin)
    sim = (F.normalize(emb, dim=-1) @ F.normalize(w, dim=-1).T).T  # (C, B)
    pos = labels[None, :] == torch.arange(w.shape[0], device=labels.device)[:, None]
    pos_term = _log1p_sum_exp(-a * (sim - m), pos)
    neg_term = _log1p_sum_exp(a * (sim + m), ~pos)
    with_pos = pos.any(dim=1)
    n_with_pos = with_pos.sum().clamp_min(1).to(sim.dtype)
    loss = torch.where(with_pos, pos_term, pos_term.new_zeros(())).sum() / n_with_pos + neg_term.mean()
    return loss + _non_finite_guard(emb)


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor loss with learnable proxies: ``loss_fn(embeddings, labels)``.

    Owns ``proxies``, a ``(num_classes, embedding_dim)`` parameter initialised with
    ``kaiming_normal_(mode='fan_out')`` as in the authors' code; add it to the optimizer (the paper
    trains the proxies with a learning rate 100x the network's). See :func:`proxy_anchor_loss`.

    Example:
        >>> loss_fn = ProxyAnchorLoss(num_classes=4, embedding_dim=8)
        >>> loss = loss_fn(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
        >>> loss.backward()
        >>> loss_fn.proxies.grad.shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.1,
        alpha: float = 32.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.margin = float(check_number("margin", margin, low=0.0))
        self.alpha = float(check_number("alpha", alpha, low=0.0, low_open=True))
        self.gather_distributed = bool(gather_distributed)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return proxy_anchor_loss(
            embeddings,
            labels,
            self.proxies,
            self.margin,
            self.alpha,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, margin={self.margin}, "
            f"alpha={self.alpha}"
        )


register(
    "proxy_anchor",
    ProxyAnchorLoss,
    family=FAMILY,
    functional=proxy_anchor_loss,
    source="Kim et al. CVPR 2020 (Proxy Anchor)",
    notes="learnable proxies; needs num_classes, embedding_dim; alpha=32, delta=0.1; O(B C)",
)
