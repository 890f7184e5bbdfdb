"""Multi-task losses: one module that runs a loss per task and combines them with a weighting strategy.

:class:`MultiTaskLoss` has two forms, chosen by its constructor arguments:

* the seed's form ``MultiTaskLoss(cls_weight=1.0, reg_weight=1.0, aux_weight=1.0)`` with
  ``forward(cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets)`` =
  ``cls_weight * CE + reg_weight * MSE + aux_weight * MSE``;
* the general form ``MultiTaskLoss(tasks={name: loss}, weighting=..., weights=None)`` with
  ``forward(preds: Mapping, targets: Mapping)``.

Weightings (strategy objects, or their names): :class:`FixedWeighting` (``'fixed'``),
:class:`UncertaintyWeighting` (``'uncertainty'``), :class:`DWA` (``'dwa'``), :class:`RandomLossWeighting`
(``'rlw'``), :class:`GeometricLossStrategy` (``'gls'``) and :class:`GradNorm` (``'gradnorm'``).

Equal weights are a strong baseline when the task losses have similar scales (Xin et al. and Kurin et al.,
NeurIPS 2022); weighting matters when the scales differ (e.g. a regression target in raw units).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_choice,
    check_class_target,
    check_floating,
    check_int,
    check_min_ndim,
    check_number,
    check_prob_target,
    check_same_device,
    check_same_shape,
    shape_str,
)
from ._reduction import reduce_loss, upcast
from .classification import CrossEntropyLoss
from .distributed import global_sum
from .registry import build, register

__all__ = [
    "DWA",
    "FixedWeighting",
    "GeometricLossStrategy",
    "GradNorm",
    "MultiTaskLoss",
    "RandomLossWeighting",
    "UncertaintyWeighting",
    "Weighting",
]

ParamsLike = torch.Tensor | Iterable[torch.Tensor]


# ----------------------------------------------------------------------------- weighting strategies


class Weighting(nn.Module):
    """Base class of the weighting strategies.

    ``forward(losses)`` takes the stacked task losses ``(K,)`` (float32 or float64, with their graph) and
    returns ``(total, weights)``: the scalar to minimise and the effective per-task weights (detached,
    ``d total / d L_k``), which :class:`MultiTaskLoss` exposes for logging. ``epoch_end()`` is called once
    per epoch (only DWA uses it); ``backward(total, losses, shared_parameters)`` runs the backward pass
    (only GradNorm does more than ``total.backward()``).
    """

    needs_task_losses = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = check_int("num_tasks", num_tasks, low=1)

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def check_losses(self, losses: Any, name: str = "losses") -> torch.Tensor:
        """``losses`` must be a floating ``(K,)`` tensor on the device of this weighting's parameters and
        buffers; errors call it ``name`` (:class:`MultiTaskLoss` passes the argument its user gave)."""
        check_floating(name, losses)
        for pname, t in itertools.chain(self.named_parameters(), self.named_buffers()):
            check_same_device((f"the weighting's {pname}", t), (name, losses))
        if losses.shape != (self.num_tasks,):
            raise LossValueError(
                f"{name} has shape {shape_str(losses.shape)}, expected ({self.num_tasks},): one loss per task"
            )
        checked: torch.Tensor = losses
        return checked

    def epoch_end(self) -> None:
        """Called by :meth:`MultiTaskLoss.epoch_end` once per epoch; no-op unless a strategy needs it."""

    def backward(
        self, total: torch.Tensor, losses: torch.Tensor | None, shared_parameters: ParamsLike | None = None
    ) -> None:
        total.backward()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"


class FixedWeighting(Weighting):
    r"""``total = sum_k w_k L_k`` with constant weights (a buffer; equal weights by default).

    Example:
        >>> FixedWeighting([1.0, 0.5])(torch.tensor([2.0, 4.0]))
        (tensor(4.), tensor([1.0000, 0.5000]))
    """

    weights: torch.Tensor

    def __init__(
        self, weights: Sequence[float] | torch.Tensor | None = None, num_tasks: int | None = None
    ) -> None:
        if weights is None:
            if num_tasks is None:
                raise LossValueError("FixedWeighting needs weights or num_tasks")
            values = [1.0] * check_int("num_tasks", num_tasks, low=1)
        else:
            values = [float(v) for v in (weights.tolist() if isinstance(weights, torch.Tensor) else weights)]
            for i, v in enumerate(values):
                check_number(f"weights[{i}]", v, low=0.0)
            if num_tasks is not None and len(values) != num_tasks:
                raise LossValueError(f"weights has {len(values)} entries, expected num_tasks={num_tasks}")
        super().__init__(len(values))
        self.register_buffer("weights", torch.tensor(values, dtype=torch.float32))

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_losses(losses)
        w = self.weights.to(losses.dtype)
        return (w * losses).sum(), w


class UncertaintyWeighting(Weighting):
    r"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable log-variance ``s_k = log sigma_k^2`` per task (a parameter, in ``state_dict``,
    initialised to ``init``):

    * ``form='half'`` (default; the Gaussian-likelihood form, as in LibMTL and MTAN):
      ``total = sum_k 1/2 e^{-s_k} L_k + 1/2 s_k``
    * ``form='full'`` (the other common implementation): ``total = sum_k e^{-s_k} L_k + s_k``

    At the optimum ``e^{s_k} = L_k`` (both forms), so each task's weight ends up ~ ``1 / L_k``. The total
    can be negative (the ``s`` terms); compare the task losses, not the total, across runs. Give the
    log-variances to the optimizer (``MultiTaskLoss.parameters()``); a larger learning rate for them than
    for the network often helps.

    Example:
        >>> w = UncertaintyWeighting(2)
        >>> w(torch.tensor([2.0, 4.0]))
        (tensor(3., grad_fn=<SumBackward0>), tensor([0.5000, 0.5000]))
    """

    def __init__(self, num_tasks: int, form: str = "half", init: float = 0.0) -> None:
        super().__init__(num_tasks)
        self.form = check_choice("form", form, ("half", "full"))
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(check_number("init", init))))

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_losses(losses)
        s = self.log_vars.to(losses.dtype)
        scale = 0.5 if self.form == "half" else 1.0
        precision = scale * torch.exp(-s)
        total = (precision * losses + scale * s).sum()
        return total, precision.detach()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, form={self.form!r}"


