"""Smoke tests of ``losskit bench`` (tiny shapes; no test looks at wall-clock values)."""

from __future__ import annotations

import json
import textwrap

import torch

from losskit.bench import CASES, cli
from losskit.bench.measure import held_bytes, peak_growth_subprocess

ROLES = {"losskit", "kernel", "eager", "native", "peer"}


def test_quick_run_structure():
    report = cli.run(quick=True, only=["sigmoid_focal", "dice"], repeat=1, peak=False)
    assert report["meta"]["torch"] == torch.__version__ and report["meta"]["threads"] == 2
    assert [c["case"] for c in report["cases"]] == ["sigmoid_focal", "dice"]
    for rec in report["cases"]:
        assert rec["shape"] == list(CASES[rec["case"]].quick_shape)
        roles = [r["role"] for r in rec["rows"]]
        assert {"losskit", "kernel", "eager", "native"} <= set(roles) <= ROLES
        for r in rec["rows"]:
            assert r["total_ms"] > 0 and r["forward_ms"] >= 0 and r["backward_ms"] >= 0
            assert r["held_bytes"] >= 0 and r["peak_bytes"] is None
        eager = next(r for r in rec["rows"] if r["role"] == "eager")
        native = next(r for r in rec["rows"] if r["role"] == "native")
        assert eager["vs_eager"] == 1.0 and native["vs_native"] == 1.0
        kernel = next(r for r in rec["rows"] if r["role"] == "kernel")
        assert kernel["held_bytes"] < eager["held_bytes"]
    md = cli.to_markdown(report)
    assert "#### sigmoid_focal — shape (64x32), float32, 2 threads" in md
    assert "| variant | role | fwd ms | bwd ms | total ms | vs eager | vs native | held | peak |" in md


def test_cli_main_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["--quick", "--only", "focal", "--repeat", "1", "--no-peak", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["cases"][0]["case"] == "focal" and data["scaling"] == []
    assert "#### focal" in capsys.readouterr().out


def test_held_bytes_rule():
    x = torch.randn(8, 4)
    # exp saves its output (a new storage): counted; inputs are never counted
    assert held_bytes(lambda a: a.exp().sum(), (x,), (0,)) == 8 * 4 * 4
    assert held_bytes(lambda a: (a * a).sum(), (x,), (0,)) == 0


def test_extra_cases_hook(tmp_path):
    path = tmp_path / "bench_extra.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch
            from losskit.bench.cases import Case, Variant, make_binary

            def bench_cases():
                def variants():
                    return [
                        Variant("mine", "losskit", lambda x, t: (x - t).square().mean()),
                        Variant("mse", "native", torch.nn.functional.mse_loss),
                        Variant("huge", "eager", torch.nn.functional.l1_loss, fits=lambda s: s[0] < 4),
                    ]
                return [Case("extra_mse", make_binary, (8, 8), (4, 4), variants, [(2, 8), (8, 8)])]
            """
        )
    )
    try:
        report = cli.run(quick=True, only=["extra_mse"], repeat=1, peak=False, extra=[str(path)])
        rec = report["cases"][0]
        assert [r["variant"] for r in rec["rows"]] == ["mine", "mse"]
        # a variant that does not fit the shape is reported, not run
        assert rec["too_large"] == ["huge"]
        assert "Not run at this shape (memory beyond this machine): huge" in cli.to_markdown(report)
        scaled = cli.run_scaling(CASES["extra_mse"], dtype=torch.float32, threads=2, repeat=1)
        assert [(r["shape"][0], r["variant"]) for r in scaled if r["role"] == "eager"] == [(2, "huge")]
    finally:
        CASES.pop("extra_mse", None)


def test_peak_growth_in_fresh_process():
    # the eager composition keeps several (1024, 256) float32 temporaries (1 MiB each) alive
    peak = peak_growth_subprocess("sigmoid_focal", "eager (torchvision formula)", (1024, 256), "float32", 1)
    if peak is None:  # no /proc/self/clear_refs (not Linux)
        return
    assert peak >= 2 * 1024 * 1024


def test_public_rows_use_the_kernels_and_reference_rows_do_not():
    report = cli.run(
        quick=True, only=["sigmoid_focal", "focal", "kd", "dice", "asymmetric"], repeat=1, peak=False
    )
    for rec in report["cases"]:
        rows = {r["variant"]: r for r in rec["rows"]}
        public = next(r for r in rec["rows"] if r["role"] == "losskit" and "reference" not in r["variant"])
        reference = rows[public["variant"] + " (reference path)"]
        kernel = next(r for r in rec["rows"] if r["role"] == "kernel")
        # the public call keeps what the kernel keeps (at most a scalar denominator), the eager code more
        assert public["held_bytes"] <= kernel["held_bytes"] + 8, rec["case"]
        assert reference["held_bytes"] > public["held_bytes"], rec["case"]


NEW_CASES = ["triplet", "triplet_batch_all", "nt_xent", "supcon", "linear_ce"]


def test_embedding_and_language_cases_agree_with_their_eager_baselines():
    """The losskit and eager/native variants of each case compute the same loss on the same inputs."""
    for name in NEW_CASES:
        case = CASES[name]
        args, _ = case.make(case.quick_shape, torch.float64, 0)
        values = {v.name: v.fn(*args) for v in case.variants() if v.role in ("losskit", "eager", "native")}
        ours = next(val for key, val in values.items() if key.startswith("losskit."))
        assert torch.isfinite(ours) and ours > 0, name
        for key, val in values.items():
            torch.testing.assert_close(val, ours, rtol=1e-6, atol=1e-9, msg=f"{name}: {key}")


def test_embedding_and_language_cases_run_and_hold_less():
    report = cli.run(quick=True, only=NEW_CASES, repeat=1, peak=False)
    assert [c["case"] for c in report["cases"]] == NEW_CASES
    for rec in report["cases"]:
        rows = {r["role"]: r for r in rec["rows"] if r["role"] != "peer"}
        assert {"losskit", "eager"} <= set(rows), rec["case"]
        assert rows["losskit"]["held_bytes"] < rows["eager"]["held_bytes"], rec["case"]
        assert all(r["total_ms"] > 0 for r in rec["rows"])


def test_max_repeat_caps_the_timed_rounds():
    assert CASES["linear_ce"].max_repeat == 10
    report = cli.run(quick=True, only=["linear_ce", "focal"], repeat=12, peak=False)
    assert [c["repeat"] for c in report["cases"]] == [10, 12]


class _Stash(torch.autograd.Function):
    """Keeps a precomputed gradient as a ctx attribute instead of through save_for_backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.grad_x = 2 * x
        return (x * x).sum()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.grad_x


def test_held_bytes_counts_ctx_attributes():
    x = torch.randn(16, 4)
    assert held_bytes(_Stash.apply, (x,), (0,)) == 16 * 4 * 4
