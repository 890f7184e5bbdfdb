"""Train a tiny Llama with ``transformers.Trainer`` and losskit's fused causal-LM loss (no full logits).

    python examples/hf_trainer_causal_lm.py            # a few optimizer steps, losses printed
    python examples/hf_trainer_causal_lm.py --memory   # peak memory of one training step, both losses

The data are generated token sequences of different lengths (right-padded; padding and a prompt of
random length per row are labelled -100), each row an arithmetic progression modulo the vocabulary,
so a model can learn them. ``LinearCrossEntropyTrainer`` computes the loss from the decoder's last
hidden states and ``lm_head.weight`` with :func:`losskit.linear_cross_entropy`, and gradient
accumulation divides by the token count of the whole accumulation window (``num_items_in_batch``).

``--memory`` runs one forward+backward in a fresh process per variant and reports the growth of the
peak RSS (``VmHWM``, Linux), as ``losskit bench`` does: the model's own loss builds the
``(B, L, V)`` float32 logits, their log-softmax and gradient; the fused loss one chunk at a time.
Needs ``pip install 'losskit[hf]' accelerate``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F


def tiny_llama(vocab: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(dtype)


class Progressions(torch.utils.data.Dataset):
    """Rows ``a, a+d, a+2d, ...`` (mod vocab, avoiding 0 = padding) of random lengths."""

    def __init__(self, n: int, vocab: int, min_len: int, max_len: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            length = int(torch.randint(min_len, max_len + 1, (), generator=g))
            a, d = (int(v) for v in torch.randint(1, 8, (2,), generator=g))
            ids = (a + d * torch.arange(length)) % (vocab - 1) + 1
            labels = ids.clone()
            labels[: int(torch.randint(0, length // 2, (), generator=g))] = -100  # an untrained "prompt"
            self.rows.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": torch.stack([F.pad(r["input_ids"], (0, p)) for r, p in zip(rows, pad)]),
        "attention_mask": torch.stack([F.pad(torch.ones_like(r["input_ids"]), (0, p)) for r, p in zip(rows, pad)]),
        "labels": torch.stack([F.pad(r["labels"], (0, p), value=-100) for r, p in zip(rows, pad)]),
    }


def train(steps: int, vocab: int) -> None:
    from transformers import TrainingArguments

    from losskit.integrations.transformers import LinearCrossEntropyTrainer, causal_lm_loss

    model = tiny_llama(vocab)
    data = Progressions(steps * 16, vocab, min_len=8, max_len=48)
    batch = collate([data[i] for i in range(4)])
    fused, _ = causal_lm_loss(model, batch)
    print(f"initial loss: fused {fused.item():.5f}, model's own {model(**batch).loss.item():.5f}")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=4,
            max_steps=steps,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            logging_steps=1,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = LinearCrossEntropyTrainer(
            model=model, args=args, train_dataset=data, data_collator=collate, z_loss=1e-4
        )
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    for step, loss in enumerate(losses, 1):
        print(f"step {step:2d}  loss {float(loss):.4f}")
    assert float(losses[-1]) < float(losses[0]), "training did not reduce the loss"


def peak_child(variant: str, vocab: int, batch: int, length: int, threads: int) -> int:
    """One warm-up and one measured forward+backward; returns the peak RSS growth in bytes."""
    from losskit.integrations.transformers import causal_lm_loss

    torch.set_num_threads(threads)
    model = tiny_llama(vocab)
    ids = torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step() -> None:
        if variant == "fused":
            loss = causal_lm_loss(model, inputs, check_logits=False)[0]
        else:
            loss = model(**inputs).loss
        loss.backward()

    def kb(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = kb("VmRSS")
    step()
    return (kb("VmHWM") - before) * 1024


def memory(vocab: int, shapes: list[tuple[int, int]], threads: int) -> None:
    if not os.path.exists("/proc/self/clear_refs"):
        print("peak RSS needs Linux /proc")
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    print(f"peak RSS growth of one forward+backward, float32, hidden 64, 2 layers, V={vocab}, {threads} thread(s)")
    for b, length in shapes:
        row = {}
        for variant in ("model", "fused"):
            cmd = [sys.executable, __file__, "--peak-child", variant, str(vocab), str(b), str(length), str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            row[variant] = json.loads(out.strip().splitlines()[-1])["peak_bytes"] / 2**20
        logits = b * length * vocab * 4 / 2**20
        print(
            f"  B={b} L={length}: model's own loss {row['model']:7.1f} MiB, fused {row['fused']:6.1f} MiB "
            f"(one float32 (B, L, V) logits tensor: {logits:.1f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--memory", action="store_true", help="measure peak memory instead of training")
    parser.add_argument("--peak-child", nargs=5, metavar=("VARIANT", "V", "B", "L", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        variant, *nums = args.peak_child
        print(json.dumps({"peak_bytes": peak_child(variant, *(int(n) for n in nums))}))
    elif args.memory:
        memory(32000, [(4, 256), (8, 512)], threads=1)
    else:
        train(args.steps, args.vocab)


if __name__ == "__main__":
    main()
