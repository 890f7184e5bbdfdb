"""Bundled data for the lab: scikit-learn's small data sets, generated images, and stdlib docstring text.

Nothing is downloaded: diabetes, digits and breast-cancer ship inside scikit-learn; images are drawn
from a seeded generator; the text is the docstrings of standard-library modules.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Split",
    "boxes_images",
    "breast_cancer",
    "diabetes",
    "digits",
    "long_tailed_indices",
    "segmentation_images",
    "split_indices",
    "standardize",
    "stdlib_corpus",
]


def _sklearn_datasets() -> types.ModuleType:
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - sklearn is a lab extra
        raise ImportError("losskit lab needs scikit-learn: pip install 'losskit[lab]'") from exc
    module: types.ModuleType = datasets
    return module


@functools.cache
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    """442 x 10 inputs and the raw disease-progression target (about 25..346)."""
    d = _sklearn_datasets().load_diabetes(scaled=False)
    return d.data.astype(np.float64), d.target.astype(np.float64)


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """1797 8x8 digit images (pixel values 0..16) flattened to 64 columns, labels 0..9."""
    d = _sklearn_datasets().load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64)


@functools.cache
def breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """569 x 30 features, binary labels, feature names."""
    d = _sklearn_datasets().load_breast_cancer()
    return d.data.astype(np.float64), d.target.astype(np.int64), list(d.feature_names)


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    test: np.ndarray


def split_indices(
    n: int, test_fraction: float, rng: np.random.Generator, labels: np.ndarray | None = None
) -> Split:
    """Random train/test split (stratified by ``labels`` when given)."""
    if labels is None:
        perm = rng.permutation(n)
        n_test = round(n * test_fraction)
        return Split(np.sort(perm[n_test:]), np.sort(perm[:n_test]))
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(len(idx) * test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test)))


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale columns by the training mean / std (std 0 -> 1) and apply the same map to ``others``."""
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(a - mu) / sd for a in (train, *others)]


