"""Image-quality losses for restoration, super-resolution and registration: SSIM, MS-SSIM, PSNR, TV.

Images are ``(N, C, H, W)`` or, for volumes, ``(N, C, D, H, W)``; ``reduction='none'`` gives one value
per sample ``(N,)``, ``'mean'`` / ``'sum'`` reduce over the batch (an empty batch gives a
graph-connected zero). Half-precision inputs are computed in float32.

The Gaussian filter of SSIM is separable: every spatial axis is filtered by one grouped 1-D
convolution that runs over the five maps SSIM needs (``x``, ``y``, ``x^2``, ``y^2``, ``x y``) at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    LossValueError,
    check_floating,
    check_int,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    shape_str,
)
from ._kernels import fused_kernels_enabled
from ._kernels.gaussian import separable_filter, separable_filter_plain
from ._reduction import reduce_loss, upcast
from .registry import register

__all__ = [
    "MS_SSIM_WEIGHTS",
    "MSSSIMLoss",
    "PSNRLoss",
    "SSIMLoss",
    "TotalVariationLoss",
    "ms_ssim_loss",
    "psnr_loss",
    "ssim_loss",
    "total_variation_loss",
]

#: The five scale weights of Wang, Simoncelli & Bovik (2003), finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ----------------------------------------------------------------------------- checks


def _check_window(win_size: int, sigma: float) -> None:
    check_int("win_size", win_size, low=1)
    if win_size % 2 == 0:
        raise LossValueError(f"win_size must be odd, got {win_size}")
    check_number("sigma", sigma, low=0.0, low_open=True)


def _check_ssim_options(win_size: int, sigma: float, data_range: float, k1: float, k2: float) -> None:
    _check_window(win_size, sigma)
    check_number("data_range", data_range, low=0.0, low_open=True)
    check_number("k1", k1, low=0.0, low_open=True)
    check_number("k2", k2, low=0.0, low_open=True)


def _check_pair(
    input: torch.Tensor, target: torch.Tensor, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input``/``target``: floating ``(N, C, H, W)`` or ``(N, C, D, H, W)`` of one shape, upcast."""
    check_reduction(reduction)
    check_floating("input", input)
    check_floating("target", target)
    if input.dim() not in (4, 5):
        raise LossValueError(
            f"input has shape {shape_str(input.shape)}, expected (N, C, H, W) or (N, C, D, H, W)"
        )
    check_same_shape("target", target, "input", input)
    check_same_device(("input", input), ("target", target))
    return upcast(input), upcast(target)


def _check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    values = tuple(weights.reshape(-1).tolist()) if isinstance(weights, torch.Tensor) else tuple(weights)
    if len(values) == 0:
        raise LossValueError("weights must hold at least one scale weight")
    for w in values:
        check_number("weights", w, low=0.0)
    return tuple(float(w) for w in values)


# ----------------------------------------------------------------------------- SSIM core


