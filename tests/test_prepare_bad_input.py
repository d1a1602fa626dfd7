"""
Hostile and careless input to the data converters (``scripts/prepare_lgg.py``, ``scripts/prepare_decathlon.py``,
``scripts/stack_channels.py``): every error is one final line ``error: <file or --option>: <problem>`` with no
traceback and a non-zero exit status, nothing is skipped silently, nothing half-written is left looking valid, and no
file name, type or size makes a run unbounded.

Each class of input is covered broadly through the converters' functions (the scripts call them unchanged) and through
the scripts themselves, run as the user runs them, for what only the command line shows (the error line, the exit
status, python-fire's parsing, a hang on a FIFO). Synthetic data only; ``tests/test_prepare_lgg.py`` repeats the main
cases on real Kaggle LGG patients.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from conftest import REPO_ROOT
from xunet_bundle.data import DataError, write_nifti
from xunet_bundle.decathlon import prepare_datalist
from xunet_bundle.demo import synthetic_patient
from xunet_bundle.lgg import list_slices, prepare_dataset, read_patient

SCRIPTS = REPO_ROOT / "scripts"
_spec = importlib.util.spec_from_file_location("stack_channels", SCRIPTS / "stack_channels.py")
stack_channels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stack_channels)


def run(script: str, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``scripts/<script> ARGS``; a run that hangs (on a FIFO it opened) fails the test through the timeout."""
    command = [sys.executable, str(SCRIPTS / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_error(result: subprocess.CompletedProcess, where: str | Path, problem: str) -> str:
    """The run failed with one final line ``error: <where>: <problem>`` and no traceback; returns that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {where}: "), last_line
    assert re.search(problem, last_line), last_line
    assert len(last_line) < 2100, len(last_line)
    return last_line


@pytest.fixture
def no_hang():
    """Fail an in-process test that blocks for a minute (opening a FIFO would block forever)."""

    def fail(signum, frame):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def write_kaggle_patient(folder: Path, seed: int, size: int = 32, num_slices: int = 4) -> Path:
    """A synthetic patient in the Kaggle LGG layout: <patient>_<n>.tif (RGB) and <patient>_<n>_mask.tif (0/255)."""
    image, label = synthetic_patient(seed, size=size, num_slices=num_slices)
    folder.mkdir(parents=True)
    for k in range(num_slices):
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}.tif", image[:, :, k])
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}_mask.tif", label[:, :, k] * 255)
    return folder


@pytest.fixture
def kaggle(tmp_path) -> Path:
    """A kaggle_3m-like folder of 4 synthetic patients, with the dataset's own files beside them."""
    src = tmp_path / "kaggle_3m"
    for i in range(4):
        write_kaggle_patient(src / f"TCGA_XX_{i:04d}_20000101", seed=i)
    (src / "data.csv").write_text("Patient,death01\n")
    return src


def patients(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_dir() and not p.is_symlink())


def make_socket(path: Path) -> None:
    """A Unix socket file at ``path`` (bound from its folder: socket paths are limited to about 100 bytes)."""
    code = f"import socket; socket.socket(socket.AF_UNIX).bind({path.name!r})"
    subprocess.run([sys.executable, "-c", code], cwd=path.parent, check=True)
    assert path.is_socket()


def outputs_match_datalist(dst: Path) -> dict:
    """``imagesTr/`` and ``labelsTr/`` hold exactly the volumes of the datalist; returns the datalist."""
    datalist = json.loads((dst / "datalist.json").read_text())
    listed = {Path(item["image"]).name for item in datalist["training"] + datalist["testing"]}
    assert {p.name for p in (dst / "imagesTr").iterdir()} == listed
    assert {p.name for p in (dst / "labelsTr").iterdir()} == listed
    return datalist


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. the output matches the datalist exactly ---------------------------------------------------------------


def test_rerun_leaves_no_volume_of_a_patient_gone_or_turned_bad(tmp_path):
    src = tmp_path / "kaggle_3m"
    for i in range(7):
        write_kaggle_patient(src / f"TCGA_XX_{i:04d}_20000101", seed=i)
    dst = tmp_path / "out"
    assert run("prepare_lgg.py", "--src", str(src), "--dst", str(dst), "--num_folds", "2").returncode == 0
    assert len(outputs_match_datalist(dst)["training"]) == 6
    (dst / "notes.txt").write_text("the user's own notes")
    (dst / "imagesTr" / "stray.nii.gz").write_bytes(b"not the converter's")
    removed, truncated, fifo, replaced = [p.name for p in patients(src)[:4]]
    for path in (src / removed).iterdir():
        path.unlink()
    (src / removed).rmdir()
    (src / truncated / f"{truncated}_2.tif").write_bytes((src / truncated / f"{truncated}_2.tif").read_bytes()[:100])
    (src / fifo / f"{fifo}_3.tif").unlink()
    os.mkfifo(src / fifo / f"{fifo}_3.tif")
    for path in (src / replaced).iterdir():
        path.unlink()
    (src / replaced).rmdir()
    (src / replaced).write_text("not a patient any more")

    result = run("prepare_lgg.py", "--src", str(src), "--dst", str(dst), "--num_folds", "2")
    assert result.returncode == 0, result.stderr
    datalist = outputs_match_datalist(dst)  # the stray file and the volumes of the 4 patients are gone
    assert len(datalist["training"]) + len(datalist["testing"]) == 3
    for name in (removed, truncated, fifo, replaced):
        assert not (dst / "imagesTr" / f"{name}.nii.gz").exists() and not (dst / "labelsTr" / f"{name}.nii.gz").exists()
    assert sorted(datalist["skipped"]) == [truncated, fifo]  # the bad ones are recorded and warned about
    assert f"WARNING skipping {truncated}: " in result.stderr and f"WARNING skipping {fifo}: " in result.stderr
    assert f"ignored 1 files beside the patient folders: {replaced}" in result.stderr  # said, not silent
    assert (dst / "notes.txt").read_text() == "the user's own notes"
    assert sorted(p.name for p in dst.iterdir()) == ["datalist.json", "imagesTr", "labelsTr", "notes.txt"]


def test_failed_rerun_leaves_the_previous_output_as_it_was(kaggle, tmp_path):
    dst = tmp_path / "out"
    assert run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(dst), "--num_folds", "2").returncode == 0
    before = listing(dst)
    bad = patients(kaggle)[-1] / f"{patients(kaggle)[-1].name}_2_mask.tif"
    bad.write_bytes(b"II*\x00garbage")
    result = run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(dst), "--num_folds", "2", "--on_error", "stop")
    assert_error(result, bad, "cannot read the TIFF file")
    assert listing(dst) == before
    # too few patients once the bad one is skipped: found only after converting, and still nothing changes
    with pytest.raises(DataError, match="^--num_folds: 3 usable patients are too few for 4 folds"):
        prepare_dataset(kaggle, dst, num_folds=4, test_fraction=0.0, progress=False)
    assert listing(dst) == before


