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


# --- datalists ---------------------------------------------------------------------------------------------------


def edit_datalist(data: Path, change: Callable[[dict], object]) -> Path:
    """Apply ``change`` to the datalist's content (in place, or returning a replacement); return the datalist."""
    path = data / "datalist.json"
    content = json.loads(path.read_text())
    replaced = change(content)
    path.write_text(json.dumps(replaced if isinstance(replaced, (dict, list)) else content))
    return path


def held_out_patient_in_a_training_fold(data, case):
    def change(content):
        content["training"][0].update({k: content["testing"][0][k] for k in ("image", "label")})

    return edit_datalist(data, change)


def duplicated_training_entry(data, case):
    return edit_datalist(data, lambda content: content["training"].append(dict(content["training"][-1])))


def duplicated_test_entry(data, case):
    return edit_datalist(data, lambda content: content["testing"].append(dict(content["testing"][0])))


def entry_without_fold(data, case):
    return edit_datalist(data, lambda content: content["training"][0].pop("fold"))


def string_fold(data, case):
    return edit_datalist(data, lambda content: content["training"][0].update(fold="0"))


def training_as_object(data, case):
    return edit_datalist(data, lambda content: {"training": {"case": content["training"][0]}})


def null_image(data, case):
    return edit_datalist(data, lambda content: content["training"][0].update(image=None))


def training_entry_without_label(data, case):
    return edit_datalist(data, lambda content: content["training"][0].pop("label"))


def label_missing_from_a_testing_entry(data, case):
    edit_datalist(data, lambda content: content["testing"][0].pop("label"))
    return case["image"]


def datalist_not_an_object(data, case):
    return edit_datalist(data, lambda content: content["training"])


def datalist_not_json(data, case):
    path = data / "datalist.json"
    path.write_text(path.read_text()[:50])
    return path


# --- weights -------------------------------------------------------------------------------------------------------


def bad_model(data: Path, write: Callable[[Path], None]) -> tuple[Path, tuple[str, str]]:
    """A model folder beside the data whose ``model.pt`` is written by ``write``; pointed to by ``--ckpt_dir``."""
    folder = data.parent / "bad_models"
    folder.mkdir()
    write(folder / "model.pt")
    return folder / "model.pt", ("--ckpt_dir", str(folder))


def truncated_model(data, case):
    def write(path):
        torch.save(CrossBasicUNet().state_dict(), path)
        path.write_bytes(path.read_bytes()[:100_000])

    return bad_model(data, write)


def empty_model(data, case):
    return bad_model(data, lambda path: path.write_bytes(b""))


def model_of_3d_network(data, case):
    return bad_model(data, lambda path: torch.save(CrossBasicUNet(spatial_dims=3).state_dict(), path))


def model_missing_a_layer(data, case):
    def write(path):
        state = CrossBasicUNet().state_dict()
        state.pop("final_conv.weight")
        torch.save(state, path)

    return bad_model(data, write)


def model_of_nan_weights(data, case):
    def write(path):
        torch.save({k: torch.full_like(v, float("nan")) for k, v in CrossBasicUNet().state_dict().items()}, path)

    return bad_model(data, write)


class RunsCode:
    """An object whose unpickling runs a command: a model file must never be unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_model(data, case):
    return bad_model(data, lambda path: torch.save({"weight": RunsCode(data.parent / "pwned")}, path))


# --- options -------------------------------------------------------------------------------------------------------


def option(name: str, value: str) -> Callable:
    """A damage that only sets the command-line option ``--name value``; the error must name the option."""

    def set_option(data, case):
        return f"--{name}", (f"--{name}", value)

    set_option.__name__ = f"{name}_{re.sub(r'[^A-Za-z0-9]+', '_', value).strip('_')}"
    return set_option


def diverging_learning_rate(data, case):
    return "--learning_rate", [("--learning_rate", "1e20"), ("--fold", "all")]


def resume_from_truncated_checkpoint(data, case):
    folder = data.parent / "out" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "checkpoint_epoch=1.pt"
    path.write_bytes(os.urandom(5000))
    return folder, ("--resume", "True")


def resume_from_malicious_checkpoint(data, case):
    folder = data.parent / "out" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"trainer": RunsCode(data.parent / "pwned")}, folder / "checkpoint_epoch=1.pt")
    return folder, ("--resume", "True")


# --- geometry and sizes --------------------------------------------------------------------------------------------


def with_header_field(path: Path, field: str, value) -> Path:
    """Rewrite a NIfTI file with one header field changed, bypassing nibabel's checks of the affine."""
    image = nib.load(path)
    header = image.header.copy()
    header[field] = value
    header["qform_code"] = 0
    header["sform_code"] = 1
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), path)
    return path


