"""
Bad and unusual input through the bundle's command line (train, evaluate, inference), one table.

Each case either works (the input is valid, if unusual) or stops before writing anything with one final error line
that names the file and the problem. ``tests/test_prepare_lgg.py`` covers more bad TIFFs on real LGG patients.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from conftest import REPO_ROOT, run_bundle, write_channel_files
from xunet_bundle import CrossBasicUNet
from xunet_bundle.data import load_split, write_nifti
from xunet_bundle.demo import synthetic_patient

TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"
INFERENCE = "configs/inference.json"


def first_case(data: Path, stage: str) -> dict[str, Path]:
    """The first case of the subset a stage reads (inference reads every image, training cases among them)."""
    if stage == "prepare":
        return {}
    subset = "test" if stage == "evaluate" else "train"
    return {k: Path(v) for k, v in load_split(data / "datalist.json", subset, 0)[0].items() if k != "fold"}


def rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    """Replace a NIfTI volume by ``change(its array)``, keeping its affine."""
    image = nib.load(path)
    write_nifti(change(np.asarray(image.dataobj)), image.affine, path)
    return path


def write_kaggle_patient(folder: Path, seed: int) -> None:
    """A synthetic patient in the Kaggle LGG layout: <patient>_<n>.tif (RGB) and <patient>_<n>_mask.tif (0/255)."""
    image, label = synthetic_patient(seed, size=32, num_slices=4)
    folder.mkdir(parents=True)
    for k in range(image.shape[2]):
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}.tif", image[:, :, k])
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}_mask.tif", label[:, :, k] * 255)


def read_only_folder(tmp: Path) -> Path:
    """A folder no file can be created in (for root, whom permission bits do not stop, the read-only /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


# Each damage gets the dataset folder (a copy of the demo data) and the case to damage (the first case the stage
# reads: a training case for training, a test case for evaluation). It returns the file the error must name, or
# None for valid input; or the file and one command-line argument to set, as (file, (flag, value)).


def corrupt_image(data, case):
    path = case["image"]
    path.write_bytes(os.urandom(2000))
    return path


def truncated_image(data, case):
    path = case["image"]
    path.write_bytes(path.read_bytes()[:3000])
    return path


def size_mismatch(data, case):
    return rewrite(case["label"], lambda a: a[:40])


def missing_label(data, case):
    path = case["label"]
    path.unlink()
    return path


def label_out_of_range(data, case):
    return rewrite(case["label"], lambda a: np.where(a > 0, 3, 0).astype(a.dtype))


def two_channels(data, case):
    return rewrite(case["image"], lambda a: a[..., :2])


def nan_intensities(data, case):
    return rewrite(case["image"], lambda a: np.where(a > 200, np.nan, a).astype(np.float32))


def empty_datalist(data, case):
    path = data / "datalist.json"
    path.write_text(json.dumps({"training": [], "testing": []}))
    return path


def missing_dataset_dir(data, case):
    shutil.rmtree(data)
    return data / "datalist.json"


def empty_mask(data, case):
    rewrite(case["label"], np.zeros_like)


def unusual_dtypes(data, case):
    rewrite(case["image"], lambda a: a.astype(np.float64) * 10.0)
    rewrite(case["label"], lambda a: a.astype(np.int16))


def not_divisible_by_16(data, case):
    for folder in ("imagesTr", "labelsTr"):
        for path in (data / folder).glob("*.nii.gz"):
            rewrite(path, lambda a: a[:45, :37])


def one_slice_volume(data, case):
    rewrite(case["image"], lambda a: a[:, :, 4:5])
    rewrite(case["label"], lambda a: a[:, :, 4:5])


def single_2d_slice(data, case):
    return rewrite(case["image"], lambda a: a[:, :, 4])


def grey_volume(data, case):
    return rewrite(case["image"], lambda a: a[..., 1])


def empty_folder(data, case):
    folder = data / "imagesTr"
    shutil.rmtree(folder)
    folder.mkdir()
    return folder


def kaggle_source(data: Path) -> Path:
    """Replace the prepared demo data by a Kaggle-layout source of 3 synthetic patients; return its folder."""
    shutil.rmtree(data)
    for i in range(3):
        write_kaggle_patient(data / f"TCGA_XX_{i:04d}_20000101", seed=i)
    return data


def truncated_tiff(data, case):
    path = kaggle_source(data) / "TCGA_XX_0001_20000101" / "TCGA_XX_0001_20000101_2.tif"
    path.write_bytes(path.read_bytes()[:200])
    return path


def mask_values(data, case):
    path = kaggle_source(data) / "TCGA_XX_0002_20000101" / "TCGA_XX_0002_20000101_3_mask.tif"
    tifffile.imwrite(path, np.full((32, 32), 7, np.uint8))
    return path


def grey_tiff(data, case):
    path = kaggle_source(data) / "TCGA_XX_0000_20000101" / "TCGA_XX_0000_20000101_1.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8))
    return path


def empty_source(data, case):
    shutil.rmtree(data)
    data.mkdir()
    return data


def missing_source(data, case):
    shutil.rmtree(data)
    return data


def read_only_destination(data, case):
    kaggle_source(data)
    folder = read_only_folder(data.parent) / "prepared"
    return folder, ("--dst", str(folder))


def read_only_output(data, case):
    folder = read_only_folder(data.parent)
    return folder, ["--output_dir", str(folder)]


def missing_model(data, case):
    return data.parent / "models" / "model.pt", ["--ckpt_dir", str(data.parent / "models")]


CHANNEL_SUFFIXES = ("--channel_suffixes", "['_0000','_0001','_0002']")


def store_one_file_per_channel(data: Path) -> list[list[Path]]:
    """Replace every volume of ``imagesTr/`` by one file per channel, as nnU-Net stores cases (``<case>_0000``...)."""
    cases = []
    for path in sorted((data / "imagesTr").glob("*.nii.gz")):
        cases.append(write_channel_files(path, path.parent))
        path.unlink()
    return cases


def missing_channel_file(data, case):
    flair = store_one_file_per_channel(data)[0][1]
    flair.unlink()
    return flair, CHANNEL_SUFFIXES


def channel_size_mismatch(data, case):
    post_contrast = store_one_file_per_channel(data)[0][2]
    return rewrite(post_contrast, lambda a: a[:40]), CHANNEL_SUFFIXES


def channel_affine_mismatch(data, case):
    flair = store_one_file_per_channel(data)[0][1]
    image = nib.load(flair)
    write_nifti(np.asarray(image.dataobj), image.affine @ np.diag([2.0, 2.0, 1.0, 1.0]), flair)
    return flair, CHANNEL_SUFFIXES


def file_of_no_channel(data, case):
    store_one_file_per_channel(data)
    stray = data / "imagesTr" / "notes.nii.gz"
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), stray)
    return stray, CHANNEL_SUFFIXES


