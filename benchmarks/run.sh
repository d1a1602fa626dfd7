#!/usr/bin/env bash
# One run of a benchmark protocol: train one network with the bundle's train.json on the fixed case-level split, pick
# the best epoch on fold 0, evaluate it per case on the held-out test cases, and write the run's JSON record to
# <records>/<network><RUN_SUFFIX>_seed<seed>.json.
# Usage: bash benchmarks/run.sh <network> <seed> [source_folder] [work_dir]
# Networks: xunet (the bundle's default, concat fusion), basicunet, xunet_attention, xunet_projected (issue 7).
# Environment: TASK (lgg: Kaggle LGG, 2D slices, issue 4; hippocampus: Decathlon Hippocampus, 3D patches with
# configs/hippocampus.json), EPOCHS (60), VAL_INTERVAL (12), RECORDS_DIR (benchmarks/<task>/records),
# LARGEST_COMPONENT_EVAL (1 for lgg: also evaluate with the largest-component post-processing), MIRROR_AXES (test-time
# mirroring in validation and evaluation; [] by default: the protocol compares the networks' own outputs),
# FOREGROUND_THRESHOLD (the same for the foreground threshold; $None by default, the argmax: monai.bundle drops a
# plain None override), TRAIN_ARGS
# (extra training overrides, e.g. "--amp True", for runs outside the protocol), RUN_SUFFIX (appended to the run's
# name, so such runs keep their own folder and record, e.g. _long_bf16); RESUME=1
# continues an interrupted run from its last checkpoint (a run may span several sittings). An already prepared
# work_dir/data is reused. Every training command is appended to <run_dir>/commands.log, which the record keeps. The
# record's seconds add up every sitting: each one that ends, or is stopped by SIGTERM or SIGHUP, appends its seconds
# to <run_dir>/sittings.log; one killed by SIGKILL or a power loss is counted by the next sitting up to its last
# heartbeat (every HEARTBEAT_SECONDS, 60). Each sitting appends where it runs to <run_dir>/machines.log. GIT_COMMIT
# sets the record's commit where the tree has no git.
set -euo pipefail
network=${1:?xunet, basicunet, xunet_attention or xunet_projected}
seed=${2:?seed}
task=${TASK:-lgg}
case "$task" in
    lgg)
        default_src=../shared/data/lgg/kaggle_3m; prepare=scripts/prepare_lgg.py; task_configs=""
        lcc_eval=${LARGEST_COMPONENT_EVAL:-1} ;;
    hippocampus)
        default_src=../shared/data/hippocampus; prepare=scripts/prepare_decathlon.py
        task_configs=",'configs/hippocampus.json'"; lcc_eval=0 ;;
    *) echo "unknown task: $task" >&2; exit 2 ;;
esac
src=${3:-$default_src}
work=${4:-runs/$task}
epochs=${EPOCHS:-60}
mirror_axes=${MIRROR_AXES:-[]}
foreground_threshold=${FOREGROUND_THRESHOLD:-\$None}
val_interval=${VAL_INTERVAL:-12}
label="${network}${RUN_SUFFIX:-}"  # the record's network: a run outside the protocol is kept apart by its suffix
run_name="${label}_seed${seed}"
run_dir="$work/$run_name"
read -r -a extra_train_args <<< "${TRAIN_ARGS:-}"
records=${RECORDS_DIR:-benchmarks/$task/records}

network_args=()
case "$network" in
    xunet) configs="['configs/train.json'$task_configs]" ;;
    basicunet) configs="['configs/train.json'$task_configs,'configs/basicunet.json']" ;;
    xunet_attention | xunet_projected)
        configs="['configs/train.json'$task_configs]"
        network_args=(--network_def#fusion "${network#xunet_}") ;;
    *) echo "unknown network: $network" >&2; exit 2 ;;
esac