def nan_affine(data, case):
    return with_header_field(case["image"], "srow_x", [np.nan, 0.0, 0.0, 0.0])


def singular_affine(data, case):
    return with_header_field(case["image"], "srow_y", [0.0, 0.0, 0.0, 0.0])


def moved_label(data: Path, path: Path, change: np.ndarray) -> Path:
    image = nib.load(path)
    write_nifti(np.asarray(image.dataobj), image.affine @ change, path)
    return path


def label_spacing_differs(data, case):
    return moved_label(data, case["label"], np.diag([2.0, 2.0, 1.0, 1.0]))


def label_flipped(data, case):
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = nib.load(case["label"]).shape[0] - 1
    return moved_label(data, case["label"], flip)


def label_shifted(data, case):
    return moved_label(data, case["label"], np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3.0], [0, 0, 0, 1]]))


def in_plane(rows: int, cols: int) -> Callable:
    """Valid input: every volume cropped to ``rows x cols`` in plane, below the network's 32 x 32 minimum."""

    def crop(data, case):
        for folder in ("imagesTr", "labelsTr"):
            for path in (data / folder).glob("*.nii.gz"):
                rewrite(path, lambda a: a[10 : 10 + rows, 10 : 10 + cols])

    crop.__name__ = f"in_plane_{rows}x{cols}"
    return crop


def channel_file_with_trailing_axis(data, case):
    channels = store_one_file_per_channel(data)[0]
    rewrite(channels[1], lambda a: a[..., None])
    return None, CHANNEL_SUFFIXES


# --- files ---------------------------------------------------------------------------------------------------------


def fifo_among_images(data, case):
    path = data / "imagesTr" / "stray.nii.gz"
    os.mkfifo(path)
    return path


def fifo_as_label(data, case):
    path = case["label"]
    path.unlink()
    os.mkfifo(path)
    return path


def dangling_link(data, case):
    path = data / "imagesTr" / "gone.nii.gz"
    path.symlink_to(data / "nowhere.nii.gz")
    return path


def same_case_two_extensions(data, case):
    image = nib.load(case["image"])
    path = case["image"].with_name(case["image"].name.replace(".nii.gz", ".nii"))
    write_nifti(np.asarray(image.dataobj)[::-1].copy(), image.affine, path)
    return path


def output_into_input_folder(data, case):
    return "--output_dir", ("--output_dir", str(data / "imagesTr"))


def full_disk_for_probabilities(data, case):
    return data.parent / "out", ("--save_probabilities", "True")


def full_disk_for_checkpoints(data, case):
    return data.parent / "out", ("--epochs", "1")  # the model (out/models) or a checkpoint (out/checkpoints)


# --- leftovers and out-of-distribution input -----------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def partial_files_of_killed_runs(data, case):
    out = data.parent / "out"
    out.mkdir()
    pid = dead_pid()
    for name in ("demo_000_seg.nii.gz", "demo_001_prob.nii.gz"):
        (out / f".{name}.partial-{pid}-x1y2z3.nii.gz").write_bytes(b"\x1f\x8b truncated")


def partial_checkpoint_of_killed_run(data, case):
    checkpoints = data.parent / "out" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "tmpab12cd34").write_bytes(b"PK truncated")


def all_zero_image(data, case):
    return rewrite(case["image"], np.zeros_like)


def constant_image(data, case):
    return rewrite(case["image"], lambda a: np.full_like(a, 7))


# --- found by a hostile tester ------------------------------------------------------------------------------------


