#!/usr/bin/env bash
# Set up the environment, write the synthetic demo data and train XUNet on it (about a minute of training on 2 idle
# CPU cores; benchmarks/demo/README.md has the measurement). Outputs go to runs/demo: TensorBoard logs, checkpoints,
# the best model (runs/demo/models/model.pt) and the learning curve (runs/demo/learning_curve.png); the shipped
# models/ stays untouched. The last line sums up the run.
# Usage: bash scripts/demo.sh [extra monai.bundle overrides, e.g. --epochs 5]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python scripts/make_demo_data.py --dst data/demo
# each demo is a fresh run: an earlier one's logs and checkpoints would mix into its summary (kept with --resume)
case " $* " in *" --resume "*) ;; *) rm -rf runs/demo ;; esac
start=$SECONDS
.venv/bin/python -m monai.bundle run training --config_file configs/train.json \
    --dataset_dir data/demo --output_dir runs/demo --ckpt_dir runs/demo/models --epochs 20 "$@"
echo "demo: training and validation took $((SECONDS - start)) s"
.venv/bin/python scripts/summarize_run.py --run_dir runs/demo --ckpt_dir runs/demo/models