# --- 2. only regular files are read; other entries are named ------------------------------------------------


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere.tif")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.tif").write_bytes(b"")


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # read to its end, it never ends


def _link_loop(path: Path) -> None:
    path.symlink_to(path.name)


ENTRY_KINDS = [
    (_dangling, "a symbolic link whose target does not exist"),
    (_fifo, "a FIFO"),
    (make_socket, "a socket"),
    (_folder, "a folder"),
    (_device, "a device"),
    (_link_loop, "unreadable"),
]


@pytest.mark.parametrize("make, kind", ENTRY_KINDS, ids=[c[0].__name__.strip("_") for c in ENTRY_KINDS])
@pytest.mark.parametrize("name", ["{p}_3.tif", "{p}_2_mask.tif"])
def test_a_slice_that_is_not_a_regular_file_is_named_and_never_opened(kaggle, no_hang, make, kind, name):
    patient = patients(kaggle)[0]
    entry = patient / name.format(p=patient.name)
    entry.unlink()
    make(entry)
    with pytest.raises(DataError, match=f"not a regular file \\({kind}.*only regular files are read") as error:
        list_slices(patient)
    assert error.value.path == str(entry)
    with pytest.raises(DataError, match=re.escape(str(entry))):
        read_patient(patient)


def test_entries_that_are_not_regular_files_skip_their_patient_with_a_warning_naming_them(tmp_path):
    src = tmp_path / "kaggle_3m"
    entries = {}
    for i, (make, kind) in enumerate(ENTRY_KINDS):  # one bad slice in each of 6 patients
        patient = write_kaggle_patient(src / f"P{i}", seed=i)
        entry = patient / f"P{i}_{1 + i % 4}{'_mask' if i % 2 else ''}.tif"
        entry.unlink()
        make(entry)
        entries[patient.name] = (entry, kind)
    for i, (make, kind) in enumerate(ENTRY_KINDS[:3]):  # and 3 patient entries that are no folders
        make(src / f"Q{i}")
        entries[f"Q{i}"] = (src / f"Q{i}", kind)
    for i in range(2):
        write_kaggle_patient(src / f"good{i}", seed=10 + i)
    dst = tmp_path / "out"
    result = run("prepare_lgg.py", "--src", str(src), "--dst", str(dst), "--num_folds", "1")
    assert result.returncode == 0, result.stderr
    datalist = outputs_match_datalist(dst)
    assert len(datalist["training"]) == 2 and sorted(datalist["skipped"]) == sorted(entries)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING skipping")]
    assert len(warnings) == len(entries)
    for name, (entry, kind) in entries.items():
        assert f"WARNING skipping {name}: {entry}: not a " in "\n".join(warnings)
        assert str(entry) in datalist["skipped"][name] and kind in datalist["skipped"][name]

    result = run("prepare_lgg.py", "--src", str(src), "--dst", str(tmp_path / "stopped"), "--on_error", "stop")
    assert_error(result, entries["P0"][0], "not a regular file .*symbolic link whose target does not exist")
    assert not (tmp_path / "stopped").exists()  # found while listing, before anything is read or written


