#!/usr/bin/env bash
# Install losskit with the lab extras into the repository's own .venv (created if missing, whatever
# environment is active) and run the quick lab. torch comes from PyTorch's CPU wheel index unless the
# venv already has it; TORCH_INDEX_URL= (empty) leaves the choice to pip's own configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$PY" -m pip install -q -c constraints.txt -e '.[lab]'
"$PY" -m losskit lab --quick "$@"
