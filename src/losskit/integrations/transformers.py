r"""Hugging Face Transformers: causal-LM training with the fused, chunked loss (no ``(N, V)`` logits).

A causal LM's loss is ``CE(lm_head(h_t), y_{t+1})`` over the tokens whose next label is not
``-100``. Transformers builds the whole ``(B, L, V)`` logits for it (plus their float32 copy and
the log-softmax saved for backward); :func:`losskit.linear_cross_entropy` takes the last hidden
states and ``lm_head.weight`` instead and never forms more than one chunk of logits. This module
runs the model so that it does not compute those logits, and computes the loss from the hidden
states:

* :class:`LinearCrossEntropyTrainer`: a drop-in ``transformers.Trainer``;
* :func:`causal_lm_loss`: the same for a hand-written training loop (model + batch -> loss);
* :func:`causal_lm_linear_cross_entropy`: the tensor-level loss (label shift, ``num_items_in_batch``).

.. math::
    \mathcal L = \frac{1}{n}\sum_{b,t:\ y_{b,t+1} \ne -100} \ell\big(W h_{b,t} + c,\ y_{b,t+1}\big),

with ``ell`` the (optionally label-smoothed, z-loss regularised) cross-entropy of
:func:`losskit.linear_cross_entropy` and ``n`` the number of counted tokens in the batch, or
``num_items_in_batch``: the Trainer's count over the whole gradient-accumulation window (summed
over ranks with ``average_tokens_across_devices``). Accumulating ``k`` micro-batches then gives
exactly the gradient of the big batch's token mean, whatever the micro-batches' lengths and
padding (not the mean of per-micro-batch means).

Why a ``Trainer`` subclass and not ``Trainer(compute_loss_func=...)``: ``compute_loss_func`` is
called with ``(outputs, labels, num_items_in_batch)`` *after* ``model(**inputs)`` has run, so by
then the full logits have been built (and kept for backward), and it sees neither the hidden
states nor ``lm_head``. The subclass therefore prepares the forward pass: it asks the model for
the logits of the last position only (``logits_to_keep=1``: ``(B, 1, V)``, used to check that the
model's logits really are ``lm_head(h)``), captures the decoder's last hidden state with a forward
hook, and then hands the Trainer an internal ``compute_loss_func``, so the Trainer's own token
counting, gradient-accumulation scaling and multi-device factors apply unchanged. The model is
still called through its wrapper (DDP, accelerate), so gradient synchronisation is untouched.

Supported models: decoder-only ``*ForCausalLM`` models whose ``forward`` takes ``logits_to_keep``
(``num_logits_to_keep`` in older releases) and whose output embedding is an ``nn.Linear``. Logit
soft-capping (``config.final_logit_softcapping``, Gemma 2/3) and logit scales
(``config.logit_scale``: Cohere; ``config.logits_scaling``: Granite) are applied. Any other
transform of the logits in a model's ``forward`` is caught by the logits check (first step of a
Trainer, every call of :func:`causal_lm_loss` unless ``check_logits=False``), which raises.
Not supported: FSDP / DeepSpeed ZeRO-3 (the head weight is only gathered inside ``lm_head``'s own
forward), a LoRA adapter on ``lm_head`` (its weight is not ``lm_head.weight``), DeepSpeed
sequence parallelism. In evaluation the returned outputs carry logits of the last position only.

The Trainer counts ``labels[..., 1:] != -100`` for ``num_items_in_batch`` (or ``shift_labels``
when the collator provides them, which are then used unshifted, as Transformers' own loss does);
``label_smoothing`` defaults to ``TrainingArguments.label_smoothing_factor``.

Usage (needs ``pip install losskit[hf]``)::

    from losskit.integrations.transformers import LinearCrossEntropyTrainer

    trainer = LinearCrossEntropyTrainer(model=model, args=training_args, train_dataset=ds,
                                        data_collator=collator, z_loss=1e-4)
    trainer.train()
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import LossTypeError, LossValueError, check_int, check_number, shape_str
from ..language import linear_cross_entropy

__all__ = [
    "LinearCrossEntropyTrainer",  # noqa: F822 (module __getattr__, needs transformers)
    "causal_lm_linear_cross_entropy",
    "causal_lm_loss",
]

_HF_MISSING = "losskit.integrations.transformers.{name} needs Hugging Face Transformers: pip install 'losskit[hf]'"


def _check_num_items(num_items_in_batch: Any) -> torch.Tensor | float | None:
    """``num_items_in_batch`` as a normalizer (at least 1: an all-ignored window gives a zero loss)."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise LossValueError(
                "num_items_in_batch must be a number or a one-element tensor, got shape "
                f"{shape_str(num_items_in_batch.shape)}"
            )
        return num_items_in_batch.reshape(()).clamp(min=1)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise LossTypeError(
            f"num_items_in_batch must be a number or a tensor, got {type(num_items_in_batch).__name__}"
        )
    if num_items_in_batch < 0:
        raise LossValueError(f"num_items_in_batch must be >= 0, got {num_items_in_batch}")
    return max(float(num_items_in_batch), 1.0)