def test_a_fifo_slice_with_on_error_stop_is_one_error_line_not_a_hang(kaggle, tmp_path):
    patient = patients(kaggle)[2]
    fifo = patient / f"{patient.name}_4_mask.tif"
    fifo.unlink()
    os.mkfifo(fifo)
    result = run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(tmp_path / "out"), "--on_error", "stop")
    assert_error(result, fifo, r"not a regular file \(a FIFO \(named pipe\)\); only regular files are read as slices")
    assert not (tmp_path / "out").exists()


def test_entries_not_named_as_slices_are_named_in_a_warning(kaggle, tmp_path, caplog):
    patient = patients(kaggle)[0]
    (patient / "notes.txt").write_text("")
    (patient / f"{patient.name}_2 (copy).tif").write_bytes(b"")
    (patient / f"{patient.name}_3.tif\n").write_bytes(b"")  # a newline in a name ends no slice name
    os.mkfifo(patient / "pipe")  # listed, never opened
    (patient / ".DS_Store").write_bytes(b"")  # hidden entries are ignored
    for i in range(20):
        (patient / f"extra_{i:02d}.txt").write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert len(list_slices(patient)) == 4
    (message,) = [r.getMessage() for r in caplog.records]
    assert "ignored 24 entries not named <patient>_<n>.tif" in message and "\n" not in message
    assert "(copy).tif" in message and "_3.tif\\n" in message and "(first 10 of 24)" in message
    assert ".DS_Store" not in message and "notes.txt" not in message  # past the first 10 (sorted)


def test_slices_of_two_patients_in_one_folder_are_refused(kaggle):
    first, second = patients(kaggle)[:2]
    stray = first / f"{second.name}_9.tif"
    (second / f"{second.name}_1.tif").rename(stray)
    with pytest.raises(DataError, match=f"belongs to patient '{second.name}', the other slices") as error:
        list_slices(first)
    assert error.value.path == str(stray)


def test_a_name_with_a_newline_stays_on_one_error_line(tmp_path):
    src = tmp_path / "src"
    patient = write_kaggle_patient(src / "bad\npatient", seed=0)
    (patient / "bad\npatient_2.tif").unlink()
    os.mkfifo(patient / "bad\npatient_2.tif")
    result = run("prepare_lgg.py", "--src", str(src), "--dst", str(tmp_path / "out"), "--on_error", "stop")
    assert_error(result, str(src / "bad\\npatient" / "bad\\npatient_2.tif"), "FIFO")
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1


# --- 3. resource bounds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["1000000000", "99999999999999999999", "7"])
def test_a_stray_slice_number_gives_a_short_message_at_once(kaggle, index):
    patient = patients(kaggle)[0]
    for suffix in ("", "_mask"):
        (patient / f"{patient.name}_{index}{suffix}.tif").hardlink_to(patient / f"{patient.name}_1{suffix}.tif")
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        list_slices(patient)
    assert time.monotonic() - start < 5
    missing = int(index) - 5
    shown = ", ".join(str(n) for n in range(5, min(15, int(index))))
    expected = f"slice numbers are not contiguous from 1: they run 1..{index} with {missing} missing: {shown}"
    assert str(error.value) == f"{patient}: {expected}" + (f", ... (first 10 of {missing})." if missing > 10 else ".")


def test_a_stray_slice_number_keeps_the_skip_record_short(kaggle, tmp_path):
    patient = patients(kaggle)[0]
    for suffix in ("", "_mask"):
        (patient / f"{patient.name}_1000000000{suffix}.tif").hardlink_to(patient / f"{patient.name}_1{suffix}.tif")
    result = run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(tmp_path / "out"), "--num_folds", "2")
    assert result.returncode == 0, result.stderr
    record = outputs_match_datalist(tmp_path / "out")["skipped"][patient.name]
    assert "with 999999995 missing: 5, 6," in record and len(record) < 400
    assert max(len(line) for line in result.stderr.splitlines()) < 2100


def test_a_lone_stray_image_and_slice_zero_are_named(kaggle):
    patient = patients(kaggle)[0]
    stray = patient / f"{patient.name}_1000000000.tif"
    stray.hardlink_to(patient / f"{patient.name}_1.tif")
    with pytest.raises(DataError, match=f"^{re.escape(str(stray))}: slice 1000000000 has no mask"):
        list_slices(patient)
    stray.unlink()
    for suffix in ("", "_mask"):
        (patient / f"{patient.name}_0{suffix}.tif").hardlink_to(patient / f"{patient.name}_1{suffix}.tif")
    with pytest.raises(DataError, match="_0.tif: slice numbers start at 1, this is slice 0"):
        list_slices(patient)


