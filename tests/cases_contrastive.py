"""Conformance input factories of the image-text and self-supervised losses (CLIP, SigLIP, VICReg,
Barlow Twins)."""

from __future__ import annotations

import math

import torch

import losskit.functional as LF
from test_conformance import Case, _randn


def _image_text(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _randn(6, 4, seed=90, dtype=dtype, scale=2), _randn(6, 4, seed=91, dtype=dtype, scale=2)


def _views(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # small values: VICReg's covariance term is quartic, its gradient at the half-precision tests'
    # 1000x scale must stay inside fp16's range
    a = _randn(7, 4, seed=92, dtype=dtype, scale=0.02)
    return a, a + _randn(7, 4, seed=93, dtype=dtype, scale=0.01)


def _clip_ref(img, txt, **kw):  # the module's initial parameter, a float32 log-scale
    return LF.clip_loss(img, txt, torch.tensor(math.log(1 / 0.07)), **kw)


def _siglip_ref(img, txt, **kw):
    return LF.siglip_loss(img, txt, torch.tensor(math.log(10.0)), torch.tensor(-10.0), chunk_size=4, **kw)


CASES: dict[str, Case] = {
    # the modules own logit_scale (and bias); 'sum' is not a sum of independent samples
    "clip": Case(_image_text, wrt=(0, 1), ref=_clip_ref, per_sample=False),
    # chunk_size=4 on B=6: two blocks of the recomputing function
    "siglip": Case(_image_text, wrt=(0, 1), ref=_siglip_ref, per_sample=False, module_kw={"chunk_size": 4}),
    "vicreg": Case(_views, wrt=(0, 1), reductions=(), per_sample=False),
    "barlow_twins": Case(_views, wrt=(0, 1), reductions=(), per_sample=False),
}
