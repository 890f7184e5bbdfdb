"""losskit.integrations.transformers: the fused causal-LM loss in Hugging Face models and Trainer.

References are independent: the model's own ``loss`` and float64 ``F.cross_entropy`` of the
model's full logits; a manual SGD step on the whole batch for gradient accumulation.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

import losskit
from losskit.integrations.transformers import causal_lm_linear_cross_entropy, causal_lm_loss

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

V = 128


def tiny_model(vocab: int = V, dtype: torch.dtype = torch.float64, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).to(dtype)


def padded_batch(lengths: list[int], seed: int, vocab: int = V) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels -100 at padding and at a few prompt tokens."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, :n] = ids[i, :n]
        labels[i, : (i % 3)] = -100  # an uneven "prompt" that is not trained on
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference_loss(model, batch, label_smoothing=0.0, z_loss=0.0, normalizer=None):
    """float64 plain formula on the model's full logits: shift, ignore -100, mean or sum / normalizer."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.double()[:, :-1].reshape(-1, model.config.vocab_size)
    target = batch["labels"][:, 1:].reshape(-1)
    keep = target != -100
    logits, target = logits[keep], target[keep]
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
    ce = ce + z_loss * torch.logsumexp(logits, -1) ** 2
    return ce.sum() / (keep.sum() if normalizer is None else normalizer)


def record_logit_shapes(model):
    shapes: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    return shapes, handle


def test_matches_model_loss_and_gradients_with_padding():
    model = tiny_model()
    batch = padded_batch([9, 5, 12, 3], seed=1)
    own = model(**batch).loss  # Transformers computes it in float32
    ref = reference_loss(model, batch)
    shapes, handle = record_logit_shapes(model)
    loss, outputs = causal_lm_loss(model, batch)
    handle.remove()
    assert shapes == [(4, 1, V)]  # the model never built the full logits
    assert outputs.logits.shape == (4, 1, V)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, own.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    got = torch.autograd.grad(loss, [model.lm_head.weight, model.model.embed_tokens.weight])
    want = torch.autograd.grad(ref, [model.lm_head.weight, model.model.embed_tokens.weight])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


FAMILY_KW = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
)


@pytest.mark.parametrize(
    "family, extra",
    [
        ("Gemma2", dict(head_dim=8, final_logit_softcapping=3.0)),  # soft-capped logits
        ("Granite", dict(logits_scaling=4.0)),  # logits / scaling
        ("Cohere", dict(logit_scale=0.3)),  # logits * scale
        ("Qwen2", {}),
        ("GPT2", None),  # lm_head tied to the input embedding, LayerNorm, learned positions
    ],
)
def test_other_families_match_their_own_loss(family, extra):
    if extra is None:
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        cls = transformers.GPT2LMHeadModel
    else:
        cfg = getattr(transformers, family + "Config")(**FAMILY_KW, **extra)
        cls = getattr(transformers, family + "ForCausalLM")
    torch.manual_seed(0)
    model = cls(cfg).double().eval()  # eval: no dropout, so the references see the same network
    batch = padded_batch([9, 5, 12], seed=1)
    loss, _ = causal_lm_loss(model, batch)
    torch.testing.assert_close(loss, reference_loss(model, batch), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, model(**batch).loss.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("label_smoothing, z_loss", [(0.1, 0.0), (0.0, 1e-3), (0.2, 1e-2)])
def test_options_and_num_items_in_batch(label_smoothing, z_loss):
    model = tiny_model()
    batch = padded_batch([7, 11, 4], seed=2)
    loss, _ = causal_lm_loss(model, batch, 50, label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=5)
    ref = reference_loss(model, batch, label_smoothing, z_loss, normalizer=50)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)


def test_shift_labels_used_as_given():
    model = tiny_model()
    batch = padded_batch([6, 8], seed=3)
    shifted = F.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "shift_labels": shifted}
    a, _ = causal_lm_loss(model, inputs)
    torch.testing.assert_close(a, reference_loss(model, batch), rtol=1e-12, atol=0)


