"""Datalists for datasets in the Medical Segmentation Decathlon layout, or stored one file per channel by case."""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import shutil
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path

import nibabel as nib
import numpy as np

from .data import (
    NIFTI_SUFFIXES,
    DataError,
    atomic_write_json,
    check_output_dirs,
    natural_key,
    nifti_stem,
    split_patients,
    write_nifti,
)
from .lgg import (
    check_split_options,
    check_split_size,
    describe,
    file_type,
    is_inside,
    one_line,
    output_lock,
    path_option,
    remove_leftovers,
    short_list,
)

__all__ = ["prepare_case_folders", "prepare_datalist"]

logger = logging.getLogger(__name__)


def _list_volumes(folder: Path) -> dict[str, Path]:
    """
    The NIfTI volumes of ``folder`` by case name. Hidden entries (the macOS ``._*`` files of the Decathlon archives)
    are ignored; other names are ignored with a warning naming them. A NIfTI-named entry that is not a regular file
    (a folder, a FIFO, a dangling link), two files of one case (``case.nii.gz`` and ``case.nii``) and two names of one
    file (a symbolic link to another case) are errors.
    """
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise DataError(folder, f"cannot list the folder ({e.strerror}).") from e
    volumes: dict[str, Path] = {}
    targets: dict[Path, Path] = {}  # the file each volume is, links resolved
    ignored = []
    for path in entries:
        if not path.name.endswith(NIFTI_SUFFIXES):
            ignored.append(path.name)
            continue
        kind = file_type(path)
        if kind != "file":
            raise DataError(path, f"not a regular file ({describe(kind)}); only regular files are listed as volumes.")
        other = volumes.setdefault(nifti_stem(path.name), path)
        if other != path:
            raise DataError(path, f"same case name as {other.name}: the datalist could list only one of them.")
        same = targets.setdefault(path.resolve(), path)
        if same != path:
            raise DataError(path, f"the same file as {same.name} (a symbolic link): a case must be listed once.")
    if ignored:
        logger.warning(
            "%s: ignored %d entries that are not NIfTI volumes (*.nii.gz, *.nii): %s",
            one_line(str(folder)),
            len(ignored),
            one_line(short_list(ignored)),
        )
    return volumes


def prepare_datalist(
    src: str | os.PathLike, dst: str | os.PathLike, num_folds: int = 5, test_fraction: float = 0.2, seed: int = 0
) -> dict:
    """
    Write ``dst/datalist.json`` for a Decathlon task folder, splitting its labelled cases into cross-validation
    folds and a held-out test set (the split depends only on the case names and the arguments).

    The images are not copied: the datalist refers to them by paths relative to ``dst`` (which may be the task
    folder itself). The options, the layout and the number of cases against the folds are checked before anything
    is written. Hidden files and the macOS ``._*`` files found in the Decathlon archives are ignored. The datalist is
    written atomically while holding :func:`~xunet_bundle.lgg.output_lock` on ``dst``, which also lets the run remove
    the temporary files of a killed earlier run.

    Args:
        src: the task folder, holding ``imagesTr/<case>.nii.gz`` and ``labelsTr/<case>.nii.gz``.
        dst: folder that receives ``datalist.json`` (created if needed).
        num_folds: number of cross-validation folds.
        test_fraction: fraction of cases held out as the test set.
        seed: seed of the case-level split.

    Returns:
        the datalist that was written.

    Raises:
        DataError: naming the option, folder or file when an option is invalid or the layout is incomplete (a
            missing folder, no cases, an image without its label or a label without its image, an entry that is not
            a regular file).
    """
    num_folds, test_fraction, seed = check_split_options(num_folds, test_fraction, seed, on_error=None)
    src, dst = path_option(src, "--src"), path_option(dst, "--dst")
    folders = {key: src / f"{key}sTr" for key in ("image", "label")}
    for folder in folders.values():
        if file_type(folder) != "folder":
            raise DataError(folder, "folder not found (expected the Decathlon layout imagesTr/ and labelsTr/).")
        if is_inside(dst, folder):
            raise DataError("--dst", f"{dst} lies inside {folder}: the datalist would sit among the volumes.")
    files = {key: _list_volumes(folder) for key, folder in folders.items()}
    if not files["image"]:
        raise DataError(folders["image"], "no NIfTI volumes (*.nii.gz, *.nii) in this folder.")
    for key, other in (("image", "label"), ("label", "image")):
        for name in sorted(set(files[key]) - set(files[other])):
            raise DataError(files[key][name], f"this {key} has no {other} in {folders[other]}.")
    names = sorted(files["image"])
    check_split_size(names, num_folds, test_fraction, seed, "cases")
    target = dst / "datalist.json"
    if os.path.lexists(target) and file_type(target) not in ("file", "a symbolic link whose target does not exist"):
        raise DataError(target, f"exists and is not a regular file ({describe(file_type(target))}).")
    check_output_dirs(dst)
    folds, test = split_patients(names, num_folds, test_fraction, seed)

    def entry(name: str) -> dict:
        return {key: os.path.relpath(files[key][name].resolve(), dst.resolve()) for key in ("image", "label")}

    datalist = {
        "description": f"Decathlon layout, {len(names)} labelled cases from {src.resolve().name}",
        "split": {"num_folds": num_folds, "test_fraction": test_fraction, "seed": seed, "level": "case"},
        "training": [{**entry(name), "fold": folds[name]} for name in sorted(folds)],
        "testing": [entry(name) for name in test],
    }
    with output_lock(dst):
        remove_leftovers(dst, [r"\.datalist\.json\..*"])  # atomic_write_json's temporary files
        atomic_write_json(datalist, target)
    return datalist