def channel_suffixes_not_a_list(data, case):
    store_one_file_per_channel(data)
    return "channel_suffixes", ("--channel_suffixes", "_0000")


def two_channels_in_a_channel_file(data, case):
    pre_contrast = store_one_file_per_channel(data)[0][0]
    return rewrite(pre_contrast, lambda a: np.stack([a, a], axis=-1)), CHANNEL_SUFFIXES


@dataclass
class Case:
    stage: str
    damage: Callable
    problem: str | None  # None: valid input that must work

    def __str__(self) -> str:
        return f"{self.stage}-{self.damage.__name__}"


CASES = [
    Case("prepare", truncated_tiff, "cannot read the TIFF file"),
    Case("prepare", mask_values, r"mask values must be 0 or 255, found \[7\]"),
    Case("prepare", grey_tiff, r"expected an RGB image \(rows, cols, 3\), got shape \(32, 32\)"),
    Case("prepare", empty_source, "no patient folders found"),
    Case("prepare", missing_source, "source folder does not exist"),
    Case("prepare", read_only_destination, "Permission denied|not writable|cannot create"),
    Case("train", corrupt_image, "cannot read the image"),
    Case("train", truncated_image, "cannot read the image"),
    Case("train", size_mismatch, r"label size \(40, 48, 8\) differs from image size \(48, 48, 8\)"),
    Case("train", missing_label, "label file not found"),
    Case("train", label_out_of_range, r"label values must be integers in 0..1, found \[3"),
    Case("train", two_channels, "expected 3 image channels, got 2"),
    Case("train", nan_intensities, "image contains NaN or infinite intensities"),
    Case("train", empty_datalist, "the 'train' subset is empty: the datalist lists no training cases"),
    Case("train", missing_dataset_dir, "datalist not found"),
    Case("train", read_only_output, "not writable|cannot create the output folder"),
    Case("train", empty_mask, None),
    Case("train", unusual_dtypes, None),
    Case("train", not_divisible_by_16, None),
    Case("train", one_slice_volume, None),
    Case("evaluate", label_out_of_range, r"label values must be integers in 0..1, found \[3"),
    Case("evaluate", empty_mask, None),
    Case("evaluate", missing_model, "model weights not found"),
    Case("inference", single_2d_slice, "looks like a single 2D slice with its channels last"),
    Case("inference", grey_volume, "expected 3 image channels, got 1"),
    Case("inference", corrupt_image, "cannot read the image"),
    Case("inference", nan_intensities, "image contains NaN or infinite intensities"),
    Case("inference", empty_folder, r"no NIfTI volumes \(\*.nii.gz, \*.nii\) in this folder"),
    Case("inference", read_only_output, "not writable|cannot create the output folder"),
    Case(
        "inference",
        missing_channel_file,
        r"channel file not found: case .* has no file for the channel\(s\) \['_0001'\]",
    ),
    Case("inference", channel_size_mismatch, r"spatial size \(40, 48, 8\) differs from .*_0000.nii.gz's \(48, 48, 8\)"),
    Case("inference", channel_affine_mismatch, "affine differs from .*_0000.nii.gz's"),
    Case("inference", file_of_no_channel, "ends in none of the channel suffixes"),
    Case("inference", two_channels_in_a_channel_file, "expected 1 image channels, got 2"),
    Case("inference", channel_suffixes_not_a_list, "must be a list of file-name endings in channel order"),
    Case("inference", not_divisible_by_16, None),
    Case("inference", one_slice_volume, None),
    Case("inference", unusual_dtypes, None),
]