class DWA(Weighting):
    r"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning with Attention").

    .. math::
        w_k(t) = K \frac{\exp(r_k(t-1) / T)}{\sum_j \exp(r_j(t-1) / T)},\qquad
        r_k(t-1) = \frac{\bar L_k(t-1)}{\bar L_k(t-2)}

    where ``\bar L_k(e)`` is task ``k``'s mean loss over the training steps of epoch ``e`` and ``T = 2``.
    The weights are 1 during the first two epochs. The module records the task losses of every forward in
    training mode with gradients enabled (validation under ``torch.no_grad()`` or in ``eval()`` mode is not
    recorded) and **you must call**
    ``epoch_end()`` (or :meth:`MultiTaskLoss.epoch_end`) at the end of every epoch. The epoch means and the
    counters are buffers, so they are saved in ``state_dict``.

    Example:
        >>> dwa = DWA(2)
        >>> for epoch_losses in ([1.0, 2.0], [0.5, 2.0]):
        ...     _ = dwa(torch.tensor(epoch_losses))
        ...     dwa.epoch_end()
        >>> dwa(torch.tensor([1.0, 1.0]))[1]  # the second task improves slower: larger weight
        tensor([0.8756, 1.1244])
    """

    epoch_sum: torch.Tensor
    epoch_steps: torch.Tensor
    history: torch.Tensor
    epochs: torch.Tensor

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        self.temperature = float(check_number("temperature", temperature, low=0.0, low_open=True))
        self.register_buffer("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("epoch_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("history", torch.ones(2, num_tasks, dtype=torch.float64))  # [e-2, e-1] means
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def current_weights(self) -> torch.Tensor:
        """The weights of the current epoch, ``(K,)`` float64."""
        ratio = self.history[1] / self.history[0].clamp_min(torch.finfo(torch.float64).tiny)
        w = self.num_tasks * F.softmax(ratio / self.temperature, dim=0)
        return torch.where(self.epochs >= 2, w, torch.ones_like(w))

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_losses(losses)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.epoch_sum += losses.detach().to(torch.float64)
                self.epoch_steps += 1
        w = self.current_weights().to(losses.dtype)
        return (w * losses).sum(), w

    def epoch_end(self, sync: bool = True) -> None:
        """Close the epoch: its mean losses become ``L(t-1)`` for the next epoch's weights.

        Under ``torch.distributed`` (and ``sync=True``) the loss sums and step counts are summed over
        ranks first, so every rank gets the same weights: those of one process that saw all the steps.
        """
        with torch.no_grad():
            total, steps = self.epoch_sum, self.epoch_steps
            if sync:
                total, steps = global_sum(total.detach()), global_sum(steps.detach())
            if can_read_values(steps) and int(steps) == 0:
                raise LossValueError(
                    "DWA.epoch_end() was called but no training losses were recorded this epoch "
                    "(is the loss in eval mode?)"
                )
            mean = total / steps.to(torch.float64)
            self.history.copy_(torch.stack((self.history[1], mean)))
            self.epochs += 1
            self.epoch_sum.zero_()
            self.epoch_steps.zero_()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, temperature={self.temperature}"


class RandomLossWeighting(Weighting):
    r"""Random loss weighting (Lin et al. 2021, "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022).

    In training mode every call draws ``lambda ~ N(0, I_K)`` and uses ``w = softmax(lambda)`` (weights sum
    to 1, as in the paper and LibMTL; the total is on the scale of the *mean* task loss). In eval mode the
    weights are their expectation by symmetry, ``1 / K``, so validation losses are not noisy. ``seed``
    gives the module its own ``torch.Generator`` (samples drawn on the CPU, then moved to the losses'
    device) so runs are reproducible independently of the global RNG.

    Example:
        >>> rlw = RandomLossWeighting(3, seed=0)
        >>> float(rlw(torch.ones(3))[1].sum())
        1.0
    """

    def __init__(self, num_tasks: int, seed: int | None = None) -> None:
        super().__init__(num_tasks)
        self.seed = check_int("seed", seed, allow_none=True)
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_losses(losses)
        if self.training:
            if self.generator is not None:
                lam = torch.randn(self.num_tasks, generator=self.generator).to(losses.device)
            else:
                lam = torch.randn(self.num_tasks, device=losses.device)
            w = F.softmax(lam.to(losses.dtype), dim=0)
        else:
            w = torch.full_like(losses, 1.0 / self.num_tasks)
        return (w * losses).sum(), w

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, seed={self.seed}"


class GeometricLossStrategy(Weighting):
    r"""Geometric loss strategy (Chennupati et al., CVPR-W 2019, "MultiNet++"): ``total = (prod_k L_k)^{1/K}``.

    Computed as ``exp(mean_k log L_k)``; scale-invariant per task (multiplying one loss by ``c`` multiplies
    the total by ``c^{1/K}``), so tasks with large raw losses do not dominate. The effective weight of task
    ``k`` is ``total / (K L_k)``. The task losses must be positive; a task loss that is exactly 0 gives a total of 0
    with zero (finite) gradients.

    Example:
        >>> GeometricLossStrategy(2)(torch.tensor([1.0, 4.0]))
        (tensor(2.), tensor([1.0000, 0.2500]))
    """

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_losses(losses)
        safe = losses.clamp_min(torch.finfo(losses.dtype).tiny)
        geo = torch.exp(torch.log(safe).mean())
        # a zero task loss makes the product 0: return an exact (graph-connected) zero
        total = torch.where((losses > 0).all(), geo, geo * 0.0)
        weights = (total / (self.num_tasks * safe)).detach()
        return total, weights


def _as_param_list(shared_parameters: ParamsLike | None) -> list[torch.Tensor]:
    if shared_parameters is None:
        return []
    if isinstance(shared_parameters, torch.Tensor):
        return [shared_parameters]
    return [p for p in shared_parameters if p.requires_grad]


class GradNorm(Weighting):
    r"""GradNorm (Chen et al., ICML 2018): learn task weights that balance the tasks' gradient norms.

    With learnable weights ``w_k`` (renormalised to sum to ``K`` before every forward), task losses
    ``L_k``, the shared parameters ``W`` (the paper uses the last shared layer):

    .. math::
        G_k = \| \nabla_W\, w_k L_k \|,\quad
        r_k = \frac{L_k / L_k(0)}{\mathrm{mean}_j\, L_j / L_j(0)},\quad
        L_\text{grad} = \sum_k \big| G_k - \mathrm{sg}\big[\bar G\, r_k^{\alpha}\big] \big|

    The network is trained on ``sum_k w_k L_k`` with the weights held constant; the weights get the
    gradient of ``L_grad`` only. ``alpha`` (default 1.5) sets how strongly slower tasks are pushed. ``L_k(0)``
    are the losses of the first :meth:`MultiTaskLoss.backward` call (a buffer).

    Training step: call ``mtl.backward(loss, shared_parameters=...)`` instead of ``loss.backward()`` and
    give ``mtl.parameters()`` (the weights) to an optimizer.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> trunk, head_a, head_b = nn.Linear(4, 8), nn.Linear(8, 1), nn.Linear(8, 1)
        >>> mtl = MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": nn.MSELoss()}, weighting="gradnorm")
        >>> params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
        >>> opt = torch.optim.Adam([*params, *mtl.parameters()], lr=1e-2)
        >>> x = torch.randn(32, 4)
        >>> targets = {"a": torch.randn(32, 1), "b": 100 * torch.randn(32, 1)}  # very different scales
        >>> for step in range(50):
        ...     h = trunk(x)
        ...     loss = mtl({"a": head_a(h), "b": head_b(h)}, targets)
        ...     opt.zero_grad()
        ...     mtl.backward(loss, shared_parameters=trunk.weight)  # network grads + weight grads
        ...     opt.step()
        >>> w = mtl.last_weights
        >>> bool(w["a"] > w["b"]), round(float(w["a"] + w["b"]), 4)  # small-gradient task up-weighted, sum K
        (True, 2.0)

    It costs one extra backward per task from the task loss to ``W`` (cheap when ``W`` is the last shared
    layer). A plain ``loss.backward()`` trains the network with the current weights and never updates them.
    """

    needs_task_losses = True
    initial_losses: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, num_tasks: int, alpha: float = 1.5) -> None:
        super().__init__(num_tasks)
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def renormalize(self) -> None:
        """Clamp the weights positive and rescale them to sum to ``K`` (done before every forward)."""
        w = self.weights.clamp_min(1e-6)
        self.weights.copy_(w * (self.num_tasks / w.sum()))

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_losses(losses)
        if torch.is_grad_enabled() and self.training:
            self.renormalize()
        w = self.weights.detach().to(losses.dtype)
        return (w * losses).sum(), w

    def backward(
        self, total: torch.Tensor, losses: torch.Tensor | None, shared_parameters: ParamsLike | None = None
    ) -> None:
        params = _as_param_list(shared_parameters)
        if not params:
            raise LossValueError(
                "GradNorm needs the shared parameters: mtl.backward(loss, shared_parameters=<last shared layer>)"
            )
        if losses is None:
            raise LossValueError(
                "GradNorm.backward needs the task losses of the last forward in training mode"
            )
        with torch.no_grad():
            current = losses.detach().to(torch.float64)
            self.initial_losses.copy_(torch.where(self.initialized, self.initial_losses, current))
            self.initialized.fill_(True)
        norms = []
        for k in range(self.num_tasks):
            grads = torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True)
            sq = sum(
                (g.detach().double().square().sum() for g in grads if g is not None),
                torch.zeros((), dtype=torch.float64),
            )
            norms.append(sq.sqrt())
        w = self.weights
        G = w.double() * torch.stack(norms).to(w.device)
        ratio = current / self.initial_losses.clamp_min(torch.finfo(torch.float64).tiny)
        r = ratio / ratio.mean()
        target = (G.mean() * r.pow(self.alpha)).detach()
        gn_loss = (G - target).abs().sum()
        (gw,) = torch.autograd.grad(gn_loss, w)
        w.grad = gw if w.grad is None else w.grad + gw
        total.backward()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, alpha={self.alpha}"


_WEIGHTINGS: dict[str, type[Weighting]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossStrategy,
    "gradnorm": GradNorm,
}


def _make_weighting(
    weighting: str | Weighting,
    names: list[str],
    weights: Sequence[float] | None,
    options: Mapping[str, Any] | None,
) -> Weighting:
    num_tasks = len(names)
    if isinstance(weighting, Weighting):
        if weights is not None or options:
            raise LossValueError("weights / weighting_options are only used when weighting is given by name")
        if weighting.num_tasks != num_tasks:
            raise LossValueError(
                f"weighting is built for {weighting.num_tasks} tasks, expected {num_tasks}: one per task {names}"
            )
        return weighting
    if not isinstance(weighting, str):
        raise LossTypeError(f"weighting must be a name or a Weighting, got {type(weighting).__name__}")
    check_choice("weighting", weighting, tuple(_WEIGHTINGS))
    opts = dict(options or {})
    if weighting == "fixed":
        return FixedWeighting(weights, num_tasks=num_tasks, **opts)
    if weights is not None:
        raise LossValueError(f"weights are only used with weighting='fixed', got weighting={weighting!r}")
    return _WEIGHTINGS[weighting](num_tasks, **opts)


# ----------------------------------------------------------------------------- the multi-task loss

_SEED_TASKS = ("cls", "reg", "aux")


class _MeanSquaredError(nn.Module):
    """``F.mse_loss(input, target)`` (mean), computed in float32 for half inputs; an empty input gives a
    graph-connected zero instead of torch's NaN."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce_loss((upcast(input) - upcast(target)) ** 2, "mean")


def _check_seed_inputs(preds: Mapping[str, Any], targets: Mapping[str, Any]) -> None:
    """Seed-form inputs, named as in ``forward(cls_preds, cls_targets, reg_preds, ...)``.

    torch's ``mse_loss`` only warns when prediction and target shapes differ and then broadcasts
    (``(N, 1)`` against ``(N,)`` gives an ``(N, N)`` difference), so the shapes are checked here.
    """
    cls_preds = check_floating("cls_preds", preds["cls"])
    check_same_device(
        *(
            (f"{task}_{kind}", m[task])
            for task in _SEED_TASKS
            for kind, m in (("preds", preds), ("targets", targets))
        )
    )
    check_min_ndim("cls_preds", cls_preds, 2, "(N, C) or (N, C, d1, ...)")
    cls_targets = targets["cls"]
    if isinstance(cls_targets, torch.Tensor) and cls_targets.is_floating_point():
        check_same_shape("cls_targets", cls_targets, "cls_preds", cls_preds)  # class probabilities
        check_prob_target("cls_targets", cls_targets)
    else:
        check_class_target(cls_preds, cls_targets, input_name="cls_preds", target_name="cls_targets")
    for task in ("reg", "aux"):
        p = check_floating(f"{task}_preds", preds[task])
        t = check_floating(f"{task}_targets", targets[task])
        check_same_shape(f"{task}_targets", t, f"{task}_preds", p)


class MultiTaskLoss(nn.Module):
    r"""Weighted combination of per-task losses.

    **Seed form** (no ``tasks``): ``MultiTaskLoss(cls_weight=1.0, reg_weight=1.0, aux_weight=1.0)`` and
    ``forward(cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets)``:

    .. math::
        \ell = w_\text{cls}\, \mathrm{CE}(\text{cls}) + w_\text{reg}\, \mathrm{MSE}(\text{reg})
             + w_\text{aux}\, \mathrm{MSE}(\text{aux})

    (the values of torch's ``cross_entropy`` / ``mse_loss`` with ``'mean'``, computed in float32 for half
    inputs; an empty batch gives a graph-connected zero, not torch's NaN; the tasks are named
    ``'cls', 'reg', 'aux'``).
    The inputs are checked and errors name them: ``reg_targets`` must have the shape of ``reg_preds``
    (torch's ``mse_loss`` would broadcast ``(N, 1)`` against ``(N,)`` with only a warning), likewise
    ``aux``; ``cls_targets`` holds class indices in ``[0, C)`` (or ``-100``) or class probabilities.

    **General form**: ``MultiTaskLoss(tasks={name: loss}, weighting='fixed', weights=None,
    weighting_options=None)`` and ``forward(preds: Mapping, targets: Mapping)``; each task's loss is
    ``tasks[name](preds[name], targets[name])`` and must be a scalar. A task's loss can be a module, a
    registered name (``"huber"``) or a config (``{"name": "focal", "gamma": 2}``). ``weighting`` is a
    :class:`Weighting` or one of ``'fixed'`` (``weights``, default all 1), ``'uncertainty'``, ``'dwa'``,
    ``'rlw'``, ``'gls'``, ``'gradnorm'`` (built with ``weighting_options``).

    The return value is always the scalar total. The last task losses and effective weights are kept,
    detached, in :attr:`last_losses` and :attr:`last_weights` (dicts by task name) for logging. Use
    :meth:`backward` for the backward pass (required for GradNorm, equal to ``loss.backward()`` otherwise)
    and call :meth:`epoch_end` once per epoch (required for DWA, a no-op otherwise). Half-precision task
    losses are combined in float32.

    Under DDP: learnable weightings (uncertainty log-variances, GradNorm weights) live in this module, not
    in your model, so DDP does not average their gradients; make the loss a submodule of the
    DDP-wrapped module or all-reduce their gradients yourself. DWA all-reduces its epoch means in
    ``epoch_end()``; seed :class:`RandomLossWeighting` identically on every rank. GradNorm under DDP is
    not tested.

    Example:
        >>> mtl = MultiTaskLoss(tasks={"a": nn.MSELoss(), "b": "l1"}, weights=[1.0, 0.5])
        >>> preds = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0])}
        >>> targets = {"a": torch.zeros(2), "b": torch.zeros(1)}
        >>> mtl(preds, targets)
        tensor(6.)
        >>> mtl.last_losses
        {'a': tensor(5.), 'b': tensor(2.)}
    """

    def __init__(
        self,
        cls_weight: float = 1.0,
        reg_weight: float = 1.0,
        aux_weight: float = 1.0,
        *,
        tasks: Mapping[str, Any] | None = None,
        weighting: str | Weighting = "fixed",
        weights: Sequence[float] | None = None,
        weighting_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.seed_form = tasks is None
        if tasks is None:
            modules: dict[str, nn.Module] = {
                "cls": CrossEntropyLoss(),
                "reg": _MeanSquaredError(),
                "aux": _MeanSquaredError(),
            }
            seed_weights = [
                float(check_number(n, v, low=0.0))
                for n, v in (
                    ("cls_weight", cls_weight),
                    ("reg_weight", reg_weight),
                    ("aux_weight", aux_weight),
                )
            ]
            if weighting == "fixed":
                if weights is not None:
                    raise LossValueError(
                        "pass cls_weight / reg_weight / aux_weight, not weights, in the seed form"
                    )
                weights = seed_weights
            elif seed_weights != [1.0, 1.0, 1.0]:
                raise LossValueError(
                    "cls_weight / reg_weight / aux_weight are only used with weighting='fixed'"
                )
        else:
            if (cls_weight, reg_weight, aux_weight) != (1.0, 1.0, 1.0):
                raise LossValueError(
                    "cls_weight / reg_weight / aux_weight belong to the seed form; with tasks use weights="
                )
            if not isinstance(tasks, Mapping) or len(tasks) == 0:
                raise LossValueError("tasks must be a non-empty mapping {name: loss}")
            modules = {}
            for name, loss in tasks.items():
                if not isinstance(name, str):
                    raise LossTypeError(
                        f"tasks has a key that is not a string: {name!r} (task names are strings)"
                    )
                modules[name] = loss if isinstance(loss, nn.Module) else build(loss)
        self.tasks = nn.ModuleDict(modules)
        self.task_names: list[str] = list(modules)
        if weights is not None and len(weights) != len(self.task_names):
            raise LossValueError(
                f"weights has {len(weights)} entries, expected {len(self.task_names)}: "
                f"one per task {self.task_names}"
            )
        self.weighting = _make_weighting(weighting, self.task_names, weights, weighting_options)
        self._last_losses: torch.Tensor | None = None
        self._last_weights: torch.Tensor | None = None
        self._task_losses: torch.Tensor | None = None

    # -- logging
    @property
    def last_losses(self) -> dict[str, torch.Tensor]:
        """Task losses of the last call, detached, by task name (empty before the first call)."""
        if self._last_losses is None:
            return {}
        return {n: self._last_losses[i] for i, n in enumerate(self.task_names)}

    @property
    def last_weights(self) -> dict[str, torch.Tensor]:
        """Effective task weights (``d total / d L_k``) of the last call, detached, by task name."""
        if self._last_weights is None:
            return {}
        return {n: self._last_weights[i] for i, n in enumerate(self.task_names)}

    # -- forward
    def _as_mappings(self, args: tuple[Any, ...]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        if len(args) == 2 and isinstance(args[0], Mapping) and isinstance(args[1], Mapping):
            return args[0], args[1]
        if self.seed_form and len(args) == 6:
            return dict(zip(_SEED_TASKS, args[0::2])), dict(zip(_SEED_TASKS, args[1::2]))
        expected = (
            "(cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets) or (preds, targets) mappings"
            if self.seed_form
            else "(preds, targets): two mappings keyed by task name"
        )
        raise LossTypeError(f"MultiTaskLoss expects {expected}, got {len(args)} positional argument(s)")

    def _check_keys(self, what: str, mapping: Mapping[str, Any]) -> None:
        missing = [n for n in self.task_names if n not in mapping]
        extra = [k for k in mapping if k not in self.tasks]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"is missing task(s) {missing}")
            if extra:
                parts.append(f"has unknown task(s) {sorted(extra, key=str)}")
            raise LossValueError(f"{what} {' and '.join(parts)}; expected keys {self.task_names}")

    def forward(self, *args: Any) -> torch.Tensor:
        preds, targets = self._as_mappings(args)
        self._check_keys("preds", preds)
        self._check_keys("targets", targets)
        if self.seed_form:
            _check_seed_inputs(preds, targets)
        values: list[torch.Tensor] = []
        for name in self.task_names:
            try:
                value = self.tasks[name](preds[name], targets[name])
            except (LossValueError, LossTypeError) as e:
                if self.seed_form:  # the seed inputs were checked under their own names
                    raise
                raise type(e)(f"task {name!r}: {e}") from e
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                got = (
                    f"shape {shape_str(value.shape)}"
                    if isinstance(value, torch.Tensor)
                    else type(value).__name__
                )
                raise LossValueError(
                    f"task {name!r} returned {got}; a task loss must be a scalar (use reduction='mean')"
                )
            if values and value.device != values[0].device:
                raise LossValueError(
                    f"task {name!r} returned a loss on {value.device}, expected {values[0].device} like task "
                    f"{self.task_names[0]!r} (every task's preds and targets must be on one device)"
                )
            values.append(upcast(value))
        dtype = functools.reduce(torch.promote_types, (v.dtype for v in values))
        losses = torch.stack([v.to(dtype) for v in values])
        self.weighting.check_losses(losses, "cls_preds" if self.seed_form else "preds")
        total: torch.Tensor
        weights: torch.Tensor
        total, weights = self.weighting(losses)
        self._last_losses = losses.detach()
        self._last_weights = weights.detach().clone()  # a snapshot: some weightings return their parameter
        self._task_losses = losses if (self.weighting.needs_task_losses and losses.requires_grad) else None
        return total

    def backward(self, loss: torch.Tensor, shared_parameters: ParamsLike | None = None) -> None:
        """Backward pass of ``loss`` (the value returned by the last call).

        Equal to ``loss.backward()`` except for :class:`GradNorm`, which also computes the gradient of its
        task weights from the per-task gradient norms w.r.t. ``shared_parameters``.
        """
        task_losses, self._task_losses = self._task_losses, None
        self.weighting.backward(loss, task_losses, shared_parameters)

    def epoch_end(self) -> None:
        """Tell the weighting an epoch ended (DWA needs it; a no-op for the others).

        Under ``torch.distributed`` call it on every rank (DWA all-reduces its epoch sums).
        """
        self.weighting.epoch_end()

    def extra_repr(self) -> str:
        return f"tasks={self.task_names}"


register(
    "multitask",
    MultiTaskLoss,
    family="multitask",
    source="Kendall et al. 2018; Liu et al. 2019; Chen et al. 2018; Lin et al. 2021",
    notes="seed form (CE + MSE + MSE) or tasks={...}; fixed / uncertainty / dwa / rlw / gls / gradnorm",
)