def held_out_case_linked_to_a_training_case(data, case):
    alias = data / "imagesTr" / "alias.nii.gz"
    alias.symlink_to(
        data / "imagesTr" / Path(json.loads((data / "datalist.json").read_text())["training"][0]["image"]).name
    )
    return edit_datalist(data, lambda content: content["testing"][0].update(image="imagesTr/alias.nii.gz"))


def validation_subset_of_fold_all(data, case):
    return "--eval_subset", [("--eval_subset", "validation"), ("--fold", "all")]


def capitalised_extension(data, case):
    path = case["image"].with_name(case["image"].name.replace(".nii.gz", ".NII.GZ"))
    case["image"].rename(path)
    return path


def overflowing_intensities(data, case):
    return rewrite(case["image"], lambda a: (a.astype(np.float32) / max(float(a.max()), 1.0) * 3e38).astype(np.float32))


def complex_voxels(data, case):
    return rewrite(case["image"], lambda a: a.astype(np.complex64))


def folder_named_like_an_output(data, case):
    folder = data.parent / "out" / case["image"].name.replace(".nii.gz", "_seg.nii.gz")
    folder.mkdir(parents=True)
    return folder


def volumes_of_different_sizes(data, case):
    for folder in ("imagesTr", "labelsTr"):
        for number, path in enumerate(sorted((data / folder).glob("*.nii.gz"))):
            rewrite(path, lambda a: a[: 30 + 7 * (number % 3), : 41 - 5 * (number % 2)])


def fifo_as_model(data, case):
    return bad_model(data, os.mkfifo)


def fifo_as_checkpoint(data, case):
    folder = data.parent / "out" / "checkpoints"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "checkpoint_epoch=1.pt")
    return folder, ("--resume", "True")


def checkpoint_without_optimizer(data, case):
    folder = data.parent / "out" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"model": CrossBasicUNet().state_dict(), "trainer": {"iteration": 5}}, folder / "checkpoint_epoch=1.pt")
    return folder, ("--resume", "True")


def dataset_dir_is_a_file(data, case):
    return case["image"], ("--dataset_dir", str(case["image"]))


