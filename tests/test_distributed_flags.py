"""``gather_distributed=True`` of the ratio-of-sums losses under real DDP (2 gloo processes, SGD).

Each rank holds different rows of a global batch; with the flag, DDP's gradient averaging must give
exactly the gradients (and, after a few SGD steps, the parameters) of one process training on the
concatenated batch. Without a process group the flag changes nothing. Helpers (training loop,
batches, comparisons) come from ``test_distributed``.
"""

from __future__ import annotations

from typing import Any

import torch

import losskit
import losskit.distributed as D
from ddp_utils import run_distributed
from test_distributed import (
    _assert_ranks_agree,
    _assert_same_run,
    _det_model,
    _grad_gap,
    _rank_or_none,
    _rows,
    _seg_model,
    _train,
    det_batch,
    seg_batch,
)

LF = losskit.functional


# ---------------------------------------------------------------------------- detection: positives count


def _det_flag_run(variant: str, sizes: list[int] | None) -> dict[str, Any]:
    """'function' / 'module' pass gather_distributed=True; 'local' divides by this rank's positives."""
    rows = _rows(4, sizes, _rank_or_none())
    module = losskit.DetectionLoss(gather_distributed=True)

    def step_loss(model: torch.nn.Module, step: int) -> None:
        feats, labels, boxes = (t[rows] for t in det_batch(step))
        out = model(feats)
        args = (out[..., :2], labels, out[..., 2:], boxes)
        if variant == "module":
            loss = module(*args)
        else:
            loss = LF.detection_loss(*args, gather_distributed=variant == "function")
        loss.backward()

    return _train(_det_model, step_loss)


def _det_flag_worker(rank: int, world: int, sizes: list[int] | None) -> dict[str, Any]:
    return {v: _det_flag_run(v, sizes) for v in ("function", "module", "local")}


def test_ddp_detection_loss_flag_matches_single_process():
    # images 0-1 hold 6 positive anchors, images 2-3 one: rank 0 has 6 positives, rank 1 only 1
    results = run_distributed(_det_flag_worker, None)
    ref = _det_flag_run("local", None)  # one process: max(1, N_pos) over the whole batch
    _assert_ranks_agree([r["function"] for r in results])
    _assert_same_run(results[0]["function"], ref)
    _assert_same_run(results[0]["module"], ref)
    assert _grad_gap(results[0]["local"], ref) > 0.05  # each rank dividing by its own positives


def test_ddp_detection_loss_flag_uneven_batches():
    results = run_distributed(_det_flag_worker, [3, 1])
    ref = _det_flag_run("local", None)
    _assert_ranks_agree([r["function"] for r in results])
    _assert_same_run(results[0]["function"], ref)


def test_detection_flag_without_process_group_changes_nothing():
    assert not D.is_initialized()
    feats, labels, boxes = det_batch(0)
    out = torch.nn.Linear(3, 6).to(feats.dtype)(feats)
    args = (out[..., :2], labels, out[..., 2:], boxes)
    torch.testing.assert_close(
        LF.detection_loss(*args, gather_distributed=True), LF.detection_loss(*args), rtol=0, atol=0
    )
    norm = 3.5  # an explicit normalizer takes precedence over the flag
    torch.testing.assert_close(
        LF.detection_loss(*args, normalizer=norm, gather_distributed=True),
        LF.detection_loss(*args, normalizer=norm),
        rtol=0,
        atol=0,
    )
    module = losskit.DetectionLoss(gather_distributed=True)
    assert module.gather_distributed
    torch.testing.assert_close(module(*args), LF.detection_loss(*args), rtol=0, atol=0)


# ---------------------------------------------------------------------------- Dice family


def _seg_flag_run(kind: str, flag: bool) -> dict[str, Any]:
    """Uneven split (3 images on rank 0, 1 on rank 1): per-rank means are a different objective."""
    rows = _rows(4, [3, 1], _rank_or_none())

    def step_loss(model: torch.nn.Module, step: int) -> None:
        x, y = (t[rows] for t in seg_batch(step))
        logits = model(x)
        if kind == "dice_per_image":
            loss = LF.dice_loss(logits, y, smooth=1.0, gather_distributed=flag)
        elif kind == "dice_per_image_weighted":
            w = torch.tensor([0.3, 1.7], dtype=logits.dtype)
            loss = LF.dice_loss(logits, y, smooth=1.0, weight=w, gather_distributed=flag)
        elif kind == "tversky_module_batch":
            fn = losskit.TverskyLoss(
                alpha=0.3, beta=0.7, batch_dice=True, smooth=1.0, gather_distributed=flag
            )
            loss = fn(logits, y)
        elif kind == "generalized_dice_batch":
            loss = LF.generalized_dice_loss(logits, y, batch_dice=True, smooth=1.0, gather_distributed=flag)
        else:
            loss = LF.generalized_dice_loss(logits, y, smooth=1.0, gather_distributed=flag)
        loss.backward()

    return _train(_seg_model, step_loss)


SEG_KINDS = (
    "dice_per_image",
    "dice_per_image_weighted",
    "tversky_module_batch",
    "generalized_dice_batch",
    "generalized_dice_per_image",
)


def _seg_flag_worker(rank: int, world: int) -> dict[str, Any]:
    return {k: {"flag": _seg_flag_run(k, True), "local": _seg_flag_run(k, False)} for k in SEG_KINDS}


def test_ddp_dice_family_flag_matches_single_process():
    results = run_distributed(_seg_flag_worker)
    for kind in SEG_KINDS:
        ref = _seg_flag_run(kind, False)  # one process over the whole batch
        _assert_ranks_agree([r[kind]["flag"] for r in results])
        _assert_same_run(results[0][kind]["flag"], ref)
        assert _grad_gap(results[0][kind]["local"], ref) > 1e-3, kind  # without the flag: another objective


def test_dice_flag_without_process_group_changes_nothing():
    assert not D.is_initialized()
    x, y = seg_batch(0)
    logits = torch.nn.Conv2d(3, 2, 1).to(x.dtype)(x)
    for fn in (
        LF.dice_loss,
        LF.jaccard_loss,
        LF.tversky_loss,
        LF.focal_tversky_loss,
        LF.generalized_dice_loss,
    ):
        for batch_dice in (False, True):
            for reduction in ("mean", "sum", "none"):
                a = fn(logits, y, batch_dice=batch_dice, reduction=reduction, gather_distributed=True)
                b = fn(logits, y, batch_dice=batch_dice, reduction=reduction)
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    for cls in (losskit.DiceLoss, losskit.JaccardLoss, losskit.TverskyLoss, losskit.FocalTverskyLoss):
        module = cls(batch_dice=True, gather_distributed=True)
        assert module.gather_distributed
        torch.testing.assert_close(module(logits, y), cls(batch_dice=True)(logits, y), rtol=0, atol=0)
    module = losskit.GeneralizedDiceLoss(gather_distributed=True)
    torch.testing.assert_close(module(logits, y), losskit.GeneralizedDiceLoss()(logits, y), rtol=0, atol=0)
