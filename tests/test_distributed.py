"""Distributed training and evaluation with real ``torchrun`` processes on CPU (gloo)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, run_bundle
from xunet_bundle import CrossBasicUNet
from xunet_bundle.data import load_split

pytestmark = pytest.mark.slow  # torchrun: two processes per run

MULTI_GPU_TRAIN = REPO_ROOT / "configs" / "multi_gpu_train.json"


def read_metrics(folder: Path) -> dict[str, float]:
    with open(folder / "all_mean_dice_raw.csv") as f:
        return {Path(row["filename"]).name: float(row["mean"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def ddp_run(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    record_inputs = out / "record_inputs.json"  # adds tests/rank_recorder.py's handler on every rank
    record_inputs.write_text(
        json.dumps(
            {
                "input_recorder": {"_target_": "rank_recorder.InputRecorder", "folder": "@output_dir"},
                # the recorder reads each slice's file from its metadata, which training batches drop by default
                "train#untrack_metadata#track_meta": True,
                "run": ["$@input_recorder.attach(@train#trainer)"] + json.loads(MULTI_GPU_TRAIN.read_text())["run"],
            }
        )
    )
    run_bundle(
        "run", "training", "--config_file", f"['configs/train.json','configs/multi_gpu_train.json','{record_inputs}']",
        "--dataset_dir", str(demo_dir), "--output_dir", str(out), "--ckpt_dir", str(out / "models"),
        "--epochs", "2", "--num_workers", "0", "--progress", "False", "--volumes_per_batch", "1", nproc=2,
    )  # fmt: skip
    return out


def test_ranks_share_the_data_and_write_one_checkpoint(demo_dir, ddp_run):
    num_train = len(load_split(demo_dir / "datalist.json", "train", 0))
    trainer = torch.load(ddp_run / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)["trainer"]
    # with one volume per batch, each of the 2 ranks iterates over its half of the training volumes only
    assert trainer["epoch_length"] == math.ceil(num_train / 2) and trainer["iteration"] == 2 * trainer["epoch_length"]
    assert [p.name for p in (ddp_run / "models").iterdir()] == ["model.pt"]
    assert [p.name for p in (ddp_run / "checkpoints").iterdir()] == ["checkpoint_epoch=2.pt"]
    state = torch.load(ddp_run / "models" / "model.pt", weights_only=True)
    CrossBasicUNet().load_state_dict(state, strict=True)  # saved without DistributedDataParallel's "module." prefix


def test_ranks_saw_disjoint_shares_of_the_training_volumes(demo_dir, ddp_run):
    train = {Path(item["image"]).name for item in load_split(demo_dir / "datalist.json", "train", 0)}
    ranks = [json.loads((ddp_run / f"inputs_rank{r}.json").read_text()) for r in range(2)]
    assert set(ranks[0]) == set(ranks[1]) == {"1", "2"}
    padding = -len(train) % 2  # DistributedSampler repeats volumes to give every rank as many
    for epoch in ("1", "2"):
        seen = [ranks[r][epoch] for r in range(2)]
        assert len(seen[0]) == len(seen[1]) == math.ceil(len(train) / 2)
        assert set(seen[0]) | set(seen[1]) == train
        assert len(set(seen[0]) & set(seen[1])) == padding
    assert ranks[0]["1"] != ranks[0]["2"]  # reshuffled every epoch (set_epoch)


def test_distributed_evaluation_matches_single_process(ddp_run, demo_dir):
    common = ["--dataset_dir", str(demo_dir), "--ckpt_dir", str(ddp_run / "models"), "--eval_subset", "all"]
    common += ["--num_workers", "0"]
    run_bundle(
        "run", "evaluating", "--config_file",
        "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']",
        "--output_dir", str(ddp_run / "eval_ddp"), *common, nproc=2,
    )  # fmt: skip
    run_bundle(
        "run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
        "--output_dir", str(ddp_run / "eval_single"), *common,
    )  # fmt: skip
    distributed, single = read_metrics(ddp_run / "eval_ddp"), read_metrics(ddp_run / "eval_single")
    assert set(distributed) == set(single) and len(single) == 10
    for name, value in single.items():
        assert distributed[name] == pytest.approx(value, abs=1e-5), name


def test_ranks_other_than_0_keep_only_their_handlers_under_fold_all(demo_dir, tmp_path):
    """
    With --fold all (how the shipped weights were trained) there is no validation subset; rank 1 must still keep
    exactly the divergence check and the learning-rate schedule, and log, plot and save nothing.
    """
    record = tmp_path / "record_handlers.json"
    run = json.loads(MULTI_GPU_TRAIN.read_text())["run"]
    imports = json.loads((REPO_ROOT / "configs" / "train.json").read_text())["imports"]
    record.write_text(json.dumps({
        "imports": ["$import rank_recorder", *imports],
        "run": ["$rank_recorder.record_handler_types(@output_dir, @train#trainer#train_handlers)"] + run,
    }))  # fmt: skip
    run_bundle(
        "run", "training", "--config_file", f"['configs/train.json','configs/multi_gpu_train.json','{record}']",
        "--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path / "models"),
        "--fold", "all", "--epochs", "1", "--num_workers", "0", "--progress", "False", nproc=2,
    )  # fmt: skip
    rank_0 = json.loads((tmp_path / "handlers_rank0.json").read_text())
    rank_1 = json.loads((tmp_path / "handlers_rank1.json").read_text())
    assert rank_1 == ["StopOnNonFiniteLoss", "LrScheduleHandler"]
    assert {"StatsHandler", "TensorBoardStatsHandler"} <= set(rank_0)
    assert "ValidationHandler" not in rank_0  # --fold all: no validation subset
    CrossBasicUNet().load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