@dataclass
class Case:
    stage: str
    damage: Callable
    problem: str | None  # None: valid input that must work
    warns: str | None = None  # valid input: a warning, naming the file the damage returns, that the run must log
    file_size_limit: int | None = None  # bytes; the kernel refuses larger writes, as on a full disk

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
    # 1. silent loss or wrong results
    Case("inference", same_case_two_extensions, "same case name as"),
    Case("inference", output_into_input_folder, "is the input folder"),
    Case("train", held_out_patient_in_a_training_fold, "is listed twice"),
    Case("train", duplicated_training_entry, "is listed twice"),
    Case("evaluate", duplicated_test_entry, "is listed twice"),
    Case("train", diverging_learning_rate, "the training loss became (nan|inf)|hold NaN or infinite values"),
    Case("evaluate", model_of_nan_weights, "hold NaN or infinite values"),
    Case("inference", model_of_nan_weights, "hold NaN or infinite values"),
    Case("inference", nan_affine, "affine .* holds NaN or infinite values"),
    Case("train", label_spacing_differs, "the label's affine differs from its image's"),
    Case("evaluate", label_flipped, "the label's affine differs from its image's"),
    Case("train", label_shifted, "the label's affine differs from its image's"),
    Case("inference", dangling_link, "a symbolic link whose target does not exist"),
    # 2. what would crash later, after outputs were written
    Case("inference", channel_file_with_trailing_axis, None),
    Case("inference", singular_affine, "affine .* is singular"),
    Case("evaluate", singular_affine, "affine .* is singular"),
    Case("inference", in_plane(1, 1), None),
    Case("inference", in_plane(3, 3), None),
    Case("inference", in_plane(1, 32), None),
    Case("train", in_plane(5, 7), None),
    Case("train", training_entry_without_label, 'has no "label" file path'),
    Case("evaluate", label_missing_from_a_testing_entry, "has no 'label' in the datalist"),
    # 3. resource bounds: only regular files are read
    Case("inference", fifo_among_images, "not a regular file"),
    Case("train", fifo_as_label, "not a regular file"),
    # 4. one line instead of a traceback
    Case("evaluate", truncated_model, "not a readable PyTorch weights file"),
    Case("inference", empty_model, "not a readable PyTorch weights file"),
    Case("inference", model_of_3d_network, "the weights do not fit this network .*another shape"),
    Case("evaluate", model_missing_a_layer, "the weights do not fit this network .*layers missing"),
    Case("inference", malicious_model, "not a readable PyTorch weights file"),
    Case("train", resume_from_truncated_checkpoint, "no readable checkpoint"),
    Case("train", resume_from_malicious_checkpoint, "no readable checkpoint"),
    Case("train", entry_without_fold, 'needs an integer "fold"'),
    Case("train", string_fold, 'needs an integer "fold"'),
    Case("train", training_as_object, '"training" must be a list of cases, got dict'),
    Case("train", null_image, 'has no "image"'),
    Case("evaluate", datalist_not_an_object, "expected a JSON object"),
    Case("train", datalist_not_json, "not a valid datalist"),
    Case("train", option("epoch", "1"), "not an option of this config: no id 'epoch' .*did you mean --epochs"),
    Case("train", option("epochs", "0"), "must be a positive integer, got 0"),
    Case("train", option("epochs", "-1"), "must be a positive integer, got -1"),
    Case("train", option("epochs", "2.5"), "must be a positive integer, got 2.5"),
    Case("train", option("volumes_per_batch", "0"), "must be a positive integer"),
    Case("train", option("slices_per_volume", "0"), "must be a positive integer"),
    Case("train", option("val_interval", "0"), "must be a positive integer"),
    Case("train", option("learning_rate", "nan"), "must be a finite positive number"),
    Case("train", option("learning_rate", "-0.1"), "must be a finite positive number"),
    Case("train", option("mirror_axes", "[3]"), "must be a list of distinct volume axes"),
    Case("train", option("fold", "7"), "fold 7 is not in the datalist"),
    Case("train", option("resume", "yes"), "must be True or False"),
    Case("train", option("augmentation", "strong"), "must be 'standard' .* or 'site'"),
    Case(
        "train",
        option("augmentation", "None"),
        r"a plain None is dropped by monai.bundle.*this option takes 'standard'",
    ),
    Case("evaluate", option("foreground_threshold", "0"), r"a foreground probability in \(0, 1\]"),
    Case("evaluate", option("eval_subset", "everything"), "must be one of 'train', 'validation', 'test' or 'all'"),
    Case("inference", option("foreground_threshold", "1.5"), r"a foreground probability in \(0, 1\]"),
    Case("inference", option("sw_batch_size", "0"), "must be a positive integer"),
    Case("inference", option("roi_size", "[0,0]"), r"each in 1\.\.4096 or -1"),
    Case("inference", option("mirror_axes", "[1,1]"), "must be a list of distinct volume axes"),
    Case("evaluate", option("confident_components", "[0.9]"), r"None \(off\) or \[min_peak, min_fraction\]"),
    Case("inference", full_disk_for_probabilities, "cannot write the file", file_size_limit=30_000),
    Case(
        "train",
        full_disk_for_checkpoints,
        r"cannot save (model\.pt|checkpoint_\S+) \(.*MiB free.*previous files are kept",
        file_size_limit=1_000_000,
    ),
    # found by a hostile tester
    Case("evaluate", held_out_case_linked_to_a_training_case, "is listed twice"),
    Case("evaluate", validation_subset_of_fold_all, "the validation subset is empty with --fold all"),
    Case("inference", capitalised_extension, "a NIfTI extension in capitals"),
    Case("inference", overflowing_intensities, "overflow the float32 sums"),
    Case("inference", complex_voxels, "is not a real number"),
    Case("inference", folder_named_like_an_output, "not a regular file"),
    Case("inference", option("roi_size", "[100000,100000]"), "each in 1..4096"),
    Case("inference", fifo_as_model, "not a regular file"),
    Case("evaluate", fifo_as_model, "not a regular file"),
    Case("train", fifo_as_checkpoint, "no readable checkpoint"),
    Case("train", checkpoint_without_optimizer, "no readable checkpoint"),
    Case("train", option("num_classes", "two"), "an integer of at least 2"),
    Case("train", option("spatial_dims", "4"), "must be 2 or 3"),
    Case("inference", option("in_channels", "0"), "must be a positive integer"),
    Case("inference", dataset_dir_is_a_file, "not a folder"),
    Case("train", volumes_of_different_sizes, None),
    # 5. leftovers of interrupted runs are removed by the next run
    Case("inference", partial_files_of_killed_runs, None),
    Case("train", partial_checkpoint_of_killed_run, None),
    # 6. out-of-distribution input: segmented, with a warning naming the file
    Case("inference", all_zero_image, None, warns="hold a single value"),
    Case("inference", constant_image, None, warns="hold a single value"),
]


