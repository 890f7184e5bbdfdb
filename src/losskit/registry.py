"""Build losses by name: ``build("focal", gamma=2.0)``, ``build({...})`` or a weighted sum ``build([...])``.

Each loss family registers its entries with :func:`register` when its module is imported; names are
the functional's name without the ``_loss`` suffix (``focal``, ``sigmoid_focal``, ``huber``, ...).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._checks import LossTypeError, LossValueError

__all__ = [
    "LossSpec",
    "WeightedSum",
    "aliases",
    "available",
    "build",
    "catalog_markdown",
    "get_spec",
    "register",
]


@dataclass(frozen=True)
class LossSpec:
    """Catalog entry of one buildable loss."""

    name: str
    module: Callable[..., nn.Module]
    family: str
    functional: Callable[..., Any] | None = None
    source: str = ""
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    module: Callable[..., nn.Module],
    *,
    family: str,
    functional: Callable[..., Any] | None = None,
    source: str = "",
    notes: str = "",
    aliases: Sequence[str] = (),
) -> LossSpec:
    """Add a loss to the registry (called at import time by each family module)."""
    if name in _REGISTRY and _REGISTRY[name].module is not module:
        raise LossValueError(f"loss name {name!r} is already registered")
    spec = LossSpec(name, module, family, functional, source, notes, tuple(aliases))
    _REGISTRY[name] = spec
    for alias in aliases:
        _ALIASES[alias] = name
    return spec


def available(family: str | None = None) -> list[str]:
    """Sorted registered names accepted by :func:`build` (optionally only one family).

    Each loss appears once; the alternative names :func:`build` also accepts are in :func:`aliases`.

    Example:
        >>> import losskit
        >>> "huber" in losskit.available()
        True
    """
    _load_all()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def aliases(family: str | None = None) -> dict[str, str]:
    """Alternative names :func:`build` accepts, mapped to the registered name they stand for.

    :func:`available` lists each loss once, under its registered name; an alias builds the same module.

    Example:
        >>> import losskit
        >>> losskit.aliases()["ce"]
        'cross_entropy'
        >>> "ce" in losskit.available()
        False
    """
    _load_all()
    return {
        alias: name
        for alias, name in sorted(_ALIASES.items())
        if family is None or _REGISTRY[name].family == family
    }


def get_spec(name: str) -> LossSpec:
    """The catalog entry for ``name`` (or one of its aliases)."""
    _load_all()
    if not isinstance(name, str):
        raise LossTypeError(f"loss name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY) + list(_ALIASES), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LossValueError(f"unknown loss {name!r}{hint} (see losskit.available())")
    return _REGISTRY[key]


class WeightedSum(nn.Module):
    """``sum_i weight_i * loss_i(*args, **kwargs)``: every term receives the same arguments.

    The last value of each term is kept (detached) in :attr:`last_terms` for logging.

    Example:
        >>> import losskit
        >>> loss_fn = losskit.build([{"name": "huber", "weight": 1.0}, {"name": "smooth_l1", "beta": 2.0, "weight": 0.5}])
        >>> loss_fn(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(1.8281)
        >>> sorted(loss_fn.last_terms)
        ['huber', 'smooth_l1']
    """

    def __init__(
        self, losses: Sequence[nn.Module], weights: Sequence[float], names: Sequence[str] | None = None
    ):
        super().__init__()
        if len(losses) != len(weights):
            raise LossValueError(f"got {len(losses)} losses but {len(weights)} weights")
        if len(losses) == 0:
            raise LossValueError("a weighted sum needs at least one loss")
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]
        self.names = list(names) if names is not None else [type(m).__name__ for m in losses]
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        terms: dict[str, torch.Tensor] = {}
        for name, w, loss in zip(self.names, self.weights, self.losses):
            value = loss(*args, **kwargs)
            key = name if name not in terms else f"{name}_{len(terms)}"
            terms[key] = value.detach()
            total = w * value if total is None else total + w * value
        self.last_terms = terms
        assert total is not None  # guaranteed by the constructor
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: {w}" for n, w in zip(self.names, self.weights))


def build(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]], **kwargs: Any) -> nn.Module:
    """Build a loss module from a name, a config mapping, or a list of weighted configs.

    Example:
        >>> import losskit
        >>> losskit.build("smooth_l1", beta=2.0)
        SmoothL1Loss(beta=2.0, reduction='mean')
        >>> losskit.build({"name": "huber", "delta": 0.5})
        HuberLoss(...)
    """
    if isinstance(spec, str):
        entry = get_spec(spec)
        _check_arguments(entry, kwargs)
        return entry.module(**kwargs)
    if isinstance(spec, Mapping):
        cfg = dict(spec)
        cfg.update(kwargs)
        if "name" not in cfg:
            raise LossValueError(f"a loss config needs a 'name' key, got keys {sorted(cfg)}")
        name = cfg.pop("name")
        if "weight" in cfg and not isinstance(cfg["weight"], torch.Tensor) and _is_number(cfg["weight"]):
            raise LossValueError(
                "a scalar 'weight' is only meaningful inside a list of losses (a weighted sum); "
                f"got weight={cfg['weight']!r} for {name!r}"
            )
        return build(name, **cfg)
    if isinstance(spec, Sequence):
        if kwargs:
            raise LossValueError("keyword arguments cannot be combined with a list of loss configs")
        modules, weights, names = [], [], []
        for i, item in enumerate(spec):
            if not isinstance(item, Mapping):
                raise LossTypeError(f"item {i} of the loss list must be a mapping, got {type(item).__name__}")
            cfg = dict(item)
            w = cfg.pop("weight", 1.0)
            if not _is_number(w):
                raise LossTypeError(f"item {i} of the loss list: weight must be a number, got {w!r}")
            if "name" not in cfg:
                raise LossValueError(f"item {i} of the loss list needs a 'name' key")
            names.append(str(cfg["name"]))
            modules.append(build(cfg))
            weights.append(float(w))
        return WeightedSum(modules, weights, names)
    raise LossTypeError(f"build() takes a name, a mapping or a list of mappings, got {type(spec).__name__}")


def _check_arguments(spec: LossSpec, kwargs: Mapping[str, Any]) -> None:
    """Name the loss and its accepted arguments when a config misses or misspells one."""
    try:
        sig = inspect.signature(spec.module)
    except (TypeError, ValueError):  # builtins without a signature: let the constructor decide
        return
    try:
        sig.bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(p for p in sig.parameters if p not in ("args", "kwargs"))
        raise LossTypeError(f"loss {spec.name!r}: {err}; it accepts ({accepted})") from None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def catalog_markdown() -> str:
    """The README catalog table, generated from the registry."""
    _load_all()
    lines = [
        "| loss | aliases | family | functional | module | paper / source | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in sorted(_REGISTRY.values(), key=lambda s: (s.family, s.name)):
        fn = spec.functional
        if fn is None:
            fname = "-"
        else:
            mod = getattr(fn, "__module__", "") or ""
            prefix = "losskit.functional." if mod.startswith("losskit") else f"{mod}."
            fname = f"`{prefix}{fn.__name__}`"
        mod_obj = spec.module
        mname = getattr(mod_obj, "__qualname__", getattr(mod_obj, "__name__", str(mod_obj)))
        mprefix = "losskit." if getattr(mod_obj, "__module__", "").startswith("losskit") else "torch.nn."
        alias = ", ".join(f"`{a}`" for a in sorted(spec.aliases)) or "-"
        lines.append(
            f"| `{spec.name}` | {alias} | {spec.family} | {fname} | `{mprefix}{mname}` | {spec.source} "
            f"| {spec.notes} |"
        )
    return "\n".join(lines)


CATALOG_START = "<!-- catalog:start (generated by `losskit catalog --write`) -->"
CATALOG_END = "<!-- catalog:end -->"


def update_readme_catalog(path: str) -> None:
    """Replace the table between the catalog markers of ``path`` with :func:`catalog_markdown`."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if CATALOG_START not in text or CATALOG_END not in text:
        raise LossValueError(f"{path} has no catalog markers {CATALOG_START!r} ... {CATALOG_END!r}")
    head, rest = text.split(CATALOG_START, 1)
    _, tail = rest.split(CATALOG_END, 1)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{CATALOG_START}\n{catalog_markdown()}\n{CATALOG_END}{tail}")


def _load_all() -> None:
    # Importing the package imports every family module, which registers its losses.
    import losskit  # noqa: F401
