#!/usr/bin/env bash
# Set up the environment and run the test suite (tests that need ../shared/data skip when it is absent,
# unless XUNET_REQUIRE_SHARED_DATA=1 makes them mandatory, as CI does).
# Usage: bash scripts/run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest "$@"
