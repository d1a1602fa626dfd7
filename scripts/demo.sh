#!/usr/bin/env bash
# Set up the environment, write the synthetic demo data and train XUNet on it (a few minutes on a laptop CPU).
# Outputs go to runs/demo (TensorBoard logs, checkpoints, models/model.pt); the shipped models/ stays untouched.
# Usage: bash scripts/demo.sh [extra monai.bundle overrides, e.g. --epochs 5]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python scripts/make_demo_data.py --dst data/demo
.venv/bin/python -m monai.bundle run training --config_file configs/train.json \
    --dataset_dir data/demo --output_dir runs/demo --ckpt_dir runs/demo/models --epochs 20 "$@"
echo "demo finished: best model in runs/demo/models/model.pt, TensorBoard logs in runs/demo/tensorboard"
