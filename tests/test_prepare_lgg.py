"""scripts/prepare_lgg.py on real Kaggle LGG patients from ../shared: order, channels, labels, split, bad cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from xunet_bundle.data import LGG_AFFINE, DataError, load_split
from xunet_bundle.lgg import prepare_dataset, read_patient

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_PATIENTS = 6


@pytest.fixture
def lgg_subset(lgg_root, tmp_path) -> Path:
    """A kaggle_3m-like folder linking a few real patients (the first ones by name)."""
    src = tmp_path / "kaggle_3m"
    src.mkdir()
    for patient in sorted(p for p in lgg_root.iterdir() if p.is_dir())[:NUM_PATIENTS]:
        (src / patient.name).symlink_to(patient)
    return src


def copy_patient(lgg_subset: Path, dst: Path) -> Path:
    """A writable copy of the first patient, to be damaged by a test."""
    source = sorted(lgg_subset.iterdir())[0]
    target = dst / source.name
    shutil.copytree(source.resolve(), target)
    return target


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_volumes_keep_slice_order_channels_and_labels(lgg_subset, tmp_path):
    dst = tmp_path / "out"
    prepare_dataset(lgg_subset, dst, progress=False)
    patient = sorted(lgg_subset.iterdir())[0]
    image = nib.load(dst / "imagesTr" / f"{patient.name}.nii.gz")
    label = nib.load(dst / "labelsTr" / f"{patient.name}.nii.gz")
    volume, mask = np.asarray(image.dataobj), np.asarray(label.dataobj)
    num_slices = len(list(patient.glob("*_mask.tif")))
    assert volume.shape == (256, 256, num_slices, 3) and volume.dtype == np.uint8
    assert mask.shape == (256, 256, num_slices) and set(np.unique(mask).tolist()) <= {0, 1}
    np.testing.assert_allclose(image.affine, LGG_AFFINE)
    np.testing.assert_allclose(label.affine, LGG_AFFINE)
    for index in (1, 2, 10, num_slices):  # 10 sorts before 2 as text
        tif = tifffile.imread(patient / f"{patient.name}_{index}.tif")
        tif_mask = tifffile.imread(patient / f"{patient.name}_{index}_mask.tif")
        np.testing.assert_array_equal(volume[:, :, index - 1, :], tif)  # all three channels, in their order
        np.testing.assert_array_equal(mask[:, :, index - 1], tif_mask // 255)
    assert mask.sum() > 0


def test_split_is_patient_level_deterministic_and_covers_everyone(lgg_subset, tmp_path):
    first = prepare_dataset(lgg_subset, tmp_path / "a", num_folds=2, test_fraction=0.34, seed=3, progress=False)
    prepare_dataset(lgg_subset, tmp_path / "b", num_folds=2, test_fraction=0.34, seed=3, progress=False)
    assert (tmp_path / "a" / "datalist.json").read_text() == (tmp_path / "b" / "datalist.json").read_text()
    for name in ("imagesTr", "labelsTr"):
        for path in sorted((tmp_path / "a" / name).iterdir()):
            assert digest(path) == digest(tmp_path / "b" / name / path.name), path.name
    train = {Path(i["image"]).name for i in load_split(tmp_path / "a" / "datalist.json", "train", 0)}
    val = {Path(i["image"]).name for i in load_split(tmp_path / "a" / "datalist.json", "validation", 0)}
    test = {Path(i["image"]).name for i in load_split(tmp_path / "a" / "datalist.json", "test")}
    assert len(test) == 2 and train and val
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == NUM_PATIENTS
    assert {p.name for p in lgg_subset.iterdir()} == {n.removesuffix(".nii.gz") for n in train | val | test}
    assert first["split"]["level"] == "patient"


def test_reads_uncompressed_tiff_like_the_published_files(lgg_subset, tmp_path):
    patient = copy_patient(lgg_subset, tmp_path / "src")
    for path in patient.glob("*.tif"):
        tifffile.imwrite(path, tifffile.imread(path), compression=None)
    image, label = read_patient(patient)
    expected_image, expected_label = read_patient(sorted(lgg_subset.iterdir())[0])
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(label, expected_label)


def _missing_mask(p: Path) -> str:
    (p / f"{p.name}_3_mask.tif").unlink()
    return f"{p.name}_3.tif"


def _mask_size(p: Path) -> str:
    tifffile.imwrite(p / f"{p.name}_2_mask.tif", np.zeros((128, 128), np.uint8))
    return f"{p.name}_2_mask.tif"


def _mask_values(p: Path) -> str:
    mask = tifffile.imread(p / f"{p.name}_4_mask.tif")
    mask[0, 0] = 7
    tifffile.imwrite(p / f"{p.name}_4_mask.tif", mask)
    return f"{p.name}_4_mask.tif"


def _truncated(p: Path) -> str:
    path = p / f"{p.name}_5.tif"
    path.write_bytes(path.read_bytes()[:100])
    return f"{p.name}_5.tif"


def _missing_slice(p: Path) -> str:
    (p / f"{p.name}_6.tif").unlink()
    (p / f"{p.name}_6_mask.tif").unlink()
    return p.name


def _grey_image(p: Path) -> str:
    tifffile.imwrite(p / f"{p.name}_7.tif", np.zeros((256, 256), np.uint8))
    return f"{p.name}_7.tif"


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_missing_mask, "has no mask"),
        (_mask_size, "differs from its image size"),
        (_mask_values, "mask values must be 0 or 255"),
        (_truncated, "cannot read the TIFF file"),
        (_missing_slice, "not contiguous"),
        (_grey_image, "expected an RGB image"),
    ],
)
def test_bad_patient_is_named_and_skipped_or_stops_the_run(lgg_subset, tmp_path, damage, problem):
    src = tmp_path / "src"
    src.mkdir()
    bad = copy_patient(lgg_subset, src)
    good = sorted(lgg_subset.iterdir())[1]
    (src / good.name).symlink_to(good.resolve())
    (src / sorted(lgg_subset.iterdir())[2].name).symlink_to(sorted(lgg_subset.iterdir())[2].resolve())
    culprit = damage(bad)

    with pytest.raises(DataError, match=problem) as error:
        read_patient(bad)
    assert culprit in str(error.value)

    stopped = tmp_path / "stopped"
    with pytest.raises(DataError, match=problem):
        prepare_dataset(src, stopped, num_folds=1, test_fraction=0.0, on_error="stop", progress=False)
    assert [p.name for p in stopped.rglob("*")] == []  # nothing half-written left behind

    skipped = tmp_path / "skipped"
    datalist = prepare_dataset(src, skipped, num_folds=1, test_fraction=0.0, on_error="skip", progress=False)
    assert list(datalist["skipped"]) == [bad.name] and culprit in datalist["skipped"][bad.name]
    assert not (skipped / "imagesTr" / f"{bad.name}.nii.gz").exists()
    assert len(datalist["training"]) == 2 and f"imagesTr/{good.name}.nii.gz" in [
        i["image"] for i in datalist["training"]
    ]


def test_command_line_reports_errors_with_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare_lgg.py"), "--src", str(missing), "--dst", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_line_converts_with_progress_and_summary(lgg_subset, tmp_path):
    dst = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare_lgg.py"), "--src", str(lgg_subset), "--dst", str(dst)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"wrote {NUM_PATIENTS} patients" in result.stdout
    assert "cases: 100%" in result.stderr  # tqdm progress bar
    assert len(json.loads((dst / "datalist.json").read_text())["training"]) == NUM_PATIENTS - 1


def test_rerun_keeps_only_the_volumes_of_the_datalist(lgg_subset, tmp_path):
    dst = tmp_path / "out"
    prepare_dataset(lgg_subset, dst, num_folds=2, test_fraction=0.0, progress=False)
    removed, turned_bad = sorted(lgg_subset.iterdir())[:2]
    real = turned_bad.resolve()
    removed.unlink()  # this patient is gone from the source
    turned_bad.unlink()
    shutil.copytree(real, turned_bad)
    fifo = turned_bad / f"{turned_bad.name}_5.tif"
    fifo.unlink()
    os.mkfifo(fifo)  # and this one turned bad: a FIFO must be named, never opened
    datalist = prepare_dataset(lgg_subset, dst, num_folds=2, test_fraction=0.0, progress=False)
    names = {Path(item["image"]).name for item in datalist["training"]}
    assert len(names) == NUM_PATIENTS - 2
    assert {p.name for p in (dst / "imagesTr").iterdir()} == names == {p.name for p in (dst / "labelsTr").iterdir()}
    assert list(datalist["skipped"]) == [turned_bad.name] and str(fifo) in datalist["skipped"][turned_bad.name]
    assert "not a regular file (a FIFO" in datalist["skipped"][turned_bad.name]


@pytest.mark.parametrize("index", [1000000000, 99999999999999999999])
def test_a_stray_slice_number_in_a_real_patient_is_reported_briefly(lgg_subset, tmp_path, index):
    patient = copy_patient(lgg_subset, tmp_path / "src")
    num_slices = len(list(patient.glob("*_mask.tif")))
    for suffix in ("", "_mask"):
        (patient / f"{patient.name}_{index}{suffix}.tif").hardlink_to(patient / f"{patient.name}_1{suffix}.tif")
    with pytest.raises(DataError) as error:
        read_patient(patient)
    missing = index - num_slices - 1
    assert f"they run 1..{index} with {missing} missing: {num_slices + 1}, {num_slices + 2}," in str(error.value)
    assert f"(first 10 of {missing})" in str(error.value) and len(str(error.value)) < 400


def test_command_line_error_for_a_real_patient_is_one_line(lgg_subset, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bad = copy_patient(lgg_subset, src)
    for patient in sorted(lgg_subset.iterdir())[1:]:
        (src / patient.name).symlink_to(patient.resolve())
    (bad / f"{bad.name}_3.tif").unlink()
    (bad / f"{bad.name}_3.tif").mkdir()  # a folder named like a slice
    dst = tmp_path / "out"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_lgg.py"), "--src", str(src), "--dst", str(dst)]
    result = subprocess.run([*command, "--on_error", "stop"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad / f'{bad.name}_3.tif'}: not a regular file (a folder); only regular files are read as slices."
    )
    assert not dst.exists()