CASE = "{case}"
MAPPED_LABELS = "labelsTr"  # what prepare_case_folders owns in its destination with --label_map, replaced as a whole
OWNER_MARK = ".written-by-prepare_folders"
MAX_LABEL = 255  # mapped labels are written as uint8


def _case_regex(pattern: str) -> re.Pattern:
    """The regular expression of a path pattern relative to the source folder: glob wildcards, ``{case}`` a group."""
    head, _, tail = pattern.partition(CASE)
    return re.compile(fnmatch.translate(head)[4:-3] + r"(?P<case>[^/]+?)" + fnmatch.translate(tail)[4:-3] + r"\Z")


def _check_patterns(images: object, label: object) -> tuple[list[str], str]:
    """
    The ``--images`` and ``--label`` patterns, checked and normalised (``./`` and doubled slashes removed): strings
    relative to the source, each holding ``{case}`` once, all different.
    """
    if isinstance(images, str) or not isinstance(images, (list, tuple)) or not images:
        raise DataError("--images", f"must be a list of path patterns, one per channel, got {images!r}.")
    patterns = []
    for option, pattern in [*(("--images", p) for p in images), ("--label", label)]:
        if not isinstance(pattern, str) or pattern.count(CASE) != 1 or pattern.startswith("/") or ".." in pattern:
            raise DataError(
                option,
                f"each pattern is a path relative to --src holding {CASE} once, such as '{CASE}/*_flair.nii.gz' or "
                f"'imagesTr/{CASE}_0000.nii.gz', got {pattern!r}.",
            )
        patterns.append(posixpath.normpath(pattern))
    if len(set(patterns)) != len(patterns):
        raise DataError("--images", f"the channel and label patterns must differ, got {patterns}.")
    return patterns[:-1], patterns[-1]


def _check_label_map(label_map: object) -> dict[int, int]:
    """``--label_map`` as a mapping of label values, without the values it leaves as they are."""
    if label_map is None:
        return {}
    if not isinstance(label_map, dict) or not label_map:
        raise DataError("--label_map", f"must be a mapping of label values such as {{2: 1, 4: 1}}, got {label_map!r}.")
    for old, new in label_map.items():
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (old, new)) or new > MAX_LABEL:
            raise DataError(
                "--label_map", f"keys and values must be whole numbers 0..{MAX_LABEL}, got {old!r}: {new!r}."
            )
    return {old: new for old, new in label_map.items() if old != new}


