"""Preference losses from the policy's last hidden states and LM head: :class:`LinearDPOLoss`,
:class:`LinearSimPOLoss`, :class:`LinearORPOLoss`, :class:`LinearKTOLoss`, without ``(tokens, vocab)``
logits (:func:`~losskit.preference.log_probs.linear_log_probs` and a paired grads-in-forward path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import (
    LossTypeError,
    LossValueError,
    check_floating,
    check_int,
    check_ndim,
    check_same_device,
    check_tensor,
    shape_str,
)
from .._kernels import log_probs as _kp
from .._kernels.linear_ce import DEFAULT_CHUNK_BYTES
from ..language import _check_head, _check_tokens_target
from .log_probs import (
    _check_options,
    linear_log_probs,
    sequence_log_probs,  # noqa: F401  (the examples compare against it)
    sum_per_sequence,
)
from .losses import dpo_loss, kto_loss, orpo_loss, simpo_loss

__all__ = [
    "LinearDPOLoss",
    "LinearKTOLoss",
    "LinearORPOLoss",
    "LinearSimPOLoss",
]


# Paired grads-in-forward: the float32 logits of one group of whole pairs (up to 48 MiB, at least one
# pair) live at once when one pair's take at most 96 MiB; beyond, those of one chosen completion
# only (the rejected one's are formed twice). By default only when what is held takes <= 256 MiB.
_PAIR_GROUP_BYTES = DEFAULT_CHUNK_BYTES
_PAIR_HOLD_BYTES = 2 * DEFAULT_CHUNK_BYTES
_PAIR_AUTO_MAX_BYTES = 256 * 2**20


def _arg(*parts: str) -> str:
    """An argument's name from its parts: ``_arg("ref", "chosen", "logps") == "ref_chosen_logps"``."""
    return "_".join(p for p in parts if p)


