#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the tests in one of two tiers.
# Usage:
#   bash scripts/run_tests.sh [pytest arguments]
#       the fast tier, every test not marked slow (pytest -m "not slow"): the networks, the configs, the workflows on
#       tiny synthetic data and bad input, the Model Zoo's in-process smoke test; it builds no MONAI Label environment.
#   bash scripts/run_tests.sh --all [pytest arguments]
#       every test of tests/ and benchmarks/tests/, the slow ones too: longer workflows, the MONAI Label server (its
#       fixture builds .venv-monailabel with scripts/setup_monailabel_env.sh, several GB), torchrun, fault injection
#       (SIGKILL) and the protocol tools (benchmarks/run.sh, benchmarks/tools/).
# Other arguments go to pytest as they are, e.g. `bash scripts/run_tests.sh tests/test_networks.py -x`; a -m of your own
# replaces the fast tier's. Tests that need ../shared (the real data, the Model Zoo's metadata schema) skip when it is
# absent, unless XUNET_REQUIRE_SHARED_DATA=1 makes it mandatory, as .ci/run does.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=(-m "not slow")
args=()
for arg in "$@"; do
    if [ "$arg" = "--all" ]; then
        tier=()
    else
        args+=("$arg")
    fi
done
bash scripts/setup_env.sh
.venv/bin/python -m pytest ${tier[@]+"${tier[@]}"} ${args[@]+"${args[@]}"}