def test_tensor_level_all_ignored_gives_connected_zero():
    hidden = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(10, 8, dtype=torch.float64)
    labels = torch.full((2, 4), -100)
    labels[:, 0] = 3  # position 0 is never a target
    loss = causal_lm_linear_cross_entropy(hidden, weight, labels, num_items_in_batch=torch.tensor(0))
    assert loss.item() == 0.0
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() == 0


def test_bad_inputs_name_the_argument():
    hidden, weight = torch.randn(2, 4, 8), torch.randn(10, 8)
    with pytest.raises(losskit.LossValueError, match="labels"):
        causal_lm_linear_cross_entropy(hidden, weight, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(losskit.LossTypeError, match="labels"):
        causal_lm_linear_cross_entropy(hidden, weight, torch.zeros(2, 4))
    with pytest.raises(losskit.LossValueError, match="shift_labels"):
        causal_lm_linear_cross_entropy(hidden, weight, None, shift_labels=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(losskit.LossValueError, match="num_items_in_batch"):
        causal_lm_linear_cross_entropy(
            hidden, weight, torch.zeros(2, 4, dtype=torch.long), num_items_in_batch=torch.ones(2)
        )
    model = tiny_model()
    batch = padded_batch([4, 3], seed=0)
    with pytest.raises(losskit.LossValueError, match="z_loss"):
        causal_lm_loss(model, batch, z_loss=-1.0)
    with pytest.raises(losskit.LossTypeError, match="inputs"):
        causal_lm_loss(model, [batch["input_ids"]])  # type: ignore[arg-type]
    with pytest.raises(losskit.LossTypeError, match="model"):
        causal_lm_loss(transformers.LlamaModel(model.config), batch)


def test_logits_check_catches_an_unreproduced_transform():
    model = tiny_model()
    batch = padded_batch([5, 6], seed=4)
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out * 2.0)
    with pytest.raises(losskit.LossValueError, match="logits"):
        causal_lm_loss(model, batch)
    handle.remove()


# ----------------------------------------------------------------------------- Trainer


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for r in rows:
        pad = width - len(r["input_ids"])
        out["input_ids"].append(F.pad(r["input_ids"], (0, pad), value=0))
        out["attention_mask"].append(F.pad(torch.ones_like(r["input_ids"]), (0, pad), value=0))
        out["labels"].append(F.pad(r["labels"], (0, pad), value=-100))
    return {k: torch.stack(v) for k, v in out.items()}


def make_rows(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, n in enumerate(lengths):
        ids = torch.randint(1, V, (n,), generator=g)
        labels = ids.clone()
        labels[: (3 * i) % (n - 1)] = -100  # very uneven counts of trained tokens
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def run_trainer(tmp_path, model, rows, lr, label_smoothing_factor=0.0, **trainer_kwargs):
    pytest.importorskip("accelerate")  # transformers.Trainer needs it
    from losskit.integrations.transformers import LinearCrossEntropyTrainer

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        label_smoothing_factor=label_smoothing_factor,
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    trainer = LinearCrossEntropyTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(rows),
        data_collator=collate,
        optimizers=(opt, sched),
        **trainer_kwargs,
    )
    shapes, handle = record_logit_shapes(model)
    trainer.train()
    handle.remove()
    return shapes


@pytest.mark.parametrize("z_loss, label_smoothing", [(0.0, 0.0), (1e-2, 0.1)])
def test_trainer_gradient_accumulation_is_exact(tmp_path, z_loss, label_smoothing):
    lengths = [13, 4, 9, 9, 3, 16, 7, 11]  # 4 micro-batches of 2, uneven lengths and token counts
    rows = make_rows(lengths, seed=5)
    lr = 0.5
    start = tiny_model(seed=7)
    trained = tiny_model(seed=7)
    shapes = run_trainer(tmp_path, trained, rows, lr, label_smoothing, z_loss=z_loss)
    assert shapes and all(s[-2] == 1 for s in shapes)  # never (B, L, V) logits

    # reference: one SGD step on the whole batch with the whole batch's token mean
    full = collate(rows)
    ref_model = tiny_model(seed=7)
    ref_model.train()
    loss = reference_loss(ref_model, full, label_smoothing, z_loss)
    loss.backward()
    # and the mean of the four micro-batch means (what exact accumulation must not give)
    naive = tiny_model(seed=7)
    naive.train()
    for k in range(4):
        (reference_loss(naive, collate(rows[2 * k : 2 * k + 2]), label_smoothing, z_loss) / 4).backward()

    moved = naive_gap = 0.0
    for (name, p0), p, pr, pn in zip(
        start.named_parameters(), trained.parameters(), ref_model.parameters(), naive.parameters()
    ):
        want = p0.detach() - lr * pr.grad
        torch.testing.assert_close(p.detach(), want, rtol=1e-9, atol=1e-11, msg=name)
        moved = max(moved, (p.detach() - p0).abs().max().item())
        naive_gap = max(naive_gap, (p.detach() - (p0.detach() - lr * pn.grad)).abs().max().item())
    assert moved > 1e-3  # the step did something
    assert naive_gap > 1e-4  # and the test can tell exact accumulation from the mean of means


def test_trainer_evaluate_gives_the_token_mean(tmp_path):
    pytest.importorskip("accelerate")
    from losskit.integrations.transformers import LinearCrossEntropyTrainer

    rows = make_rows([10, 4, 7, 12, 6], seed=8)
    model = tiny_model(seed=3)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=len(rows), use_cpu=True, report_to=[]
    )
    trainer = LinearCrossEntropyTrainer(model=model, args=args, eval_dataset=ListDataset(rows), data_collator=collate)
    shapes, handle = record_logit_shapes(model)
    metrics = trainer.evaluate()
    handle.remove()
    assert shapes and all(s[-2] == 1 for s in shapes)
    model.eval()
    with torch.no_grad():
        want = reference_loss(model, collate(rows)).item()
    assert metrics["eval_loss"] == pytest.approx(want, rel=1e-9)


