"""The ``losskit lab`` command: every experiment at its smallest size, the report / results.json writer,
atomic writes, CLI errors, determinism."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from losskit.lab import core, report, runner
from losskit.lab.cli import main
from losskit.lab.core import ExperimentResult, LabContext
from losskit.lab.runner import EXPERIMENTS


@pytest.fixture(autouse=True)
def _restore_torch_settings():
    """The lab switches torch to 1 thread and deterministic kernels; give the other test files theirs back."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"losskit.lab.experiments.{EXPERIMENTS[name][0]}") is not None


def _check_method_block(block: dict[str, Any], n_seeds: int) -> None:
    assert set(block) >= {"mean", "std", "per_seed"}
    assert isinstance(block["per_seed"], list) and len(block["per_seed"]) == n_seeds
    for v in block["per_seed"]:
        assert isinstance(v, float) and math.isfinite(v)
    vals = block["per_seed"]
    mean = sum(vals) / len(vals)
    assert block["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
    if len(vals) > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        assert block["std"] == pytest.approx(std, rel=1e-9, abs=1e-12)
    else:
        assert block["std"] == 0.0


def check_results_schema(doc: dict[str, Any]) -> None:
    """``{"experiments": {name: {"metric", "higher_is_better", "methods": {m: {mean, std, per_seed}}}},
    "config": {...}}``; skipped / failed experiments carry their reason instead of numbers."""
    assert set(doc) == {"experiments", "config"}
    assert isinstance(doc["config"], dict)
    for name, entry in doc["experiments"].items():
        assert isinstance(entry["metric"], str)
        assert isinstance(entry["higher_is_better"], bool)
        assert isinstance(entry["methods"], dict)
        if entry.get("skipped") or entry.get("error"):
            assert entry["methods"] == {}, name
            continue
        assert entry["metric"] and entry["methods"], name
        n = len(entry["seeds"])
        for block in entry["methods"].values():
            _check_method_block(block, n)
        for sec in entry.get("secondary_metrics", {}).values():
            assert isinstance(sec["higher_is_better"], bool)
            for block in sec["methods"].values():
                _check_method_block(block, n)


def _tiny_ctx(out: Path, seeds: tuple[int, ...] = (0,)) -> LabContext:
    return LabContext(mode="tiny", seeds=list(seeds), out_dir=out, threads=1, progress=False)


# ----------------------------------------------------------------------------- every experiment, tiny


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_runs_tiny(name: str, tmp_path: Path) -> None:
    if not _module_exists(name):
        pytest.skip(f"experiment module for {name!r} is not written yet")
    results = runner.run_lab([name], _tiny_ctx(tmp_path))
    (res,) = results
    if res.skipped:
        pytest.skip(f"{name} skipped: {res.skipped}")
    assert res.error is None, res.error
    doc = json.loads((tmp_path / "results.json").read_text())
    check_results_schema(doc)
    entry = doc["experiments"][name]
    assert entry["baseline"] in entry["methods"]
    assert entry["conclusion"]
    for fig in entry.get("figures", []):
        data = (tmp_path / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", fig
    text = (tmp_path / "report.md").read_text()
    assert f"`{name}`" in text and "**Conclusion.**" in text
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


# ----------------------------------------------------------------------------- report writer and schema


def _fake_results() -> list[ExperimentResult]:
    a = ExperimentResult(
        "alpha",
        "Alpha",
        metric="accuracy %",
        higher_is_better=True,
        baseline="base",
        methods={"base": [90.0, 91.0, 92.0], "better": [92.0, 93.5, 94.0], "ref": [99.0, 99.0, 99.0]},
        secondary={"rmse": (False, {"base": [1.0, 2.0, 3.0], "better": [1.0, 1.0, 1.0]})},
        reference_methods=("ref",),
        seeds=[0, 1, 2],
    )
    b = ExperimentResult("beta", "Beta", "", True, "", skipped="focal_loss not available", seeds=[0, 1, 2])
    c = ExperimentResult("gamma", "Gamma", "", True, "", error="RuntimeError: boom", seeds=[0, 1, 2])
    return [a, b, c]


def test_results_json_schema_and_report(tmp_path: Path) -> None:
    config = {"command": "losskit lab", "mode": "tiny", "seeds": [0, 1, 2], "threads": 1, "seconds": 1.0}
    report.write_outputs(tmp_path, _fake_results(), config)
    doc = json.loads((tmp_path / "results.json").read_text())
    check_results_schema(doc)
    assert doc["config"] == config
    alpha = doc["experiments"]["alpha"]
    assert alpha["metric"] == "accuracy %" and alpha["higher_is_better"] is True
    assert alpha["methods"]["better"]["per_seed"] == [92.0, 93.5, 94.0]
    # paired differences: better - base = (2, 2.5, 2), wins 3/3
    pd = alpha["paired_differences"]["better"]
    assert pd["mean"] == pytest.approx(6.5 / 3)
    assert pd["wins"] == 3 and pd["n"] == 3
    assert pd["ci95"][0] > 0 and pd["verdict"] == "better"
    assert doc["experiments"]["beta"]["skipped"] == "focal_loss not available"
    assert doc["experiments"]["gamma"]["error"] == "RuntimeError: boom"
    text = (tmp_path / "report.md").read_text()
    assert "## Summary" in text
    assert "ref (reference)" in text
    assert "Skipped: focal_loss not available" in text and "Failed: RuntimeError: boom" in text


def test_non_finite_values_become_null(tmp_path: Path) -> None:
    res = ExperimentResult(
        "x", "X", "loss", False, "a", methods={"a": [1.0, 2.0], "b": [float("nan"), 1.0]}, seeds=[0, 1]
    )
    report.write_outputs(tmp_path, [res], {})
    raw = (tmp_path / "results.json").read_text()
    assert "NaN" not in raw
    assert json.loads(raw)["experiments"]["x"]["methods"]["b"]["per_seed"][0] is None


# ----------------------------------------------------------------------------- atomic writing


def test_failed_write_keeps_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report.write_outputs(tmp_path, _fake_results(), {"mode": "old"})
    old_json = (tmp_path / "results.json").read_bytes()
    old_md = (tmp_path / "report.md").read_bytes()

    def fail(fd: int) -> None:  # the bytes are in the temporary file, the rename has not happened
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.os, "fsync", fail)
    new = _fake_results()
    new[0].methods["base"] = [1.0, 2.0, 3.0]
    with pytest.raises(OSError, match="No space left"):
        report.write_outputs(tmp_path, new, {"mode": "new"})
    assert (tmp_path / "results.json").read_bytes() == old_json
    assert (tmp_path / "report.md").read_bytes() == old_md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json"]


def test_render_error_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report.write_outputs(tmp_path, _fake_results(), {"mode": "old"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "render_report", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        report.write_outputs(tmp_path, _fake_results(), {"mode": "new"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_figure_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from losskit.lab.plots import plt

    ctx = _tiny_ctx(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    (tmp_path / "f.png").write_bytes(b"old")
    real_savefig = type(fig).savefig

    def partial_savefig(self: Any, fh: Any, **kwargs: Any) -> None:
        fh.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(type(fig), "savefig", partial_savefig)
    with pytest.raises(OSError, match="disk full"):
        ctx.figure(fig, "f.png", "caption")
    assert (tmp_path / "f.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]
    monkeypatch.setattr(type(fig), "savefig", real_savefig)
    fig, ax = plt.subplots()
    out = ctx.figure(fig, "f.png", "caption")
    assert out.path == "f.png" and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(tmp_path: Path, umask: int) -> None:
    """Atomic writes go through a private temporary file; the result still gets the usual permissions."""
    from losskit.lab.plots import plt

    config = {"command": "losskit lab", "mode": "tiny", "seeds": [0, 1, 2], "threads": 1, "seconds": 1.0}
    old = os.umask(umask)
    try:
        report.write_outputs(tmp_path, _fake_results(), config)
        fig, _ = plt.subplots()
        _tiny_ctx(tmp_path).figure(fig, "f.png", "caption")
    finally:
        os.umask(old)
    for name in ("results.json", "report.md", "f.png"):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{name}: {oct(mode)} under umask {oct(umask)}"


def test_summary_names_a_best_method_only_when_its_interval_excludes_zero() -> None:
    tie = ExperimentResult(
        "tie",
        "Tie",
        metric="accuracy %",
        higher_is_better=True,
        baseline="ce",
        methods={"ce": [90.0, 92.0, 91.0], "kd": [91.0, 91.5, 92.0]},  # +0.5 mean, interval spans 0
        seeds=[0, 1, 2],
    )
    d = report.paired_diff(tie.methods["kd"], tie.methods["ce"], True)
    assert d.ci_low is not None and d.ci_low < 0 < d.ci_high
    win = _fake_results()[0]
    one_seed = ExperimentResult(
        "single", "Single", "rmse", False, "mse", methods={"mse": [2.0], "l1": [1.0]}, seeds=[0]
    )
    rows = {line.split("|")[1].strip(): line for line in report.summary_table([tie, win, one_seed])[2:]}
    assert "| no measurable difference (highest mean: kd 91.50 ± 0.50) |" in rows["tie"]
    assert "+0.500 [" in rows["tie"]  # the paired difference and its interval are still shown
    assert "| better 93.2 ± 1.0 |" in rows["alpha"]
    assert "no measurable difference (lowest mean: l1" in rows["single"]
    text = report.render_report([tie], {"seeds": [0, 1, 2]})
    assert "| best method, or no measurable difference |" in text


def test_seed_strip_labels_its_error_bars_and_keeps_the_legend_off_the_points(tmp_path: Path) -> None:
    from losskit.lab import plots

    res = _fake_results()[0]
    captured: dict[str, Any] = {}
    ctx = _tiny_ctx(tmp_path)
    real_figure = ctx.figure

    def keep(fig: Any, filename: str, caption: str) -> core.Figure:
        captured["ax"] = fig.axes[0]
        fig.canvas.draw()
        captured["legend"] = fig.axes[0].get_legend().get_window_extent()
        captured["axes"] = fig.axes[0].get_window_extent()
        return real_figure(fig, filename, caption)

    ctx.figure = keep  # type: ignore[method-assign]
    plots.seed_strip(ctx, res)
    labels = captured["ax"].get_legend_handles_labels()[1]
    assert "mean ± std over seeds" in labels
    assert captured["legend"].x0 >= captured["axes"].x1  # right of the plotting area
    assert (tmp_path / "alpha_metric.png").read_bytes()[:4] == b"\x89PNG"


def test_zeros_are_gaps_on_a_log_axis() -> None:
    from losskit.lab.plots import positive_for_log

    values, masked = positive_for_log([1e-6, 0.0, 2e-7, 0.0, -1.0, float("nan")])
    assert masked == 3
    assert values[0] == 1e-6 and values[2] == 2e-7
    assert all(math.isnan(v) for v in values[[1, 3, 4, 5]])


# ----------------------------------------------------------------------------- CLI errors and behaviour


def test_unknown_experiment_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["robust_regression", "no_such_experiment", "--tiny", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown experiment 'no_such_experiment'" in err
    assert "valid experiments: " in err and "multitask" in err and "large_vocabulary" in err
    assert not (tmp_path / "o").exists()  # nothing was run or written


def test_unwritable_output_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = main(["robust_regression", "--tiny", "--no-progress", "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "output directory" in err and "is not writable" in err and str(blocker / "out") in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = main(["robust_regression", "--tiny", "--no-progress", "--out", str(ro)])
    finally:
        ro.chmod(0o700)
    assert code == 2
    assert "is not writable" in capsys.readouterr().err


def test_bad_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_list_names_every_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, (_, title) in EXPERIMENTS.items():
        assert name in out and title in out


def test_failing_and_unavailable_experiments_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash(ctx: LabContext) -> ExperimentResult:
        raise RuntimeError("diverged")

    def unavailable(ctx: LabContext) -> ExperimentResult:
        raise core.Unavailable("dice_loss not available")

    fakes = {"robust_regression": crash, "distillation": unavailable}
    monkeypatch.setattr(runner, "_load", lambda name: fakes[name])
    code = main(
        [
            "robust_regression",
            "distillation",
            "--tiny",
            "--threads",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "experiments failed: robust_regression" in capsys.readouterr().err
    doc = json.loads((tmp_path / "results.json").read_text())
    check_results_schema(doc)
    assert doc["experiments"]["robust_regression"]["error"] == "RuntimeError: diverged"
    assert doc["experiments"]["distillation"]["skipped"] == "dice_loss not available"
    text = (tmp_path / "report.md").read_text()
    assert "Failed: RuntimeError: diverged" in text and "Skipped: dice_loss not available" in text


def test_module_help_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "losskit", "lab", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: losskit lab")
    for option in ("--quick", "--seeds", "--out", "--threads", "--list"):
        assert option in proc.stdout
    assert "large_vocabulary" in proc.stdout  # the epilog lists the experiments


def test_module_unknown_experiment_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "losskit", "lab", "nope", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "losskit lab: error: unknown experiment 'nope'" in proc.stderr


# ----------------------------------------------------------------------------- determinism


def _numbers(doc: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, without wall-clock times."""
    out = {}
    for name, entry in doc["experiments"].items():
        out[name] = {k: v for k, v in entry.items() if k != "seconds"}
    return out


def test_same_seeds_give_identical_results(tmp_path: Path) -> None:
    """Two serial runs, and a run in spawned worker processes (``--threads 2``), give the same numbers."""
    args = ["robust_regression", "multitask", "--tiny", "--seeds", "2", "--no-progress"]
    for out, threads in (("a", "1"), ("b", "1"), ("pool", "2")):
        assert main([*args, "--threads", threads, "--out", str(tmp_path / out)]) == 0
    a, b, pool = (json.loads((tmp_path / out / "results.json").read_text()) for out in ("a", "b", "pool"))
    check_results_schema(a)
    assert a["config"]["seeds"] == [0, 1]
    assert pool["config"]["worker_processes"] == 2
    assert _numbers(a) == _numbers(b) == _numbers(pool)
    # two seeds: the paired statistics are there and consistent with the per-seed values
    mt = a["experiments"]["multitask"]
    for m, pd in mt["paired_differences"].items():
        diffs = [x - y for x, y in zip(mt["methods"][m]["per_seed"], mt["methods"]["equal"]["per_seed"])]
        assert pd["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-9)
        assert pd["n"] == 2


def test_seeds_are_independent_of_the_other_seeds(tmp_path: Path) -> None:
    """Seed 1's numbers do not depend on whether seed 0 ran in the same process (paired, per-seed RNG)."""
    both = runner.run_experiments(["multitask"], _tiny_ctx(tmp_path, (0, 1)))[0]
    alone = runner.run_experiments(["multitask"], _tiny_ctx(tmp_path, (1,)))[0]
    for m, vals in both.methods.items():
        assert vals[1] == alone.methods[m][0], m


def test_stdlib_corpus_is_the_same_text_in_every_process() -> None:
    """The text is read in a fresh interpreter, and visited objects are kept alive while it is read:
    a freed temporary's id reused by a later object used to drop docstrings at random."""
    from losskit.lab import data, stdlib_text

    assert stdlib_text.docstrings() == stdlib_text.docstrings()
    data.stdlib_corpus.cache_clear()
    first_ids, first_vocab = data.stdlib_corpus(512)
    data.stdlib_corpus.cache_clear()
    second_ids, second_vocab = data.stdlib_corpus(512)
    assert first_vocab == second_vocab and len(first_vocab) == 512
    assert torch.equal(first_ids, second_ids) and first_ids.numel() > 50_000


# ----------------------------------------------------------------------------- preference experiment


def test_preference_pairs_follow_the_stated_rule() -> None:
    """Prompt + chosen is a contiguous span of the corpus; rejected is chosen with one adjacent pair of
    different tokens swapped."""
    import numpy as np

    from losskit.lab.experiments import preference as P

    ids = torch.tensor(np.random.default_rng(0).integers(0, 5, 400))
    pairs = P.make_pairs(ids, 50, np.random.default_rng(1))
    assert len(pairs) == 50
    stream = ids.tolist()
    for prompt, chosen, rejected in zip(
        pairs.prompt.tolist(), pairs.chosen.tolist(), pairs.rejected.tolist()
    ):
        span = prompt + chosen
        assert any(stream[i : i + len(span)] == span for i in range(len(stream) - len(span) + 1))
        diff = [j for j in range(len(chosen)) if chosen[j] != rejected[j]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1
        j = diff[0]
        assert rejected[j] == chosen[j + 1] and rejected[j + 1] == chosen[j]


def test_preference_completion_log_probs_match_a_plain_loop() -> None:
    import losskit.functional as LF
    from losskit.lab.experiments import preference as P

    torch.manual_seed(0)
    vocab = 11
    model = P._WindowLM(vocab).double()
    prompt = torch.randint(0, vocab, (3, P.CONTEXT))
    completion = torch.randint(0, vocab, (3, P.COMPLETION))
    with torch.no_grad():
        got = P.completion_log_probs(model, prompt, completion, LF.sequence_log_probs)
    for b in range(3):
        seq = prompt[b].tolist() + completion[b].tolist()
        expected = 0.0
        for t in range(P.COMPLETION):
            window = torch.tensor([seq[t : t + P.CONTEXT]])  # the CONTEXT tokens before completion[t]
            with torch.no_grad():
                logits = (model(window) @ model.head.T)[0]
            expected += float(logits[seq[t + P.CONTEXT]] - torch.logsumexp(logits, 0))
        assert float(got[b]) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_preference_tiny_run_measures_every_method_against_sft(tmp_path: Path) -> None:
    (res,) = runner.run_experiments(["preference"], _tiny_ctx(tmp_path))
    if res.skipped:
        pytest.skip(res.skipped)
    assert res.error is None, res.error
    assert list(res.methods) == ["sft", "sft_chosen", "dpo", "ipo", "simpo", "orpo", "kto"]
    kl = res.secondary["KL to sft (nats/token)"][1]
    margin = res.secondary["margin vs reference (nats)"][1]
    assert kl["sft"] == [0.0] and margin["sft"] == [0.0]  # the reference compared with itself
    for m in res.methods:
        assert 0.0 <= res.methods[m][0] <= 100.0
        if m != "sft":
            assert kl[m][0] > 0.0, m  # every method moved away from the reference
    assert "sft" in res.conclusion and "kto" in res.conclusion
    assert [f.path for f in res.figures] == ["preference_curves.png", "preference_metric.png"]
