#!/usr/bin/env bash
# Build the sdist and wheel, check what they contain, install the wheel into a fresh virtual environment
# (torch pinned by constraints.txt) and import it there. Run from anywhere; about 40 s.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PY" -m build -q -o "$work/dist" . >/dev/null
"$PY" - "$work/dist" <<'PY'
import sys
import tarfile
import zipfile
from pathlib import Path

dist = Path(sys.argv[1])
wheel = next(dist.glob("losskit-*.whl"))
sdist = next(dist.glob("losskit-*.tar.gz"))
names = zipfile.ZipFile(wheel).namelist()
tops = {n.split("/")[0] for n in names}
bad = {t for t in tops if t != "losskit" and not t.endswith(".dist-info")}
assert not bad, f"wheel has files outside the package: {sorted(bad)}"
for need in ("losskit/__init__.py", "losskit/py.typed", "losskit/functional.py"):
    assert need in names, f"wheel lacks {need}"
junk = [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
assert not junk, f"wheel has caches: {junk[:5]}"
members = [m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m]
for prefix in ("tests/", "docs/", "site/", ".venv/", "benchmarks/", "examples/"):
    hits = [m for m in members if m.startswith(prefix)]
    assert not hits, f"sdist has {prefix} files: {hits[:5]}"
assert any(m == "src/losskit/py.typed" for m in members), "sdist lacks src/losskit/py.typed"
print(f"{wheel.name}: {len(names)} files; {sdist.name}: {len(members)} files")
PY
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c constraints.txt "$work"/dist/losskit-*.whl
cd "$work"  # away from the checkout, so the installed wheel is what gets imported
"$work/venv/bin/python" - <<'PY'
import torch

import losskit

assert "site-packages" in losskit.__file__, losskit.__file__
x = torch.randn(4, 3, requires_grad=True)
losskit.functional.focal_loss(x, torch.tensor([0, 1, 2, 1])).backward()
assert x.grad is not None and torch.isfinite(x.grad).all()
print(f"installed wheel: losskit {losskit.__version__} with torch {torch.__version__}")
PY
"$work/venv/bin/losskit" --help >/dev/null
echo "wheel check passed"
