#!/usr/bin/env bash
# The runs of the plan in README.md (section 2), in its order: for each fold, recipe A (standard) then B (site), each
# trained by benchmarks/run.sh, then its out-of-fold and test probabilities cached by failure_analysis.py predict.
# A finished run (its record exists) is not trained again, an interrupted one resumes from its last checkpoint, and
# the probabilities are cached once (cases.json, written last, marks a finished cache). Run from the
# repository root; NICE (default 15) lowers the priority of the runs so that a shared machine stays usable.
set -euo pipefail
nice=${NICE:-15}
for fold in 0 1 2 3 4; do
    for aug in standard site; do
        name=xunet_tail60_${aug}_fold${fold}_seed0
        if [ ! -f "benchmarks/lgg/tail/records/$name.json" ]; then
            resume=0
            [ -d "runs/lgg/$name/checkpoints" ] && resume=1
            RESUME=$resume EPOCHS=60 VAL_INTERVAL=60 TRAIN_ARGS="--amp True --fold $fold --augmentation $aug" \
                RUN_SUFFIX=_tail60_${aug}_fold$fold RECORDS_DIR=benchmarks/lgg/tail/records \
                nice -n "$nice" bash benchmarks/run.sh xunet 0
        fi
        for subset in validation test; do
            out=runs/lgg/probabilities/tail60_${aug}_fold$fold
            [ "$subset" = test ] && out+=_test
            [ -f "$out/cases.json" ] && continue
            nice -n "$nice" python benchmarks/tools/failure_analysis.py predict --dataset_dir runs/lgg/data \
                --ckpt_dir "runs/lgg/$name/models" --eval_subset $subset --fold "$fold" --mirror_axes "[1]" \
                --out_dir "$out"
        done
    done
done