class _LinearPreference(nn.Module):
    """Shared plumbing of the fused losses: per-sequence log-probs from hidden states.

    Every policy sequence of a call goes through one :func:`linear_log_probs` call (one weight
    gradient, one chunk plan); a reference model given by hidden states runs the same way under
    ``no_grad``. Sequence log-probs are sums over the counted tokens, or means with ``average``.
    """

    average: bool = False

    def __init__(
        self,
        ignore_index: int = -100,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        fuse_pairs: bool | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        pair_bytes: int | None = None,
    ):
        super().__init__()
        _check_options(ignore_index, temperature, chunk_size)
        if fuse_pairs is not None and not isinstance(fuse_pairs, bool):
            raise LossTypeError(f"fuse_pairs must be a bool or None, got {type(fuse_pairs).__name__}")
        check_int("pair_bytes", pair_bytes, low=1, allow_none=True)
        self.pair_bytes = _PAIR_HOLD_BYTES if pair_bytes is None else pair_bytes
        self.ignore_index = ignore_index
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.fuse_pairs = fuse_pairs
        self.loss_kwargs = dict(loss_kwargs or {})  # passed on to the loss function

    def _sequences(
        self,
        named: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_name: str = "weight",
    ) -> list[torch.Tensor]:
        """``(B_k,)`` sequence log-probs of each ``(name, hidden (B_k, T_k, H), target (B_k, T_k))``;
        the arguments are ``<name>_hidden`` and ``<name>_target`` in messages."""
        flats, targets = self._check_sequences(named, weight, bias, weight_name)
        h_all = flats[0] if len(flats) == 1 else torch.cat(flats)
        t_all = torch.cat([t.reshape(-1) for t in targets])
        lp = linear_log_probs(
            h_all,
            weight,
            t_all,
            bias,
            ignore_index=self.ignore_index,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )
        assert isinstance(lp, torch.Tensor)
        pieces = lp.split([t.numel() for t in targets])
        return [
            sum_per_sequence(x.reshape(t.shape), t != self.ignore_index, average=self.average)
            for x, t in zip(pieces, targets)
        ]

    def _check_sequences(
        self,
        named: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_name: str,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Shape, dtype and device checks; the hidden states as ``(B_k T_k, H)`` rows and the targets."""
        flats, targets = [], []
        first_name, first = _arg(named[0][0], "hidden"), named[0][1]
        for name, hidden, target in named:
            h_name, t_name = _arg(name, "hidden"), _arg(name, "target")
            check_floating(h_name, hidden)
            check_ndim(h_name, hidden, 3, "(B, T, H)")
            check_tensor(t_name, target)
            if tuple(target.shape) != tuple(hidden.shape[:-1]):
                raise LossValueError(
                    f"{t_name} has shape {shape_str(target.shape)}, expected "
                    f"{shape_str(hidden.shape[:-1])} to match {h_name} of shape {shape_str(hidden.shape)}"
                )
            check_same_device((first_name, first), (h_name, hidden))
            if hidden.shape[-1] != first.shape[-1] or hidden.dtype != first.dtype:
                raise LossValueError(
                    f"{h_name} has shape {shape_str(hidden.shape)} and dtype {hidden.dtype}, expected "
                    f"the hidden size and dtype of {first_name} ({shape_str(first.shape)}, {first.dtype})"
                )
            flats.append(hidden.reshape(-1, hidden.shape[-1]))
            targets.append(target)
        _check_head(first_name, first, weight_name, weight, weight_name.replace("weight", "bias"), bias)
        return flats, targets

    def _paired(
        self,
        chosen_hidden: torch.Tensor,
        rejected_hidden: torch.Tensor,
        weight: torch.Tensor,
        chosen_target: torch.Tensor,
        rejected_target: torch.Tensor,
        bias: torch.Tensor | None,
        pair_loss: Callable[[slice, torch.Tensor, torch.Tensor], torch.Tensor],
        reduction: str,
    ) -> torch.Tensor:
        """``reduction`` ('mean' over pairs or 'sum') of ``pair_loss(pairs, s_w, s_l)`` with the gradients
        computed during the forward pass, one group of whole pairs at a time (see ``fuse_pairs``)."""
        named = [("chosen", chosen_hidden, chosen_target), ("rejected", rejected_hidden, rejected_target)]
        self._check_sequences(named, weight, bias, "weight")
        for name, hidden, target in named:
            _check_tokens_target(target, hidden, weight.shape[0], self.ignore_index, _arg(name, "hidden"))
        n_pairs = chosen_hidden.shape[0]
        rows = chosen_hidden.shape[1] + rejected_hidden.shape[1]
        vocab = weight.shape[0]
        hold_rejected = 4 * rows * vocab <= self.pair_bytes
        groups = (
            _kp.pair_groups(n_pairs, rows, vocab, min(_PAIR_GROUP_BYTES, self.pair_bytes))
            if hold_rejected
            else [slice(i, i + 1) for i in range(n_pairs)]
        )
        compact = chosen_hidden.device.type == "cpu" and not torch.compiler.is_compiling()
        scale = 1.0 / n_pairs if reduction == "mean" else 1.0
        options = (self.ignore_index, 1.0 / self.temperature, self.average, scale, compact, hold_rejected)
        targets = (chosen_target, rejected_target)
        grad_on = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (chosen_hidden, rejected_hidden, weight, bias)
        )
        if not grad_on:
            return _kp._pair_forward(
                (chosen_hidden, rejected_hidden),
                targets,
                weight,
                bias,
                pair_loss,
                groups,
                *options[:4],
                (False, False, False),
                compact,
                hold_rejected,
            )[0]
        out: torch.Tensor = _kp.PairedLinearLoss.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
            chosen_hidden, rejected_hidden, weight, bias, targets, pair_loss, groups, options
        )
        return out

    def _pair_or_sequences(
        self,
        named: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        loss_of: Callable[..., torch.Tensor],
        separable: bool,
    ) -> torch.Tensor:
        """``loss_of(s_w, s_l)`` on the pairs' sequence log-probs: through the paired grads-in-forward
        kernel when the loss is a plain mean or sum of per-pair terms (``separable``, no normalizer)
        and ``fuse_pairs`` allows it, else through :func:`linear_log_probs` (logits recomputed in
        backward). ``loss_of(s_w, s_l, pairs, reduction='none')`` must give the losses of ``pairs``."""
        (_, hw, yw), (_, hl, yl) = named
        kwargs = self.loss_kwargs
        reduction = kwargs.get("reduction", "mean")
        separable = separable and reduction in ("mean", "sum") and kwargs.get("normalizer") is None
        if (
            separable
            and hw.shape[0] == hl.shape[0]
            and self._can_fuse_pairs(hw.shape[0], hw.shape[1], hw.shape[1] + hl.shape[1], weight.shape[0])
        ):
            return self._paired(
                hw,
                hl,
                weight,
                yw,
                yl,
                bias,
                lambda grp, sw, sl: loss_of(sw, sl, grp, reduction="none"),
                reduction,
            )
        sw, sl = self._sequences(named, weight, bias)
        return loss_of(sw, sl)

    def _can_fuse_pairs(self, pairs: int, rows_w: int, rows: int, vocab: int) -> bool:
        """Whether the paired grads-in-forward path runs (see the ``fuse_pairs`` argument)."""
        if self.fuse_pairs is False or pairs == 0:
            return False
        held = rows if 4 * rows * vocab <= self.pair_bytes else max(rows_w, rows - rows_w)
        return self.fuse_pairs is True or 4 * held * vocab <= _PAIR_AUTO_MAX_BYTES

    def _reference(
        self,
        named: Sequence[tuple[str, torch.Tensor | None, torch.Tensor | None, torch.Tensor]],
        ref_weight: torch.Tensor | None,
        ref_bias: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """Reference sequence log-probs, detached: given as ``ref_<name>_logps`` ``(B,)``, or computed
        under ``no_grad`` from ``ref_<name>_hidden`` and ``ref_weight``. ``named`` holds
        ``(name, logps, hidden, target)``."""
        logps = [x is not None for _, x, _, _ in named]
        hiddens = [x is not None for _, _, x, _ in named]
        if all(logps) and not any(hiddens):
            out = []
            for name, x, _, target in named:
                assert x is not None
                lp_name, t_name = _arg("ref", name, "logps"), _arg(name, "target")
                check_floating(lp_name, x)
                check_same_device((t_name, target), (lp_name, x))
                if tuple(x.shape) != (target.shape[0],):
                    raise LossValueError(
                        f"{lp_name} has shape {shape_str(x.shape)}, expected ({target.shape[0]},): "
                        f"one per sequence of {t_name}"
                    )
                out.append(x.detach())
            return out
        if all(hiddens) and not any(logps) and ref_weight is not None:
            with torch.no_grad():
                return self._sequences(
                    [(_arg("ref", n), h, t) for n, _, h, t in named],  # type: ignore[misc]
                    ref_weight,
                    ref_bias,
                    "ref_weight",
                )
        given = [_arg("ref", n, "logps") for n, x, _, _ in named if x is not None]
        given += [_arg("ref", n, "hidden") for n, _, x, _ in named if x is not None]
        given += ["ref_weight"] if ref_weight is not None else []
        names = [n for n, _, _, _ in named]
        raise LossValueError(
            "the reference is given either by "
            + " and ".join(_arg("ref", n, "logps") for n in names)
            + ", or by "
            + ", ".join(_arg("ref", n, "hidden") for n in names)
            + f" and ref_weight; got {', '.join(given) or 'none of them'}"
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, temperature={self.temperature}, chunk_size={self.chunk_size}"
        )


class LinearDPOLoss(_LinearPreference):
    r"""DPO from the policy's last hidden states and LM head, without ``(tokens, vocab)`` logits.

    ``loss = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta, loss_type, ...)`` with *summed* completion
    log-probs ``pi = sum_per_sequence(linear_log_probs(hidden, weight, target), target != ignore_index)``
    (Rafailov et al. 2023). Values and gradients equal :func:`sequence_log_probs` on the full logits
    composed with :func:`losskit.preference.losses.dpo_loss`.

    The reference is either precomputed (``ref_chosen_logps``, ``ref_rejected_logps``: ``(B,)``,
    summed the same way) or given by its hidden states and head (``ref_chosen_hidden``,
    ``ref_rejected_hidden``, ``ref_weight``, ``ref_bias``), run chunk by chunk under ``no_grad``.

    Args:
        beta, loss_type, label_smoothing, **dpo_kwargs: passed to ``dpo_loss`` (``reduction``,
            ``loss_weights``, ...).
        ignore_index, temperature, chunk_size: as in :func:`linear_log_probs`.
        fuse_pairs: compute the gradients during the forward pass, pair by pair: a pair's loss
            depends only on that pair, so its logits are formed, the pair losses and their
            gradients w.r.t. the sequence log-probs computed, and the logits contracted into the
            gradients at once. When one pair's float32 logits take at most 96 MiB, groups of whole
            pairs (up to 48 MiB) are held: three matrix products per row, as eager autograd. Beyond,
            only one chosen completion's logits are held and the rejected one's are formed twice
            (``4 max(Tw, Tl) V`` bytes; seven products per pair of rows instead of six). That path
            supports one backward per forward. ``None`` (default): when the loss allows it
            (``reduction`` 'mean' or 'sum' without ``normalizer``; per-pair loss types: not ``aot`` /
            ``aot_pair``, and ``bco_pair`` only with ``reward_baseline``) and what is held takes at
            most 256 MiB; ``False``: always :func:`linear_log_probs` (``(C, V)`` chunks, logits
            recomputed in backward, any reduction); ``True``: whenever the loss allows it.
        pair_bytes: the largest float32 logits block of one pair the paired path holds (default
            96 MiB). Raising it above ``4 (Tw + Tl) V`` trades memory for time: both completions'
            logits are held and formed once (six matrix products per pair of rows instead of seven).

    Shapes: ``chosen_hidden (B, Tw, H)``, ``rejected_hidden (B, Tl, H)``, ``weight (V, H)``,
    ``chosen_target (B, Tw)``, ``rejected_target (B, Tl)``; both completions run through one kernel
    call (the hidden states are concatenated, ``(B (Tw + Tl), H)``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hw, hl = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
        >>> weight = torch.randn(10, 4, generator=g, requires_grad=True)
        >>> tw, tl = torch.randint(0, 10, (2, 3), generator=g), torch.randint(0, 10, (2, 3), generator=g)
        >>> ref_w, ref_l = torch.tensor([-7.0, -6.0]), torch.tensor([-8.0, -9.0])
        >>> loss = LinearDPOLoss(beta=0.1)(hw, hl, weight, tw, tl, ref_chosen_logps=ref_w, ref_rejected_logps=ref_l)
        >>> from losskit.preference import dpo_loss
        >>> eager = dpo_loss(sequence_log_probs(hw @ weight.T, tw), sequence_log_probs(hl @ weight.T, tl), ref_w, ref_l)
        >>> torch.allclose(loss, eager)
        True
    """

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str | Sequence[str] = "sigmoid",
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        fuse_pairs: bool | None = None,
        pair_bytes: int | None = None,
        **dpo_kwargs: Any,
    ) -> None:
        super().__init__(ignore_index, temperature, chunk_size, fuse_pairs, dpo_kwargs, pair_bytes)
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing

    def forward(
        self,
        chosen_hidden: torch.Tensor,
        rejected_hidden: torch.Tensor,
        weight: torch.Tensor,
        chosen_target: torch.Tensor,
        rejected_target: torch.Tensor,
        bias: torch.Tensor | None = None,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        ref_chosen_hidden: torch.Tensor | None = None,
        ref_rejected_hidden: torch.Tensor | None = None,
        ref_weight: torch.Tensor | None = None,
        ref_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        named = [("chosen", chosen_hidden, chosen_target), ("rejected", rejected_hidden, rejected_target)]
        self._check_sequences(named, weight, bias, "weight")
        rw, rl = self._reference(
            [
                ("chosen", ref_chosen_logps, ref_chosen_hidden, chosen_target),
                ("rejected", ref_rejected_logps, ref_rejected_hidden, rejected_target),
            ],
            ref_weight,
            ref_bias,
        )
        kw = self.loss_kwargs

        def loss_of(
            pw: torch.Tensor, pl: torch.Tensor, pairs: slice = slice(None), **over: Any
        ) -> torch.Tensor:
            return dpo_loss(
                pw,
                pl,
                rw[pairs],
                rl[pairs],
                beta=self.beta,
                loss_type=self.loss_type,
                label_smoothing=self.label_smoothing,
                **{**kw, **over},
            )

        types = {self.loss_type} if isinstance(self.loss_type, str) else set(self.loss_type)
        separable = (
            not types & {"aot", "aot_pair"}
            and ("bco_pair" not in types or kw.get("reward_baseline") is not None)
            and not kw.get("gather_distributed", False)
        )
        return self._pair_or_sequences(named, weight, bias, loss_of, separable)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, loss_type={self.loss_type!r}, " + super().extra_repr()


class _LinearPairNoReference(_LinearPreference):
    """Reference-free pairwise losses on length-averaged log-probs (SimPO, ORPO): subclasses give the
    loss of the pairs' averaged log-probs (:meth:`_pair_loss`) and whether it is a plain mean or sum
    of per-pair terms (:meth:`_separable`)."""

    average = True

    def _pair_loss(self, avg_w: torch.Tensor, avg_l: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def _separable(self) -> bool:
        return True

    def forward(
        self,
        chosen_hidden: torch.Tensor,
        rejected_hidden: torch.Tensor,
        weight: torch.Tensor,
        chosen_target: torch.Tensor,
        rejected_target: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        named = [("chosen", chosen_hidden, chosen_target), ("rejected", rejected_hidden, rejected_target)]
        self._check_sequences(named, weight, bias, "weight")

        def loss_of(
            aw: torch.Tensor, al: torch.Tensor, pairs: slice = slice(None), **over: Any
        ) -> torch.Tensor:
            return self._pair_loss(aw, al, **{**self.loss_kwargs, **over})

        return self._pair_or_sequences(named, weight, bias, loss_of, self._separable())


class LinearSimPOLoss(_LinearPairNoReference):
    r"""SimPO (Meng et al. 2024) from hidden states: :func:`~losskit.preference.losses.simpo_loss` on the
    **length-averaged** log-probs of :func:`linear_log_probs`; no reference model, no ``(tokens, vocab)``
    logits. Arguments (``fuse_pairs`` included) and shapes as :class:`LinearDPOLoss` (without the
    reference);
    ``beta, gamma, label_smoothing, **simpo_kwargs`` go to ``simpo_loss``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hw, hl, weight = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g), torch.randn(10, 4)
        >>> tw, tl = torch.randint(0, 10, (2, 3), generator=g), torch.randint(0, 10, (2, 5), generator=g)
        >>> from losskit.preference import simpo_loss
        >>> eager = simpo_loss(sequence_log_probs(hw @ weight.T, tw, average=True),
        ...                    sequence_log_probs(hl @ weight.T, tl, average=True))
        >>> torch.allclose(LinearSimPOLoss()(hw, hl, weight, tw, tl), eager)
        True
    """

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 0.5,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        fuse_pairs: bool | None = None,
        pair_bytes: int | None = None,
        **simpo_kwargs: Any,
    ) -> None:
        super().__init__(ignore_index, temperature, chunk_size, fuse_pairs, simpo_kwargs, pair_bytes)
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    def _pair_loss(self, avg_w: torch.Tensor, avg_l: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return simpo_loss(avg_w, avg_l, self.beta, self.gamma, self.label_smoothing, **kwargs)


class LinearORPOLoss(_LinearPairNoReference):
    r"""ORPO (Hong et al. 2024) from hidden states: :func:`~losskit.preference.losses.orpo_loss` on the
    **length-averaged** log-probs of :func:`linear_log_probs`, whose default NLL term is the chosen
    completion's mean token NLL (``-avg_w``, the paper's per-pair average). Arguments and shapes as
    :class:`LinearSimPOLoss` (a given ``chosen_nll`` takes the :func:`linear_log_probs` path); ``beta`` (the paper's lambda) and ``**orpo_kwargs`` go to ``orpo_loss``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hw, hl, weight = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g), torch.randn(10, 4)
        >>> tw, tl = torch.randint(0, 10, (2, 3), generator=g), torch.randint(0, 10, (2, 3), generator=g)
        >>> from losskit.preference import orpo_loss
        >>> eager = orpo_loss(sequence_log_probs(hw @ weight.T, tw, average=True),
        ...                   sequence_log_probs(hl @ weight.T, tl, average=True))
        >>> torch.allclose(LinearORPOLoss()(hw, hl, weight, tw, tl), eager)
        True
    """

    def __init__(
        self,
        beta: float = 0.1,
        ignore_index: int = -100,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        fuse_pairs: bool | None = None,
        pair_bytes: int | None = None,
        **orpo_kwargs: Any,
    ) -> None:
        super().__init__(ignore_index, temperature, chunk_size, fuse_pairs, orpo_kwargs, pair_bytes)
        self.beta = beta

    def _pair_loss(self, avg_w: torch.Tensor, avg_l: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return orpo_loss(avg_w, avg_l, self.beta, **kwargs)

    def _separable(self) -> bool:
        return "chosen_nll" not in self.loss_kwargs  # a given chosen_nll couples the pairs: plain path


class LinearKTOLoss(_LinearPreference):
    r"""KTO (Ethayarajh et al. 2024) from hidden states: :func:`~losskit.preference.losses.kto_loss` on
    the **summed** log-probs of unpaired completions, labelled desirable or not.

    ``hidden (B, T, H)``, ``target (B, T)``, ``desirable (B,)`` bool. The reference is given by
    ``ref_logps`` ``(B,)`` or by ``ref_hidden`` + ``ref_weight`` (``ref_bias``), as in
    :class:`LinearDPOLoss`. The KL reference point comes from ``kl=`` (a number or tensor), or from
    the mismatched completions' hidden states ``kl_hidden (M, Tk, H)`` / ``kl_target (M, Tk)``: the
    policy runs on them under ``no_grad`` (``kto_loss`` detaches the estimate anyway), the reference
    through ``ref_kl_logps`` ``(M,)`` or ``ref_kl_hidden``. ``beta``, ``desirable_weight``,
    ``undesirable_weight`` and ``**kto_kwargs`` go to ``kto_loss``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden, weight = torch.randn(2, 3, 4, generator=g), torch.randn(10, 4)
        >>> target, desirable = torch.randint(0, 10, (2, 3), generator=g), torch.tensor([True, False])
        >>> ref = torch.tensor([-7.0, -6.0])
        >>> from losskit.preference import kto_loss
        >>> eager = kto_loss(sequence_log_probs(hidden @ weight.T, target), ref, desirable, kl=0.0)
        >>> torch.allclose(LinearKTOLoss()(hidden, weight, target, desirable, ref_logps=ref, kl=0.0), eager)
        True
    """

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        ignore_index: int = -100,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        **kto_kwargs: Any,
    ) -> None:
        super().__init__(ignore_index, temperature, chunk_size, loss_kwargs=kto_kwargs)
        self.beta = beta
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        desirable: torch.Tensor,
        bias: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        ref_hidden: torch.Tensor | None = None,
        ref_weight: torch.Tensor | None = None,
        ref_bias: torch.Tensor | None = None,
        kl: float | torch.Tensor | None = None,
        kl_hidden: torch.Tensor | None = None,
        kl_target: torch.Tensor | None = None,
        ref_kl_logps: torch.Tensor | None = None,
        ref_kl_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        (policy,) = self._sequences([("", hidden, target)], weight, bias)
        (ref,) = self._reference([("", ref_logps, ref_hidden, target)], ref_weight, ref_bias)
        policy_kl = ref_kl = None
        if kl_hidden is not None or kl_target is not None:
            if kl_hidden is None or kl_target is None:
                raise LossValueError("kl_hidden and kl_target go together; got only one of them")
            with torch.no_grad():
                (policy_kl,) = self._sequences([("kl", kl_hidden, kl_target)], weight, bias)
            (ref_kl,) = self._reference(
                [("kl", ref_kl_logps, ref_kl_hidden, kl_target)], ref_weight, ref_bias
            )
        return kto_loss(
            policy,
            ref,
            desirable,
            policy_kl,
            ref_kl,
            self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
            kl=kl,
            **self.loss_kwargs,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, " + super().extra_repr()
