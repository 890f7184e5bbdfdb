#!/usr/bin/env bash
# Install losskit with its dev and integration extras (transformers, lightning, docs) into the repository's own .venv (created if missing, whatever
# environment is active) and run ruff, mypy (strict), the whole test suite, the strict docs build and the wheel check. torch comes from pip's configuration,
# or from TORCH_INDEX_URL when set (https://download.pytorch.org/whl/cpu: the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$PY" -m pip install -q -c constraints.txt -e '.[ci]'
"$PY" -m ruff check src tests
"$PY" -m mypy src/losskit
"$PY" -m pytest -n 2 "$@"
# the documentation builds with warnings as errors (broken cross-references fail), into a scratch folder
docs_out="$(mktemp -d)"
"$PY" -m mkdocs build --strict -q -d "$docs_out"
rm -rf "$docs_out"
# sdist and wheel contents, and the wheel installed into a fresh virtual environment
bash scripts/check_wheel.sh
