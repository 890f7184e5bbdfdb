"""Case list of ``benchmarks/gpu_check.py``: the fused kernels and chunked losses, with their shapes.

Each :class:`GpuCase` points at a ``losskit bench`` case (inputs and variants: the public losskit call,
its reference path with the fused kernels off, the kernel itself, the eager composition, the nearest
native torch loss; see :mod:`losskit.bench.cases`) and adds the shapes used on a CUDA device:

* ``check_shape``: where the accuracy check runs (every losskit variant on the device in float32 and
  bfloat16 against the float64 CPU reference); ``None`` for time-only cases (the LLM-sized head, whose
  float64 CPU reference would take minutes);
* ``time_shape``: where forward+backward is timed and the peak memory read (the README shape);
* ``time_dtypes``: the dtypes timed.

``--tiny`` runs the same list at each bench case's quick shape, checks included.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int, ...]

FP32_BF16 = ("float32", "bfloat16")


@dataclass(frozen=True)
class GpuCase:
    name: str
    bench: str  # the losskit bench case it runs
    check_shape: Shape | None
    time_shape: Shape
    time_dtypes: tuple[str, ...] = FP32_BF16
    note: str = ""


_NC = (8192, 1000)
_SEG = (16, 4, 128, 128)
_PAIRS = (4096, 512)
_HEAD_CHECK = (1024, 1024, 16384)  # N, H, V
_SEQ_CHECK = (2, 128, 512, 8192)  # B, T, H, V

GPU_CASES: list[GpuCase] = [
    GpuCase("sigmoid_focal", "sigmoid_focal", _NC, _NC),
    GpuCase("focal", "focal", _NC, _NC),
    GpuCase("asymmetric", "asymmetric", _NC, _NC),
    GpuCase("kd", "kd", _NC, _NC),
    GpuCase("jsd", "jsd", _NC, _NC),
    GpuCase("dice", "dice", _SEG, _SEG),
    GpuCase("tversky", "tversky", _SEG, _SEG),
    GpuCase("ssim", "ssim", _SEG, _SEG, note="separable Gaussian filter function"),
    GpuCase("clip", "clip", _PAIRS, _PAIRS, note="plain and chunk_size=256"),
    GpuCase("siglip", "siglip", _PAIRS, _PAIRS, note="plain and chunk_size=256"),
    GpuCase("linear_ce", "linear_ce", _HEAD_CHECK, (4096, 1024, 32000)),
    GpuCase(
        "linear_ce_llm",
        "linear_ce",
        None,
        (8192, 4096, 128256),
        ("bfloat16",),
        note="LLM-sized head: 8192 tokens, H=4096, V=128256; timed only",
    ),
    GpuCase("linear_log_probs", "linear_log_probs", _HEAD_CHECK, (4096, 1024, 32000)),
    GpuCase("linear_dpo", "linear_dpo", _SEQ_CHECK, (4, 512, 1024, 32000)),
    GpuCase("linear_dpo_reference_model", "linear_dpo_reference_model", _SEQ_CHECK, (4, 512, 1024, 32000)),
    GpuCase("linear_policy_gradient", "linear_policy_gradient", _SEQ_CHECK, (8, 512, 1024, 32000)),
]
