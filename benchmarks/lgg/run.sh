#!/usr/bin/env bash
# One run of the LGG protocol (issue 4): train one network with the bundle's train.json on the fixed patient-level
# split, pick the best epoch on fold 0, evaluate it per patient on the held-out test patients, and write the run's
# JSON record to benchmarks/lgg/records/<network>_seed<seed>.json.
# Usage: bash benchmarks/lgg/run.sh <xunet|basicunet> <seed> [/path/to/kaggle_3m] [work_dir]
# Environment: EPOCHS (30), VAL_INTERVAL (5), RECORDS_DIR (benchmarks/lgg/records). An already prepared
# work_dir/data is reused.
set -euo pipefail
network=${1:?xunet or basicunet}
seed=${2:?seed}
src=${3:-../shared/data/lgg/kaggle_3m}
work=${4:-runs/lgg}
epochs=${EPOCHS:-30}
val_interval=${VAL_INTERVAL:-5}
run_dir="$work/${network}_seed${seed}"
records=${RECORDS_DIR:-benchmarks/lgg/records}

case "$network" in
    xunet) configs="['configs/train.json']" ;;
    basicunet) configs="['configs/train.json','configs/basicunet.json']" ;;
    *) echo "unknown network: $network" >&2; exit 2 ;;
esac

[ -f "$work/data/datalist.json" ] || python scripts/prepare_lgg.py --src "$src" --dst "$work/data"
rm -rf "$run_dir"
train_cmd=(python -m monai.bundle run training --config_file "$configs"
    --dataset_dir "$work/data" --output_dir "$run_dir" --ckpt_dir "$run_dir/models"
    --seed "$seed" --epochs "$epochs" --val_interval "$val_interval" --progress False)
eval_cmd=(python -m monai.bundle run evaluating --config_file "${configs%]},'configs/evaluate.json']"
    --dataset_dir "$work/data" --ckpt_dir "$run_dir/models" --output_dir "$run_dir/eval")
start=$(date +%s)
commit=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo -dirty)
"${train_cmd[@]}" 2>&1 | tee "$work/${network}_seed${seed}.log"
"${eval_cmd[@]}" 2>&1 | tee -a "$work/${network}_seed${seed}.log"
python scripts/record_run.py --run_dir "$run_dir" --network "$network" --seed "$seed" --git_commit "$commit" \
    --seconds $(($(date +%s) - start)) --train_command "${train_cmd[*]}" --eval_command "${eval_cmd[*]}" \
    --out "$records/${network}_seed${seed}.json"
