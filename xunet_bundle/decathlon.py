"""Datalists for datasets in the Medical Segmentation Decathlon layout (``imagesTr/``, ``labelsTr/``)."""

from __future__ import annotations

import os
from pathlib import Path

from .data import NIFTI_SUFFIXES, DataError, atomic_write_json, check_output_dirs, nifti_stem, split_patients

__all__ = ["prepare_datalist"]


def prepare_datalist(
    src: str | os.PathLike, dst: str | os.PathLike, num_folds: int = 5, test_fraction: float = 0.2, seed: int = 0
) -> dict:
    """
    Write ``dst/datalist.json`` for a Decathlon task folder, splitting its labelled cases into cross-validation
    folds and a held-out test set (the split depends only on the case names and the arguments).

    The images are not copied: the datalist refers to them by paths relative to ``dst``. Hidden files and the
    macOS ``._*`` files found in the Decathlon archives are ignored.

    Args:
        src: the task folder, holding ``imagesTr/<case>.nii.gz`` and ``labelsTr/<case>.nii.gz``.
        dst: folder that receives ``datalist.json`` (created if needed).
        num_folds: number of cross-validation folds.
        test_fraction: fraction of cases held out as the test set.
        seed: seed of the case-level split.

    Returns:
        the datalist that was written.

    Raises:
        DataError: naming the folder or file when the layout is incomplete (a missing folder, no cases, an image
            without its label or a label without its image).
    """
    src, dst = Path(src), Path(dst)
    folders = {key: src / f"{key}sTr" for key in ("image", "label")}
    for folder in folders.values():
        if not folder.is_dir():
            raise DataError(folder, "folder not found (expected the Decathlon layout imagesTr/ and labelsTr/).")
    files = {
        key: {
            nifti_stem(p.name): p
            for p in folder.iterdir()
            if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")
        }
        for key, folder in folders.items()
    }
    if not files["image"]:
        raise DataError(folders["image"], "no NIfTI volumes (*.nii.gz, *.nii) in this folder.")
    for key, other in (("image", "label"), ("label", "image")):
        for name in sorted(set(files[key]) - set(files[other])):
            raise DataError(files[key][name], f"this {key} has no {other} in {folders[other]}.")
    check_output_dirs(dst)
    folds, test = split_patients(sorted(files["image"]), num_folds, test_fraction, seed)

    def entry(name: str) -> dict:
        return {key: os.path.relpath(files[key][name].resolve(), dst.resolve()) for key in ("image", "label")}

    datalist = {
        "description": f"Decathlon layout, {len(files['image'])} labelled cases from {src.resolve().name}",
        "split": {"num_folds": num_folds, "test_fraction": test_fraction, "seed": seed, "level": "case"},
        "training": [{**entry(name), "fold": folds[name]} for name in sorted(folds)],
        "testing": [entry(name) for name in test],
    }
    atomic_write_json(datalist, dst / "datalist.json")
    return datalist