def command(stage: str, data: Path, out: Path, model_dir: Path) -> list[str]:
    if stage == "prepare":
        return [str(REPO_ROOT / "scripts" / "prepare_lgg.py"), "--src", str(data), "--dst", str(out),
                "--on_error", "stop", "--num_folds", "2"]  # fmt: skip
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
        images = sorted((data / "imagesTr").glob("*.nii.gz"))
        cases = {re.sub(r"_000[0-2]$", "", image.name[: -len(".nii.gz")]): image for image in images}
        for name, image in cases.items():
            seg = nib.load(out / f"{name}_seg.nii.gz")
            assert seg.shape == nib.load(image).shape[:3]
            assert np.allclose(seg.affine, nib.load(image).affine, atol=1e-5)
            assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    leftovers = [p for p in out.rglob("*") if ".partial-" in p.name or re.fullmatch(r"tmp[a-z0-9_]{8}", p.name)]
    assert not leftovers, leftovers


# the fast tier runs a few cases of every class (each is a process of its own); the slow tier runs them all
FAST_CASES = {
    "prepare-truncated_tiff",
    "train-corrupt_image",
    "train-size_mismatch",
    "evaluate-missing_model",
    "inference-single_2d_slice",
    "inference-missing_channel_file",
    "inference-same_case_two_extensions",
    "inference-output_into_input_folder",
    "train-held_out_patient_in_a_training_fold",
    "evaluate-model_of_nan_weights",
    "inference-nan_affine",
    "train-label_spacing_differs",
    "inference-dangling_link",
    "inference-singular_affine",
    "inference-in_plane_1x1",
    "train-training_entry_without_label",
    "inference-fifo_among_images",
    "evaluate-truncated_model",
    "inference-model_of_3d_network",
    "inference-malicious_model",
    "train-resume_from_malicious_checkpoint",
    "train-string_fold",
    "train-epochs_0",
    "train-epoch_1",
    "train-learning_rate_nan",
    "inference-mirror_axes_1_1",
    "inference-full_disk_for_probabilities",
    "inference-partial_files_of_killed_runs",
    "inference-all_zero_image",
}


def files_and_times(folder: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize(
    "case", [c if str(c) in FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES], ids=str
)
def test_bad_input_stops_clearly_and_valid_input_works(case, demo_dir, model_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    out = tmp_path / "out"
    culprit = case.damage(data, first_case(data, case.stage))
    args = command(case.stage, data, out, model_dir)
    if isinstance(culprit, tuple):
        culprit, flags = culprit
        for flag, value in [flags] if isinstance(flags[0], str) else flags:
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
    before = files_and_times(out)
    if case.stage == "prepare":
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    else:
        result = run_bundle(*args, expect_success=case.problem is None, file_size_limit=case.file_size_limit)
    assert not (tmp_path / "pwned").exists(), "a model file was unpickled unsafely"
    if case.problem is None:
        check_outputs(case.stage, data, out)
        if case.warns:
            warnings = [line for line in (result.stdout + result.stderr).splitlines() if re.search(case.warns, line)]
            assert any(str(culprit) in line for line in warnings), warnings
        return
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert str(culprit) in last_line, last_line
    assert re.search(case.problem, last_line), last_line
    assert len(last_line) < 600, last_line
    # nothing that looks like a result is left behind
    written = [p for p, mtime in files_and_times(out).items() if before.get(p) != mtime]
    results = [p for p in written if p.suffix in (".pt", ".csv", ".json") or p.name.endswith(".nii.gz")]
    assert not results, results
