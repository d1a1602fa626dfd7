"""Conversion of the Kaggle LGG MRI segmentation dataset (``kaggle_3m``) into one NIfTI volume per patient."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from .data import LGG_AFFINE, DataError, check_output_dirs, split_patients, write_nifti

try:
    import fcntl
except ImportError:  # Windows: runs are not locked, and leftovers of interrupted runs are not removed
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "OUTPUTS",
    "SLICE_PATTERN",
    "check_command_line",
    "check_split_options",
    "check_split_size",
    "command_line_errors",
    "describe",
    "file_type",
    "is_inside",
    "list_slices",
    "one_line",
    "output_lock",
    "patient_id",
    "path_option",
    "prepare_dataset",
    "read_patient",
    "read_slices",
    "remove_leftovers",
    "short_list",
    "whole_number",
    "write_dataset",
]

logger = logging.getLogger(__name__)

SLICE_PATTERN = re.compile(r"^(?P<patient>.+)_(?P<index>[0-9]+)(?P<mask>_mask)?\.tiff?\Z", re.IGNORECASE | re.DOTALL)
IMAGE_CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")
TCGA_FOLDER = re.compile(r"^(?P<patient>TCGA_[A-Z0-9]+_[A-Z0-9]+)_[0-9]{8}$")
# what prepare_lgg.py owns in its destination: these are replaced as a whole by each run, anything else is left alone
OUTPUTS = ("imagesTr", "labelsTr", "datalist.json")
LOCK_NAME = ".xunet-prepare.lock"
STAGING_PREFIX = ".staging-"
# bounds on what one file can make a run allocate (the Kaggle slices are 256 x 256, a patient about 20 MB)
MAX_SLICE_PIXELS = 8192 * 8192
MAX_VOLUME_BYTES = 4 * 2**30
MAX_MESSAGE = 2000  # characters of one error line or skip record
MAX_LISTED = 10  # names or numbers quoted in one message


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """
    ``text`` made fit for one line of a terminal or log: control characters (a newline in a file name) and
    undecodable bytes escaped, and the middle cut out beyond ``limit`` characters (the end says what went wrong).

    Args:
        text: the message.
        limit: the most characters kept.
    """
    text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode() for c in text)
    if len(text) > limit:
        half = (limit - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text


def short_list(items: Sequence, total: int | None = None) -> str:
    """
    The first ``MAX_LISTED`` of ``items`` joined by commas, saying how many there are when there are more, so that a
    message stays short whatever the input.

    Args:
        items: what to list.
        total: how many there are in all, when ``items`` holds only the first ones.
    """
    total = len(items) if total is None else total
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    return shown if total <= MAX_LISTED else f"{shown}, ... (first {MAX_LISTED} of {total})"


def file_type(path: Path) -> str:
    """
    What ``path`` is, following symbolic links and never opening it (a FIFO would block the reader forever):
    ``"file"`` for a regular file, ``"folder"``, else a phrase that names the problem (a dangling link, a FIFO...).

    Args:
        path: the entry to look at.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a symbolic link whose target does not exist" if path.is_symlink() else "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def describe(kind: str) -> str:
    """
    A :func:`file_type` for a message: ``"a regular file"``, ``"a folder"``, or the phrase as it is.

    Args:
        kind: what :func:`file_type` returned.
    """
    return {"file": "a regular file", "folder": "a folder"}.get(kind, kind)


def path_option(value: object, option: str) -> Path:
    """
    A folder given on the command line (python-fire turns ``--dst 2024`` into a number, ``--dst`` alone into True).

    Args:
        value: what was given.
        option: the option's name, for the message (``"--dst"``).
    """
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Path(str(value))
    raise DataError(option, f"needs a folder path, got {value!r}.")


