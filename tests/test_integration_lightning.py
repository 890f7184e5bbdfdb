"""The Lightning example: a YAML-configured composite loss trains and reaches the logger."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")
yaml = pytest.importorskip("yaml")
pytest.importorskip("sklearn")

from lightning.pytorch.loggers.logger import Logger  # noqa: E402

import losskit  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_digits.py"


def _example():
    spec = importlib.util.spec_from_file_location("lightning_digits", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Memory(Logger):
    """Keeps every logged metric in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_config_builds_the_weighted_sum():
    ex = _example()
    cfg = yaml.safe_load(ex.CONFIG)
    loss_fn = losskit.build(cfg["loss"])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 10, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g)
    logp = torch.log_softmax(x, 1)
    pt = logp.exp().gather(1, y[:, None]).squeeze(1)
    focal = (-(1 - pt) ** 2 * logp.gather(1, y[:, None]).squeeze(1)).mean()
    ce = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
    torch.testing.assert_close(loss_fn(x, y), focal + 0.5 * ce)
    torch.testing.assert_close(loss_fn.last_terms["focal"], focal)
    torch.testing.assert_close(loss_fn.last_terms["cross_entropy"], ce)


def test_trains_and_logs_every_term(tmp_path):
    ex = _example()
    L.seed_everything(0, verbose=False)
    model = ex.DigitsClassifier(yaml.safe_load(ex.CONFIG))
    logger = _Memory()
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, ex.digits_loader())
    rows = [r for r in logger.rows if "train/loss" in r]
    assert len(rows) >= 25
    for r in rows:
        assert {"train/focal", "train/cross_entropy"} <= set(r)
        # the logged total is the configured weighted sum of the logged terms
        assert r["train/loss"] == pytest.approx(r["train/focal"] + 0.5 * r["train/cross_entropy"], rel=1e-5)
    first = sum(r["train/loss"] for r in rows[:5]) / 5
    last = sum(r["train/loss"] for r in rows[-5:]) / 5
    assert last < first
