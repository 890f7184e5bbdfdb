# Sourced by the scripts in this folder (from the repository root): sets PY to the repository's own
# .venv interpreter, creating the venv and installing torch's CPU build when they are missing.
# An activated virtual environment is deliberately not used: the install must not land in it.
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
fi
"$PY" -m pip install -q --upgrade pip >/dev/null
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "$TORCH_INDEX_URL" ]; then
    "$PY" -m pip install -q -c constraints.txt --index-url "$TORCH_INDEX_URL" torch
  fi
fi
