"""Conformance input factories of the segmentation losses beyond the overlap family (Lovász, distance, topology)."""

from __future__ import annotations

import torch

from test_conformance import Case, _ints, _randn


def _binary_seg(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _randn(2, 1, 5, 5, seed=90, dtype=dtype, scale=2), _ints(2, (2, 5, 5), 90)


def _multiclass_seg(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _randn(2, 3, 5, 5, seed=91, dtype=dtype, scale=2), _ints(3, (2, 5, 5), 91)


CASES: dict[str, Case] = {
    "lovasz_hinge": Case(_binary_seg, logits=(0,)),
    # per image, so that 'none' is (N,); the pooled default is tested in test_segmentation_lovasz.py
    "lovasz_softmax": Case(
        _multiclass_seg, logits=(0,), module_kw={"per_image": True}, functional_kw={"per_image": True}
    ),
    "mcc": Case(_binary_seg, logits=(0,)),
    # Dice + CE / focal: one weighted sum of two means, no reduction argument
    "dice_ce": Case(_multiclass_seg, logits=(0,), reductions=()),
    "dice_focal": Case(_multiclass_seg, logits=(0,), reductions=()),
    "boundary": Case(_multiclass_seg, logits=(0,)),
    "hausdorff_dt": Case(_multiclass_seg, logits=(0,)),
    "cl_dice": Case(_multiclass_seg, logits=(0,)),
    "dice_cl_dice": Case(_multiclass_seg, logits=(0,)),
}
