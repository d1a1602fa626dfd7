#!/usr/bin/env bash
# Sanity run of issue 2: XUNet trained on 10 real LGG patients for 12 short epochs on CPU (4 patients of fold 0 pick
# the best epoch), then evaluated on the 12 held-out test patients of the default patient-level split.
# Usage: bash benchmarks/lgg10/run.sh /path/to/kaggle_3m [work_dir]
set -euo pipefail
src=${1:?path of kaggle_3m}
work=${2:-runs/lgg10}
python scripts/prepare_lgg.py --src "$src" --dst "$work/data"
python -m monai.bundle run training --config_file configs/train.json \
    --dataset_dir "$work/data" --output_dir "$work" --ckpt_dir "$work/models" \
    --epochs 12 --val_interval 4 --progress False \
    --train#dataset#data "\$xunet_bundle.data.load_split(@datalist, 'train', @fold)[:10]" \
    --validate#dataset#data "\$xunet_bundle.data.load_split(@datalist, 'validation', @fold)[:4]"
python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']" \
    --dataset_dir "$work/data" --ckpt_dir "$work/models" --output_dir "$work/eval"
