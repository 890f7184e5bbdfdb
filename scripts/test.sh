#!/usr/bin/env bash
# Install losskit with its dev and integration extras (transformers, lightning, timm, docs) into the repository's own .venv (created if missing, whatever
# environment is active) and run ruff and the whole test suite. torch comes from pip's configuration,
# or from TORCH_INDEX_URL when set (https://download.pytorch.org/whl/cpu: the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$PY" -m pip install -q -c constraints.txt -e '.[ci]'
"$PY" -m ruff check src tests
"$PY" -m pytest -n 2 "$@"
