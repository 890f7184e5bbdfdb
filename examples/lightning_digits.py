"""A LightningModule whose loss comes from a YAML config through ``losskit.build``.

The config describes a composite loss (focal + label-smoothed cross-entropy); every term's last value
(``WeightedSum.last_terms``) goes to the logger next to the total. Runs on CPU in seconds on
scikit-learn's bundled digits::

    python examples/lightning_digits.py --max-steps 50

Needs the ``lightning`` extra (``pip install 'losskit[lightning]'``) and scikit-learn.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import losskit

CONFIG = """
model:
  hidden: 64
optim:
  lr: 0.05
loss:
  - {name: focal, gamma: 2.0, weight: 1.0}
  - {name: cross_entropy, label_smoothing: 0.1, weight: 0.5}
"""


def digits_loader(batch_size: int = 64, seed: int = 0) -> DataLoader:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


class DigitsClassifier(L.LightningModule):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters(config)
        hidden = int(config["model"]["hidden"])
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.loss_fn = losskit.build(config["loss"])  # a WeightedSum for a list of configs
        self.lr = float(config["optim"]["lr"])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        # the total and each term's last value, e.g. train/focal and train/cross_entropy
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in self.loss_fn.last_terms.items()})
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> DigitsClassifier:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=50)
    args = p.parse_args(argv)
    L.seed_everything(0, verbose=False)
    model = DigitsClassifier(yaml.safe_load(CONFIG))
    trainer = L.Trainer(
        max_steps=args.max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, digits_loader())
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
    return model


if __name__ == "__main__":
    main()
