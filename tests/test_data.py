"""Splits, datalists, demo data and input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from xunet_bundle.data import (
    CaseNameFormatter,
    DataError,
    case_name,
    check_output_dirs,
    find_volumes,
    load_split,
    split_patients,
    write_nifti,
)
from xunet_bundle.demo import synthetic_patient
from xunet_bundle.transforms import CheckCased


def test_split_is_disjoint_balanced_and_independent_of_input_order():
    patients = [f"p{i:02d}" for i in range(62)]
    folds, test = split_patients(patients, num_folds=5, test_fraction=0.2, seed=0)
    assert len(test) == 12 and not set(test) & set(folds)
    assert set(test) | set(folds) == set(patients)
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1
    assert split_patients(list(reversed(patients)), 5, 0.2, 0) == (folds, test)
    assert split_patients(patients, 5, 0.2, 1) != (folds, test)


def test_split_rejects_duplicates_and_too_few_patients():
    with pytest.raises(ValueError, match="unique"):
        split_patients(["a", "a", "b"])
    with pytest.raises(ValueError, match="too few"):
        split_patients(["a", "b", "c"], num_folds=5, test_fraction=0.0)


def test_demo_data_is_deterministic_and_labelled():
    image_a, label_a = synthetic_patient(3)
    image_b, label_b = synthetic_patient(3)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
    assert image_a.shape == (64, 64, 16, 3) and image_a.dtype == np.uint8
    assert 0 < label_a.sum() < label_a.size / 4
    # the lesion is brighter than the rest of the brain in FLAIR (channel 1)
    flair = image_a[..., 1].astype(float)
    assert flair[label_a == 1].mean() > flair[(label_a == 0) & (flair > 0)].mean() + 20


def test_demo_dataset_layout(demo_dir):
    datalist = json.loads((demo_dir / "datalist.json").read_text())
    assert len(datalist["training"]) + len(datalist["testing"]) == 10
    for item in datalist["training"] + datalist["testing"]:
        assert (demo_dir / item["image"]).is_file() and (demo_dir / item["label"]).is_file()
    assert load_split(demo_dir / "datalist.json", "validation", 0)


def test_fold_all_trains_on_every_fold_and_validates_on_none(demo_dir):
    datalist = demo_dir / "datalist.json"
    everything = load_split(datalist, "train", fold="all")
    fold_0 = load_split(datalist, "train", 0) + load_split(datalist, "validation", 0)
    assert sorted(item["image"] for item in everything) == sorted(item["image"] for item in fold_0)
    assert load_split(datalist, "validation", fold="all") == []
    test = {item["image"] for item in load_split(datalist, "test", fold="all")}
    assert test and test.isdisjoint(item["image"] for item in everything)


def test_load_split_errors_name_the_datalist(tmp_path, demo_dir):
    with pytest.raises(DataError, match="datalist not found") as error:
        load_split(tmp_path / "datalist.json", "train")
    assert str(tmp_path) in str(error.value)
    (tmp_path / "datalist.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid datalist"):
        load_split(tmp_path / "datalist.json", "train")
    with pytest.raises(DataError, match="fold 7 is not in the datalist"):
        load_split(demo_dir / "datalist.json", "train", fold=7)
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], "testing": []}))
    with pytest.raises(DataError, match="subset .* is empty"):
        load_split(tmp_path / "datalist.json", "test")


def test_find_volumes_lists_nifti_only_and_rejects_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_volumes(tmp_path / "missing")
    with pytest.raises(DataError, match="no NIfTI volumes"):
        find_volumes(tmp_path)
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "b.nii.gz")
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "a.nii")
    (tmp_path / "notes.txt").write_text("x")
    assert [Path(v["image"]).name for v in find_volumes(tmp_path)] == ["a.nii", "b.nii.gz"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left by the atomic writes


def test_find_volumes_refuses_inputs_that_would_share_an_output_or_cannot_be_read(tmp_path):
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "case.nii.gz")
    write_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), tmp_path / "case.nii")
    with pytest.raises(DataError, match=r"case\.nii.*same case name as case\.nii\.gz|case\.nii\.gz.*same case name"):
        find_volumes(tmp_path)
    (tmp_path / "case.nii").unlink()
    (tmp_path / "gone.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    with pytest.raises(DataError, match=r"gone\.nii\.gz: a symbolic link whose target does not exist"):
        find_volumes(tmp_path)
    (tmp_path / "gone.nii.gz").unlink()
    (tmp_path / "folder.nii.gz").mkdir()
    with pytest.raises(DataError, match=r"folder\.nii\.gz: not a regular file"):
        find_volumes(tmp_path)


def test_find_volumes_names_cases_after_links_not_their_targets(tmp_path):
    """BraTS-like cases keep the same file name in every case folder; links named after the cases name the outputs."""
    for case in ("brats_001", "brats_002"):
        (tmp_path / case).mkdir()
        write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / case / "Flair.nii.gz")
        (tmp_path / "links").mkdir(exist_ok=True)
        (tmp_path / "links" / f"{case}.nii.gz").symlink_to(tmp_path / case / "Flair.nii.gz")
    assert [Path(v["image"]).name for v in find_volumes(tmp_path / "links")] == ["brats_001.nii.gz", "brats_002.nii.gz"]


def test_find_volumes_groups_one_file_per_channel_by_case_in_channel_order(tmp_path):
    for name in (
        "case_10_0001.nii.gz",
        "case_10_0000.nii",
        "case_2_0000.nii.gz",
        "case_2_0001.nii.gz",
        ".tmp_0000.nii.gz",
    ):
        write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / name)
    cases = find_volumes(tmp_path, ["_0000", "_0001"])
    assert [[Path(p).name for p in case["image"]] for case in cases] == [
        ["case_2_0000.nii.gz", "case_2_0001.nii.gz"],
        ["case_10_0000.nii", "case_10_0001.nii.gz"],
    ]
    # hidden files (such as an interrupted atomic write) are not cases
    assert [Path(v["image"]).name for v in find_volumes(tmp_path)][0] == "case_10_0000.nii"
    with pytest.raises(DataError, match="channel_suffixes: must be distinct"):
        find_volumes(tmp_path, ["_0000", "_0000"])
    for not_a_list in ("_0000", ["_0000", ""], ["_0000", 1]):
        with pytest.raises(DataError, match="channel_suffixes: must be a list of file-name endings in channel order"):
            find_volumes(tmp_path, not_a_list)


@pytest.mark.parametrize(
    "names, culprit, problem",
    [
        (
            ["a_0000.nii.gz"],
            "a_0001.nii.gz",
            r"channel file not found: case 'a' has no file for the channel\(s\) \['_0001'\]",
        ),
        (["a_0000.nii.gz", "a_0001.nii.gz", "a.nii.gz"], "a.nii.gz", "ends in none of the channel suffixes"),
        (
            ["a_0000.nii.gz", "a_0001.nii.gz", "a_0001.nii"],
            "a_0001.nii.gz",
            "a second file for the same channel as a_0001.nii",
        ),
        (["_0000.nii.gz"], "_0000.nii.gz", "is the channel suffix '_0000' alone: the case name before it is empty"),
    ],
)
def test_find_volumes_names_the_file_a_case_of_channel_files_lacks_or_has_too_many(tmp_path, names, culprit, problem):
    for name in names:
        write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / name)
    with pytest.raises(DataError, match=problem) as error:
        find_volumes(tmp_path, ["_0000", "_0001"])
    assert error.value.path == str(tmp_path / culprit)


def test_case_name_formatter_names_the_output_after_the_case():
    meta = {"filename_or_obj": "/in/TCGA_CS_4941_0000.nii.gz"}
    assert CaseNameFormatter(["_0000", "_0001", "_0002"])(meta, None)["subject"] == "/in/TCGA_CS_4941.nii.gz"
    assert CaseNameFormatter(None)(meta, None)["subject"] == "/in/TCGA_CS_4941_0000.nii.gz"
    uncompressed = {"filename_or_obj": "/in/case_7_t1.nii"}
    assert CaseNameFormatter(["_t1", "_flair"])(uncompressed, None)["subject"] == "/in/case_7.nii"


@pytest.mark.parametrize(
    "path, suffix, case",
    [
        ("/in/TCGA_CS_4941_0000.nii.gz", "_0000", "TCGA_CS_4941"),
        ("case_7_flair.nii", "_flair", "case_7"),
        ("/in/other_0001.nii.gz", "_0000", "other_0001"),  # not a file of that channel: only the extension goes
    ],
)
def test_case_name_strips_the_channel_suffix_and_extension(path, suffix, case):
    assert case_name(path, suffix) == case


def _case(image_shape=(3, 8, 8, 4), label_shape=(1, 8, 8, 4), label_value=1, image_value=0.0):
    image = MetaTensor(torch.full(image_shape, image_value), meta={"filename_or_obj": "/data/img.nii.gz"})
    label = MetaTensor(torch.zeros(label_shape), meta={"filename_or_obj": "/data/lbl.nii.gz"})
    label.view(-1)[0] = label_value
    return {"image": image, "label": label}


@pytest.mark.parametrize(
    "case, path, problem",
    [
        (_case(image_shape=(1, 8, 8, 4)), "/data/img.nii.gz", "expected 3 image channels, got 1 .*--in_channels 1"),
        (_case(image_shape=(3, 8, 8)), "/data/img.nii.gz", "expected a 3D volume"),
        (_case(image_value=float("nan")), "/data/img.nii.gz", "NaN or infinite"),
        (_case(label_shape=(1, 8, 8, 5)), "/data/lbl.nii.gz", "differs from image size"),
        (_case(label_value=2), "/data/lbl.nii.gz", r"label values must be integers in 0..1, found \[2.0\]"),
        (_case(label_value=0.5), "/data/lbl.nii.gz", "label values must be integers"),
    ],
)
def test_check_case_names_the_file_and_the_problem(case, path, problem):
    with pytest.raises(DataError, match=problem) as error:
        CheckCased()(case)
    assert error.value.path == path


def test_check_case_accepts_valid_cases_and_unlabelled_images():
    case = _case()
    assert CheckCased()(case)["image"] is case["image"]
    assert CheckCased(label_key=None)({"image": case["image"]})["image"] is case["image"]


def test_segmentation_writer_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    import nibabel as nib

    from xunet_bundle.data import AtomicNibabelWriter

    def writer() -> AtomicNibabelWriter:  # MONAI's writers hold one image each
        w = AtomicNibabelWriter()
        w.set_data_array(torch.ones(1, 4, 4, 4), channel_dim=0)
        w.set_metadata({"affine": np.eye(4)})
        return w

    writer().write(tmp_path / "done_seg.nii.gz")
    assert nib.load(tmp_path / "done_seg.nii.gz").shape == (4, 4, 4)
    assert (tmp_path / "done_seg.nii.gz").stat().st_mode & 0o044 == 0o044

    def interrupted_save(image, filename):
        Path(filename).write_bytes(b"truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        writer().write(tmp_path / "cut_seg.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done_seg.nii.gz"]


def write_datalist(folder: Path, content: object) -> Path:
    path = folder / "datalist.json"
    path.write_text(json.dumps(content))
    return path


GOOD_ENTRY = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "fold": 0}


@pytest.mark.parametrize(
    "content, problem",
    [
        ([GOOD_ENTRY], "expected a JSON object"),
        ({"testing": []}, "expected a JSON object"),
        ({"training": {"a": GOOD_ENTRY}}, '"training" must be a list of cases, got dict'),
        ({"training": [GOOD_ENTRY], "testing": "b"}, '"testing" must be a list'),
        ({"training": ["imagesTr/a.nii.gz"]}, '"training" entry 0 is not an object'),
        ({"training": [{**GOOD_ENTRY, "image": None}]}, 'entry 0 has no "image"'),
        ({"training": [{**GOOD_ENTRY, "image": []}]}, 'entry 0 has no "image"'),
        ({"training": [{**GOOD_ENTRY, "image": ["x_0000.nii.gz", 3]}]}, 'entry 0 has no "image"'),
        ({"training": [{"image": "a.nii.gz", "fold": 0}]}, 'entry 0 has no "label"'),
        ({"training": [{**GOOD_ENTRY, "fold": "0"}]}, 'needs an integer "fold"'),
        ({"training": [{**GOOD_ENTRY, "fold": -1}]}, 'needs an integer "fold"'),
        ({"training": [{**GOOD_ENTRY, "fold": True}]}, 'needs an integer "fold"'),
        ({"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}, 'needs an integer "fold"'),
        ({"training": [GOOD_ENTRY, {**GOOD_ENTRY, "fold": 1}]}, "imagesTr/a.nii.gz is listed twice"),
        ({"training": [GOOD_ENTRY], "testing": [{"image": "imagesTs/a.nii"}]}, "case 'a' is listed twice"),
        ({"training": [GOOD_ENTRY], "testing": [{"image": "b.nii.gz", "label": None}]}, '"testing" entry 0 has no'),
    ],
)
def test_read_datalist_names_the_datalist_and_the_entry(tmp_path, content, problem):
    from xunet_bundle.data import read_datalist

    path = write_datalist(tmp_path, content)
    with pytest.raises(DataError, match=problem) as error:
        read_datalist(path)
    assert error.value.path == str(path)


def test_read_datalist_accepts_channel_files_and_unlabelled_test_cases(tmp_path):
    from xunet_bundle.data import read_datalist

    channels = {"image": ["imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz"], "label": "labelsTr/a.nii.gz", "fold": 1}
    path = write_datalist(tmp_path, {"training": [channels], "testing": [{"image": "imagesTs/b.nii.gz"}]})
    training, testing = read_datalist(path)
    assert training == [channels] and testing == [{"image": "imagesTs/b.nii.gz"}]
    with pytest.raises(DataError, match="'--eval_subset'|must be 'train'"):
        load_split(path, "everything")


def test_remove_leftovers_removes_only_what_dead_processes_left(tmp_path):
    import os
    import subprocess
    import sys

    from xunet_bundle.data import remove_leftovers

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = tmp_path / f".a_seg.nii.gz.partial-{ended.pid}-xyz.nii.gz"
    alive = tmp_path / f".b_seg.nii.gz.partial-{os.getpid()}-xyz.nii.gz"
    ignite = tmp_path / "tmpab12cd34"
    kept = [tmp_path / "a_seg.nii.gz", tmp_path / ".hidden_notes", tmp_path / "tmp_notes.txt"]
    for path in [dead, alive, ignite, *kept]:
        path.write_bytes(b"x")
    assert remove_leftovers(tmp_path) == [dead]
    assert remove_leftovers(tmp_path, checkpoints=True) == [ignite]
    assert sorted(tmp_path.iterdir()) == sorted([alive, *kept])


def test_check_output_names_refuses_outputs_that_replace_or_join_inputs(tmp_path):
    from xunet_bundle.data import check_output_names

    cases = [{"image": str(tmp_path / "in" / "a.nii.gz")}, {"image": str(tmp_path / "in" / "a_seg.nii.gz")}]
    check_output_names(cases, tmp_path / "out")
    with pytest.raises(DataError, match="is the input folder"):
        check_output_names(cases, tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.nii.gz").symlink_to(tmp_path / "out" / "b_seg.nii.gz")
    with pytest.raises(DataError, match="would replace this input file"):
        check_output_names([{"image": str(tmp_path / "in" / "b.nii.gz")}], tmp_path / "out", ["seg"])
    channel_cases = [{"image": [str(tmp_path / "in" / "a_0000.nii.gz"), str(tmp_path / "in" / "a_0001.nii.gz")]}]
    check_output_names(channel_cases, tmp_path / "out", ["seg", "prob"], ["_0000", "_0001"])


def test_a_refused_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os

    from xunet_bundle.data import OutputWriteError, atomic_path

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputWriteError) as error:
        with atomic_path(tmp_path / "case_seg.nii.gz") as tmp:
            tmp.write_bytes(b"data")
    assert isinstance(error.value.error, DataError)
    assert str(error.value.error).startswith(f"{tmp_path / 'case_seg.nii.gz'}: cannot write the file (No space left")
    assert list(tmp_path.iterdir()) == []


def test_two_studies_of_one_patient_share_a_side_of_the_split():
    from xunet_bundle.lgg import patient_id

    names = [f"TCGA_XX_{i:04d}_2000010{i % 9 + 1}" for i in range(20)]
    studies = names + ["TCGA_XX_0003_20110101", "TCGA_XX_0007_20120101"]
    assert split_patients(names, 4, 0.25, 1) == split_patients(names, 4, 0.25, 1, group_of=patient_id)
    for seed in range(10):
        folds, test = split_patients(studies, 4, 0.25, seed, group_of=patient_id)
        assert set(folds) | set(test) == set(studies) and not set(folds) & set(test)
        for first, second in (("TCGA_XX_0003_20000104", "TCGA_XX_0003_20110101"),
                              ("TCGA_XX_0007_20000108", "TCGA_XX_0007_20120101")):  # fmt: skip
            assert (first in test) == (second in test) and folds.get(first) == folds.get(second)
    assert patient_id("not_a_tcga_name") == "not_a_tcga_name"


def test_a_data_error_stays_one_line_whatever_the_file_name():
    error = DataError("/data/bad\nerror: fake.nii.gz", "cannot read the image\r\n(x).")
    assert "\n" not in str(error) and "\r" not in str(error)
    assert str(error) == "/data/bad\\nerror: fake.nii.gz: cannot read the image\\r\\n(x)."
    assert str(DataError("/data/ünïcode case.nii.gz", "ok.")) == "/data/ünïcode case.nii.gz: ok."


def test_a_background_that_is_not_zero_is_warned_about(caplog):
    from xunet_bundle.transforms import _warn_if_background_not_zero

    z_scored = torch.randn(2, 16, 16, 4)
    z_scored[1, :12] = -3.6  # three quarters of the second channel: background, z-scored
    _warn_if_background_not_zero(Path("/in/brats.nii.gz"), z_scored)
    assert "/in/brats.nii.gz: 75% of channel 1 holds the value -3.6" in caplog.text
    assert "pass --background_value -3.6" in caplog.text
    caplog.clear()
    zero_background = torch.randn(2, 16, 16, 4)
    zero_background[:, :12] = 0
    _warn_if_background_not_zero(Path("/in/lgg.nii.gz"), zero_background)
    _warn_if_background_not_zero(Path("/in/noise.nii.gz"), torch.randn(2, 16, 16, 4))
    assert caplog.text == ""


def test_the_training_flip_follows_the_volumes_left_right_axis(tmp_path, caplog):
    from xunet_bundle.data import LGG_AFFINE, write_nifti
    from xunet_bundle.transforms import left_right_axes

    def case(name: str, affine) -> dict:
        write_nifti(np.zeros((4, 4, 3), dtype=np.float32), np.asarray(affine, dtype=float), tmp_path / name)
        return {"image": str(tmp_path / name)}

    lgg, ras = case("lgg.nii.gz", LGG_AFFINE), case("ras.nii.gz", np.eye(4))
    lps = case("lps.nii.gz", np.diag([-1.0, -1.0, 1.0, 1.0]))
    sagittal = case("sagittal.nii.gz", [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # axis 2 left-right
    assert left_right_axes([lgg, lgg]) == [1]
    assert left_right_axes([ras, lps]) == [0]
    assert left_right_axes([{"image": [ras["image"], lps["image"]]}]) == [0]  # channel files: the first one
    assert caplog.text == ""
    assert left_right_axes([sagittal]) == [] and "left-right axis is [2]" in caplog.text
    assert left_right_axes([sagittal], slice_axis=None) == [2]
    assert left_right_axes([lgg, ras]) == [] and "left-right axis is [0, 1]" in caplog.text


def test_cases_in_folders_of_their_own_are_named_after_their_folders(tmp_path):
    from xunet_bundle.data import read_datalist

    def entry(case: str, fold: int | None = None) -> dict:
        item = {"image": [f"{case}/flair.nii.gz", f"{case}/t1c.nii.gz"], "label": f"{case}/seg.nii.gz"}
        return item if fold is None else {**item, "fold": fold}

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [entry("c1", 0), entry("c2", 1)], "testing": [entry("c3")]}))
    training, testing = read_datalist(path)
    assert len(training) == 2 and len(testing) == 1
    path.write_text(json.dumps({"training": [entry("c1", 0), entry("sub/c1", 1)]}))
    with pytest.raises(DataError, match=r"case 'c1' is listed twice \(\"training\" entry 0 and \"training\" entry 1\)"):
        read_datalist(path)


def test_a_run_saving_over_the_shipped_weights_is_warned(tmp_path, caplog):
    shipped = Path(__file__).resolve().parents[1] / "models" / "model.pt"
    if not shipped.is_file():
        pytest.skip("models/model.pt (the shipped weights) is not in this checkout")
    ckpt_dir, other_dir = tmp_path / "models", tmp_path / "other"
    ckpt_dir.mkdir()
    other_dir.mkdir()
    (ckpt_dir / "model.pt").write_bytes(shipped.read_bytes())
    (other_dir / "model.pt").write_bytes(shipped.read_bytes()[:-1])  # not the shipped weights
    with caplog.at_level("WARNING", logger="xunet_bundle"):
        check_output_dirs(tmp_path / "out", checkpoints=[other_dir])
    assert "shipped" not in caplog.text
    with caplog.at_level("WARNING", logger="xunet_bundle"):
        check_output_dirs(tmp_path / "out", checkpoints=[ckpt_dir])
    assert f"{ckpt_dir / 'model.pt'} holds the shipped LGG weights" in caplog.text and "--ckpt_dir" in caplog.text
