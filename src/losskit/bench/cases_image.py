"""``losskit bench`` cases for the image-quality losses, beside the eager code people copy.

Shape ``(N, C, H, W)``: a prediction (which receives the gradient) and a target in ``[0, 1]``, float32.

* ``ssim``: ``1 - SSIM`` (Gaussian window 11, sigma 1.5, valid positions) vs the pytorch-msssim-style
  eager code (a separable Gaussian filter called once per map: five calls of two convolutions each)
  and vs the full 11x11 window in one ``conv2d`` per map; ``F.mse_loss`` is the floor.

pytorch-msssim's ``SSIM`` module is added as a peer when it is installed (the ``peers`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .cases import Case, Inputs, Shape, Variant, _lf, _peer, register_case

__all__ = ["eager_ssim_full_window", "eager_ssim_separable"]

WIN, SIGMA, C1, C2 = 11, 1.5, 0.01**2, 0.03**2


def _window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(WIN, dtype=dtype, device=device) - WIN // 2
    g = torch.exp(-(coords**2) / (2 * SIGMA**2))
    return g / g.sum()


def _ssim_from(
    filt: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    mu1, mu2 = filt(x), filt(y)
    mu1_sq, mu2_sq, mu12 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    s1 = filt(x * x) - mu1_sq
    s2 = filt(y * y) - mu2_sq
    s12 = filt(x * y) - mu12
    cs = (2 * s12 + C2) / (s1 + s2 + C2)
    ssim_map = ((2 * mu12 + C1) / (mu1_sq + mu2_sq + C1)) * cs
    loss: torch.Tensor = 1 - ssim_map.flatten(2).mean(-1).mean()
    return loss


def eager_ssim_separable(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The pytorch-msssim recipe: a separable Gaussian filter applied to each map on its own."""
    c = x.shape[1]
    g = _window(x.device, x.dtype)
    wh = g.reshape(1, 1, WIN, 1).repeat(c, 1, 1, 1)
    ww = g.reshape(1, 1, 1, WIN).repeat(c, 1, 1, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wh, groups=c), ww, groups=c)

    return _ssim_from(filt, x, y)


def eager_ssim_full_window(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The common single-file recipe: the full 2-D window, one ``conv2d`` per map."""
    c = x.shape[1]
    g = _window(x.device, x.dtype)
    w2 = (g[:, None] * g[None, :]).expand(c, 1, WIN, WIN).contiguous()
    return _ssim_from(lambda t: F.conv2d(t, w2, groups=c), x, y)


def make_images(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g)
    pred = (target + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return (pred.to(dtype), target.to(dtype)), (0,)


def _ssim_variants() -> list[Variant]:
    LF = _lf()
    out = [
        Variant("losskit.ssim_loss", "losskit", lambda x, y: LF.ssim_loss(x, y)),
        Variant("eager (full 11x11 window per map)", "eager", eager_ssim_full_window),
        # the ratio baseline (the last eager row): the code most users copy
        Variant("eager (separable Gaussian per map, pytorch-msssim style)", "eager", eager_ssim_separable),
        Variant("F.mse_loss", "native", F.mse_loss),
    ]
    kornia: Any = _peer("kornia.losses")
    if kornia is not None:  # 'valid' padding as losskit; kornia returns (1 - SSIM) / 2, doubled here
        out.append(
            Variant(
                "kornia ssim_loss (padding='valid')",
                "peer",
                lambda x, y: 2 * kornia.ssim_loss(x, y, 11, max_val=1.0, padding="valid"),
            )
        )
    monai: Any = _peer("monai.losses")
    if monai is not None:
        loss = monai.SSIMLoss(spatial_dims=2, data_range=1.0)
        out.append(Variant("MONAI SSIMLoss", "peer", lambda x, y: loss(x, y)))
    pm: Any = _peer("pytorch_msssim")
    if pm is not None:
        out.append(
            Variant(
                "pytorch-msssim SSIM",
                "peer",
                lambda x, y: 1 - pm.ssim(x, y, data_range=1.0, size_average=True),
            )
        )
    return out


_IMG, _IMG_QUICK = (16, 4, 128, 128), (2, 4, 24, 24)
_IMG_SCALING = [(4, 4, 128, 128), (16, 4, 128, 128), (16, 16, 128, 128), (16, 4, 256, 256)]

register_case(
    Case(
        "ssim",
        make_images,
        _IMG,
        _IMG_QUICK,
        _ssim_variants,
        _IMG_SCALING,
        note="prediction and target in [0, 1]; window 11, sigma 1.5",
    )
)