def _find_cases(src: Path, patterns: Sequence[str]) -> list[str]:
    """The case names that any pattern matches under ``src``; hidden entries (``.*``, macOS ``._*``) are left out."""
    regexes = [_case_regex(pattern) for pattern in patterns]
    cases = set()
    for path in src.rglob("*"):
        relative = path.relative_to(src).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        cases.update(m["case"] for regex in regexes if (m := regex.match(relative)))
    return sorted(cases, key=natural_key)


def _match_one(src: Path, pattern: str, case: str) -> Path:
    """The one file of ``case`` that ``pattern`` names; a DataError naming the case when there is none or several."""
    matches = sorted(src.glob(pattern.replace(CASE, glob_escape(case))))
    if not matches:
        raise DataError(src / pattern.replace(CASE, case), f"case {case!r} has no file matching {pattern!r}.")
    if len(matches) > 1:
        raise DataError(
            matches[1], f"case {case!r} has {len(matches)} files matching {pattern!r} ({matches[0].name}, ...)."
        )
    if file_type(matches[0]) != "file":
        raise DataError(matches[0], f"not a regular file ({describe(file_type(matches[0]))}).")
    return matches[0]


def _volume_header(path: Path) -> nib.Nifti1Image:
    """``path`` opened by nibabel (the header only), checked to be a non-empty 3D volume."""
    try:
        image = nib.load(path)
    except Exception as e:
        raise DataError(path, f"cannot read the NIfTI header ({type(e).__name__}: {one_line(str(e), 200)}).") from e
    if len(image.shape) != 3 or 0 in image.shape:
        raise DataError(path, f"expected a non-empty 3D volume (one file per channel), got shape {image.shape}.")
    return image


def _check_grid(path: Path, image: nib.Nifti1Image, first: Path, reference: nib.Nifti1Image) -> None:
    """A DataError naming ``path`` when its voxel grid (shape, affine) differs from that of ``first``."""
    if image.shape != reference.shape:
        raise DataError(path, f"spatial size {image.shape} differs from {first.name}'s {reference.shape}.")
    if not np.allclose(image.affine, reference.affine, atol=1e-4):
        raise DataError(path, f"its voxel-to-world affine differs from {first.name}'s: not on the same voxel grid.")


def _write_mapped_label(path: Path, label_map: dict[int, int], target: Path) -> None:
    """Write ``path``'s label with its values mapped by ``label_map`` (others kept) to ``target`` as uint8."""
    try:
        label = nib.load(path)
        values = np.asarray(label.dataobj, dtype=np.float64)
    except Exception as e:  # a truncated file is found only when its voxels are read
        raise DataError(path, f"cannot read the label ({type(e).__name__}: {one_line(str(e), 200)}).") from e
    if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
        raise DataError(path, "label values must be whole numbers 0, 1, 2, ... (found negative, fractional or NaN).")
    mapped = values.copy()
    for old, new in label_map.items():
        mapped[values == old] = new
    if mapped.max() > MAX_LABEL:
        raise DataError(path, f"label value {int(mapped.max())} is above {MAX_LABEL} after --label_map; map it too.")
    write_nifti(mapped.astype(np.uint8), label.affine, target)


