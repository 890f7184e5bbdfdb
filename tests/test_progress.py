"""Progress bars of ``losskit bench`` and ``losskit lab``: on a terminal only, off with --no-progress."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from losskit.bench.cli import main as bench_main

pytest.importorskip("tqdm")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


BENCH = ["--quick", "--only", "focal", "--no-peak", "--repeat", "1"]


def _stderr_of(monkeypatch, capsys, fn, argv, tty: bool) -> str:
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert fn(argv) == 0
    capsys.readouterr()
    return err.getvalue()


def test_bench_bar_on_a_terminal_only(monkeypatch, capsys):
    assert "losskit bench" in _stderr_of(monkeypatch, capsys, bench_main, BENCH, tty=True)
    assert _stderr_of(monkeypatch, capsys, bench_main, BENCH, tty=False) == ""
    assert _stderr_of(monkeypatch, capsys, bench_main, [*BENCH, "--no-progress"], tty=True) == ""


def test_bench_json_holds_every_printed_figure(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench_main([*BENCH, "--no-progress", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    report = json.loads(path.read_text())
    for row in report["cases"][0]["rows"]:
        printed = next(line for line in table.splitlines() if line.startswith(f"| {row['variant']}"))
        cells = [c.strip() for c in printed.strip("|").split("|")]
        assert cells[2:5] == [f"{row[k]:.1f}" for k in ("forward_ms", "backward_ms", "total_ms")]
        if row["vs_eager"] is not None:
            assert cells[5] == f"{row['vs_eager']:.2f}x"
    header = re.search(r"torch (\S+), (\w+), (\d+) threads", table)
    assert header.groups() == (report["meta"]["torch"], report["meta"]["dtype"], str(report["meta"]["threads"]))


def test_lab_bar_on_a_terminal_only(monkeypatch, capsys, tmp_path):
    pytest.importorskip("sklearn")
    from losskit.lab.cli import main as lab_main

    argv = ["robust_regression", "--tiny", "--out", str(tmp_path / "out")]
    assert "robust_regression" in _stderr_of(monkeypatch, capsys, lab_main, argv, tty=True)
    assert _stderr_of(monkeypatch, capsys, lab_main, argv, tty=False) == ""
    assert _stderr_of(monkeypatch, capsys, lab_main, [*argv, "--no-progress"], tty=True) == ""