def command(stage: str, data: Path, out: Path, model_dir: Path) -> list[str]:
    if stage == "prepare":
        return [str(REPO_ROOT / "scripts" / "prepare_lgg.py"), "--src", str(data), "--dst", str(out),
                "--on_error", "stop"]  # fmt: skip
    if stage == "train":
        return [
            "run", "training", "--config_file", TRAIN, "--dataset_dir", str(data), "--output_dir", str(out),
            "--ckpt_dir", str(out / "models"), "--epochs", "1", "--num_workers", "0", "--progress", "False",
        ]  # fmt: skip
    if stage == "evaluate":
        return [
            "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(data), "--output_dir", str(out),
            "--ckpt_dir", str(model_dir), "--num_workers", "0",
        ]  # fmt: skip
    return [
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(data / "imagesTr"),
        "--output_dir", str(out), "--ckpt_dir", str(model_dir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Untrained weights: enough to check that evaluation and inference run and what they write."""
    folder = tmp_path_factory.mktemp("models")
    torch.save(CrossBasicUNet().state_dict(), folder / "model.pt")
    return folder


def check_outputs(stage: str, data: Path, out: Path) -> None:
    """What a run on valid input must leave behind."""
    if stage == "train":
        CrossBasicUNet().load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    elif stage == "evaluate":
        rows = (out / "test_mean_dice_raw.csv").read_text().splitlines()[1:]
        assert len(rows) == len(load_split(data / "datalist.json", "test"))
        assert all(0.0 <= float(row.split(",")[-1]) <= 1.0 for row in rows)
    else:
        for image in (data / "imagesTr").glob("*.nii.gz"):
            seg = nib.load(out / image.name.replace(".nii.gz", "_seg.nii.gz"))
            assert seg.shape == nib.load(image).shape[:3]
            assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}


# valid but unusual input run through a whole workflow: the longest cases, left to the slow tier
SLOW_CASES = {
    "train-empty_mask",
    "train-unusual_dtypes",
    "train-not_divisible_by_16",
    "inference-not_divisible_by_16",
    "inference-one_slice_volume",
    "inference-unusual_dtypes",
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if str(c) in SLOW_CASES else c for c in CASES], ids=str
)
def test_bad_input_stops_clearly_and_valid_input_works(case, demo_dir, model_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    out = tmp_path / "out"
    culprit = case.damage(data, first_case(data, case.stage))
    args = command(case.stage, data, out, model_dir)
    if isinstance(culprit, tuple):
        culprit, (flag, value) = culprit
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    if case.stage == "prepare":
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    else:
        result = run_bundle(*args, expect_success=case.problem is None)
    if case.problem is None:
        check_outputs(case.stage, data, out)
        return
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert str(culprit) in last_line, last_line
    assert re.search(case.problem, last_line), last_line
    # nothing that looks like a result is left behind
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    results = [p for p in written if p.suffix in (".pt", ".csv", ".json") or p.name.endswith(".nii.gz")]
    assert not results, results