def _declare_size(path: Path, rows: int, cols: int) -> None:
    """Make the header of a small TIFF claim ``rows x cols`` pixels (its data stays small)."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(cols)
        tif.pages[0].tags["ImageLength"].overwrite(rows)


def _huge_later_slice(patient: Path) -> tuple[Path, str]:
    path = patient / f"{patient.name}_2.tif"
    _declare_size(path, 100000, 100000)
    return path, r"size \(100000, 100000, 3\) differs from slice 1's \(32, 32, 3\)"


def _huge_first_slice(patient: Path) -> tuple[Path, str]:
    path = patient / f"{patient.name}_1.tif"
    _declare_size(path, 60000, 60000)
    return path, "slices of 60000x60000 pixels make a volume of 53.6 GiB for 4 slices; the limits are"


def _huge_mask(patient: Path) -> tuple[Path, str]:
    path = patient / f"{patient.name}_3_mask.tif"
    _declare_size(path, 100000, 100000)
    return path, r"mask size \(100000, 100000\) differs from its image size \(32, 32\)"


def _many_pages(patient: Path) -> tuple[Path, str]:
    path = patient / f"{patient.name}_2.tif"
    tifffile.imwrite(path, np.zeros((500, 32, 32, 3), np.uint8), compression="zlib")
    return path, r"expected an RGB image \(rows, cols, 3\), got shape \(500, 32, 32, 3\)"


def _four_dimensional_mask(patient: Path) -> tuple[Path, str]:
    path = patient / f"{patient.name}_1_mask.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 9), np.uint8), photometric="minisblack", planarconfig="contig")
    return path, r"expected a grey mask \(rows, cols\), got shape \(32, 32, 9\)"


@pytest.mark.parametrize("damage", [_huge_later_slice, _huge_first_slice, _huge_mask, _many_pages,
                                    _four_dimensional_mask])  # fmt: skip
def test_a_tiff_declaring_a_huge_or_odd_image_is_refused_before_its_pixels_are_read(kaggle, damage):
    path, problem = damage(patients(kaggle)[0])
    start = time.monotonic()
    with pytest.raises(DataError, match=problem) as error:
        read_patient(patients(kaggle)[0])
    assert error.value.path == str(path) and time.monotonic() - start < 5


def test_a_huge_tiff_through_the_command_line(kaggle, tmp_path):
    path, problem = _huge_first_slice(patients(kaggle)[1])
    dst = tmp_path / "out"
    result = run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(dst), "--num_folds", "2", "--on_error", "stop")
    assert_error(result, path, problem)
    assert listing(dst) == {}  # the destination was created empty, and left so


# --- 4. options are checked before any patient is converted ------------------------------------------------------

OPTION_VALUES = [
    ({"num_folds": 0}, "--num_folds", "must be at least 1, got 0"),
    ({"num_folds": -1}, "--num_folds", "must be at least 1, got -1"),
    ({"num_folds": 2.5}, "--num_folds", "must be a whole number, got 2.5"),
    ({"num_folds": True}, "--num_folds", "must be a whole number, got True"),
    ({"num_folds": "many"}, "--num_folds", "must be a whole number, got 'many'"),
    ({"test_fraction": 1.0}, "--test_fraction", r"must be a number in \[0, 1\), got 1.0"),
    ({"test_fraction": -0.5}, "--test_fraction", r"must be a number in \[0, 1\), got -0.5"),
    ({"test_fraction": float("nan")}, "--test_fraction", r"must be a number in \[0, 1\), got nan"),
    ({"test_fraction": "nan"}, "--test_fraction", r"must be a number in \[0, 1\), got 'nan'"),
    ({"test_fraction": float("inf")}, "--test_fraction", r"must be a number in \[0, 1\), got inf"),
    ({"on_error": "maybe"}, "--on_error", "must be 'skip' or 'stop', got 'maybe'"),
    ({"seed": "x"}, "--seed", "must be a whole number, got 'x'"),
    ({"seed": 1.5}, "--seed", "must be a whole number, got 1.5"),
    ({"num_folds": 5}, "--num_folds", "4 usable patients are too few for 5 folds and 1 test patients"),
    ({"num_folds": 2, "test_fraction": 0.9}, "--num_folds", "4 usable patients are too few for 2 folds and 4 test"),
]


@pytest.mark.parametrize("kwargs, option, problem", OPTION_VALUES, ids=[str(c[0]) for c in OPTION_VALUES])
def test_a_bad_option_value_stops_before_anything_is_read_or_written(kaggle, tmp_path, kwargs, option, problem):
    patient = patients(kaggle)[0]
    (patient / f"{patient.name}_1.tif").write_bytes(b"unreadable")  # reading it would be a different error
    kwargs = {"on_error": "stop", **kwargs}
    with pytest.raises(DataError, match=f"^{option}: {problem}"):
        prepare_dataset(kaggle, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


CLI_OPTIONS = [
    (["--num_folds", "2.5"], "--num_folds", "must be a whole number, got 2.5"),
    (["--test_fraction", "nan"], "--test_fraction", r"must be a number in \[0, 1\), got 'nan'"),
    (["--test_fraction", "1e400"], "--test_fraction", "got inf"),
    (["--seed", "x"], "--seed", "must be a whole number, got 'x'"),
    (["--num_folds", "5"], "--num_folds", "4 usable patients are too few for 5 folds and 1 test patients"),
    (["--on_eror", "stop"], "--on_eror", "unknown option; the options are --src, --dst"),
    (["--seed", "1", "--seed", "2"], "--seed", "given twice"),
    (["1", "0.2", "0", "skip", "surplus"], "surplus", "unexpected argument"),
]


@pytest.mark.parametrize("args, option, problem", CLI_OPTIONS, ids=[" ".join(c[0]) for c in CLI_OPTIONS])
def test_a_bad_option_on_the_command_line_is_one_line_naming_it(kaggle, tmp_path, args, option, problem):
    dst = tmp_path / "out"
    result = run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(dst), *args)
    assert_error(result, option, problem)
    assert not dst.exists()
    assert "cases:" not in result.stderr  # no progress bar: no patient was converted


@pytest.mark.parametrize(
    "args, option, problem",
    [
        (["--src", "x"], "--dst", "is required"),
        (["--dst", "x", "--num_folds", "0"], "--src", "is required"),
        (["--src", "x", "--dst", ""], "--dst", "needs a folder path, got ''"),
        (["--src", "x", "--dst"], "--dst", "needs a folder path, got True"),
    ],
)
def test_a_missing_or_empty_folder_option_is_named(tmp_path, args, option, problem):
    assert_error(run("prepare_lgg.py", *args, cwd=tmp_path), option, problem)
    assert list(tmp_path.iterdir()) == []


def test_source_and_destination_must_be_apart(kaggle, tmp_path):
    before = listing(kaggle)
    for dst in (kaggle, kaggle / "prepared", kaggle / patients(kaggle)[0].name):
        with pytest.raises(DataError, match="^--dst: .* is --src or lies inside it"):
            prepare_dataset(kaggle, dst, num_folds=2, progress=False)
    link = tmp_path / "link"
    link.symlink_to(kaggle)
    with pytest.raises(DataError, match="^--dst: .* is --src or lies inside it"):
        prepare_dataset(link, kaggle / "prepared", num_folds=2, progress=False)
    (kaggle.parent / "imagesTr").symlink_to(kaggle)
    with pytest.raises(DataError, match="^--src: .* lies inside --dst's imagesTr, which this run replaces"):
        prepare_dataset(kaggle, kaggle.parent, num_folds=2, progress=False)
    assert listing(kaggle) == before
    (kaggle.parent / "imagesTr").unlink()
    prepare_dataset(kaggle, kaggle.parent, num_folds=2, progress=False)  # the source beside imagesTr/ is fine
    assert listing(kaggle) == before
    result = run("prepare_lgg.py", "--src", str(kaggle), "--dst", str(kaggle / "prepared"))
    assert_error(result, "--dst", "is --src or lies inside it")
    assert listing(kaggle) == before


def test_no_patient_folder_hints_at_a_single_patient_folder(kaggle, tmp_path):
    patient = patients(kaggle)[0]
    with pytest.raises(DataError, match="no patient folders found .* give the folder that holds the patient folders"):
        prepare_dataset(patient, tmp_path / "out", progress=False)


# --- 5. leftovers of killed runs, and runs at the same time ----------------------------------------------------------


def test_a_killed_run_is_cleaned_up_by_the_next_and_a_live_run_is_never_disturbed(tmp_path):
    real = write_kaggle_patient(tmp_path / "real" / "P", seed=0, size=96, num_slices=12)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):  # many patients (links to one): the run is still converting when it is stopped
        (src / f"patient_{i:03d}").symlink_to(real)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("kept")
    command = [sys.executable, str(SCRIPTS / "prepare_lgg.py"), "--src", str(src), "--dst", str(dst)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(dst.glob(".staging-*/imagesTr/patient_*.nii.gz")):
            assert first.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # alive, holding its lock, mid-conversion
        staging = sorted(dst.glob(".staging-*"))
        second = run("prepare_lgg.py", "--src", str(src), "--dst", str(dst))
        assert_error(second, dst, "another run is writing to this folder")
        assert sorted(dst.glob(".staging-*")) == staging and staging[0].is_dir()  # the live run's staging kept
        first.kill()  # SIGKILL: no clean-up of its own
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    assert len(list(dst.glob(".staging-*"))) == 1 and (dst / ".xunet-prepare.lock").exists()
    assert not (dst / "datalist.json").exists() and not (dst / "imagesTr").exists()  # nothing that looks valid

    for link in sorted(src.iterdir())[3:]:
        link.unlink()
    result = run("prepare_lgg.py", "--src", str(src), "--dst", str(dst), "--num_folds", "2")
    assert result.returncode == 0, result.stderr
    assert "removed 1 leftovers of interrupted runs" in result.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["datalist.json", "imagesTr", "labelsTr", "notes.txt"]
    assert len(outputs_match_datalist(dst)["training"]) == 2


def test_leftovers_of_an_earlier_version_are_removed_too(kaggle, tmp_path):
    dst = tmp_path / "out"
    (dst / ".staging-a1b2c3d4" / "imagesTr").mkdir(parents=True)  # tempfile.mkdtemp's name, as before the lock
    (dst / ".staging-a1b2c3d4" / "imagesTr" / "x.nii.gz").write_bytes(b"half")
    (dst / ".datalist.json.q1w2e3r4.json").write_text("{")
    prepare_dataset(kaggle, dst, num_folds=2, progress=False)
    assert sorted(p.name for p in dst.iterdir()) == ["datalist.json", "imagesTr", "labelsTr"]


# --- 7. prepare_decathlon.py -----------------------------------------------------------------------------------


@pytest.fixture
def task(tmp_path) -> Path:
    """A Decathlon task folder of 6 tiny cases."""
    task = tmp_path / "Task99_Tiny"
    for i in range(6):
        for folder in ("imagesTr", "labelsTr"):
            (task / folder).mkdir(parents=True, exist_ok=True)
            write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), task / folder / f"case_{i:03d}.nii.gz")
    return task


@pytest.mark.parametrize(
    "kwargs, option, problem",
    [
        ({"num_folds": 0}, "--num_folds", "must be at least 1"),
        ({"num_folds": 2.5}, "--num_folds", "must be a whole number"),
        ({"test_fraction": float("nan")}, "--test_fraction", r"must be a number in \[0, 1\)"),
        ({"test_fraction": 1.0}, "--test_fraction", r"must be a number in \[0, 1\)"),
        ({"seed": "x"}, "--seed", "must be a whole number"),
        ({"num_folds": 6}, "--num_folds", "6 usable cases are too few for 6 folds and 1 test cases"),
    ],
)
def test_decathlon_bad_option_writes_nothing(task, tmp_path, kwargs, option, problem):
    with pytest.raises(DataError, match=f"^{option}: {problem}"):
        prepare_datalist(task, tmp_path / "data", **kwargs)
    assert not (tmp_path / "data").exists()


def test_decathlon_bad_options_on_the_command_line(task, tmp_path):
    dst = tmp_path / "data"
    assert_error(run("prepare_decathlon.py", "--src", str(task), "--dst", str(dst), "--test_fraction", "nan"),
                 "--test_fraction", r"must be a number in \[0, 1\), got 'nan'")  # fmt: skip
    assert_error(run("prepare_decathlon.py", "--src", str(task), "--dst", str(dst), "--on_error", "stop"),
                 "--on_error", "unknown option; the options are --src, --dst")  # fmt: skip
    assert not dst.exists()


def _two_files_of_one_case(task: Path) -> tuple[Path, str]:
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), task / "imagesTr" / "case_003.nii")
    return task / "imagesTr" / "case_003.nii.gz", "same case name as case_003.nii: the datalist could list only one"


@pytest.mark.parametrize("make, kind", ENTRY_KINDS, ids=[c[0].__name__.strip("_") for c in ENTRY_KINDS])
@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr"])
def test_decathlon_entry_that_is_not_a_regular_file_is_named(task, tmp_path, no_hang, make, kind, folder):
    path = task / folder / "case_002.nii.gz"
    path.unlink()
    make(path)
    with pytest.raises(DataError, match=f"not a regular file \\({kind}") as error:
        prepare_datalist(task, tmp_path / "data")
    assert error.value.path == str(path) and not (tmp_path / "data").exists()


@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr"])
def test_decathlon_a_case_linked_to_another_is_refused(task, tmp_path, folder):
    link = task / folder / "case_999.nii.gz"
    link.symlink_to(task / folder / "case_004.nii.gz")
    with pytest.raises(DataError, match="the same file as case_004.nii.gz") as error:
        prepare_datalist(task, tmp_path / "data")
    assert error.value.path == str(link) and not (tmp_path / "data").exists()


def test_decathlon_fifo_and_two_files_of_one_case_on_the_command_line(task, tmp_path):
    where, problem = _two_files_of_one_case(task)
    assert_error(run("prepare_decathlon.py", "--src", str(task), "--dst", str(tmp_path / "data")), where, problem)
    (task / "imagesTr" / "case_003.nii").unlink()
    fifo = task / "labelsTr" / "case_004.nii.gz"
    fifo.unlink()
    os.mkfifo(fifo)
    assert_error(run("prepare_decathlon.py", "--src", str(task), "--dst", str(tmp_path / "data")), fifo, "FIFO")
    assert not (tmp_path / "data").exists()


def test_decathlon_destination_rules_and_leftovers(task, tmp_path, caplog):
    with pytest.raises(DataError, match="^--dst: .* lies inside .*imagesTr: the datalist would sit among the volumes"):
        prepare_datalist(task, task / "imagesTr" / "sub")
    assert not (task / "imagesTr" / "sub").exists()
    (task / "datalist.json").mkdir()
    with pytest.raises(DataError, match="datalist.json: exists and is not a regular file"):
        prepare_datalist(task, task)
    (task / "datalist.json").rmdir()
    (task / "imagesTr" / "README").write_text("")
    stale = task / ".datalist.json.k3j4h5g6.json"  # as a killed run's atomic write leaves it
    stale.write_text('{"training": [')
    with caplog.at_level("INFO"):
        datalist = prepare_datalist(task, task, num_folds=2)  # the task folder itself may receive the datalist
    assert "ignored 1 entries that are not NIfTI volumes (*.nii.gz, *.nii): README" in caplog.text
    assert not stale.exists() and not (task / ".xunet-prepare.lock").exists()
    assert len(datalist["training"]) + len(datalist["testing"]) == 6


# --- 6. stack_channels.py ------------------------------------------------------------------------------------------

OBLIQUE = np.array([[0.0, -1.5, 0.2, 10.0], [1.2, 0.0, 0.0, -20.0], [0.0, 0.1, 2.0, 5.5], [0.0, 0.0, 0.0, 1.0]])


def write_channels(folder: Path, case: str, shapes: list[tuple], affine: np.ndarray = OBLIQUE) -> list[np.ndarray]:
    """Write ``<case>_000<c>.nii.gz`` with the given shapes (values that tell the channels apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for channel, shape in enumerate(shapes):
        array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1000 * channel
        write_nifti(array, affine, folder / f"{case}_{channel:04d}.nii.gz")
        arrays.append(array)
    return arrays


def test_stack_channel_files_stored_4d_with_one_channel_keep_the_first_affine(tmp_path):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    expected = {
        "a": write_channels(src, "a", [(5, 6, 7, 1)] * 3),
        "b": write_channels(src, "b", [(5, 6, 7), (5, 6, 7, 1), (5, 6, 7)]),
    }
    result = run("stack_channels.py", "--src", str(src), "--dst", str(dst))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    for case, arrays in expected.items():
        stacked = nib.load(dst / f"{case}.nii.gz")
        assert stacked.shape == (5, 6, 7, 3)
        np.testing.assert_array_equal(np.asarray(stacked.dataobj), np.stack([a.reshape(5, 6, 7) for a in arrays], -1))
        np.testing.assert_allclose(stacked.affine, nib.load(src / f"{case}_0000.nii.gz").affine, atol=1e-6)
        np.testing.assert_allclose(stacked.affine, OBLIQUE, atol=1e-6)


def _two_channels(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7), (5, 6, 7, 2), (5, 6, 7)])
    return src / "z_0001.nii.gz", r"holds 2 channels \(shape \(5, 6, 7, 2\)\); a channel file must hold one"


