#!/usr/bin/env bash
# Install losskit with the lab extras (torch pinned to the CPU build) and run the quick lab.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -c constraints.txt -e '.[lab]'
losskit lab --quick "$@"