def long_tailed_indices(
    labels: np.ndarray, ratio: float, rng: np.random.Generator, class_order: np.ndarray | None = None
) -> np.ndarray:
    """Subsample to an exponential long-tailed profile (Cui et al. 2019): ``n_i = n_max * ratio^(-i/(C-1))``.

    ``class_order`` says which class is the i-th most frequent (identity when None). Every class keeps at
    least one example.
    """
    classes = np.unique(labels)
    c = len(classes)
    order = classes if class_order is None else np.asarray(class_order)
    n_max = min(int((labels == k).sum()) for k in classes)
    keep = []
    for rank, k in enumerate(order):
        n_k = max(1, int(n_max * ratio ** (-rank / (c - 1))))
        idx = rng.permutation(np.flatnonzero(labels == k))[:n_k]
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def _disk(h: int, w: int, cy: torch.Tensor, cx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    return ((yy - cy.view(-1, 1, 1)) ** 2 + (xx - cx.view(-1, 1, 1)) ** 2) <= r.view(-1, 1, 1) ** 2


def segmentation_images(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with one small bright disk (the foreground, radius 1.5-2.5 px) and a distractor.

    The distractor is a straight bar of the same brightness (1 px thick, 5-9 px long), so intensity alone
    cannot separate them; the mask marks the disk only (about 1-3% of the pixels). Returns images
    ``(n, 1, size, size)`` and float masks of the same shape.
    """
    g = generator
    r = 1.5 + torch.rand(n, generator=g)
    cy = 3 + torch.rand(n, generator=g) * (size - 6)
    cx = 3 + torch.rand(n, generator=g) * (size - 6)
    mask = _disk(size, size, cy, cx, r)
    # distractor: a horizontal or vertical bar away from the disk
    length = torch.randint(5, 10, (n,), generator=g)
    vertical = torch.rand(n, generator=g) < 0.5
    bar = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        for _ in range(20):
            y0 = int(torch.randint(1, size - 1, (1,), generator=g))
            x0 = int(torch.randint(1, size - int(length[i]) - 1, (1,), generator=g))
            if vertical[i]:
                y0, x0 = x0, y0
                ys, xs = slice(y0, y0 + int(length[i])), slice(x0, x0 + 1)
            else:
                ys, xs = slice(y0, y0 + 1), slice(x0, x0 + int(length[i]))
            cand = torch.zeros(size, size, dtype=torch.bool)
            cand[ys, xs] = True
            if not (cand & _dilate(mask[i], 2)).any():
                bar[i] = cand
                break
    img = 0.35 * torch.randn(n, size, size, generator=g)
    ramp = torch.linspace(-0.3, 0.3, size)
    tilt = torch.rand(n, 1, 1, generator=g) * 2 - 1
    img = img + tilt * ramp.view(1, 1, size)
    img = img + mask.float() + bar.float()
    return img.unsqueeze(1), mask.float().unsqueeze(1)


def _dilate(m: torch.Tensor, k: int) -> torch.Tensor:
    x = m.float().view(1, 1, *m.shape)
    return torch.nn.functional.max_pool2d(x, 2 * k + 1, stride=1, padding=k).view(m.shape) > 0


SHAPES = ("square", "disk", "cross")


def boxes_images(
    n: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy images with exactly one object: a filled square, a disk or a cross, 6-16 px across.

    Returns images ``(n, 1, size, size)``, labels ``(n,)`` in ``0..2`` (``SHAPES``) and boxes ``(n, 4)``
    as ``(x1, y1, x2, y2)`` in units of the image size (0..1).
    """
    g = generator
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    side = torch.randint(6, 17, (n,), generator=g)
    img = 0.3 * torch.randn(n, size, size, generator=g)
    boxes = torch.zeros(n, 4)
    yy = torch.arange(size, dtype=torch.float32).view(size, 1)
    xx = torch.arange(size, dtype=torch.float32).view(1, size)
    for i in range(n):
        s = int(side[i])
        x0 = int(torch.randint(0, size - s + 1, (1,), generator=g))
        y0 = int(torch.randint(0, size - s + 1, (1,), generator=g))
        cy, cx, r = y0 + (s - 1) / 2, x0 + (s - 1) / 2, s / 2
        inside = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
        if int(labels[i]) == 1:
            shape = inside & ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2)
        elif int(labels[i]) == 2:
            t = max(1, s // 4)
            shape = inside & (((yy - cy).abs() < t / 2 + 0.5) | ((xx - cx).abs() < t / 2 + 0.5))
        else:
            shape = inside
        img[i] += shape.float()
        ys, xs = torch.nonzero(shape, as_tuple=True)
        boxes[i] = torch.tensor(
            [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1], dtype=torch.float32
        )
    return img.unsqueeze(1), labels, boxes / size


_TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


@functools.lru_cache(maxsize=4)
def stdlib_corpus(vocab_size: int = 4096) -> tuple[torch.Tensor, list[str]]:
    """Word-level token ids of the docstrings of ~90 standard-library modules (their classes, functions,
    methods), lower-cased; the ``vocab_size - 1`` most frequent tokens plus ``<unk>`` (id 0).

    The docstrings are read by :mod:`losskit.lab.stdlib_text` in a fresh interpreter without
    site-packages (``python -S -s``, fixed hash seed), so what this process imported before cannot
    change the text: it depends on the Python build only (the report records the version).
    """
    script = Path(__file__).with_name("stdlib_text.py")
    env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run(
        [sys.executable, "-S", "-s", "-W", "ignore", str(script)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=env,
    )
    docs: list[str] = json.loads(proc.stdout)
    words = _TOKEN.findall("\n".join(docs).lower())
    counts = Counter(words)
    vocab = ["<unk>"] + [
        w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 1]
    ]
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index.get(w, 0) for w in words], dtype=torch.long)
    return ids, vocab
