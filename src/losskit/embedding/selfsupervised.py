r"""Self-supervised regularisers on two views: VICReg (Bardes et al. 2022) and Barlow Twins (Zbontar et al. 2021).

Both take the embeddings of two views of the same ``N`` samples, ``z_a`` and ``z_b`` of shape
``(N, D)``, and use **batch statistics** (means, variances, a covariance or cross-correlation matrix).

``gather_distributed=True`` under an initialised :mod:`torch.distributed` group computes those
statistics over the global batch of every rank, exactly: each rank all-reduces its per-feature sums
and its ``(D, D)`` products with a differentiable sum (:func:`losskit.distributed.global_sum`,
centring with the global mean first), so every rank computes the same global loss and DDP's gradient
averaging gives exactly the gradient of one process over the concatenated batch (ranks may hold
different batch sizes). Communication is O(D^2) per step, independent of the batch size; no
sample is gathered. No effect without a process group.

Half-precision inputs are computed in float32; the loss is float32. An empty (global) batch gives a
graph-connected 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as _dist
from .._checks import check_floating, check_ndim, check_number, check_same_device, check_same_shape
from .._reduction import connected_zero, upcast
from ..registry import register
from ._common import FAMILY, _gathering

__all__ = ["BarlowTwinsLoss", "VICRegLoss", "barlow_twins_loss", "vicreg_loss"]


def _check_views(z_a: Any, z_b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_floating("z_a", z_a)
    check_floating("z_b", z_b)
    check_ndim("z_a", z_a, 2, "(N, D)")
    check_same_shape("z_b", z_b, "z_a", z_a)
    check_same_device(("z_a", z_a), ("z_b", z_b))
    a = upcast(z_a)
    return a, upcast(z_b).to(a.dtype)


def _batch(z_a: torch.Tensor, gather_distributed: bool) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]]:
    """``(global N, sum over ranks)``: the identity and the local N without a process group."""
    if not _gathering(gather_distributed):
        return z_a.shape[0], lambda t: t
    n = int(_dist.global_count(z_a.shape[0]))
    return n, _dist.global_sum


def _off_diagonal_sq(m: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of a square matrix (masked, no cancellation)."""
    eye = torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return m.masked_fill(eye, 0.0).square().sum()


def _check_coeff(name: str, value: float) -> float:
    return float(check_number(name, value, low=0.0))


# ============================================================================ VICReg


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    *,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun, ICLR 2022).

    .. math::
        \ell = \lambda\, s(Z_a, Z_b) + \mu\,[v(Z_a) + v(Z_b)] + \nu\,[c(Z_a) + c(Z_b)]

    * invariance ``s = (1 / N D) sum_{n,k} (z_a - z_b)^2`` (the MSE);
    * variance ``v(Z) = (1 / D) sum_k max(0, gamma - sqrt(Var(z_k) + eps))`` with the unbiased
      (``N - 1``) batch variance of feature ``k``;
    * covariance ``c(Z) = (1 / D) sum_{k != l} C(Z)_{kl}^2``, ``C = (1 / (N - 1)) sum_n (z_n - mean)(z_n - mean)^T``.

    Defaults are the paper's: ``lambda = mu = 25``, ``nu = 1``, ``gamma = 1``, ``eps = 1e-4``. This is
    the paper's formula; the authors' ``main_vicreg.py`` halves the variance term (``(v(Z_a) +
    v(Z_b)) / 2``): pass ``std_coeff=12.5`` to reproduce that code. ``N = 1`` uses ``N - 1 -> 1``
    (zero variance, zero covariance) instead of dividing by zero.

    Args:
        z_a, z_b: ``(N, D)`` embeddings of two views (the expander's output).
        sim_coeff, std_coeff, cov_coeff: ``lambda``, ``mu``, ``nu`` (``>= 0``).
        gamma: target standard deviation (``> 0``).
        eps: added to the variance under the square root (``> 0``).
        gather_distributed: statistics over the global batch of every rank (module notes).

    Returns:
        a scalar.

    Example:
        >>> z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> vicreg_loss(z, z)  # unit-free: std sqrt(2) > 1, perfectly anti-correlated features
        tensor(8.)
    """
    lam, mu, nu = (
        _check_coeff(n, v)
        for n, v in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff))
    )
    gamma = float(check_number("gamma", gamma, low=0.0, low_open=True))
    eps = float(check_number("eps", eps, low=0.0, low_open=True))
    za, zb = _check_views(z_a, z_b)
    n, total = _batch(za, gather_distributed)
    if n == 0:
        return connected_zero(za, zb)
    d = za.shape[1]
    sums = total(torch.cat([za.sum(0), zb.sum(0), (za - zb).square().sum().reshape(1)]))
    mean_a, mean_b, invariance = sums[:d] / n, sums[d : 2 * d] / n, sums[-1] / (n * d)
    ca, cb = za - mean_a, zb - mean_b
    cov = total(torch.stack([ca.T @ ca, cb.T @ cb])) / max(n - 1, 1)
    std = (cov.diagonal(dim1=1, dim2=2) + eps).sqrt()  # (2, D)
    variance = F.relu(gamma - std).mean(dim=1).sum()
    covariance = (_off_diagonal_sq(cov[0]) + _off_diagonal_sq(cov[1])) / d
    return lam * invariance + mu * variance + nu * covariance


class VICRegLoss(nn.Module):
    """Module form of :func:`vicreg_loss`: ``loss_fn(z_a, z_b)``.

    Example:
        >>> z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> VICRegLoss()(z, z)
        tensor(8.)
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        *,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.sim_coeff = _check_coeff("sim_coeff", sim_coeff)
        self.std_coeff = _check_coeff("std_coeff", std_coeff)
        self.cov_coeff = _check_coeff("cov_coeff", cov_coeff)
        self.gamma = float(check_number("gamma", gamma, low=0.0, low_open=True))
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return vicreg_loss(
            z_a,
            z_b,
            self.sim_coeff,
            self.std_coeff,
            self.cov_coeff,
            gamma=self.gamma,
            eps=self.eps,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}, "
            f"gamma={self.gamma}, eps={self.eps}"
        )