def test_trainer_rejects_compute_loss_func_and_bad_options(tmp_path):
    pytest.importorskip("accelerate")
    from losskit.integrations.transformers import LinearCrossEntropyTrainer

    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(losskit.LossValueError, match="compute_loss_func"):
        LinearCrossEntropyTrainer(model=tiny_model(), args=args, compute_loss_func=lambda *a, **k: 0)
    with pytest.raises(losskit.LossValueError, match="label_smoothing"):
        LinearCrossEntropyTrainer(model=tiny_model(), args=args, label_smoothing=2.0)


# ----------------------------------------------------------------------------- memory

MEM_VOCAB, MEM_BATCH, MEM_LEN = 32000, 4, 256


def peak_step_child(spec):
    """In a fresh process: peak RSS growth of one forward+backward of a float32 tiny Llama."""
    from losskit.bench.measure import _status_kb

    torch.set_num_threads(1)
    model = tiny_model(vocab=MEM_VOCAB, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, MEM_VOCAB, (MEM_BATCH, MEM_LEN), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step():
        if spec["variant"] == "fused":
            loss, _ = causal_lm_loss(model, batch, check_logits=False)
        else:
            loss = model(**batch).loss
        loss.backward()

    step()  # warm-up: gradients allocated, lazy init done
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    step()
    return {"peak_bytes": max(_status_kb("VmHWM") - before, 0) * 1024}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak RSS")
def test_training_step_peak_memory_lower_than_model_loss():
    from losskit.bench.measure import run_json_child

    here = os.path.dirname(os.path.abspath(__file__))
    env = {"PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    peaks = {}
    for variant in ("fused", "model"):
        result, err = run_json_child(
            f"{__name__.rsplit('.', 1)[-1]}:peak_step_child", {"variant": variant}, env=env, timeout=120
        )
        assert result is not None, err[-2000:]
        peaks[variant] = result["peak_bytes"]
    print(f"peak growth (MiB) fused {peaks['fused'] / 2**20:.1f}, model {peaks['model'] / 2**20:.1f}", file=sys.stderr)
    assert peaks["fused"] < peaks["model"]
