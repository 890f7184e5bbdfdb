# Sourced by the scripts in this folder (from the repository root): sets PY to the repository's own
# .venv interpreter, creating the venv and installing torch when they are missing.
# An activated virtual environment is deliberately not used: the install must not land in it.
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
fi
"$PY" -m pip install -q --upgrade pip >/dev/null
# torch (pinned in constraints.txt) from pip's own configuration, or from TORCH_INDEX_URL when set, e.g.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build where no CPU wheel is at hand
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install -q -c constraints.txt --index-url "$TORCH_INDEX_URL" torch
  else
    "$PY" -m pip install -q -c constraints.txt torch
  fi
fi
