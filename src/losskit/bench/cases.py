"""Benchmark cases of ``losskit bench`` and the hook to add more.

A :class:`Case` makes its inputs for a shape and lists :class:`Variant` s, each with a role:

* ``losskit``: the public function (``losskit.functional.*``), which uses the fused kernels where
  they apply; the row marked "reference path" is the same call with
  :func:`losskit._kernels.fused_kernels(False) <losskit._kernels._compile.fused_kernels>` (its eager code);
* ``kernel``: the fused kernel called directly (what the public function runs for this call);
* ``eager``: the eager composition a user would write (the ratio baseline);
* ``native``: the nearest native torch loss on the same tensors (the practical floor);
* ``peer``: another library's implementation (kornia, MONAI, torchvision, pytorch-metric-learning), when
  importable.

Adding a case: build a :class:`Case` and call :func:`register_case`, in a module imported through
``losskit bench --extra path/to/file.py`` (or ``--extra package.module``). A file under
``benchmarks/`` can expose ``bench_cases() -> list[Case]`` instead of registering itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CASES", "Case", "Variant", "get_case", "load_extra", "register_case"]

Shape = tuple[int, ...]
MakeFn = Callable[[Shape, torch.dtype, int], tuple[tuple[Any, ...], tuple[int, ...]]]
# what the built-in ``make`` functions return: the loss's tensor arguments and the indices needing grad
Inputs = tuple[tuple[torch.Tensor, ...], tuple[int, ...]]


@dataclass
class Variant:
    name: str
    role: str  # 'losskit' | 'kernel' | 'eager' | 'native' | 'peer'
    fn: Callable[..., torch.Tensor] | None
    note: str = ""
    # False for shapes the implementation cannot run here (e.g. a peer that allocates O(B^3) memory)
    fits: Callable[[Shape], bool] | None = None

    def runs_at(self, shape: Shape) -> bool:
        return self.fn is not None and (self.fits is None or self.fits(shape))


@dataclass
class Case:
    name: str
    make: MakeFn
    shape: Shape
    quick_shape: Shape
    build_variants: Callable[[], list[Variant]]
    scaling: Sequence[Shape] = field(default_factory=list)
    note: str = ""
    max_repeat: int | None = None  # cap on the timed rounds for cases of seconds per step

    def variants(self) -> list[Variant]:
        return self.build_variants()


CASES: dict[str, Case] = {}


def register_case(case: Case) -> Case:
    """Add (or replace) a benchmark case."""
    CASES[case.name] = case
    return case


def get_case(name: str) -> Case:
    return CASES[name]


def load_extra(spec: str) -> None:
    """Import a module (dotted name or ``.py`` path) that registers cases or has ``bench_cases()``."""
    if spec.endswith(".py") or os.sep in spec:
        name = "losskit_bench_extra_" + os.path.splitext(os.path.basename(spec))[0]
        loader = importlib.util.spec_from_file_location(name, spec)
        if loader is None or loader.loader is None:
            raise ImportError(f"cannot load benchmark cases from {spec}")
        mod = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(mod)
    else:
        mod = importlib.import_module(spec)
    if hasattr(mod, "bench_cases"):
        for case in mod.bench_cases():
            register_case(case)


def _peer(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception:
        return None


# ----------------------------------------------------------------------------- inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_binary(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    g = _gen(seed)
    x = (torch.randn(shape, generator=g) * 2).to(dtype)
    t = (torch.rand(shape, generator=g) < 0.1).to(dtype)
    return (x, t), (0,)


def make_classes(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    g = _gen(seed)
    x = (torch.randn(shape, generator=g) * 2).to(dtype)
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return (x, y), (0,)


def make_pair(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    g = _gen(seed)
    s = (torch.randn(shape, generator=g) * 2).to(dtype)
    t = (torch.randn(shape, generator=g) * 2).to(dtype)
    y = torch.randint(0, shape[1], (shape[0],), generator=g)
    return (s, t, y), (0,)


# ----------------------------------------------------------------------------- variants


def _lf() -> Any:
    import losskit.functional as LF

    return LF


def _reference(name: str, fn: Callable[..., torch.Tensor]) -> Variant:
    """The public call on its eager reference path (fused kernels switched off)."""
    from losskit._kernels import fused_kernels

    def run(*args: Any) -> torch.Tensor:
        with fused_kernels(False):
            return fn(*args)

    return Variant(f"{name} (reference path)", "losskit", run, note="fused kernels off")


def _sigmoid_focal_variants() -> list[Variant]:
    from losskit._kernels.sigmoid_focal import sigmoid_focal

    LF = _lf()

    def eager(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # torchvision.ops.sigmoid_focal_loss, mean
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * ((1 - p_t) ** 2)
        alpha_t = 0.25 * t + 0.75 * (1 - t)
        return (alpha_t * loss).mean()

    public = lambda x, t: LF.sigmoid_focal_loss(x, t, reduction="mean")  # noqa: E731
    out = [
        Variant("losskit.sigmoid_focal_loss", "losskit", public),
        _reference("losskit.sigmoid_focal_loss", public),
        Variant("kernel sigmoid_focal", "kernel", lambda x, t: sigmoid_focal(x, t, 0.25, 2.0, None, "mean")),
        Variant("eager (torchvision formula)", "eager", eager),
        Variant("F.binary_cross_entropy_with_logits", "native", F.binary_cross_entropy_with_logits),
    ]
    tv = _peer("torchvision.ops")
    if tv is not None:
        out.append(
            Variant(
                "torchvision.ops.sigmoid_focal_loss",
                "peer",
                lambda x, t: tv.sigmoid_focal_loss(x, t, reduction="mean"),
            )
        )
    kornia = _peer("kornia.losses")
    if kornia is not None:
        out.append(
            Variant(
                "kornia binary_focal_loss_with_logits",
                "peer",
                lambda x, t: kornia.binary_focal_loss_with_logits(
                    x, t, alpha=0.25, gamma=2.0, reduction="mean"
                ),
            )
        )
    return out


def _focal_variants() -> list[Variant]:
    from losskit._kernels.softmax_focal import softmax_focal_rows

    LF = _lf()

    def eager(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(x, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        return (-((1 - logp.exp()) ** 2) * logp).mean()

    out = [
        Variant("losskit.focal_loss", "losskit", lambda x, y: LF.focal_loss(x, y, gamma=2.0)),
        _reference("losskit.focal_loss", lambda x, y: LF.focal_loss(x, y, gamma=2.0)),
        Variant("kernel softmax_focal_rows", "kernel", lambda x, y: softmax_focal_rows(x, y, 2.0).mean()),
        Variant("eager (log_softmax, gather)", "eager", eager),
        Variant("F.cross_entropy", "native", F.cross_entropy),
    ]
    kornia = _peer("kornia.losses")
    if kornia is not None:
        out.append(
            Variant(
                "kornia focal_loss",
                "peer",
                lambda x, y: kornia.focal_loss(x, y, alpha=1.0, gamma=2.0, reduction="mean"),
                note="kornia's mean divides by N*C",
            )
        )
    return out


def _kd_variants() -> list[Variant]:
    from losskit._kernels.distill import kd_rows

    LF = _lf()
    temp = 4.0

    def eager(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="batchmean") * temp**2

    return [
        Variant("losskit.kd_loss", "losskit", lambda s, t, y: LF.kd_loss(s, t, temp)),
        _reference("losskit.kd_loss", lambda s, t, y: LF.kd_loss(s, t, temp)),
        Variant("kernel kd_rows", "kernel", lambda s, t, y: kd_rows(s, t, temp).sum() / s.shape[0]),
        Variant("eager (kl_div of log_softmax)", "eager", eager),
        Variant("F.cross_entropy (hard labels)", "native", lambda s, t, y: F.cross_entropy(s, y)),
    ]


def _jsd_variants() -> list[Variant]:
    from losskit._kernels.distill import jsd_rows

    LF = _lf()

    def eager(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ps, pt = F.softmax(s, 1), F.softmax(t, 1)
        m = 0.5 * (ps + pt)
        return (
            0.5
            * (F.kl_div(m.log(), pt, reduction="sum") + F.kl_div(m.log(), ps, reduction="sum"))
            / s.shape[0]
        )

    return [
        Variant("losskit.jsd_loss", "losskit", lambda s, t, y: LF.jsd_loss(s, t, 0.5)),
        _reference("losskit.jsd_loss", lambda s, t, y: LF.jsd_loss(s, t, 0.5)),
        Variant("kernel jsd_rows", "kernel", lambda s, t, y: jsd_rows(s, t, 0.5).mean()),
        Variant("eager (softmax mixture, kl_div)", "eager", eager),
        Variant("F.cross_entropy (hard labels)", "native", lambda s, t, y: F.cross_entropy(s, y)),
    ]


def _index_loss(
    tp: torch.Tensor,
    ps: torch.Tensor,
    gs: torch.Tensor,
    tp_coef: float,
    alpha: float,
    beta: float,
    eps: float = 1e-7,
) -> torch.Tensor:
    """losskit's Dice/Tversky index on the class sums (smooth 0, empty-mask smoothing 1)."""
    num = tp_coef * tp
    den = num + alpha * (ps - tp) + beta * (gs - tp)
    s = (gs <= 0).to(num.dtype)
    return (1 - (num + s) / (den + s).clamp_min(eps)).mean()


