"""Training killed with SIGKILL in the middle of an epoch resumes from its last checkpoint and ends like a clean run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, run_bundle
from xunet_bundle import CrossBasicUNet
from xunet_bundle.training import latest_checkpoint

pytestmark = pytest.mark.slow  # fault injection: training killed with SIGKILL, then resumed

EPOCHS = 3
CHECKPOINT_ITERATIONS = 3


def training_args(demo_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(demo_dir),
        "--output_dir", str(out), "--ckpt_dir", str(out / "models"), "--epochs", str(EPOCHS), "--num_workers", "0",
        "--progress", "False", "--volumes_per_batch", "1", "--checkpoint_iterations", str(CHECKPOINT_ITERATIONS),
        *extra,
    ]  # fmt: skip


def trainer_state(checkpoint: str | Path) -> dict:
    state = torch.load(checkpoint, weights_only=True)
    return {"trainer": state["trainer"], "lr_scheduler_epoch": state["lr_scheduler"]["last_epoch"]}


@pytest.fixture(scope="module")
def uninterrupted(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    run_bundle(*training_args(demo_dir, out))
    return out


def kill_during_second_epoch(demo_dir: Path, out: Path, iteration_in_epoch: int) -> None:
    """Start training and SIGKILL it as soon as it logs the given iteration of epoch 2."""
    command = [sys.executable, "-m", "monai.bundle", *training_args(demo_dir, out)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        for line in process.stdout:
            if re.search(rf"Epoch: 2/{EPOCHS}, Iter: {iteration_in_epoch}/", line):
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=120)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"


def test_sigkill_mid_epoch_resumes_and_ends_like_an_uninterrupted_run(uninterrupted, demo_dir, tmp_path):
    final = uninterrupted / "checkpoints" / f"checkpoint_epoch={EPOCHS}.pt"
    epoch_length = trainer_state(final)["trainer"]["epoch_length"]
    # the first mid-epoch checkpoint of epoch 2; the kill comes one iteration later, once it is surely written
    checkpointed = (epoch_length // CHECKPOINT_ITERATIONS + 1) * CHECKPOINT_ITERATIONS
    assert epoch_length < checkpointed < 2 * epoch_length - 1, "the demo epoch is too short to checkpoint inside it"

    kill_during_second_epoch(demo_dir, tmp_path, checkpointed - epoch_length + 1)
    resume_from = latest_checkpoint(tmp_path / "checkpoints")
    resumed_iteration = trainer_state(resume_from)["trainer"]["iteration"]
    assert Path(resume_from).name == f"checkpoint_iteration={resumed_iteration}.pt"
    assert resumed_iteration == checkpointed

    result = run_bundle(*training_args(demo_dir, tmp_path, "--resume", "True"))
    log = result.stdout + result.stderr
    assert f"Restored all variables from {resume_from}" in log
    # the rest of epoch 2 runs, from the iteration after the checkpoint, then epoch 3
    done_in_epoch = resumed_iteration % epoch_length
    assert [int(i) for i in re.findall(rf"Epoch: 2/{EPOCHS}, Iter: (\d+)/", log)] == list(
        range(done_in_epoch + 1, epoch_length + 1)
    )
    assert len(re.findall(rf"Epoch: 3/{EPOCHS}, Iter: \d+/", log)) == epoch_length
    assert f"Epoch: 1/{EPOCHS}" not in log

    assert trainer_state(tmp_path / "checkpoints" / final.name) == trainer_state(final)
    # the killed sitting's checkpoints are gone: n_saved holds across the restart
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(
        p.name for p in (uninterrupted / "checkpoints").iterdir()
    )
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    CrossBasicUNet().load_state_dict(state, strict=True)
