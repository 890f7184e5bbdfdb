#!/usr/bin/env bash
# Build the documentation site into site/ (or the folder given as $1) with `mkdocs build --strict`:
# every warning (a broken link, a page missing from the nav, a docstring griffe cannot parse) fails.
# Installs losskit with its docs extra into the repository's own .venv first (see scripts/_venv.sh).
# Nothing is fetched at build time; the site (MathJax included) works offline.
# Preview while editing: .venv/bin/python -m mkdocs serve
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$PY" -m pip install -q -c constraints.txt -e '.[docs]'
export NO_MKDOCS_2_WARNING=1
"$PY" -m mkdocs build --strict -d "${1:-site}"
