"""The ``policy_gradient`` lab experiment: the task's rule, the policy's log-probs and sampling, the tiny
run's results, determinism, and the conclusion's reading of the length comparison."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from losskit.lab import runner
from losskit.lab.core import ExperimentResult, LabContext, Unavailable
from losskit.lab.experiments import policy_gradient as P


@pytest.fixture(autouse=True)
def _restore_torch_settings():
    """The lab switches torch to 1 thread and deterministic kernels; give the other test files theirs back."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _row(tokens: list[int]) -> list[int]:
    return tokens + [P.PAD] * (P.T_MAX - len(tokens))


def test_score_follows_the_rule() -> None:
    """Correct only when EOS is written and the addends sum to the target; length counts EOS."""
    cases = [  # (target, written tokens, reward, length)
        (6, [3, 3, P.EOS], 1.0, 3),
        (6, [1, 2, 3, P.EOS], 1.0, 4),
        (6, [1, 1, 1, 1, 1, 1, P.EOS], 1.0, 7),
        (6, [3, 2, P.EOS], 0.0, 3),  # undershoot
        (6, [3, 3, 1, P.EOS], 0.0, 4),  # overshoot
        (6, [3, 3], 0.0, 2),  # no EOS yet (never happens before the budget, but the rule says wrong)
        (4, [1] * (P.T_MAX - 1) + [1], 0.0, P.T_MAX),  # the budget ran out without EOS
        (1, [P.EOS], 0.0, 1),  # empty answer sums to 0
    ]
    target = torch.tensor([c[0] for c in cases])
    tokens = torch.tensor([_row(c[1]) for c in cases])
    reward, length = P.score(target, tokens)
    assert reward.tolist() == [c[2] for c in cases]
    assert length.tolist() == [c[3] for c in cases]


def test_demonstrations_are_correct_answers_within_the_budget() -> None:
    target, tokens = P.demonstrations(300, np.random.default_rng(0))
    reward, length = P.score(target, tokens)
    assert bool((reward == 1).all())
    assert int(length.max()) <= P.T_MAX
    assert set(target.tolist()) <= set(P.TARGETS)
    for row, n in zip(tokens.tolist(), length.tolist()):  # one EOS, at the end, PAD after it
        assert row[n - 1] == P.EOS and P.EOS not in row[: n - 1] and set(row[n:]) <= {P.PAD}


def _plain_logits(model: P.PrefixPolicy, target: int, written: list[int]) -> torch.Tensor:
    prefix = torch.full((1, P.T_MAX - 1), P.PAD)
    prefix[0, : len(written)] = torch.tensor(written, dtype=torch.long)
    return model(torch.tensor([target]), prefix)[0]


def test_teacher_forced_log_probs_match_the_plain_forward() -> None:
    """The split first layer of all_logits is the same function as forward() on each prefix."""
    torch.manual_seed(0)
    model = P.PrefixPolicy().double()
    target = torch.tensor(P.TARGETS[:6]).repeat_interleave(2)
    tokens = P.sample(model, target, torch.rand(len(target), P.T_MAX, dtype=torch.float64))
    tokens[0] = torch.tensor(_row([3] * (P.T_MAX - 1) + [2]))  # one that fills the whole budget
    with torch.no_grad():
        got = P.token_log_probs(model, target, tokens)
    for b in range(len(target)):
        row = tokens[b].tolist()
        for t in range(P.T_MAX):
            if row[t] == P.PAD:
                assert float(got[b, t]) == 0.0
                continue
            with torch.no_grad():
                logp = torch.log_softmax(_plain_logits(model, int(target[b]), row[:t]), -1)
            assert float(got[b, t]) == pytest.approx(float(logp[row[t]]), abs=1e-12)


def test_sampling_is_inverse_cdf_of_the_policy() -> None:
    """Each written token is the one whose CDF interval of the policy's next-token distribution holds the
    uniform; nothing but PAD after EOS."""
    torch.manual_seed(1)
    model = P.PrefixPolicy().double()
    target = torch.tensor(P.TARGETS).repeat_interleave(2)
    u = torch.rand(len(target), P.T_MAX, dtype=torch.float64)
    tokens = P.sample(model, target, u)
    for b in range(len(target)):
        row = tokens[b].tolist()
        for t in range(P.T_MAX):
            with torch.no_grad():
                cdf = torch.softmax(_plain_logits(model, int(target[b]), row[:t]), -1).cumsum(0)
            assert row[t] == min(int((u[b, t] > cdf).sum()), P.VOCAB - 1)
            if row[t] == P.EOS:
                assert set(row[t + 1 :]) <= {P.PAD}
                break


def test_missing_rl_package_is_reported_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "losskit.rl", None)
    with pytest.raises(Unavailable, match="losskit.rl"):
        P._rl()