[ -f "$work/data/datalist.json" ] || python "$prepare" --src "$src" --dst "$work/data"
[ "${RESUME:-0}" = 1 ] || rm -rf "$run_dir" "$work/$run_name.log"
mkdir -p "$run_dir"
train_cmd=(python -m monai.bundle run training --config_file "$configs"
    --dataset_dir "$work/data" --output_dir "$run_dir" --ckpt_dir "$run_dir/models"
    --seed "$seed" --epochs "$epochs" --val_interval "$val_interval" --mirror_axes "$mirror_axes"
    --foreground_threshold "$foreground_threshold" --progress False
    ${network_args[@]+"${network_args[@]}"} ${extra_train_args[@]+"${extra_train_args[@]}"})
[ "${RESUME:-0}" = 1 ] && train_cmd+=(--resume True)
# the network's own output first (the architecture comparison), then with the largest-component post-processing
eval_base=(python -m monai.bundle run evaluating --config_file "${configs%]},'configs/evaluate.json']"
    --dataset_dir "$work/data" --ckpt_dir "$run_dir/models" --mirror_axes "$mirror_axes"
    --foreground_threshold "$foreground_threshold" ${network_args[@]+"${network_args[@]}"})
eval_cmd=("${eval_base[@]}" --output_dir "$run_dir/eval" --largest_component False)
lcc_eval_cmd=("${eval_base[@]}" --output_dir "$run_dir/eval_largest_component" --largest_component True)
start=$(date +%s)
# A sitting killed by SIGKILL (a session's hard end) runs no trap: it leaves its last heartbeat in sitting.open, which
# the next sitting counts instead, so at most a heartbeat interval of its time is lost.
if [ -f "$run_dir/sitting.open" ]; then
    cat "$run_dir/sitting.open" >> "$run_dir/sittings.log"
    rm "$run_dir/sitting.open"
fi
heartbeat_seconds=${HEARTBEAT_SECONDS:-60}
(
    while sleep "$heartbeat_seconds" && kill -0 $$ 2> /dev/null; do
        echo $(($(date +%s) - start)) > "$run_dir/sitting.open.tmp" && mv "$run_dir/sitting.open.tmp" "$run_dir/sitting.open"
    done
) > /dev/null 2>&1 &
heartbeat=$!
# The heartbeat may be gone already (a SIGTERM to the process group reaches it first); set -e would end the trap there.
trap 'kill "$heartbeat" 2> /dev/null || true; wait "$heartbeat" || true; echo $(($(date +%s) - start)) >> "$run_dir/sittings.log"; rm -f "$run_dir/sitting.open"' EXIT
earlier_seconds=0
[ -f "$run_dir/sittings.log" ] && earlier_seconds=$(awk '{ total += $1 } END { print total }' "$run_dir/sittings.log")
# GIT_COMMIT names the commit where the working tree is a copy without git (a run on another machine)
commit=${GIT_COMMIT:-$(git rev-parse HEAD)$(git diff --quiet HEAD || echo -dirty)}
echo "$(date -u +%FT%TZ) ${train_cmd[*]}" >> "$run_dir/commands.log"
python benchmarks/tools/describe_machine.py >> "$run_dir/machines.log"
"${train_cmd[@]}" 2>&1 | tee -a "$work/$run_name.log"
"${eval_cmd[@]}" 2>&1 | tee -a "$work/$run_name.log"
record_args=()
if [ "$lcc_eval" = 1 ]; then
    "${lcc_eval_cmd[@]}" 2>&1 | tee -a "$work/$run_name.log"
    record_args=(--largest_component_eval_command "${lcc_eval_cmd[*]}")
fi
seconds=$((earlier_seconds + $(date +%s) - start))
python benchmarks/tools/record_run.py --run_dir "$run_dir" --network "$label" --seed "$seed" --git_commit "$commit" \
    --seconds "$seconds" --eval_command "${eval_cmd[*]}" ${record_args[@]+"${record_args[@]}"} \
    --out "$records/$run_name.json"
