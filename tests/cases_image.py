"""Conformance input factories of the image-quality losses (SSIM, MS-SSIM, PSNR, total variation)."""

from __future__ import annotations

import torch

from test_conformance import Case, _g, _randn


def _images(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(*shape, generator=_g(seed), dtype=torch.float64)
    y = (x + 0.2 * torch.randn(*shape, generator=_g(seed + 1), dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


SSIM_KW = {"win_size": 5}
MS_SSIM_KW = {"win_size": 3, "weights": (0.6, 0.4)}

CASES: dict[str, Case] = {
    "ssim": Case(
        lambda d: _images(d, (2, 2, 9, 9), 80), wrt=(0, 1), module_kw=SSIM_KW, functional_kw=SSIM_KW
    ),
    "ms_ssim": Case(
        lambda d: _images(d, (2, 1, 10, 10), 82), wrt=(0, 1), module_kw=MS_SSIM_KW, functional_kw=MS_SSIM_KW
    ),
    "psnr": Case(lambda d: _images(d, (3, 2, 4, 4), 84), wrt=(0, 1)),
    # per-sample weights: 'mean' is sum(w TV) / sum(w)
    "total_variation": Case(
        lambda d: (_randn(3, 2, 4, 5, seed=86, dtype=d), torch.rand(3, generator=_g(87)).to(d) + 0.5),
        count=lambda args: args[1].sum(),
    ),
}