def whole_number(value: object, option: str, minimum: int | None = None) -> int:
    """
    Check that an option is a whole number (not a bool, not 2.5, not a string: python-fire passes what it cannot
    parse as a string) and return it as an int.

    Args:
        value: what was given.
        option: the option's name, for the message (``"--num_folds"``).
        minimum: the smallest value allowed, if any.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(option, f"must be a whole number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise DataError(option, f"must be at least {minimum}, got {value}.")
    return int(value)


def check_split_options(
    num_folds: object, test_fraction: object, seed: object, on_error: object = "skip"
) -> tuple[int, float, int]:
    """
    Check the options of a patient-level split before any patient is read; raise a DataError naming the option.

    Args:
        num_folds: number of cross-validation folds, a whole number >= 1.
        test_fraction: fraction of patients held out, a number in [0, 1).
        seed: seed of the split, a whole number.
        on_error: ``"skip"`` or ``"stop"``; None where a converter has no such option.

    Returns:
        ``(num_folds, test_fraction, seed)`` as int, float, int.
    """
    num_folds = whole_number(num_folds, "--num_folds", minimum=1)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.number)):
        raise DataError("--test_fraction", f"must be a number in [0, 1), got {test_fraction!r}.")
    if not (math.isfinite(test_fraction) and 0.0 <= test_fraction < 1.0):
        raise DataError("--test_fraction", f"must be a number in [0, 1), got {test_fraction!r}.")
    seed = whole_number(seed, "--seed")
    if on_error is not None and on_error not in ("skip", "stop"):
        raise DataError("--on_error", f"must be 'skip' or 'stop', got {on_error!r}.")
    return num_folds, float(test_fraction), seed


def patient_id(folder_name: str) -> str:
    """
    The TCGA patient of a Kaggle folder ``<patient>_<study date>`` (``TCGA_CS_4941`` of ``TCGA_CS_4941_19960909``),
    so that two studies of one patient land on the same side of the split; other names are their own patient.
    """
    match = TCGA_FOLDER.match(folder_name)
    return match["patient"] if match else folder_name


def check_split_size(names: Sequence[str], num_folds: int, test_fraction: float, seed: int, what: str) -> None:
    """
    Raise a DataError naming ``--num_folds`` when ``names`` are too few for the folds and the test set.

    Args:
        names: the usable patients or cases.
        num_folds: number of cross-validation folds.
        test_fraction: fraction held out as the test set.
        seed: seed of the split.
        what: what the names are, for the message (``"patients"``).
    """
    try:
        split_patients(names, num_folds, test_fraction, seed)
    except ValueError as e:
        num_test = int(round(test_fraction * len(names)))
        raise DataError(
            "--num_folds",
            f"{len(names)} usable {what} are too few for {num_folds} folds and {num_test} test {what} "
            "(each fold needs one; lower --num_folds or --test_fraction).",
        ) from e


def is_inside(path: Path, folder: Path) -> bool:
    """
    Whether ``path`` is ``folder`` or lies inside it, symbolic links resolved (neither needs to exist).

    Args:
        path: the path to test.
        folder: the folder.
    """
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_command_line(argv: Sequence[str], function: Callable) -> None:
    """
    Refuse an unknown, repeated or surplus command-line argument before python-fire runs ``function``: fire runs the
    function first and complains about what it could not use afterwards, so a typo (``--on_eror stop``) would convert
    the whole dataset with the default instead.

    Args:
        argv: the arguments, without the program name.
        function: the script's ``main``.
    """
    params = list(inspect.signature(function).parameters)
    named, positional, i = set(), [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # fire's own flags follow
            break
        if token in ("-h", "--help"):
            return
        if token.startswith("--"):
            name, has_value, _ = token[2:].partition("=")
            key = name.replace("-", "_")
            if key not in params:
                raise DataError(f"--{name}", f"unknown option; the options are {', '.join('--' + p for p in params)}.")
            if key in named:
                raise DataError(f"--{name}", "given twice.")
            named.add(key)
            i += 1 if has_value else 2
            continue
        positional.append(token)
        i += 1
    free = [p for p in params if p not in named]
    if len(positional) > len(free):
        raise DataError(positional[len(free)], "unexpected argument (options are given as --name value).")


@contextmanager
def command_line_errors() -> Iterator[None]:
    """
    Turn a DataError (a bad file or option), an OSError (a full disk) or an interruption into one final line
    ``error: <file or --option>: <problem>`` on stderr and a non-zero exit status, without a traceback.
    """
    try:
        yield
    except DataError as e:
        sys.exit(f"error: {one_line(str(e))}")
    except OSError as e:
        where = e.filename if e.filename is not None else "<output>"
        sys.exit(f"error: {one_line(f'{where}: {e.strerror or e}')}")
    except KeyboardInterrupt:
        print("error: interrupted; the destination is left as it was.", file=sys.stderr)
        sys.exit(130)
    except BaseException as e:  # data.OutputWriteError (a full disk...) carries the DataError naming the file
        if isinstance(getattr(e, "error", None), DataError):
            sys.exit(f"error: {one_line(str(e.error))}")
        raise


@contextmanager
def output_lock(dst: Path) -> Iterator[None]:
    """
    Hold an exclusive ``flock`` on ``dst/.xunet-prepare.lock`` while a converter writes to ``dst``, so that a second
    run into the same folder is refused with one line. The kernel drops the lock of a process that dies, even by
    SIGKILL, so whatever staging leftovers the holder finds in ``dst`` belong to no live run and may be removed (a
    pid in the staging name would not tell, pids are reused). The lock file is removed when the run ends.

    Args:
        dst: the destination folder (it must exist).
    """
    if fcntl is None:
        yield
        return
    path = dst / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(
                dst, f"another run is writing to this folder (it holds {LOCK_NAME}); wait for it to finish."
            ) from None
        try:  # the previous holder removes the file when it ends: a lock on the removed file locks nothing
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise DataError(path, "cannot lock the destination (the lock file keeps changing).")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock is dropped, so no run can lock the file just removed
        os.close(fd)


def remove_leftovers(dst: Path, patterns: Sequence[str]) -> list[str]:
    """
    Remove what interrupted runs left in ``dst``: the entries whose names match one of the regular expressions
    ``patterns``. Call it only while holding :func:`output_lock`.

    Args:
        dst: the destination folder.
        patterns: regular expressions of leftover names (staging folders, temporary files).

    Returns:
        the names removed.
    """
    removed = []
    for entry in sorted(dst.iterdir()):
        if not any(re.fullmatch(pattern, entry.name) for pattern in patterns):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    if removed:
        logger.info("removed %d leftovers of interrupted runs from %s: %s", len(removed), dst, short_list(removed))
    return removed


def _open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file: a FIFO put in its place is never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DataError(path, f"cannot open the file ({e.strerror}).") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(path, "not a regular file; only regular files are read as slices.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read_tiff(path: Path, check: Callable[[tuple, np.dtype], None]) -> np.ndarray:
    """
    Read the first image of a TIFF file, after ``check(shape, dtype)`` has accepted what its header declares, so
    that a file declaring a huge image is refused before anything is allocated.
    """
    with _open_regular(path) as fh:
        try:
            with tifffile.TiffFile(fh, name=path.name) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), np.dtype(series.dtype)
                check(shape, dtype)
                array = series.asarray()
        except DataError:
            raise
        except Exception as e:  # tifffile raises several types for corrupt or truncated files
            raise DataError(path, f"cannot read the TIFF file ({type(e).__name__}: {one_line(str(e), 200)}).") from e
    if array.size == 0 or array.shape != shape:  # tifffile may return an empty array for some truncated files
        raise DataError(path, "cannot read the TIFF file (no pixel data: truncated or corrupt).")
    return array


def _gap_message(indices: Sequence[int]) -> str:
    """
    Describe the slice numbers missing from 1..max(indices) without listing them all (a stray ``_1000000000.tif``
    would make a list of a billion numbers). ``indices`` are sorted, distinct and >= 1.
    """
    missing, expected = [], 1
    for index in indices:
        if index > expected:
            missing.extend(range(expected, min(index, expected + MAX_LISTED - len(missing))))
        expected = index + 1
        if len(missing) >= MAX_LISTED:
            break
    total = indices[-1] - len(indices)
    return f"slice numbers are not contiguous from 1: they run 1..{indices[-1]} with {total} missing: " + short_list(
        missing, total
    )


def list_slices(folder: str | Path) -> list[tuple[Path, Path]]:
    """
    List the slices of one ``kaggle_3m`` patient folder, without reading them.

    Only regular files (or links to them) are taken as slices: an entry named like a slice that is a folder, a FIFO,
    a socket or a dangling link is an error naming it. Hidden entries are ignored; other entries are ignored with a
    warning that names them.

    Args:
        folder: the patient folder holding ``<patient>_<n>.tif`` and ``<patient>_<n>_mask.tif``.

    Returns:
        ``(image, mask)`` paths of slices 1, 2, ... in numeric order.

    Raises:
        DataError: naming the offending entry and the problem.
    """
    folder = Path(folder)
    kind = file_type(folder)
    if kind != "folder":
        raise DataError(folder, f"not a patient folder ({describe(kind)}).")
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(folder, f"cannot list the folder ({e.strerror}).") from e
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    patients: dict[Path, str] = {}
    ignored = []
    for path in entries:
        if path.name.startswith("."):
            continue
        match = SLICE_PATTERN.match(path.name)
        if match is None:
            ignored.append(path.name)
            continue
        kind = file_type(path)
        if kind != "file":
            raise DataError(path, f"not a regular file ({describe(kind)}); only regular files are read as slices.")
        target = masks if match["mask"] else images
        index = int(match["index"])
        if index in target:
            raise DataError(path, f"slice {index} appears twice (also {target[index].name}).")
        target[index] = path
        patients[path] = match["patient"]
    if ignored:
        logger.warning(
            "%s: ignored %d entries not named <patient>_<n>.tif or <patient>_<n>_mask.tif: %s",
            one_line(str(folder)),
            len(ignored),
            one_line(short_list(ignored)),
        )
    if not images:
        raise DataError(folder, "no image slices (<patient>_<n>.tif) in this folder.")
    patient = Counter(patients.values()).most_common(1)[0][0]
    for path, name in patients.items():
        if name != patient:
            raise DataError(path, f"belongs to patient {name!r}, the other slices of this folder to {patient!r}.")
    for index, path in sorted(images.items()):
        if index not in masks:
            raise DataError(path, f"slice {index} has no mask ({path.stem}_mask.tif is missing).")
    for index, path in sorted(masks.items()):
        if index not in images:
            raise DataError(path, f"mask of slice {index} has no image.")
    indices = sorted(images)
    if indices[0] < 1:
        raise DataError(images[indices[0]], "slice numbers start at 1, this is slice 0.")
    if indices[-1] != len(indices):
        raise DataError(folder, _gap_message(indices) + ".")
    return [(images[index], masks[index]) for index in indices]


def read_slices(slices: Sequence[tuple[Path, Path]]) -> tuple[np.ndarray, np.ndarray]:
    """
    Read the slices listed by :func:`list_slices` into a 3-channel volume and its label.

    Every slice must be an RGB uint8 image with a mask of the same size with values 0/255 only. Each file's declared
    size is checked before its pixels are read, so that no file can make the run allocate more than the volume
    limit (4 GiB).

    Args:
        slices: ``(image, mask)`` paths in slice order.

    Returns:
        ``(image, label)``: image ``(rows, cols, slices, 3)`` uint8 with channels pre-contrast, FLAIR,
        post-contrast; label ``(rows, cols, slices)`` uint8 with values 0 (background) and 1 (tumour).

    Raises:
        DataError: naming the offending file and the problem.
    """
    image_slices: list[np.ndarray] = []
    label_slices: list[np.ndarray] = []
    for image_path, mask_path in slices:
        first = image_slices[0].shape if image_slices else None

        def check_image(shape: tuple, dtype: np.dtype, first: tuple | None = first, path: Path = image_path) -> None:
            if len(shape) != 3 or shape[-1] != len(IMAGE_CHANNELS):
                raise DataError(path, f"expected an RGB image (rows, cols, 3), got shape {shape}.")
            if dtype != np.uint8:
                raise DataError(path, f"expected uint8 pixels, got {dtype}.")
            if first is not None and shape != first:
                raise DataError(path, f"size {shape} differs from slice 1's {first}.")
            volume_bytes = shape[0] * shape[1] * (len(IMAGE_CHANNELS) + 1) * len(slices)
            if first is None and (shape[0] * shape[1] > MAX_SLICE_PIXELS or volume_bytes > MAX_VOLUME_BYTES):
                raise DataError(
                    path,
                    f"slices of {shape[0]}x{shape[1]} pixels make a volume of {volume_bytes / 2**30:.1f} GiB for "
                    f"{len(slices)} slices; the limits are {MAX_SLICE_PIXELS} pixels a slice and "
                    f"{MAX_VOLUME_BYTES // 2**30} GiB a volume.",
                )

        image = _read_tiff(image_path, check_image)

        def check_mask(shape: tuple, dtype: np.dtype, size: tuple = image.shape[:2], path: Path = mask_path) -> None:
            if tuple(shape[:2]) != size:
                raise DataError(path, f"mask size {tuple(shape[:2])} differs from its image size {size}.")
            if not (len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4))):
                raise DataError(path, f"expected a grey mask (rows, cols), got shape {shape}.")

        mask = _read_tiff(mask_path, check_mask)
        if mask.ndim == 3:  # some exports store the mask as RGB(A) greys
            if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[-1])):
                raise DataError(mask_path, "mask has differing colour channels.")
            mask = mask[..., 0]
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 255}:
            raise DataError(mask_path, f"mask values must be 0 or 255, found {values.tolist()[:MAX_LISTED]}.")
        image_slices.append(image)
        label_slices.append((mask == 255).astype(np.uint8))
    if not image_slices:
        raise DataError("<slices>", "no slices to read.")
    return np.stack(image_slices, axis=2), np.stack(label_slices, axis=2)


def read_patient(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """
    Read one patient folder of ``kaggle_3m`` into a 3-channel volume and its label.

    Slices are stacked in numeric order (1, 2, ..., 10, not 1, 10, 11). Every slice must have a mask of the same
    size with values 0/255 only; slice numbers must run from 1 without gaps (see :func:`list_slices` and
    :func:`read_slices`).

    Args:
        folder: the patient folder holding ``<patient>_<n>.tif`` and ``<patient>_<n>_mask.tif``.

    Returns:
        ``(image, label)``: image ``(rows, cols, slices, 3)`` uint8 with channels pre-contrast, FLAIR,
        post-contrast; label ``(rows, cols, slices)`` uint8 with values 0 (background) and 1 (tumour).

    Raises:
        DataError: naming the offending file and the problem.
    """
    return read_slices(list_slices(folder))


def _replace_outputs(staging: Path, dst: Path) -> None:
    """
    Move the complete ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` of ``staging`` into ``dst``, replacing the
    previous ones as a whole (a patient gone from the source leaves no volume behind). The old datalist goes first
    and the new one comes last, so an interruption in between leaves no datalist, not a mix that looks complete;
    the old outputs are left in ``staging`` for the caller (or the next run) to remove.
    """
    replaced = staging / "replaced"
    replaced.mkdir()
    for name in ("datalist.json", "imagesTr", "labelsTr"):
        if os.path.lexists(dst / name):
            os.rename(dst / name, replaced / name)
    for name in ("imagesTr", "labelsTr", "datalist.json"):
        os.rename(staging / name, dst / name)


def write_dataset(
    cases: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]],
    dst: str | Path,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    on_error: str = "skip",
    description: str = "",
    progress: bool = True,
    skipped: dict[str, str] | None = None,
) -> dict:
    """
    Write ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` for the given cases.

    Everything is written into a staging folder ``dst/.staging-*`` and moved into place only when all cases are
    done, replacing the previous ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` as a whole, so that they hold
    exactly the cases of the datalist; other files in ``dst`` are left alone. An interrupted or failed run leaves
    ``dst`` as it was (a killed one also leaves its hidden staging folder, which the next run removes). A run holds
    :func:`output_lock` on ``dst``: a second run into the same folder is refused.

    Args:
        cases: case name -> function returning ``(image, label)`` arrays as :func:`read_patient` does.
        dst: output folder (created if needed).
        num_folds: number of cross-validation folds.
        test_fraction: fraction of patients held out as the test set.
        seed: seed of the patient-level split.
        on_error: ``"skip"`` to skip a bad case with a warning, ``"stop"`` to stop at the first bad case.
        description: free text stored in the datalist.
        progress: show a progress bar.
        skipped: cases already skipped by the caller (name -> problem), recorded in the datalist.

    Returns:
        the datalist that was written.
    """
    num_folds, test_fraction, seed = check_split_options(num_folds, test_fraction, seed, on_error)
    dst = path_option(dst, "--dst")
    skipped = dict(skipped or {})
    check_output_dirs(dst)
    with output_lock(dst):
        remove_leftovers(dst, [re.escape(STAGING_PREFIX) + ".*", r"\.datalist\.json\..*"])
        staging = Path(tempfile.mkdtemp(dir=dst, prefix=STAGING_PREFIX))
        try:
            (staging / "imagesTr").mkdir()
            (staging / "labelsTr").mkdir()
            written = []
            with tqdm(total=len(cases), desc="cases", unit="case", disable=not progress) as bar:
                for name in sorted(cases):
                    try:
                        image, label = cases[name]()
                    except DataError as e:
                        if on_error == "stop":
                            raise
                        logger.warning("skipping %s: %s", one_line(name, 200), one_line(str(e)))
                        skipped[name] = one_line(str(e))
                        bar.update()
                        continue
                    write_nifti(image, LGG_AFFINE, staging / "imagesTr" / f"{name}.nii.gz")
                    write_nifti(label, LGG_AFFINE, staging / "labelsTr" / f"{name}.nii.gz")
                    written.append(name)
                    bar.update()
            if not written:
                raise DataError(dst, "no usable case was found.")
            check_split_size(sorted({patient_id(name) for name in written}), num_folds, test_fraction, seed, "patients")
            folds, test = split_patients(written, num_folds, test_fraction, seed, group_of=patient_id)

            def entry(name: str) -> dict:
                return {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"}

            datalist = {
                "description": description,
                "split": {"num_folds": num_folds, "test_fraction": test_fraction, "seed": seed, "level": "patient"},
                "skipped": skipped,
                "training": [{**entry(n), "fold": folds[n]} for n in sorted(folds)],
                "testing": [entry(n) for n in test],
            }
            (staging / "datalist.json").write_text(json.dumps(datalist, indent=4) + "\n")
            _replace_outputs(staging, dst)
            return datalist
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _list_patients(src: Path, on_error: str) -> tuple[dict[str, list[tuple[Path, Path]]], dict[str, str]]:
    """
    List the patient folders of ``src`` and their slices, without reading any TIFF: ``(slices of each usable
    patient, problem of each skipped one)``; with ``on_error="stop"`` the first problem is raised.
    """
    try:
        entries = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise DataError(src, f"cannot list the source folder ({e.strerror}).") from e
    patients: dict[str, list[tuple[Path, Path]]] = {}
    skipped: dict[str, str] = {}
    files = []
    for path in entries:
        kind = file_type(path)
        if kind == "file":
            files.append(path.name)
            continue
        try:
            if kind != "folder":
                raise DataError(path, f"not a patient folder ({describe(kind)}).")
            patients[path.name] = list_slices(path)
        except DataError as e:
            if on_error == "stop":
                raise
            logger.warning("skipping %s: %s", one_line(path.name, 200), one_line(str(e)))
            skipped[path.name] = one_line(str(e))
    if not patients and not skipped:
        hint = ""
        if any(SLICE_PATTERN.match(name) for name in files):
            hint = " It holds slices itself: give the folder that holds the patient folders."
        raise DataError(src, "no patient folders found (expected kaggle_3m/<patient>/<patient>_<n>.tif)." + hint)
    if files:
        logger.info("ignored %d files beside the patient folders: %s", len(files), one_line(short_list(files)))
    return patients, skipped


def prepare_dataset(
    src: str | Path,
    dst: str | Path,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    on_error: str = "skip",
    description: str | None = None,
    progress: bool = True,
) -> dict:
    """
    Convert a ``kaggle_3m`` folder (one sub-folder per patient) into NIfTI volumes and a datalist.

    The options, the folders and the listing of every patient folder (slice names, regular files, numbering) are
    checked before any TIFF is read, and the number of usable patients against the folds before any is converted.
    An entry of ``src`` that is neither a folder nor a regular file (a dangling link, a FIFO) is a bad patient;
    regular files (``data.csv``, ``README.md``) are ignored with a note.

    Args:
        src: the ``kaggle_3m`` folder as downloaded.
        dst: output folder, which must not lie inside ``src``; see :func:`write_dataset` for what it receives.
        num_folds: number of cross-validation folds.
        test_fraction: fraction of patients held out as the test set.
        seed: seed of the patient-level split.
        on_error: ``"skip"`` to skip a bad patient with a warning, ``"stop"`` to stop at the first bad patient.
        description: free text stored in the datalist (default: says how many patient folders were found).
        progress: show a progress bar.

    Returns:
        the datalist that was written.
    """
    num_folds, test_fraction, seed = check_split_options(num_folds, test_fraction, seed, on_error)
    src, dst = path_option(src, "--src"), path_option(dst, "--dst")
    kind = file_type(src)
    if kind == "missing":
        raise DataError(src, "source folder does not exist.")
    if kind != "folder":
        raise DataError(src, f"the source is not a folder ({describe(kind)}).")
    if is_inside(dst, src):
        raise DataError("--dst", f"{dst} is --src or lies inside it: give an output folder outside {src}.")
    for name in OUTPUTS:
        if is_inside(src, dst / name):
            raise DataError("--src", f"{src} lies inside --dst's {name}, which this run replaces.")
    patients, skipped = _list_patients(src, on_error)
    if not patients:
        raise DataError(src, f"no usable patient folder: all {len(skipped)} were skipped (see the warnings).")
    check_split_size(sorted(patients), num_folds, test_fraction, seed, "patients")
    cases = {name: (lambda slices=slices: read_slices(slices)) for name, slices in patients.items()}
    if description is None:
        description = f"Kaggle LGG MRI segmentation, {len(patients) + len(skipped)} patient folders"
    return write_dataset(
        cases,
        dst,
        num_folds=num_folds,
        test_fraction=test_fraction,
        seed=seed,
        on_error=on_error,
        description=description,
        progress=progress,
        skipped=skipped,
    )
