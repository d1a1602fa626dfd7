"""The 3D configuration (``configs/hippocampus.json``) on real Decathlon Hippocampus cases from ``../shared``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from conftest import REPO_ROOT, require_shared, run_bundle
from xunet_bundle.data import DataError, load_split
from xunet_bundle.decathlon import prepare_datalist

HIPPOCAMPUS = REPO_ROOT.parent / "shared" / "data" / "hippocampus"
CONFIGS = "['configs/train.json','configs/hippocampus.json']"
NUM_CASES = 16


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """A Decathlon task folder linking the first 16 real cases (the split needs no more for a short run)."""
    source = require_shared(HIPPOCAMPUS)
    task = tmp_path_factory.mktemp("Task04_Hippocampus")
    names = sorted(p.name for p in (source / "imagesTr").glob("*.nii.gz"))[:NUM_CASES]
    for folder in ("imagesTr", "labelsTr"):
        (task / folder).mkdir()
        for name in names:
            (task / folder / name).symlink_to(source / folder / name)
    return task


def test_datalist_splits_cases_into_folds_and_test_without_copying(task, tmp_path):
    datalist = prepare_datalist(task, tmp_path / "data", num_folds=4, test_fraction=0.25)
    assert len(datalist["testing"]) == 4 and len(datalist["training"]) == 12
    train, validation = load_split(tmp_path / "data/datalist.json", "train", 0), load_split(
        tmp_path / "data/datalist.json", "validation", 0
    )
    test = load_split(tmp_path / "data/datalist.json", "test")
    names = [Path(item["image"]).name for item in train + validation + test]
    assert len(set(names)) == NUM_CASES
    assert all(Path(item["label"]).parent.name == "labelsTr" for item in train + validation + test)
    assert all(Path(item["image"]).resolve().is_file() for item in train)
    assert not list((tmp_path / "data").glob("*.nii.gz"))  # nothing copied
    again = prepare_datalist(task, tmp_path / "again", num_folds=4, test_fraction=0.25)
    assert again["testing"] == datalist["testing"]  # the split depends on the case names only


def test_image_without_label_is_named(task, tmp_path):
    broken = tmp_path / "task"
    for folder in ("imagesTr", "labelsTr"):
        (broken / folder).mkdir(parents=True)
    (broken / "imagesTr" / "hippocampus_999.nii.gz").symlink_to(next((task / "imagesTr").iterdir()))
    with pytest.raises(DataError, match="hippocampus_999.nii.gz: this image has no label"):
        prepare_datalist(broken, tmp_path / "data")
    assert not (tmp_path / "data" / "datalist.json").exists()


@pytest.mark.slow  # a 3D training workflow on real cases
def test_brief_3d_training_segments_both_labels(task, tmp_path):
    """
    A short real training run of CrossBasicUNet(spatial_dims=3), then sliding-window evaluation on the held-out
    cases and inference on two of their volumes.
    """
    data = tmp_path / "data"
    prepare_datalist(task, data, num_folds=4, test_fraction=0.25)
    run = tmp_path / "run"
    common = ["--dataset_dir", str(data), "--ckpt_dir", str(run / "models"), "--num_workers", "0"]
    run_bundle(
        "run", "training", "--config_file", CONFIGS, *common, "--output_dir", str(run),
        "--epochs", "10", "--val_interval", "5", "--learning_rate", "0.003", "--progress", "False",
    )  # fmt: skip
    assert (run / "models" / "model.pt").is_file()
    run_bundle(
        "run", "evaluating", "--config_file", CONFIGS.replace("]", ",'configs/evaluate.json']"), *common,
        "--output_dir", str(run / "eval"),
    )  # fmt: skip
    with open(run / "eval" / "test_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    header, cases = rows[0], rows[1:]
    assert len(cases) == 4  # the test cases
    for label in (1, 2):  # anterior, posterior; the metric excludes the background
        column = header.index(f"class{label - 1}")
        mean_dice = sum(float(row[column]) for row in cases) / len(cases)
        assert mean_dice > 0.2, (label, rows)
    summary = json.dumps(rows)
    assert "nan" not in summary.lower()
    images = tmp_path / "images"
    images.mkdir()
    for item in load_split(data / "datalist.json", "test")[:2]:
        (images / Path(item["image"]).name).symlink_to(item["image"])
    run_bundle(
        "run", "inference", "--config_file", "['configs/inference.json','configs/hippocampus.json']",
        "--dataset_dir", str(images), "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "pred"),
    )  # fmt: skip
    for image in images.iterdir():
        prediction = nib.load(run / "pred" / image.name.replace(".nii.gz", "_seg.nii.gz"))
        source = nib.load(image)
        assert prediction.shape == source.shape  # sliding windows cover volumes of any size
        np.testing.assert_allclose(prediction.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2}
        assert {1, 2} <= set(np.unique(np.asarray(prediction.dataobj)))


@pytest.mark.parametrize("network", ["xunet", "basicunet"])
def test_configuration_builds_3d_networks_and_sliding_windows(network):
    files = ["configs/train.json", "configs/hippocampus.json"] + (
        ["configs/basicunet.json"] if network == "basicunet" else []
    )
    parser = ConfigParser()
    parser.read_config(files)
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == ("BasicUNet" if network == "basicunet" else "CrossBasicUNet")
    logits = net.eval()(torch.zeros(1, 1, 35, 50, 36))  # a typical case, not divisible by 16
    assert logits.shape == (1, 3, 35, 50, 36)
    assert isinstance(parser.get_parsed_content("validate#inferer").inferer.inferer, SlidingWindowInferer)


@pytest.mark.slow  # benchmarks/run.sh, a protocol tool, trains two networks
def test_protocol_run_records_per_label_dice(task, tmp_path):
    """``TASK=hippocampus benchmarks/run.sh``: one epoch per network, records with per-label Dice, the comparison."""
    env = {**os.environ, "TASK": "hippocampus", "EPOCHS": "1", "VAL_INTERVAL": "1", "RECORDS_DIR": str(tmp_path)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for network in ("xunet", "basicunet"):
        result = subprocess.run(
            ["bash", "benchmarks/run.sh", network, "0", str(task), str(tmp_path / "work")],
            cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "xunet_seed0.json").read_text())
    assert "configs/hippocampus.json" in record["train_commands"][0]
    per_label = record["test_dice_per_label"]
    assert sorted(per_label) == ["1", "2"] and set(per_label["1"]) == set(record["test_dice"])
    for case, dice in record["test_dice"].items():
        assert dice == pytest.approx((per_label["1"][case] + per_label["2"][case]) / 2, abs=1e-6)
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", str(tmp_path), "--out_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| xunet | 2 |" in table and "| basicunet | 1 |" in table
