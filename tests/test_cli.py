"""The ``losskit`` command line (``losskit.__main__.main``) and the set-up scripts; nothing here runs a lab
experiment or needs the lab extra."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import losskit
from losskit.__main__ import main
from losskit.registry import CATALOG_END, CATALOG_START, catalog_markdown

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- top level


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"losskit {losskit.__version__} (torch {torch.__version__})\n"


def test_version_matches_the_package_metadata() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == losskit.__version__


def test_help_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: losskit" in out and "--version" in out and "catalog" in out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- catalog


def test_catalog_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog"]) == 0
    assert capsys.readouterr().out == catalog_markdown() + "\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_catalog_help_prints_help_not_the_catalog(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: losskit catalog")
    assert "--write" in out and "| loss |" not in out


def test_catalog_write_updates_the_marked_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{CATALOG_START}\nold\n{CATALOG_END}\n\ntail\n", encoding="utf-8")
    assert main(["catalog", "--write", str(readme)]) == 0
    assert f"catalog written to {readme}" in capsys.readouterr().out
    text = readme.read_text(encoding="utf-8")
    assert text == f"# x\n\n{CATALOG_START}\n{catalog_markdown()}\n{CATALOG_END}\n\ntail\n"


def test_catalog_write_outside_the_repository_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no README.md here
    assert main(["catalog", "--write"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("losskit catalog: error: README.md not found")
    (tmp_path / "README.md").write_text("no markers\n", encoding="utf-8")
    assert main(["catalog", "--write", "README.md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no catalog markers" in err
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "no markers\n"


def test_catalog_rejects_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- lab without its extra


@pytest.mark.parametrize("missing", [("sklearn",), ("matplotlib",), ("sklearn", "matplotlib")])
def test_lab_without_the_lab_extra_says_what_to_install(
    missing: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, find_spec gives None
    out = tmp_path / "out"
    code = main(["lab", "robust_regression", "distillation", "--tiny", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert "pip install 'losskit[lab]'" in err
    pip_names = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}
    assert all(pip_names[m] in err for m in missing)
    assert not out.exists()  # nothing was run or written


def test_lab_list_works_without_the_lab_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["lab", "--list"]) == 0
    assert "robust_regression" in capsys.readouterr().out


# ----------------------------------------------------------------------------- set-up scripts

_STUB = """#!/usr/bin/env bash
echo "{who} $*" >> "$CALLS"
{extra}
"""


def _stub(path: Path, who: str, extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_STUB.format(who=who, extra=extra), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", ["lab.sh", "test.sh"])
@pytest.mark.parametrize("has_venv", [False, True])
def test_scripts_use_the_repositorys_own_venv(script: str, has_venv: bool, tmp_path: Path) -> None:
    """An activated, unrelated virtual environment must not receive the install."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in (script, "_venv.sh"):
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    calls = tmp_path / "calls.txt"
    calls.write_text("", encoding="utf-8")
    fakebin, other = tmp_path / "bin", tmp_path / "other-venv"
    # python3 on PATH creates the venv with a stub interpreter; python / pip / losskit / ruff on PATH
    # belong to the other, active environment
    venv_python = repo / ".venv" / "bin" / "python"
    make_venv = (
        f'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "{fakebin}/venv-python" "$3/bin/python"; fi'
    )
    _stub(fakebin / "python3", "python3", make_venv)
    _stub(fakebin / "venv-python", "venv-python", 'if [ "$1" = "-c" ]; then exit 1; fi  # no torch yet')
    for tool in ("python", "pip", "losskit", "ruff", "mypy", "pytest"):
        _stub(other / "bin" / tool, f"OTHER-{tool}")
    if script == "test.sh":  # the wheel check builds and installs for real: its own test is the CI run
        _stub(repo / "scripts" / "check_wheel.sh", "check_wheel")
    if has_venv:
        venv_python.parent.mkdir(parents=True)
        shutil.copy(fakebin / "venv-python", venv_python)
    env = {
        "PATH": f"{other / 'bin'}:{fakebin}:/usr/bin:/bin",
        "VIRTUAL_ENV": str(other),
        "CALLS": str(calls),
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if line.startswith("OTHER-")], lines
    assert ("python3 -m venv .venv" in lines) is not has_venv
    installs = [line for line in lines if " -m pip install" in line]
    assert installs and all(line.startswith("venv-python ") for line in installs), lines
    torch_install = [line for line in installs if "torch" in line.split()]
    # pip's own configuration by default (a preinstalled CPU wheel, a mirror); TORCH_INDEX_URL overrides it
    assert torch_install and "--index-url" not in torch_install[0]
    last = lines[-1]
    if script == "lab.sh":
        assert last == "venv-python -m losskit lab --quick"
    else:  # ruff, strict type check, tests, then the strict docs build, then the wheel check
        assert last.strip() == "check_wheel", lines
        ruff_at = next(i for i, line in enumerate(lines) if line.startswith("venv-python -m ruff check"))
        mypy_at = next(i for i, line in enumerate(lines) if line == "venv-python -m mypy src/losskit")
        pytest_at = next(i for i, line in enumerate(lines) if line.startswith("venv-python -m pytest"))
        docs_at = next(i for i, line in enumerate(lines) if line.startswith("venv-python -m mkdocs build --strict"))
        assert ruff_at < mypy_at < pytest_at < docs_at < len(lines) - 1, lines


def test_scripts_are_bash_and_ignore_the_active_venv() -> None:
    for script in (ROOT / "scripts").glob("*.sh"):
        text = script.read_text(encoding="utf-8")
        assert "VIRTUAL_ENV" not in text, f"{script.name} must not install into whatever venv is active"
        if not script.name.startswith("_"):  # _venv.sh is sourced by the others
            assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
            assert os.access(script, os.X_OK)


@pytest.fixture
def _restore_torch_settings():
    """The lab runner switches torch to 1 thread and deterministic kernels; give other tests theirs back."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.mark.usefixtures("_restore_torch_settings")
def test_an_experiment_missing_a_lab_package_is_skipped_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from losskit.lab import runner
    from losskit.lab.core import LabContext

    def needs_sklearn(ctx: LabContext) -> None:
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    def needs_other(ctx: LabContext) -> None:
        raise ModuleNotFoundError("No module named 'not_a_lab_extra'", name="not_a_lab_extra")

    monkeypatch.setattr(runner, "_load", lambda name: {"distillation": needs_sklearn}.get(name, needs_other))
    ctx = LabContext(mode="tiny", seeds=[0], out_dir=tmp_path, threads=1, progress=False)
    skipped, failed = runner.run_experiments(["distillation", "detection"], ctx)
    assert skipped.skipped == "scikit-learn is not installed (pip install 'losskit[lab]')"
    assert skipped.error is None
    assert failed.error == "ModuleNotFoundError: No module named 'not_a_lab_extra'"  # a bug, not an extra
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and "not_a_lab_extra" in err