def _two_dimensional(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6), (5, 6), (5, 6)])
    return src / "z_0000.nii.gz", r"expected a 3D volume .*, got shape \(5, 6\)"


def _five_dimensional(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7), (5, 6, 7), (5, 6, 7, 1, 3)])
    return src / "z_0002.nii.gz", r"expected a 3D volume .*, got shape \(5, 6, 7, 1, 3\)"


def _nifti_and_uncompressed(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 3)
    nib.save(nib.load(src / "z_0000.nii.gz"), src / "z_0000.nii")
    return src / "z_0000.nii.gz", "a second file for the same channel as z_0000.nii"


def _set_srow_x(path: Path, row: list[float]) -> None:
    """Overwrite the first sform row of a NIfTI header (nibabel refuses to build such an affine itself)."""
    image = nib.load(path)
    header = image.header.copy()
    header["srow_x"] = row
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), path)


def _nan_affine(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 3)
    _set_srow_x(src / "z_0002.nii.gz", [np.nan, 0.0, 0.0, 1.0])
    return src / "z_0002.nii.gz", "the affine .* holds NaN or infinite values"


def _infinite_affine(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 3)
    _set_srow_x(src / "z_0001.nii.gz", [0.0, -1.5, 0.2, np.inf])
    return src / "z_0001.nii.gz", "the affine .* holds NaN or infinite values"


