"""
docs/own_data.md followed on data in another layout than LGG's: BraTS-like cases, one folder per case with the same
file names inside, two channels, labels 0, 1, 2 and 4, LPS orientation, prepared by ``scripts/prepare_folders.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO_ROOT, run_bundle
from xunet_bundle.data import DataError, write_nifti
from xunet_bundle.decathlon import prepare_case_folders

LPS = np.diag([-1.0, -1.0, 2.0, 1.0])
CHANNELS = ["['{case}/flair.nii.gz','{case}/t1c.nii.gz']", "{case}/seg.nii.gz"]
IMAGES, LABEL = ["{case}/flair.nii.gz", "{case}/t1c.nii.gz"], "{case}/seg.nii.gz"


def brats_like(root: Path, cases: int = 6, size: int = 48, depth: int = 6) -> Path:
    """Cases ``case_<i>/flair.nii.gz``, ``t1c.nii.gz``, ``seg.nii.gz`` (0 background, 1, 2, 4 tumour parts)."""
    rng = np.random.default_rng(0)
    for index in range(cases):
        folder = root / f"case_{index}"
        folder.mkdir(parents=True)
        yy, xx = np.mgrid[:size, :size]
        centre = rng.integers(14, size - 14, 2)
        radius = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
        label = np.zeros((size, size, depth), np.uint8)
        label[radius < 81] = 2
        label[radius < 36] = 1
        label[radius < 9] = 4
        brain = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2 - 2) ** 2)[..., None]
        for name, gain in (("flair", 1.0), ("t1c", 0.5)):
            image = (brain * 100.0 + (label > 0) * 80.0 * gain + rng.normal(0, 5, label.shape)) * brain
            write_nifti(image.astype(np.float32), LPS, folder / f"{name}.nii.gz")
        write_nifti(label, LPS, folder / "seg.nii.gz")
    return root


def test_prepare_folders_writes_a_datalist_with_mapped_labels(tmp_path):
    src = brats_like(tmp_path / "brats")
    dst = tmp_path / "prepared"
    datalist = prepare_case_folders(src, dst, IMAGES, LABEL, {2: 1, 4: 1}, num_folds=2, test_fraction=0.2)
    entries = datalist["training"] + datalist["testing"]
    assert len(datalist["testing"]) == 1 and len(entries) == 6 and {e["fold"] for e in datalist["training"]} == {0, 1}
    assert json.loads((dst / "datalist.json").read_text()) == datalist
    for entry in entries:
        case = Path(entry["label"]).name.split(".")[0]
        assert [Path(p).as_posix() for p in entry["image"]] == [
            f"../brats/{case}/flair.nii.gz",
            f"../brats/{case}/t1c.nii.gz",
        ]
        label = nib.load(dst / entry["label"])
        original = np.asarray(nib.load(src / case / "seg.nii.gz").dataobj)
        np.testing.assert_array_equal(np.asarray(label.dataobj), (original > 0).astype(np.uint8))
        np.testing.assert_allclose(label.affine, LPS)


@pytest.mark.parametrize(
    "damage, culprit, problem",
    [
        (
            lambda src: (src / "case_3" / "t1c.nii.gz").unlink(),
            "case_3/t1c.nii.gz",
            "case 'case_3' has no file matching",
        ),
        (lambda src: os.link(src / "case_1" / "seg.nii.gz", src / "case_1" / "seg2.nii.gz"), None, None),
        (
            lambda src: write_nifti(np.zeros((48, 40, 6), np.float32), LPS, src / "case_2" / "t1c.nii.gz"),
            "case_2/t1c.nii.gz",
            r"spatial size \(48, 40, 6\) differs from flair.nii.gz's \(48, 48, 6\)",
        ),
        (
            lambda src: write_nifti(np.zeros((48, 48, 6), np.uint8), np.eye(4), src / "case_4" / "seg.nii.gz"),
            "case_4/seg.nii.gz",
            "not on the same voxel grid",
        ),
    ],
)
def test_prepare_folders_names_the_case_that_does_not_fit(tmp_path, damage, culprit, problem):
    src = brats_like(tmp_path / "brats")
    damage(src)
    dst = tmp_path / "prepared"
    if problem is None:  # a second file matching a pattern: only when the pattern is loose
        prepare_case_folders(src, dst, IMAGES, LABEL, num_folds=2)
        with pytest.raises(DataError, match=r"case 'case_1' has 2 files matching '\{case\}/seg\*\.nii\.gz'"):
            prepare_case_folders(src, dst, IMAGES, "{case}/seg*.nii.gz", num_folds=2)
        return
    with pytest.raises(DataError, match=problem) as error:
        prepare_case_folders(src, dst, IMAGES, LABEL, num_folds=2)
    assert culprit in str(error.value)
    assert not (dst / "datalist.json").exists()


@pytest.mark.parametrize(
    "images, label, label_map, option",
    [
        ("{case}/flair.nii.gz", LABEL, None, "--images"),
        (["flair.nii.gz"], LABEL, None, "--images"),
        (["{case}/flair.nii.gz", "{case}/flair.nii.gz"], LABEL, None, "--images"),
        (IMAGES, "/abs/{case}/seg.nii.gz", None, "--label"),
        (IMAGES, "../{case}/seg.nii.gz", None, "--label"),
        (IMAGES, LABEL, {2: -1}, "--label_map"),
        (IMAGES, LABEL, "whole", "--label_map"),
    ],
)
def test_prepare_folders_refuses_bad_options(tmp_path, images, label, label_map, option):
    src = brats_like(tmp_path / "brats", cases=2)
    with pytest.raises(DataError, match=f"^{option}: "):
        prepare_case_folders(src, tmp_path / "prepared", images, label, label_map)


@pytest.mark.slow  # three bundle commands
def test_own_data_page_followed_on_brats_like_cases(tmp_path):
    """Prepare, train, evaluate and segment as docs/own_data.md says; outputs named after the cases, on their grid."""
    src = brats_like(tmp_path / "brats")
    dst = tmp_path / "prepared"
    prepare = subprocess.run(
        [sys.executable, "scripts/prepare_folders.py", "--src", str(src), "--dst", str(dst), "--images", CHANNELS[0],
         "--label", CHANNELS[1], "--label_map", "{2: 1, 4: 1}", "--num_folds", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert prepare.returncode == 0, prepare.stderr
    assert "train with --in_channels 2" in prepare.stdout
    run = tmp_path / "run"
    train = run_bundle(
        "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(dst), "--in_channels", "2",
        "--output_dir", str(run), "--ckpt_dir", str(run / "models"), "--epochs", "1", "--num_workers", "0",
        "--progress", "False", "--volumes_per_batch", "1",
    )  # fmt: skip
    assert "no left-right training flip" not in train.stdout + train.stderr  # LPS: axis 0 is left-right
    evaluate = run_bundle(
        "run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir",
        str(dst), "--in_channels", "2", "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "eval"),
        "--num_workers", "0",
    )  # fmt: skip
    assert "plain output" in evaluate.stdout + evaluate.stderr  # no LGG post-processing on a new model
    (dice,) = [line for line in (run / "eval" / "test_mean_dice_raw.csv").read_text().splitlines()[1:]]
    assert "/flair.nii.gz" in dice
    flat = tmp_path / "flat"  # inference reads one folder: the cases' files linked under their case names
    flat.mkdir()
    for case in sorted(src.iterdir()):
        for channel in ("flair", "t1c"):
            (flat / f"{case.name}_{channel}.nii.gz").symlink_to(case / f"{channel}.nii.gz")
    run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(flat), "--in_channels",
        "2", "--channel_suffixes", "['_flair','_t1c']", "--ckpt_dir", str(run / "models"), "--output_dir",
        str(run / "seg"),
    )  # fmt: skip
    outputs = sorted(p.name for p in (run / "seg").iterdir())
    assert outputs == [f"case_{index}_seg.nii.gz" for index in range(6)]
    for index in range(6):
        seg = nib.load(run / "seg" / f"case_{index}_seg.nii.gz")
        assert seg.shape == (48, 48, 6)
        np.testing.assert_allclose(seg.affine, LPS)


def test_a_background_value_is_set_to_zero_before_normalisation(tmp_path):
    """z-scored volumes (background -3.6): with --background_value the statistics are the foreground's alone."""
    from monai.bundle import ConfigParser

    image = np.full((40, 40, 2), -3.6, np.float32)
    image[10:30, 10:30] = np.linspace(-1.0, 3.0, 400 * 2, dtype=np.float32).reshape(20, 20, 2)
    write_nifti(image, LPS, tmp_path / "z.nii.gz")
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
    parser.update({"in_channels": 1, "background_value": -3.6})
    normalised = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "z.nii.gz")})["image"][0]
    foreground = normalised[10:30, 10:30]
    assert float(normalised[0, 0, 0]) == 0.0
    assert abs(float(foreground.mean())) < 1e-4 and abs(float(foreground.std()) - 1.0) < 0.01
    parser.update({"background_value": None})
    plain = parser.get_parsed_content("preprocessing", lazy=False)({"image": str(tmp_path / "z.nii.gz")})["image"][0]
    assert float(plain[0, 0, 0]) != 0.0  # the background counted as foreground: what the warning is about


