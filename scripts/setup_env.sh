#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the bundle and its development tools.
# Usage: bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# the versions configs/metadata.json pins (those the Model Zoo's CI installs), as constraints
.venv/bin/python scripts/metadata_pins.py > .venv/constraints.txt
# torch first: the CPU build on machines that provide one locally, PyPI's build elsewhere
.venv/bin/python -m pip install --quiet -c .venv/constraints.txt torch
.venv/bin/python -m pip install --quiet -c .venv/constraints.txt -e ".[dev]"