def causal_lm_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    *,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    shift_labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Causal-LM cross-entropy from the last hidden states: position ``t`` predicts ``labels[:, t+1]``.

    .. math::
        \mathcal L = \frac{1}{n}\sum_{b,t:\ y_{b,t+1} \ne \text{ignore}}
            \operatorname{CE}\big(h_{b,t} W^\top + c,\ y_{b,t+1}\big),\qquad
        n = \texttt{num\_items\_in\_batch}\ \text{or the number of counted tokens}

    The labels are shifted by padding them with ``ignore_index`` on the right (no copy of
    ``hidden``); the last position of every row predicts nothing. With ``num_items_in_batch``
    the loss is the sum over this batch divided by it (Transformers' convention for exact gradient
    accumulation); an all-ignored batch gives a zero still connected to the graph.

    Args:
        hidden: ``(B, L, H)`` last hidden states (after the final norm), or ``(L, H)``.
        weight: ``(V, H)`` output-embedding weight (``lm_head.weight``).
        labels: ``(B, L)`` token ids or ``ignore_index``, aligned with the inputs (not shifted).
        bias: optional ``(V,)`` head bias.
        num_items_in_batch: divide the sum by this (the accumulation window's token count).
        shift_labels: already shifted labels of ``hidden``'s leading shape; used as they are
            instead of ``labels`` (padding-free collators provide them).
        ignore_index, label_smoothing, z_loss, softcap, chunk_size: as in
            :func:`losskit.linear_cross_entropy`.

    Returns:
        Scalar float32 loss (float64 for float64 inputs).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
        >>> weight = torch.randn(30, 8, generator=g, dtype=torch.float64)
        >>> labels = torch.tensor([[3, 4, 5, -100, -100], [7, 8, 9, 10, 11]])
        >>> loss = causal_lm_linear_cross_entropy(hidden, weight, labels)
        >>> logits = hidden[:, :-1] @ weight.T
        >>> ref = F.cross_entropy(logits.reshape(-1, 30), labels[:, 1:].reshape(-1))
        >>> torch.allclose(loss, ref)
        True
        >>> half = causal_lm_linear_cross_entropy(hidden, weight, labels, num_items_in_batch=12)
        >>> torch.allclose(half, ref * 6 / 12)
        True
    """
    if not isinstance(hidden, torch.Tensor) or hidden.ndim < 2:
        got = shape_str(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise LossValueError(f"hidden must be a (B, L, H) or (L, H) tensor, got {got}")
    check_int("ignore_index", ignore_index)
    if shift_labels is not None:
        if not isinstance(shift_labels, torch.Tensor) or tuple(shift_labels.shape) != tuple(hidden.shape[:-1]):
            got = shape_str(shift_labels.shape) if isinstance(shift_labels, torch.Tensor) else "non-tensor"
            raise LossValueError(
                f"shift_labels must have hidden's leading shape {shape_str(hidden.shape[:-1])}, got {got}"
            )
        target = shift_labels
    else:
        if labels is None:
            raise LossValueError("labels is None and no shift_labels were given: nothing to predict")
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(hidden.shape[:-1]):
            got = shape_str(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise LossValueError(
                f"labels must have hidden's leading shape {shape_str(hidden.shape[:-1])}, got {got}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise LossTypeError(f"labels must be an integer tensor, got {labels.dtype}")
        target = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    normalizer = _check_num_items(num_items_in_batch)
    return linear_cross_entropy(
        hidden,
        weight,
        target,
        bias,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction="mean",
        normalizer=normalizer,
        chunk_size=chunk_size,
    )


# ----------------------------------------------------------------------------- model plumbing


def _unwrap(model: nn.Module) -> nn.Module:
    """The ``PreTrainedModel`` inside DDP / DataParallel / ``torch.compile`` / PEFT wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        get_base = getattr(model, "get_base_model", None)  # PEFT
        if callable(get_base) and type(model).__name__.startswith("Peft"):
            model = get_base()
            continue
        break
    return model


@dataclass
class _Parts:
    decoder: nn.Module
    head: nn.Linear
    keep_kw: str
    takes_use_cache: bool
    softcap: float | None
    scale: float


def _parts(model: nn.Module) -> _Parts:
    base = _unwrap(model)
    get_out = getattr(base, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if not isinstance(head, nn.Linear):
        raise LossTypeError(
            f"model: the output embeddings of {type(base).__name__} must be a torch.nn.Linear "
            f"(lm_head), got {type(head).__name__}; a causal LM (a ...ForCausalLM) without an adapter on "
            "lm_head is needed"
        )
    get_dec = getattr(base, "get_decoder", None)
    decoder = get_dec() if callable(get_dec) else None
    if not isinstance(decoder, nn.Module) or decoder is base:
        raise LossTypeError(f"model: cannot find the decoder of {type(base).__name__} (get_decoder())")
    params = inspect.signature(base.forward).parameters
    keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    if keep_kw is None:
        raise LossTypeError(
            f"model: {type(base).__name__}.forward takes no logits_to_keep argument, so it would build "
            "the full (B, L, V) logits; this integration needs a model that can skip them"
        )
    config = getattr(base, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = 1.0
    logit_scale = getattr(config, "logit_scale", None)  # Cohere: logits * scale
    if logit_scale is not None:
        scale *= float(logit_scale)
    logits_scaling = getattr(config, "logits_scaling", None)  # Granite: logits / scaling
    if logits_scaling is not None:
        scale /= float(logits_scaling)
    return _Parts(
        decoder=decoder,
        head=head,
        keep_kw=keep_kw,
        takes_use_cache="use_cache" in params,
        softcap=None if softcap is None else float(softcap),
        scale=scale,
    )


class _Capture:
    hidden: torch.Tensor | None = None


@contextmanager
def _capture(decoder: nn.Module) -> Iterator[_Capture]:
    cap = _Capture()

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        h = getattr(out, "last_hidden_state", None)
        if h is None:
            h = out[0] if isinstance(out, (tuple, list)) else out
        cap.hidden = h

    handle = decoder.register_forward_hook(hook)
    try:
        yield cap
    finally:
        handle.remove()


def _prepare_inputs(inputs: Mapping[str, Any], parts: _Parts) -> dict[str, Any]:
    out = dict(inputs)
    out[parts.keep_kw] = 1
    if parts.takes_use_cache:
        out.setdefault("use_cache", False)
    return out


def _head_inputs(
    hidden: torch.Tensor | None, parts: _Parts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(hidden, torch.Tensor):
        raise LossValueError("model: its decoder did not run (no last hidden state was captured)")
    weight: torch.Tensor = parts.head.weight
    bias: torch.Tensor | None = parts.head.bias
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise LossValueError(
            f"model: lm_head.weight has shape {shape_str(weight.shape)}, not (V, {hidden.shape[-1]}); "
            "a sharded head (FSDP, ZeRO-3) is not supported"
        )
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    if parts.scale != 1.0:
        hidden = hidden * parts.scale
        bias = None if bias is None else bias * parts.scale
    return hidden, weight, bias


def _check_logits(outputs: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  parts: _Parts) -> None:
    """The model's logits of the last position must be ``softcap(scale * lm_head(h))``."""
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        raise LossValueError("model: its outputs carry no logits to check (pass check_logits=False)")
    if logits.shape[-2] != 1:
        raise LossValueError(
            f"model: logits_to_keep=1 gave logits of shape {shape_str(logits.shape)}, not (B, 1, V): "
            "the model ignores it and builds the full logits"
        )
    with torch.no_grad():
        h = hidden[..., -1:, :]
        ref = h @ weight.T
        if bias is not None:
            ref = ref + bias
        if parts.softcap is not None:
            ref = parts.softcap * torch.tanh(ref / parts.softcap)
        got = logits.to(ref.dtype)
        tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(ref.dtype, 3e-2)
        err = (got - ref).abs().max().item() if ref.numel() else 0.0
        size = max(ref.abs().max().item() if ref.numel() else 0.0, 1.0)
    if err > tol * size:
        raise LossValueError(
            "model: its logits are not softcap(scale * lm_head(last hidden state)) "
            f"(max difference {err:.3g} at the last position); its forward transforms them in a way this "
            "integration does not reproduce"
        )


def _options(label_smoothing: float, z_loss: float, chunk_size: int | None, ignore_index: int) -> None:
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    check_number("z_loss", z_loss, low=0.0)
    check_int("chunk_size", chunk_size, low=1, allow_none=True)
    check_int("ignore_index", ignore_index)


def causal_lm_loss(
    model: nn.Module,
    inputs: Mapping[str, Any],
    num_items_in_batch: torch.Tensor | int | float | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    check_logits: bool = True,
) -> tuple[torch.Tensor, Any]:
    """Run a causal LM on a batch and return ``(loss, outputs)`` without building its full logits.

    ``inputs`` is the batch dict (``input_ids``, ``attention_mask``, ``labels`` or ``shift_labels``,
    ...); the labels are taken out, the model is called with ``logits_to_keep=1`` and the loss is
    :func:`causal_lm_linear_cross_entropy` of the decoder's last hidden state and ``lm_head``.
    ``outputs`` are the model's outputs (logits of the last position only). With
    ``check_logits`` those logits are compared with ``lm_head`` of the hidden state (catches
    models whose forward transforms the logits); it costs a host sync.

    For gradient accumulation pass the window's token count
    ``sum(batch["labels"][..., 1:].ne(-100).sum() for batch in window)`` as ``num_items_in_batch``
    and sum the micro-batch losses' gradients.
    """
    _options(label_smoothing, z_loss, chunk_size, ignore_index)
    if not isinstance(inputs, Mapping):
        raise LossTypeError(f"inputs must be a mapping of model inputs, got {type(inputs).__name__}")
    batch = dict(inputs)
    labels = batch.pop("labels", None)
    shift_labels = batch.pop("shift_labels", None)
    parts = _parts(model)
    with _capture(parts.decoder) as cap:
        outputs = model(**_prepare_inputs(batch, parts))
    hidden, weight, bias = _head_inputs(cap.hidden, parts)
    if check_logits:
        _check_logits(outputs, hidden, weight, bias, parts)
    loss = causal_lm_linear_cross_entropy(
        hidden,
        weight,
        labels,
        bias,
        num_items_in_batch=num_items_in_batch,
        shift_labels=shift_labels,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=parts.softcap,
        chunk_size=chunk_size,
    )
    return loss, outputs


# ----------------------------------------------------------------------------- Trainer


_TRAINER_CLASS: type | None = None


def _trainer_class() -> type:
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    try:
        from transformers import Trainer
    except ImportError as e:  # pragma: no cover - exercised without transformers
        raise ImportError(_HF_MISSING.format(name="LinearCrossEntropyTrainer")) from e

    class LinearCrossEntropyTrainer(Trainer):
        """``transformers.Trainer`` whose causal-LM loss never builds the ``(B, L, V)`` logits.

        Same arguments as ``Trainer`` (keywords only, no ``compute_loss_func``), plus:

        Args:
            label_smoothing: ``eps`` in ``[0, 1]``; default ``args.label_smoothing_factor``.
            z_loss: PaLM's ``lambda_z * lse^2`` auxiliary term (``1e-4`` there).
            chunk_size: tokens per logits chunk (default: a 48 MiB float32 buffer).
            ignore_index: label value that is not predicted (Transformers uses ``-100``).
            check_logits: on the first training step, check the model's last-position logits
                against ``lm_head`` of the captured hidden state (raises if they differ).

        See :mod:`losskit.integrations.transformers` for the mechanism and what is supported.
        """

        def __init__(
            self,
            *args: Any,
            label_smoothing: float | None = None,
            z_loss: float = 0.0,
            chunk_size: int | None = None,
            ignore_index: int = -100,
            check_logits: bool = True,
            **kwargs: Any,
        ) -> None:
            if args:
                raise LossTypeError(
                    "LinearCrossEntropyTrainer takes keyword arguments only (model=..., args=...)"
                )
            if kwargs.get("compute_loss_func") is not None:
                raise LossValueError(
                    "compute_loss_func: LinearCrossEntropyTrainer computes the loss itself; do not pass one"
                )
            kwargs["compute_loss_func"] = self._loss_from_hidden
            self._pending: tuple[_Capture, _Parts, Any] | None = None
            super().__init__(**kwargs)
            if label_smoothing is None:
                label_smoothing = float(getattr(self.args, "label_smoothing_factor", 0.0) or 0.0)
            _options(label_smoothing, z_loss, chunk_size, ignore_index)
            self.lk_label_smoothing = float(label_smoothing)
            self.lk_z_loss = float(z_loss)
            self.lk_chunk_size = chunk_size
            self.lk_ignore_index = ignore_index
            self._lk_check = bool(check_logits)
            # the loss shifts labels whatever the model's loss_type says: count labels[..., 1:]
            if hasattr(self, "_loss_shifts_labels"):
                self._loss_shifts_labels = True
            if self.model is not None:
                _parts(self.model)  # fail early on an unsupported model

        def compute_loss(
            self,
            model: nn.Module,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: torch.Tensor | int | None = None,
        ) -> Any:
            pc = getattr(self.accelerator, "parallelism_config", None)
            if pc is not None and getattr(pc, "sp_enabled", False):
                raise LossValueError("LinearCrossEntropyTrainer does not support sequence parallelism")
            parts = _parts(self.accelerator.unwrap_model(model))
            batch = dict(inputs)
            shift_labels = batch.pop("shift_labels", None)
            if shift_labels is not None and "labels" not in batch:
                batch["labels"] = shift_labels  # so the Trainer takes it out of the model's inputs
            with _capture(parts.decoder) as cap:
                self._pending = (cap, parts, shift_labels)
                try:
                    return super().compute_loss(
                        model,
                        _prepare_inputs(batch, parts),
                        return_outputs=return_outputs,
                        num_items_in_batch=num_items_in_batch,
                    )
                finally:
                    self._pending = None

        def _loss_from_hidden(
            self, outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None
        ) -> torch.Tensor:
            if self._pending is None:
                raise LossValueError("LinearCrossEntropyTrainer's loss is only called from compute_loss")
            cap, parts, shift_labels = self._pending
            hidden, weight, bias = _head_inputs(cap.hidden, parts)
            if self._lk_check:
                _check_logits(outputs, hidden, weight, bias, parts)
                self._lk_check = False
            return causal_lm_linear_cross_entropy(
                hidden,
                weight,
                None if shift_labels is not None else labels,
                bias,
                num_items_in_batch=num_items_in_batch,
                shift_labels=shift_labels,
                ignore_index=self.lk_ignore_index,
                label_smoothing=self.lk_label_smoothing,
                z_loss=self.lk_z_loss,
                softcap=parts.softcap,
                chunk_size=self.lk_chunk_size,
            )

    LinearCrossEntropyTrainer.__module__ = __name__
    LinearCrossEntropyTrainer.__qualname__ = "LinearCrossEntropyTrainer"
    _TRAINER_CLASS = LinearCrossEntropyTrainer
    return LinearCrossEntropyTrainer


def __getattr__(name: str) -> Any:
    if name == "LinearCrossEntropyTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
