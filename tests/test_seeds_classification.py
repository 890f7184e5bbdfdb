"""Seed 000's FocalLoss / WeightedCrossEntropyLoss examples, run with only the import changed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ref_ce_rows(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-row cross-entropy in float64, written out."""
    out = []
    for i in range(x.shape[0]):
        row = [float(v) for v in x[i].double()]
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        out.append(lse - row[int(y[i])])
    return out


def _seed_focal_formula(inputs, targets, alpha=1, gamma=2, reduction="mean"):
    """The seed's own FocalLoss.forward, re-typed as a reference (softmax focal, scalar alpha)."""
    bce_loss = F.cross_entropy(inputs, targets, reduction="none")
    pt = torch.exp(-bce_loss)
    f_loss = alpha * (1 - pt) ** gamma * bce_loss
    if reduction == "mean":
        return f_loss.mean()
    if reduction == "sum":
        return f_loss.sum()
    return f_loss


def test_seed_focal_example():
    from losskit import FocalLoss

    torch.manual_seed(0)
    # --- seed example (only the import changed)
    inputs = torch.randn(16, 10)  # Predicted logits (batch_size, num_classes)
    targets = torch.randint(0, 10, (16,))  # True labels (batch_size)
    loss_fn = FocalLoss()  # Initialize Focal Loss function
    loss = loss_fn(inputs, targets)  # Calculate loss
    # --- checks
    ce = _ref_ce_rows(inputs, targets)
    expected = sum((1 - math.exp(-c)) ** 2 * c for c in ce) / 16
    assert abs(float(loss) - expected) < 1e-6
    torch.testing.assert_close(loss, _seed_focal_formula(inputs, targets))


def test_seed_focal_formula_all_reductions_and_alpha():
    from losskit import FocalLoss

    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(12, 5, generator=g) * 3
    targets = torch.randint(0, 5, (12,), generator=g)
    for alpha, gamma in ((1, 2), (0.25, 2), (2.0, 0.5), (1, 0)):
        for reduction in ("none", "mean", "sum"):
            ours = FocalLoss(alpha, gamma, reduction)(inputs, targets)
            torch.testing.assert_close(ours, _seed_focal_formula(inputs, targets, alpha, gamma, reduction))


def test_seed_composite_usage_of_focal():
    # seed's CompositeLoss builds FocalLoss(alpha, gamma, reduction='mean') positionally
    from losskit import FocalLoss

    focal = FocalLoss(1, 2, reduction="mean")
    cls_preds = torch.randn(16, 10)
    cls_targets = torch.randint(0, 10, (16,))
    ce = _ref_ce_rows(cls_preds, cls_targets)
    expected = sum((1 - math.exp(-c)) ** 2 * c for c in ce) / 16
    assert abs(float(focal(cls_preds, cls_targets)) - expected) < 1e-6


def test_seed_weighted_cross_entropy_example():
    from losskit import WeightedCrossEntropyLoss

    torch.manual_seed(0)
    # --- seed example (only the import changed)
    class_weights = torch.tensor([0.1, 0.9])  # Example class weights for a binary classification task
    preds = torch.randn(16, 2)  # Predicted class logits (batch_size, num_classes)
    targets = torch.randint(0, 2, (16,))  # True class labels (batch_size)
    loss_fn = WeightedCrossEntropyLoss(weights=class_weights)
    loss = loss_fn(preds, targets)
    # --- checks: torch's weighted mean sum(w_y l) / sum(w_y), written out
    ce = _ref_ce_rows(preds, targets)
    w = [float(class_weights[int(t)]) for t in targets]
    expected = sum(wi * c for wi, c in zip(w, ce)) / sum(w)
    assert abs(float(loss) - expected) < 1e-6
    torch.testing.assert_close(loss, F.cross_entropy(preds, targets, weight=class_weights))
    for reduction in ("none", "sum"):
        torch.testing.assert_close(
            WeightedCrossEntropyLoss(class_weights, reduction)(preds, targets),
            F.cross_entropy(preds, targets, weight=class_weights, reduction=reduction),
        )
    # no weights: plain cross-entropy
    torch.testing.assert_close(WeightedCrossEntropyLoss()(preds, targets), F.cross_entropy(preds, targets))


def test_seed_weights_attribute_is_settable():
    from losskit import WeightedCrossEntropyLoss

    loss_fn = WeightedCrossEntropyLoss()
    preds, targets = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 1])
    loss_fn.weights = torch.tensor([0.2, 0.8])
    assert set(loss_fn.state_dict()) == {"weight"}
    torch.testing.assert_close(
        loss_fn(preds, targets), F.cross_entropy(preds, targets, weight=torch.tensor([0.2, 0.8]))
    )
