#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the bundle and its development tools.
# Usage: bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: the CPU build on machines that provide one locally, PyPI's build elsewhere
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
