"""Datalists for datasets in the Medical Segmentation Decathlon layout (``imagesTr/``, ``labelsTr/``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .data import NIFTI_SUFFIXES, DataError, atomic_write_json, check_output_dirs, nifti_stem, split_patients
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

__all__ = ["prepare_datalist"]

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