# ============================================================================ Barlow Twins


def barlow_twins_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambd: float = 5e-3,
    *,
    eps: float = 1e-5,
    gather_distributed: bool = False,
) -> torch.Tensor:
    r"""Barlow Twins redundancy reduction (Zbontar et al., ICML 2021).

    .. math::
        \ell = \sum_k (1 - C_{kk})^2 + \lambda \sum_k \sum_{l \ne k} C_{kl}^2,
        \qquad C_{kl} = \frac{1}{N} \sum_n \hat z^a_{n,k}\, \hat z^b_{n,l}

    with ``\hat z`` each view standardised per feature over the batch, ``(z - mean) / sqrt(var +
    eps)`` with the biased (``N``) variance, as the authors' non-affine ``BatchNorm1d`` does
    (``eps = 1e-5``). ``lambda = 5e-3`` is the paper's value.

    Args:
        z_a, z_b: ``(N, D)`` embeddings of two views (the projector's output).
        lambd: weight of the off-diagonal (redundancy) term, ``>= 0``.
        eps: added to the variance (``> 0``).
        gather_distributed: statistics (means, variances, ``C``) over the global batch of every rank.

    Returns:
        a scalar.

    Example:
        >>> z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> barlow_twins_loss(z, z, lambd=1.0)  # C = [[1, -1], [-1, 1]] up to eps
        tensor(2.0000)
    """
    lam = _check_coeff("lambd", lambd)
    eps = float(check_number("eps", eps, low=0.0, low_open=True))
    za, zb = _check_views(z_a, z_b)
    n, total = _batch(za, gather_distributed)
    if n == 0:
        return connected_zero(za, zb)
    d = za.shape[1]
    mean = total(torch.cat([za.sum(0), zb.sum(0)])) / n
    ca, cb = za - mean[:d], zb - mean[d:]
    var = total(torch.cat([ca.square().sum(0), cb.square().sum(0)])) / n
    na, nb = ca / (var[:d] + eps).sqrt(), cb / (var[d:] + eps).sqrt()
    c = total(na.T @ nb) / n
    return (1.0 - c.diagonal()).square().sum() + lam * _off_diagonal_sq(c)


class BarlowTwinsLoss(nn.Module):
    """Module form of :func:`barlow_twins_loss`: ``loss_fn(z_a, z_b)``.

    Example:
        >>> z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> BarlowTwinsLoss(lambd=1.0)(z, z)
        tensor(2.0000)
    """

    def __init__(self, lambd: float = 5e-3, *, eps: float = 1e-5, gather_distributed: bool = False) -> None:
        super().__init__()
        self.lambd = _check_coeff("lambd", lambd)
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(
            z_a, z_b, self.lambd, eps=self.eps, gather_distributed=self.gather_distributed
        )

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}"


# ============================================================================ registry

register(
    "vicreg",
    VICRegLoss,
    family=FAMILY,
    functional=vicreg_loss,
    source="Bardes, Ponce & LeCun 2022 (VICReg)",
    notes="25 / 25 / 1, gamma 1, eps 1e-4 (paper form); exact global statistics under DDP",
)
register(
    "barlow_twins",
    BarlowTwinsLoss,
    family=FAMILY,
    functional=barlow_twins_loss,
    source="Zbontar et al. 2021 (Barlow Twins)",
    notes="cross-correlation of batch-standardised views, lambda 5e-3; exact under DDP",
)
