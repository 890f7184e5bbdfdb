#!/usr/bin/env bash
# Install losskit with its dev extras into the repository's own .venv (created if missing, whatever
# environment is active) and run ruff and the whole test suite. torch comes from PyTorch's CPU wheel
# index unless the venv already has it; TORCH_INDEX_URL= (empty) leaves the choice to pip's configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$PY" -m pip install -q -c constraints.txt -e '.[dev]'
"$PY" -m ruff check src tests
"$PY" -m pytest -n 2 "$@"