def _gaussian(win_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian window of ``win_size`` taps centred on the middle one."""
    coords = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2
    g = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Valid (unpadded) separable Gaussian filter of every channel of ``(N, K, *spatial)``.

    One grouped 1-D convolution per spatial axis; through an autograd function that holds no
    activation for backward unless fused kernels are switched off (then plain autograd convolutions).
    """
    if fused_kernels_enabled():
        return separable_filter(x, window)
    return separable_filter_plain(x, window)


def _ssim_maps(
    x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, data_range: float, k1: float, k2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel means of the SSIM map and of its contrast-structure part, each ``(N, C)``."""
    c = x.shape[1]
    maps = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, e_xx, e_yy, e_xy = maps.split(c, dim=1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    cs = (2.0 * (e_xy - mu_xy) + c2) / ((e_xx - mu_xx) + (e_yy - mu_yy) + c2)
    luminance = (2.0 * mu_xy + c1) / (mu_xx + mu_yy + c1)
    return (luminance * cs).flatten(2).mean(-1), cs.flatten(2).mean(-1)


def _check_size(input: torch.Tensor, win_size: int, scales: int = 1) -> None:
    need = (win_size - 1) * 2 ** (scales - 1) + 1
    spatial = tuple(input.shape[2:])
    if min(spatial) < need:
        what = "win_size" if scales == 1 else f"{scales} scales with win_size"
        raise LossValueError(
            f"input has spatial shape {shape_str(spatial)}, expected every side >= {need} for {what} "
            f"{win_size}" + ("" if scales == 1 else " (use fewer weights or a smaller win_size)")
        )


def _finish(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return reduce_loss(per_sample, reduction)


def ssim_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    *,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Structural-similarity loss ``1 - SSIM`` (Wang, Bovik, Sheikh & Simoncelli 2004).

    .. math::
        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
        {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},\quad
        C_1 = (K_1 L)^2,\ C_2 = (K_2 L)^2

    with local means, variances and covariance taken under a normalised Gaussian window
    (``win_size`` taps, standard deviation ``sigma``; population statistics, no ``n/(n-1)``),
    ``L = data_range``. The SSIM map is computed where the window fits (no padding) and averaged
    over channels and positions: one SSIM per sample, as scikit-image's ``structural_similarity``
    (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``) and pytorch-msssim compute it.

    Args:
        input, target: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` images, every spatial side >= ``win_size``.
        data_range: the range of the pixel values (1 for images in [0, 1], 255 for 8-bit).
        win_size: odd window size; sigma: its standard deviation.
        k1, k2: the stabilising constants of the paper.
        reduction: ``'none'`` gives ``(N,)``; ``'mean'`` / ``'sum'`` over the batch.

    Example:
        >>> x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim_loss(x, x)
        tensor(0.)
        >>> bool(ssim_loss(x, x.flip(-1)) > 0.5)
        True
    """
    _check_ssim_options(win_size, sigma, data_range, k1, k2)
    x, y = _check_pair(input, target, reduction)
    _check_size(x, win_size)
    window = _gaussian(win_size, sigma, x.dtype, x.device)
    ssim, _ = _ssim_maps(x, y, window, float(data_range), float(k1), float(k2))
    return _finish(1.0 - ssim.mean(1), reduction)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """2x average pooling; an odd side keeps its last row, averaged over the pixels that exist."""
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    return pool(x, kernel_size=2, stride=2, ceil_mode=True)


def ms_ssim_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    *,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-scale structural-similarity loss ``1 - MS-SSIM`` (Wang, Simoncelli & Bovik 2003).

    .. math::
        \mathrm{MS\text{-}SSIM}(x, y) = [l_M(x, y)]^{\beta_M} \prod_{j=1}^{M} [cs_j(x, y)]^{\beta_j}

    where ``cs_j`` is the mean contrast-structure term of SSIM at scale ``j`` (the image 2x
    average-pooled ``j - 1`` times) and ``l_M`` the luminance term at the coarsest scale (so the
    last factor is the SSIM of that scale). ``weights`` are the exponents ``beta_j``, finest first;
    the default is the paper's five, ``M = len(weights)``. Each factor is computed per channel and
    clamped at 0 before the power (a negative ``cs`` would give NaN), then the channels are averaged.

    Small images: the window must fit at the coarsest scale, so every side needs at least
    ``(win_size - 1) * 2 ** (M - 1) + 1`` pixels (161 with the defaults, as pytorch-msssim requires);
    smaller inputs raise an error naming the minimum: pass fewer ``weights`` or a smaller ``win_size``.
    Odd sides are pooled with their last row kept (the average of the pixels that exist, as the
    reference MATLAB code's symmetric padding gives).

    Args:
        input, target: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` images.
        data_range, win_size, sigma, k1, k2: as in :func:`ssim_loss`.
        weights: the per-scale exponents, finest scale first.
        reduction: ``'none'`` gives ``(N,)``; ``'mean'`` / ``'sum'`` over the batch.

    Example:
        >>> x = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
        >>> ms_ssim_loss(x, x, weights=(0.5, 0.5), win_size=7)
        tensor(0.)
    """
    _check_ssim_options(win_size, sigma, data_range, k1, k2)
    betas = _check_weights(weights)
    x, y = _check_pair(input, target, reduction)
    _check_size(x, win_size, len(betas))
    window = _gaussian(win_size, sigma, x.dtype, x.device)
    value = None
    for j, beta in enumerate(betas):
        ssim, cs = _ssim_maps(x, y, window, float(data_range), float(k1), float(k2))
        last = j == len(betas) - 1
        factor = torch.relu(ssim if last else cs) ** beta
        value = factor if value is None else value * factor
        if not last:
            x, y = _downsample(x), _downsample(y)
    assert value is not None
    return _finish(1.0 - value.mean(1), reduction)


# ----------------------------------------------------------------------------- PSNR, TV


def psnr_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    *,
    eps: float = 1e-10,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Negative peak signal-to-noise ratio (in dB), a loss to minimise.

    .. math::
        \ell(x, y) = -\mathrm{PSNR} = 10 \log_{10}\Big(\frac{\mathrm{MSE}(x, y)}{L^2} + \epsilon\Big)

    with ``MSE`` the mean squared error of each sample (over all but the batch dimension) and
    ``L = data_range``. The sign follows kornia's ``psnr_loss`` (negative PSNR, so lower is better).
    ``eps`` caps the PSNR of a perfect reconstruction at ``-10 log10(eps)`` dB (100 dB by default)
    so identical images give a finite loss with zero gradient, where kornia gives ``-inf``. kornia
    also takes one MSE over the whole batch; here each sample has its PSNR and ``reduction``
    averages (or sums) those.

    Args:
        input, target: ``(N, ...)`` tensors of the same shape, at least 2-D.
        data_range: the range of the pixel values (the peak signal ``L``).
        eps: floor added to ``MSE / L^2``, ``> 0``.
        reduction: ``'none'`` gives ``(N,)``; ``'mean'`` / ``'sum'`` over the batch.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> psnr_loss(x + 0.1, x)  # MSE 0.01: PSNR 20 dB
        tensor(-20.0000)
    """
    check_reduction(reduction)
    check_number("data_range", data_range, low=0.0, low_open=True)
    check_number("eps", eps, low=0.0, low_open=True)
    check_floating("input", input)
    check_floating("target", target)
    if input.dim() < 2:
        raise LossValueError(f"input has shape {shape_str(input.shape)}, expected (N, ...) with N samples")
    check_same_shape("target", target, "input", input)
    check_same_device(("input", input), ("target", target))
    x, y = upcast(input), upcast(target)
    mse = (x - y).square().flatten(1).mean(1)
    loss = 10.0 * torch.log10(mse / float(data_range) ** 2 + float(eps))
    return _finish(loss, reduction)


def total_variation_loss(
    input: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    isotropic: bool = False,
    normalize: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Total variation of images or volumes (Rudin, Osher & Fatemi 1992), a smoothness regulariser.

    With forward differences :math:`\Delta_a x` along each spatial axis ``a``:

    .. math::
        \mathrm{TV}_{\text{aniso}}(x) = \sum_{c, p} \sum_a |\Delta_a x_{c,p}|,\qquad
        \mathrm{TV}_{\text{iso}}(x) = \sum_{c, p} \sqrt{\textstyle\sum_a (\Delta_a x_{c,p})^2}

    The anisotropic (L1) form is kornia's ``total_variation`` summed over channels. The isotropic form
    takes a zero difference past the last row / column (Neumann boundary, as in Chambolle 2004) and a
    zero (sub)gradient where all differences vanish, so a flat image is not NaN.

    Args:
        input: ``(N, C, *spatial)`` with one to three spatial dimensions.
        weight: optional per-sample weights ``(N,)``; ``'mean'`` is then ``sum(w TV) / sum(w)``.
        isotropic: the Euclidean (L2) norm of the difference vector instead of the L1 sum.
        normalize: divide each sample's total by its number of elements ``C * prod(spatial)``.
        reduction: ``'none'`` gives ``(N,)``; ``'mean'`` / ``'sum'`` over the batch.

    Example:
        >>> x = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
        >>> total_variation_loss(x)
        tensor(2.)
        >>> total_variation_loss(x, isotropic=True)
        tensor(1.4142)
    """
    check_reduction(reduction)
    check_floating("input", input)
    if not 3 <= input.dim() <= 5:
        raise LossValueError(
            f"input has shape {shape_str(input.shape)}, expected (N, C, *spatial) with 1 to 3 spatial dims"
        )
    if weight is not None:
        check_floating("weight", weight)
        if tuple(weight.shape) != (input.shape[0],):
            raise LossValueError(
                f"weight has shape {shape_str(weight.shape)}, expected ({input.shape[0]},): one per sample"
            )
        check_same_device(("input", input), ("weight", weight))
    x = upcast(input)
    axes = range(2, x.dim())
    if isotropic:
        sq = None
        for a in axes:
            d = F.pad(x.diff(dim=a), [0, 0] * (x.dim() - 1 - a) + [0, 1])
            sq = d * d if sq is None else sq + d * d
        assert sq is not None
        pos = sq > 0
        # sqrt has an infinite derivative at 0: take it only where positive (a NaN stays NaN)
        per_pixel = torch.where(pos, torch.where(pos, sq, 1.0).sqrt(), sq)
        tv = per_pixel.flatten(1).sum(1)
    else:
        tv = torch.stack([x.diff(dim=a).abs().flatten(1).sum(1) for a in axes]).sum(0)
    if normalize:
        tv = tv / max(math.prod(x.shape[1:]), 1)
    w = None if weight is None else weight.to(tv.dtype)
    return reduce_loss(tv, reduction, weight=w)


# ----------------------------------------------------------------------------- modules


class _ImageLoss(nn.Module):
    """Stores the call's keyword options (checked at construction) and passes them to the functional."""

    def __init__(self, reduction: str, **options: Any) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.options: dict[str, Any] = options

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{opts}, reduction={self.reduction!r}"


class SSIMLoss(_ImageLoss):
    """Module form of :func:`ssim_loss`.

    Example:
        >>> x = torch.rand(1, 1, 16, 16)
        >>> SSIMLoss(data_range=1.0)(x, x)
        tensor(0.)
    """

    def __init__(
        self,
        data_range: float = 1.0,
        win_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: str = "mean",
    ) -> None:
        _check_ssim_options(win_size, sigma, data_range, k1, k2)
        super().__init__(
            reduction, data_range=float(data_range), win_size=win_size, sigma=float(sigma), k1=k1, k2=k2
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim_loss(input, target, reduction=self.reduction, **self.options)


class MSSSIMLoss(_ImageLoss):
    """Module form of :func:`ms_ssim_loss`.

    Example:
        >>> x = torch.rand(1, 1, 48, 48)
        >>> MSSSIMLoss(weights=(0.5, 0.5), win_size=7)(x, x)
        tensor(0.)
    """

    def __init__(
        self,
        data_range: float = 1.0,
        weights: Sequence[float] = MS_SSIM_WEIGHTS,
        win_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: str = "mean",
    ) -> None:
        _check_ssim_options(win_size, sigma, data_range, k1, k2)
        super().__init__(
            reduction,
            data_range=float(data_range),
            weights=_check_weights(weights),
            win_size=win_size,
            sigma=float(sigma),
            k1=k1,
            k2=k2,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ms_ssim_loss(input, target, reduction=self.reduction, **self.options)


class PSNRLoss(_ImageLoss):
    """Module form of :func:`psnr_loss` (negative PSNR in dB).

    Example:
        >>> PSNRLoss()(torch.full((1, 1, 2, 2), 0.1), torch.zeros(1, 1, 2, 2))
        tensor(-20.0000)
    """

    def __init__(self, data_range: float = 1.0, eps: float = 1e-10, reduction: str = "mean") -> None:
        check_number("data_range", data_range, low=0.0, low_open=True)
        check_number("eps", eps, low=0.0, low_open=True)
        super().__init__(reduction, data_range=float(data_range), eps=float(eps))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return psnr_loss(input, target, reduction=self.reduction, **self.options)


class TotalVariationLoss(_ImageLoss):
    """Module form of :func:`total_variation_loss`.

    Example:
        >>> TotalVariationLoss()(torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]))
        tensor(2.)
    """

    def __init__(self, isotropic: bool = False, normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction, isotropic=bool(isotropic), normalize=bool(normalize))

    def forward(self, input: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return total_variation_loss(input, weight, reduction=self.reduction, **self.options)


_FAMILY = "image"
register(
    "ssim",
    SSIMLoss,
    family=_FAMILY,
    functional=ssim_loss,
    source="Wang et al. 2004",
    notes="1 - SSIM; separable Gaussian window, 2-D and 3-D; equals scikit-image's",
)
register(
    "ms_ssim",
    MSSSIMLoss,
    family=_FAMILY,
    functional=ms_ssim_loss,
    source="Wang et al. 2003",
    notes="1 - MS-SSIM; the paper's 5 scale weights; sides >= 161 at the defaults",
)
register(
    "psnr",
    PSNRLoss,
    family=_FAMILY,
    functional=psnr_loss,
    source="-",
    notes="negative PSNR in dB per sample (kornia's sign); finite for identical images",
)
register(
    "total_variation",
    TotalVariationLoss,
    family=_FAMILY,
    functional=total_variation_loss,
    source="Rudin et al. 1992",
    notes="anisotropic (L1) or isotropic; 1-3 spatial dims",
    aliases=("tv",),
)
