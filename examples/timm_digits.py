"""A timm image classifier trained with a class-balanced focal loss on an imbalanced digits set.

The model is built from timm's registry with random weights (``pretrained=False``: nothing is
downloaded); the 8x8 digit images are upsampled to 32x32 and the training set keeps only a tenth of
the samples of classes 5-9, so the class-balanced weights (effective number of samples, Cui et al.
2019) matter::

    python examples/timm_digits.py --model resnet10t --steps 40

Needs ``timm`` (``pip install 'losskit[timm]'``) and scikit-learn. :func:`train` takes any
``nn.Module`` mapping ``(B, 1, 32, 32)`` images to ``(B, 10)`` logits.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import losskit


def imbalanced_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits images ``(N, 1, 32, 32)`` in [0, 1] and labels; classes 5-9 keep a tenth of their samples."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    keep = (y < 5) | (torch.rand(y.shape, generator=g) < 0.1)
    x = F.interpolate(x[keep], size=(32, 32), mode="bilinear", align_corners=False)
    return x, y[keep]


def train(model: nn.Module, steps: int = 40, batch_size: int = 64, lr: float = 0.05, seed: int = 0) -> list[float]:
    """SGD steps with ``FocalLoss(gamma=2, weight=class_weights(..., 'effective_number'))``; the losses."""
    x, y = imbalanced_digits(seed)
    weight = losskit.class_weights(y, num_classes=10, scheme="effective_number", beta=0.999)
    loss_fn = losskit.FocalLoss(gamma=2.0, weight=weight)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, y.numel(), (batch_size,), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def timm_model(name: str = "resnet10t") -> nn.Module:
    import timm  # imports torchvision, which needs a torch build it was compiled against

    return timm.create_model(name, pretrained=False, num_classes=10, in_chans=1)


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    losses = train(timm_model(args.model), steps=args.steps)
    print(f"loss: first 5 steps {sum(losses[:5]) / 5:.4f}, last 5 steps {sum(losses[-5:]) / 5:.4f}")
    return losses


if __name__ == "__main__":
    main()