def _singular_affine(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 3)
    _set_srow_x(src / "z_0000.nii.gz", [0.0, 0.0, 0.0, 1.0])
    return src / "z_0000.nii.gz", r"the affine .* is singular"


def _rank_deficient_affine(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 3)
    _set_srow_x(src / "z_0001.nii.gz", [2.4, 0.0, 0.0, 3.0])  # parallel to the second row
    return src / "z_0001.nii.gz", r"the affine .* is singular"


def _fifo_channel(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 2)
    os.mkfifo(src / "z_0002.nii.gz")
    return src / "z_0002.nii.gz", "not a regular file"


def _huge_declared_volume(src: Path) -> tuple[Path, str]:
    write_channels(src, "z", [(5, 6, 7)] * 3)
    path = src / "z_0002.nii"
    image = nib.load(src / "z_0002.nii.gz")
    image.header.set_data_shape((5000, 5000, 5000))
    with open(path, "wb") as f:  # a header claiming 500 GB, and no data
        f.write(image.header.binaryblock + b"\x00" * 4)
    (src / "z_0002.nii.gz").unlink()
    return path, r"a volume of shape \(5000, 5000, 5000\) is larger than the 4 GiB limit"


STACK_CASES = [_two_channels, _two_dimensional, _five_dimensional, _nifti_and_uncompressed, _nan_affine,
               _infinite_affine, _singular_affine, _rank_deficient_affine, _fifo_channel,
               _huge_declared_volume]  # fmt: skip