def _tiny(out: Path, seeds: tuple[int, ...]) -> LabContext:
    return LabContext(mode="tiny", seeds=list(seeds), out_dir=out, threads=1, progress=False)


def _run(out: Path, seeds: tuple[int, ...]) -> ExperimentResult:
    out.mkdir(exist_ok=True)
    (res,) = runner.run_experiments(["policy_gradient"], _tiny(out, seeds))
    if res.skipped:
        pytest.skip(res.skipped)
    assert res.error is None, res.error
    return res


def test_tiny_run_measures_every_loss_type(tmp_path: Path) -> None:
    res = _run(tmp_path, (0, 1))
    assert list(res.methods) == list(P.METHODS) == ["grpo", "dr_grpo", "dapo", "gspo", "dr_grpo_std"]
    assert res.baseline == "grpo"
    for m, vals in res.methods.items():
        assert len(vals) == 2 and all(0.0 <= v <= 100.0 for v in vals), m
    for name in ("length of incorrect completions", "length of correct completions"):
        for m, vals in res.secondary[name][1].items():
            assert all(math.isnan(v) or 1.0 <= v <= P.T_MAX for v in vals), (name, m)
    for name in ("mean rollout success % over training", "ratios outside the clip range %"):
        for m, vals in res.secondary[name][1].items():
            assert all(0.0 <= v <= 100.0 for v in vals), (name, m)
    # the warm start is shared: every loss of a seed starts from the same evaluation
    start = res.extra["warm_start"]["success"]
    assert len(start) == 2 and all(0.0 <= v <= 100.0 for v in start)
    assert "vs dr_grpo " in res.conclusion and "vs dr_grpo_std " in res.conclusion
    assert "Liu et al." in res.conclusion
    for name in (
        "length of incorrect rollouts during training",
        "length of correct rollouts during training",
    ):
        for m, vals in res.secondary[name][1].items():
            assert all(math.isnan(v) or 1.0 <= v <= P.T_MAX for v in vals), (name, m)
    assert [f.path for f in res.figures] == ["policy_gradient_curves.png", "policy_gradient_metric.png"]
    for f in res.figures:
        assert (tmp_path / f.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_runs_and_seeds_are_independent(tmp_path: Path) -> None:
    """Every recorded number (curves included) repeats under the same seeds, and a seed's runs do not
    depend on which other seeds run with it."""
    pytest.importorskip("losskit.rl")

    def runs(seeds: tuple[int, ...]) -> dict[str, list[P.Run]]:
        ctx = _tiny(tmp_path, seeds)
        runner.configure_torch()
        return P.collect(ctx, P.sizes_for(ctx))

    both, again, alone = runs((0, 1)), runs((0, 1)), runs((1,))
    for m in P.METHODS:
        assert repr(both[m]) == repr(again[m]), m  # repr: NaN lengths compare equal
        assert repr(both[m][1:]) == repr(alone[m]), m
        assert len(both[m][0].reward) == P.sizes_for(_tiny(tmp_path, (0,)))["steps"]


def _final(grpo: list[float], dr_grpo: list[float]) -> dict[str, list[float]]:
    return {"grpo": grpo, "dr_grpo": dr_grpo, "dapo": grpo, "gspo": grpo, "dr_grpo_std": grpo}


def test_length_comparison_states_the_measured_direction() -> None:
    """The claim is called consistent, opposite or not measurable from the paired CI, never assumed."""
    longer = P.versus(_final([7.0, 8.0, 9.1], [6.0, 7.0, 8.0]), expect_longer=True)
    assert "consistent with the claim" in longer and "3/3 seeds longer under grpo" in longer
    assert "opposite" in P.versus(_final([5.0, 6.0, 7.1], [6.0, 7.0, 8.0]), expect_longer=True)
    assert "not measurable" in P.versus(_final([7.0, 6.0, 8.0], [6.0, 7.0, 8.0]), expect_longer=True)
    # for correct answers the claim is the other way round: shorter under grpo
    assert "consistent" in P.versus(_final([5.0, 6.0, 7.1], [6.0, 7.0, 8.0]), expect_longer=False)
    nan = math.nan
    assert "vs dr_grpo_std +0.00" in P.versus(_final([5.0, 6.0], [6.0, 7.0]), True, "dr_grpo_std")
    assert "too few seeds" in P.versus(_final([nan, 6.0, nan], [6.0, 7.0, 8.0]), expect_longer=True)
    kept = P.versus(_final([nan, 7.0, 8.1, 9.0], [6.0, 6.0, 7.0, 8.0]), expect_longer=True)
    assert "3/3 seeds" in kept  # the seed without incorrect completions under grpo is left out