def prepare_case_folders(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    images: Sequence[str],
    label: str,
    label_map: dict[int, int] | None = None,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """
    Write ``dst/datalist.json`` for cases stored one file per channel, found by path patterns with a ``{case}``
    placeholder: one folder per case (BraTS: ``{case}/*_flair.nii.gz``) or flat folders (nnU-Net's raw layout:
    ``imagesTr/{case}_0000.nii.gz`` and ``labelsTr/{case}.nii.gz``). The cases are the names any pattern matches
    (hidden entries left out); each must have exactly one file per pattern, no file used twice, all non-empty 3D
    volumes on one voxel grid. The split is case-level, as :func:`prepare_datalist` makes it. Images are not copied.
    With ``label_map`` the labels are written, values mapped, to ``dst/labelsTr/``, which the run replaces as a whole
    once every label is written (never inside ``src``); without it, a ``labelsTr/`` an earlier run wrote is removed.
    Everything is checked before anything is written.

    Args:
        src: the dataset's folder.
        dst: folder that receives ``datalist.json`` (and ``labelsTr/`` with ``label_map``).
        images: one path pattern per channel, relative to ``src``, in channel order.
        label: the label's path pattern, relative to ``src``.
        label_map: label values to change, such as ``{2: 1, 4: 1}`` (whole tumour); other values are kept.
        num_folds: number of cross-validation folds.
        test_fraction: fraction of cases held out as the test set.
        seed: seed of the case-level split.

    Returns:
        the datalist that was written.
    """
    num_folds, test_fraction, seed = check_split_options(num_folds, test_fraction, seed, on_error=None)
    src, dst = path_option(src, "--src"), path_option(dst, "--dst")
    images, label = _check_patterns(images, label)
    label_map = _check_label_map(label_map)
    if file_type(src) != "folder":
        raise DataError(src, "folder not found.")
    mapped_labels = dst / MAPPED_LABELS
    if label_map and is_inside(mapped_labels.resolve(), src.resolve()):
        raise DataError("--dst", f"{mapped_labels} lies inside --src: the mapped labels would replace the source's.")
    for target, kind in ((dst / "datalist.json", "file"), (mapped_labels, "folder")):
        if os.path.lexists(target) and file_type(target) != kind:
            raise DataError(target, f"exists and is not a {kind} ({describe(file_type(target))}).")
    if label_map and mapped_labels.is_dir() and not (mapped_labels / OWNER_MARK).is_file():
        raise DataError(mapped_labels, "exists and was not written by this command: move it, or choose another --dst.")
    cases = _find_cases(src, [*images, label])
    if not cases:
        raise DataError(src, f"no file matches the patterns {[*images, label]}.")
    files, used = {}, {}
    for case in cases:
        paths = [_match_one(src, pattern, case) for pattern in [*images, label]]
        for path in paths:
            other = used.setdefault(path.resolve(), path)
            if other != path or paths.count(path) > 1:
                raise DataError(path, f"the same file as {other} (one file matched twice, or a link): use it once.")
        headers = [_volume_header(path) for path in paths]
        for path, header in zip(paths[1:], headers[1:]):
            _check_grid(path, header, paths[0], headers[0])
        files[case] = {"image": paths[:-1], "label": paths[-1]}
    check_split_size(cases, num_folds, test_fraction, seed, "cases")
    check_output_dirs(dst)
    folds, test = split_patients(cases, num_folds, test_fraction, seed)
    with output_lock(dst):
        remove_leftovers(dst, [r"\.datalist\.json\..*", rf"\.staging-{MAPPED_LABELS}-.*"])
        staging = dst / f".staging-{MAPPED_LABELS}-{os.getpid()}"
        if label_map:
            staging.mkdir()
            try:
                for case in cases:
                    _write_mapped_label(files[case]["label"], label_map, staging / f"{case}.nii.gz")
                    files[case]["label"] = mapped_labels / f"{case}.nii.gz"
                (staging / OWNER_MARK).touch()
            except BaseException:  # an interrupted or failed run leaves the destination as it was
                shutil.rmtree(staging, ignore_errors=True)
                raise

        def entry(case: str) -> dict:
            relative = lambda path: os.path.relpath(path.absolute(), dst.resolve())  # noqa: E731
            return {"image": [relative(p) for p in files[case]["image"]], "label": relative(files[case]["label"])}

        datalist = {
            "description": f"{len(cases)} cases of {src.absolute().name}, one file per channel",
            "split": {"num_folds": num_folds, "test_fraction": test_fraction, "seed": seed, "level": "case"},
            "training": [{**entry(case), "fold": folds[case]} for case in sorted(folds, key=natural_key)],
            "testing": [entry(case) for case in test],
        }
        if (mapped_labels / OWNER_MARK).is_file() or label_map:
            shutil.rmtree(mapped_labels, ignore_errors=True)  # an earlier run's, replaced or no longer used
        if label_map:
            staging.rename(mapped_labels)
        atomic_write_json(datalist, dst / "datalist.json")
    return datalist
