"""Lab machinery shared by every experiment: run context, results, seeding, API guards, small models."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ExperimentResult",
    "Figure",
    "LabContext",
    "Unavailable",
    "atomic_write_bytes",
    "atomic_write_text",
    "make_mlp",
    "require",
    "rng_for",
    "seed_torch",
]

MODES = ("full", "quick", "tiny")


class Unavailable(RuntimeError):
    """Raised by an experiment whose losses are not (yet) part of the public API; the run reports it as skipped."""


def require(*names: str) -> list[Any]:
    """The public ``losskit`` / ``losskit.functional`` objects named, or :class:`Unavailable`.

    Functional names (``snake_case``) are looked up in :mod:`losskit.functional`, module names in :mod:`losskit`.
    """
    import losskit
    import losskit.functional as LF

    found: list[Any] = []
    missing: list[str] = []
    for name in names:
        obj = getattr(LF, name, None) if name[:1].islower() else getattr(losskit, name, None)
        if obj is None:
            missing.append(name)
        found.append(obj)
    if missing:
        raise Unavailable(f"{', '.join(missing)} not available")
    return found


@dataclass
class Figure:
    """A PNG written by an experiment, relative to the output directory."""

    path: str
    caption: str


@dataclass
class ExperimentResult:
    """What an experiment measured. ``methods[m]`` holds one primary-metric value per seed (same seed order)."""

    name: str
    title: str
    metric: str
    higher_is_better: bool
    baseline: str
    setup: str = ""
    methods: dict[str, list[float]] = field(default_factory=dict)
    # metric name -> (higher_is_better, {method: per-seed values})
    secondary: dict[str, tuple[bool, dict[str, list[float]]]] = field(default_factory=dict)
    reference_methods: tuple[
        str, ...
    ] = ()  # shown, but not compared as candidates (e.g. a clean-data ceiling)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    conclusion: str | None = None  # when the experiment phrases its own (still from the numbers)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LabContext:
    """Settings of one lab run, handed to every experiment."""

    mode: str = "full"
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    out_dir: Path = Path("lab-out")
    threads: int = 2
    progress: bool = True
    # set in worker processes: progress messages go to the parent, which draws the bars
    queue: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.out_dir = Path(self.out_dir)

    def pick(self, full: Any, quick: Any, tiny: Any) -> Any:
        """The value for this run's size."""
        return {"full": full, "quick": quick, "tiny": tiny}[self.mode]

    def bar(self, total: int, desc: str) -> Any:
        """A tqdm progress bar on stderr (a no-op stand-in when progress is off or tqdm is missing)."""
        if self.progress and self.queue is not None:
            return _QueueBar(self.queue, desc, total)
        if self.progress:
            try:
                from tqdm.auto import tqdm

                return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm is a lab extra
                pass
        return _NullBar()

    def runs(self, name: str, methods: Iterable[str]) -> Iterator[tuple[str, int]]:
        """Every (method, seed) pair, with a progress bar."""
        methods = list(methods)
        bar = self.bar(len(methods) * len(self.seeds), name)
        try:
            for seed in self.seeds:
                for method in methods:
                    bar.set_postfix_str(f"{method} seed={seed}", refresh=False)
                    yield method, seed
                    bar.update(1)
        finally:
            bar.close()

    def figure(self, fig: Any, filename: str, caption: str) -> Figure:
        """Save a matplotlib figure atomically into the output directory and close it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        finally:
            plt.close(fig)
        atomic_write_bytes(self.out_dir / filename, buf.getvalue())
        return Figure(filename, caption)


class _QueueBar:
    """Progress reported from a worker process to the parent's tqdm bars."""

    def __init__(self, queue: Any, desc: str, total: int) -> None:
        self.queue, self.desc = queue, desc
        queue.put((desc, "open", total))

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.queue.put((self.desc, "postfix", text))

    def update(self, n: int = 1) -> None:
        self.queue.put((self.desc, "update", n))

    def close(self) -> None:
        self.queue.put((self.desc, "close", 0))


class _NullBar:
    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _umask() -> int:
    """The process umask (read by setting it and putting it back: there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync, then ``os.replace`` it into place.

    ``mkstemp`` creates the temporary file with mode 0600; it gets the mode a plain ``open`` would
    give (0666 minus the umask) before it replaces ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _stable_hash(*parts: Any) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def rng_for(experiment: str, seed: int, stream: str = "data") -> np.random.Generator:
    """A numpy generator for (experiment, seed, stream): data splits are the same for every method of a seed."""
    return np.random.default_rng([seed, _stable_hash(experiment, stream)])


def seed_torch(experiment: str, seed: int, stream: str = "model") -> torch.Generator:
    """Seed torch's global generator for (experiment, seed, stream) and return a matching generator.

    Every method of one seed gets the same initial weights and the same batch order, so differences
    between methods are paired.
    """
    value = (seed * 1_000_003 + _stable_hash(experiment, stream)) % (2**63 - 1)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def make_mlp(sizes: list[int], activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain MLP ``sizes[0] -> ... -> sizes[-1]`` (no activation after the last layer)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def cosine_lr(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches drawn epoch by epoch from a seeded permutation (full batch if ``batch_size >= n``)."""
    if batch_size >= n:
        idx = torch.arange(n)
        for _ in range(steps):
            yield idx
        return
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        yield perm[pos : pos + batch_size]
        pos += batch_size