@pytest.mark.parametrize("damage", STACK_CASES, ids=[c.__name__.strip("_") for c in STACK_CASES])
def test_stack_a_bad_channel_file_of_the_last_case_stops_before_anything_is_written(tmp_path, no_hang, damage):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    write_channels(src, "a", [(5, 6, 7)] * 3)  # a good case first: it must not be written either
    where, problem = damage(src)
    with pytest.raises(DataError, match=problem) as error:
        stack_channels.stack_cases(str(src), str(dst))
    assert error.value.path == str(where)
    assert not dst.exists()


@pytest.mark.parametrize("damage", [_two_channels, _nan_affine, _nifti_and_uncompressed])
def test_stack_a_bad_channel_file_on_the_command_line(tmp_path, damage):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    write_channels(src, "a", [(5, 6, 7)] * 3)
    where, problem = damage(src)
    assert_error(run("stack_channels.py", "--src", str(src), "--dst", str(dst)), where, problem)
    assert not dst.exists()


@pytest.mark.parametrize(
    "kwargs, option, problem",
    [
        ({"num_channels": 0}, "--num_channels", "must be at least 1, got 0"),
        ({"num_channels": "x"}, "--num_channels", "must be a whole number, got 'x'"),
        ({"num_channels": 2.0}, "--num_channels", "must be a whole number, got 2.0"),
        ({"num_channels": 2}, "--num_channels", "is 2, but 3 channel suffixes are given"),
        ({"channel_suffixes": ["_0000", "_0000"]}, "--channel_suffixes", "must be distinct"),
        ({"dst": ""}, "--dst", "needs a folder path, got ''"),
    ],
)
def test_stack_bad_options_write_nothing(tmp_path, kwargs, option, problem):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    write_channels(src, "a", [(5, 6, 7)] * 3)
    with pytest.raises(DataError, match=f"^{option}: {problem}"):
        stack_channels.stack_cases(**{"src": str(src), "dst": str(dst), **kwargs})
    assert not dst.exists()