def test_prepare_folders_never_writes_over_the_source_or_leaves_half_a_result(tmp_path):
    src = brats_like(tmp_path / "brats")
    (src / ".hidden" / "case_x").mkdir(parents=True)  # hidden entries are not cases
    with pytest.raises(DataError, match="lies inside --src: the mapped labels would replace the source's"):
        prepare_case_folders(src, src / "case_0", IMAGES, LABEL, {2: 1})
    with pytest.raises(DataError, match=r"^--label_map: .*0\.\.255, got 2: 300"):
        prepare_case_folders(src, tmp_path / "out", IMAGES, LABEL, {2: 300})
    dst = tmp_path / "out"
    (dst / "datalist.json").mkdir(parents=True)
    with pytest.raises(DataError, match="datalist.json: exists and is not a file"):
        prepare_case_folders(src, dst, IMAGES, LABEL, {2: 1}, num_folds=2)
    assert sorted(p.name for p in dst.iterdir()) == ["datalist.json"]  # no label written before the check
    (dst / "datalist.json").rmdir()
    prepare_case_folders(src, dst, IMAGES, LABEL, {2: 1, 4: 1}, num_folds=2)
    assert len(list((dst / "labelsTr").glob("*.nii.gz"))) == 6
    write_nifti(np.full((48, 48, 6), 0.5, np.float32), LPS, src / "case_5" / "seg.nii.gz")
    before = (dst / "datalist.json").read_bytes(), sorted((dst / "labelsTr").iterdir())
    with pytest.raises(DataError, match="case_5/seg.nii.gz: label values must be whole numbers"):
        prepare_case_folders(src, dst, IMAGES, LABEL, {4: 3}, num_folds=2)
    assert ((dst / "datalist.json").read_bytes(), sorted((dst / "labelsTr").iterdir())) == before
    assert not list(dst.glob(".staging-*"))
    write_nifti(np.zeros((48, 48, 6), np.uint8), LPS, src / "case_5" / "seg.nii.gz")
    datalist = prepare_case_folders(src, dst, IMAGES, LABEL, {1: 1}, num_folds=2)  # changes nothing: no labelsTr
    assert not (dst / "labelsTr").exists() and datalist["testing"][0]["label"].startswith("../brats/")


def test_prepare_folders_refuses_a_file_used_twice_and_names_a_missing_first_channel(tmp_path):
    src = brats_like(tmp_path / "brats")
    with pytest.raises(DataError, match="the same file as"):
        prepare_case_folders(src, tmp_path / "out", ["{case}/flair.nii.gz", "{case}/*lair.nii.gz"], LABEL)
    (src / "case_4" / "flair.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case_4/flair.nii.gz: case 'case_4' has no file matching"):
        prepare_case_folders(src, tmp_path / "out", IMAGES, LABEL)


def test_prepare_folders_into_a_linked_destination_writes_paths_that_resolve(tmp_path):
    src = brats_like(tmp_path / "brats")
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "deep" / "a" / "b")
    datalist = prepare_case_folders(src, tmp_path / "link", ["./{case}//flair.nii.gz", "{case}/t1c.nii.gz"], LABEL)
    for entry in datalist["training"] + datalist["testing"]:
        assert all((tmp_path / "link" / path).is_file() for path in [*entry["image"], entry["label"]])
