"""What a new user meets first: the demo learns, validation is plain, shipped post-processing stays with its weights."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, run_bundle
from xunet_bundle import CrossBasicUNet
from xunet_bundle.demo import make_demo_dataset
from xunet_bundle.postprocessing import (
    PLAIN_POSTPROCESSING,
    SHIPPED_WEIGHTS_MD5,
    SHIPPED_WEIGHTS_POSTPROCESSING,
    postprocessing_for,
)
from xunet_bundle.runtime import FreshRunLogFilter
from xunet_bundle.training import LossProgressBar


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo's data and training, as scripts/demo.sh runs them, shortened to 12 epochs."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root / "data", progress=False)
    result = run_bundle(
        "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(root / "data"),
        "--output_dir", str(root / "runs"), "--ckpt_dir", str(root / "runs" / "models"), "--epochs", "12",
        "--progress", "False",
    )  # fmt: skip
    return root, result.stdout + result.stderr


@pytest.mark.slow  # trains the demo for 12 epochs
def test_a_short_demo_run_validates_above_0_8(demo_run):
    root, log = demo_run
    summary = subprocess.run(
        [sys.executable, "scripts/summarize_run.py", "--run_dir", str(root / "runs")],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = summary.stdout.strip().splitlines()[-1]
    best = float(line.split("best validation Dice ")[1].split()[0])
    assert best >= 0.8, line
    assert (root / "runs" / "learning_curve.png").stat().st_size > 10_000
    assert f"tensorboard --logdir {root / 'runs' / 'tensorboard'}" in line
    # the best model lands under the run's output folder, never in the bundle's models/
    CrossBasicUNet().load_state_dict(torch.load(root / "runs" / "models" / "model.pt", weights_only=True))
    assert "plain output" not in log  # training does not consult the shipped weights' post-processing
    assert "Engine run resuming from iteration 0" not in log and "Engine run starting with max_epochs=12." in log


@pytest.mark.slow  # the 12-epoch demo run
def test_the_demo_model_is_evaluated_and_segmented_with_plain_post_processing(demo_run, tmp_path):
    root, _ = demo_run
    common = ["--dataset_dir", str(root / "data"), "--ckpt_dir", str(root / "runs" / "models")]
    evaluation = run_bundle(
        "run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']", *common,
        "--output_dir", str(tmp_path / "eval"), "--num_workers", "0",
    )  # fmt: skip
    assert "post-processing defaults for this model: the network's plain output" in evaluation.stdout
    assert (tmp_path / "eval" / "test_mean_dice_raw.csv").is_file()
    assert not list((tmp_path / "eval").glob("val_*"))  # test-set metrics are not named after validation
    inference = run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(root / "data" / "imagesTr"),
        "--ckpt_dir", str(root / "runs" / "models"), "--output_dir", str(tmp_path / "seg"),
    )  # fmt: skip
    written = [line for line in inference.stdout.splitlines() if " - INFO - wrote " in line]
    assert len(written) == 12 == len(list((tmp_path / "seg").glob("*_seg.nii.gz")))  # one line per case


def test_shipped_post_processing_belongs_to_the_shipped_weights_only(tmp_path, caplog):
    shipped = REPO_ROOT / "models" / "model.pt"
    other = tmp_path / "model.pt"
    torch.save(CrossBasicUNet().state_dict(), other)
    with caplog.at_level(logging.INFO, logger="xunet_bundle"):
        assert postprocessing_for(str(shipped)) == SHIPPED_WEIGHTS_POSTPROCESSING
        assert postprocessing_for(str(other)) == PLAIN_POSTPROCESSING
        assert postprocessing_for([str(shipped), str(shipped)]) == SHIPPED_WEIGHTS_POSTPROCESSING
        assert postprocessing_for([str(shipped), str(other)]) == PLAIN_POSTPROCESSING  # an ensemble with new members
        assert postprocessing_for(str(tmp_path / "missing.pt")) == PLAIN_POSTPROCESSING
    assert "shipped LGG weights' own post-processing" in caplog.text and "plain output" in caplog.text
    postprocessing_for(str(shipped))["mirror_axes"].append(0)  # callers get copies
    assert SHIPPED_WEIGHTS_POSTPROCESSING["mirror_axes"] == [1]


def test_the_shipped_weights_md5_is_the_released_one():
    """New weights must not inherit a post-processing chosen for others: the md5 is updated with a new choice."""
    assert hashlib.md5((REPO_ROOT / "models" / "model.pt").read_bytes()).hexdigest() == SHIPPED_WEIGHTS_MD5
    assert f'hash_val: "{SHIPPED_WEIGHTS_MD5}"' in (REPO_ROOT / "large_files.yml").read_text()


@pytest.mark.parametrize(
    "message, expected",
    [
        ("Engine run resuming from iteration 0, epoch 0 until 20 epochs", "Engine run starting with max_epochs=20."),
        (
            "Engine run resuming from iteration 0, epoch 4 until 5 epochs",
            "Engine run starting with max_epochs=5 at epoch 5.",
        ),
        ("Engine run resuming from iteration 75, epoch 3 until 20 epochs", None),  # a real resume keeps its words
    ],
)
def test_fresh_runs_are_logged_as_starting(message, expected):
    record = logging.LogRecord("ignite", logging.INFO, __file__, 1, message, (), None)
    assert FreshRunLogFilter().filter(record)
    assert record.getMessage() == (expected or message)


def test_the_progress_bar_names_the_loss():
    from ignite.engine import Engine, Events

    engine = Engine(lambda engine, batch: [{"loss": torch.tensor(0.25 * batch)}])
    bar = LossProgressBar(disable=False)
    bar.attach(engine)
    shown = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: shown.append(bar.pbar.postfix))
    engine.run([1, 2], max_epochs=1)
    assert shown[-1] == "loss=0.5"