@pytest.mark.parametrize(
    "args, option, problem",
    [
        (["--num_channels", "2"], "--num_channels", "is 2, but 3 channel suffixes are given"),
        (["--chanel_suffixes", "['_0000']"], "--chanel_suffixes", "unknown option"),
    ],
)
def test_stack_bad_options_on_the_command_line(tmp_path, args, option, problem):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    write_channels(src, "a", [(5, 6, 7)] * 3)
    assert_error(run("stack_channels.py", "--src", str(src), "--dst", str(dst), *args), option, problem)
    assert not dst.exists()


def test_stack_into_the_source_folder_is_refused(tmp_path):
    src = tmp_path / "channels"
    write_channels(src, "a", [(5, 6, 7)] * 3)
    before = listing(src)
    assert_error(run("stack_channels.py", "--src", str(src), "--dst", str(src)), "--dst", "is the --src folder")
    with pytest.raises(DataError, match="^--dst: .* is the --src folder"):
        stack_channels.stack_cases(str(src), str(tmp_path / "." / "channels"))
    assert listing(src) == before


def test_stack_an_output_name_taken_by_a_folder_is_refused_before_writing(tmp_path):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    write_channels(src, "a", [(5, 6, 7)] * 3)
    write_channels(src, "b", [(5, 6, 7)] * 3)
    (dst / "b.nii.gz").mkdir(parents=True)
    with pytest.raises(DataError, match="b.nii.gz: exists and is not a regular file \\(a folder\\)"):
        stack_channels.stack_cases(str(src), str(dst))
    assert not (dst / "a.nii.gz").exists()


def test_stack_removes_partial_files_of_a_killed_run(tmp_path):
    src, dst = tmp_path / "channels", tmp_path / "studies"
    write_channels(src, "a", [(5, 6, 7)] * 3)
    dst.mkdir()
    partial = dst / ".a.nii.gz.k2j3h4g5.nii.gz"  # as a killed run's atomic write leaves it
    partial.write_bytes(b"half")
    (dst / "notes.txt").write_text("kept")
    (dst / ".notes.txt.swp").write_text("kept")
    stack_channels.stack_cases(str(src), str(dst))
    assert sorted(p.name for p in dst.iterdir()) == [".notes.txt.swp", "a.nii.gz", "notes.txt"]