def _overlap_variants(which: str) -> list[Variant]:
    from losskit._kernels.overlap import class_sums

    LF = _lf()
    k, a, b = (2.0, 1.0, 1.0) if which == "dice" else (1.0, 0.3, 0.7)

    def eager(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        p = x.softmax(dim=1)
        g = F.one_hot(y, c).permute(0, 3, 1, 2).to(p.dtype)
        tp = (p * g).sum((2, 3))
        fp = (p * (1 - g)).sum((2, 3))
        fn = ((1 - p) * g).sum((2, 3))
        return (1 - (k * tp) / (k * tp + a * fp + b * fn).clamp_min(1e-7)).mean()

    if which == "dice":
        public = lambda x, y: LF.dice_loss(x, y)  # noqa: E731
    else:
        public = lambda x, y: LF.tversky_loss(x, y, alpha=a, beta=b)  # noqa: E731
    out = [
        Variant(f"losskit.{which}_loss", "losskit", public),
        _reference(f"losskit.{which}_loss", public),
        Variant("kernel class_sums + index", "kernel", lambda x, y: _index_loss(*class_sums(x, y), k, a, b)),
        Variant("eager (softmax, one_hot, permute, sums)", "eager", eager),
        Variant("F.cross_entropy", "native", F.cross_entropy),
    ]
    monai = _peer("monai.losses")
    if monai is not None:
        cls = monai.DiceLoss if which == "dice" else monai.TverskyLoss
        kw = {} if which == "dice" else {"alpha": a, "beta": b}
        loss_fn = cls(softmax=True, to_onehot_y=True, **kw)
        out.append(Variant(f"MONAI {cls.__name__}", "peer", lambda x, y: loss_fn(x, y.unsqueeze(1))))
    kornia = _peer("kornia.losses")
    if kornia is not None:
        if which == "dice":
            out.append(Variant("kornia dice_loss", "peer", lambda x, y: kornia.dice_loss(x, y)))
        else:
            out.append(Variant("kornia tversky_loss", "peer", lambda x, y: kornia.tversky_loss(x, y, a, b)))
    return out


def _asymmetric_variants() -> list[Variant]:
    from losskit._kernels.asymmetric import asymmetric

    LF = _lf()

    def eager(  # the ASL reference formula
        x: torch.Tensor,
        t: torch.Tensor,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
    ) -> torch.Tensor:
        xs_pos = torch.sigmoid(x)
        xs_neg = (1 - xs_pos + clip).clamp(max=1)
        loss = t * torch.log(xs_pos.clamp(min=eps)) + (1 - t) * torch.log(xs_neg.clamp(min=eps))
        pt = xs_pos * t + xs_neg * (1 - t)
        loss = loss * torch.pow(1 - pt, gamma_pos * t + gamma_neg * (1 - t))
        return -loss.mean()

    return [
        Variant("losskit.asymmetric_loss", "losskit", lambda x, t: LF.asymmetric_loss(x, t)),
        _reference("losskit.asymmetric_loss", lambda x, t: LF.asymmetric_loss(x, t)),
        Variant("kernel asymmetric", "kernel", lambda x, t: asymmetric(x, t, reduction="mean")),
        Variant("eager (ASL reference formula)", "eager", eager),
        Variant("F.binary_cross_entropy_with_logits", "native", F.binary_cross_entropy_with_logits),
    ]


_NC = (8192, 1000)
_NC_QUICK = (64, 32)
_NC_SCALING = [(1024, 1000), (4096, 1000), (8192, 1000), (8192, 100), (8192, 4000)]
_SEG = (16, 4, 128, 128)
_SEG_QUICK = (2, 4, 16, 16)
_SEG_SCALING = [(4, 4, 128, 128), (16, 4, 128, 128), (16, 16, 128, 128), (16, 4, 256, 256)]

register_case(Case("sigmoid_focal", make_binary, _NC, _NC_QUICK, _sigmoid_focal_variants, _NC_SCALING))
register_case(Case("focal", make_classes, _NC, _NC_QUICK, _focal_variants, _NC_SCALING))
register_case(Case("kd", make_pair, _NC, _NC_QUICK, _kd_variants, _NC_SCALING))
register_case(Case("jsd", make_pair, _NC, _NC_QUICK, _jsd_variants, []))
register_case(Case("dice", make_classes, _SEG, _SEG_QUICK, lambda: _overlap_variants("dice"), _SEG_SCALING))
register_case(Case("tversky", make_classes, _SEG, _SEG_QUICK, lambda: _overlap_variants("tversky"), []))
register_case(Case("asymmetric", make_binary, _NC, _NC_QUICK, _asymmetric_variants, []))


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
