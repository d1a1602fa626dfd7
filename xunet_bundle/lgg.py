"""Conversion of the Kaggle LGG MRI segmentation dataset (``kaggle_3m``) into one NIfTI volume per patient."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from .data import LGG_AFFINE, DataError, atomic_write_json, check_output_dirs, split_patients, write_nifti

__all__ = ["SLICE_PATTERN", "prepare_dataset", "read_patient", "write_dataset"]

logger = logging.getLogger(__name__)

SLICE_PATTERN = re.compile(r"^(?P<patient>.+)_(?P<index>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
IMAGE_CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")


def _read_tiff(path: Path) -> np.ndarray:
    try:
        array = tifffile.imread(path)
    except Exception as e:  # tifffile raises several types for corrupt or truncated files
        raise DataError(path, f"cannot read the TIFF file ({type(e).__name__}: {e}).") from e
    if array.size == 0:  # tifffile returns an empty array, with a logged warning, for some truncated files
        raise DataError(path, "cannot read the TIFF file (no pixel data: truncated or corrupt).")
    return array


def _slice_files(folder: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in folder.iterdir():
        match = SLICE_PATTERN.match(path.name)
        if match is None:
            continue
        target = masks if match["mask"] else images
        index = int(match["index"])
        if index in target:
            raise DataError(path, f"slice {index} appears twice (also {target[index].name}).")
        target[index] = path
    return images, masks


def read_patient(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """
    Read one patient folder of ``kaggle_3m`` into a 3-channel volume and its label.

    Slices are stacked in numeric order (1, 2, ..., 10, not 1, 10, 11). Every slice must have a mask of the same
    size with values 0/255 only; slice numbers must run from 1 without gaps.

    Args:
        folder: the patient folder holding ``<patient>_<n>.tif`` and ``<patient>_<n>_mask.tif``.

    Returns:
        ``(image, label)``: image ``(rows, cols, slices, 3)`` uint8 with channels pre-contrast, FLAIR,
        post-contrast; label ``(rows, cols, slices)`` uint8 with values 0 (background) and 1 (tumour).

    Raises:
        DataError: naming the offending file and the problem.
    """
    folder = Path(folder)
    images, masks = _slice_files(folder)
    if not images:
        raise DataError(folder, "no image slices (<patient>_<n>.tif) in this folder.")
    for index, path in sorted(images.items()):
        if index not in masks:
            raise DataError(path, f"slice {index} has no mask ({path.stem}_mask.tif is missing).")
    for index, path in sorted(masks.items()):
        if index not in images:
            raise DataError(path, f"mask of slice {index} has no image.")
    indices = sorted(images)
    if indices != list(range(1, len(indices) + 1)):
        missing = sorted(set(range(1, indices[-1] + 1)) - set(indices))
        raise DataError(folder, f"slice numbers are not contiguous from 1: missing {missing}.")

    image_slices, label_slices = [], []
    for index in indices:
        image = _read_tiff(images[index])
        mask = _read_tiff(masks[index])
        if image.ndim != 3 or image.shape[-1] != len(IMAGE_CHANNELS):
            raise DataError(images[index], f"expected an RGB image (rows, cols, 3), got shape {image.shape}.")
        if image.dtype != np.uint8:
            raise DataError(images[index], f"expected uint8 pixels, got {image.dtype}.")
        if mask.ndim == 3 and mask.shape[-1] in (3, 4):  # some exports store the mask as RGB(A) greys
            if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[-1])):
                raise DataError(masks[index], "mask has differing colour channels.")
            mask = mask[..., 0]
        if mask.shape != image.shape[:2]:
            raise DataError(masks[index], f"mask size {mask.shape} differs from its image size {image.shape[:2]}.")
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 255}:
            raise DataError(masks[index], f"mask values must be 0 or 255, found {values.tolist()[:10]}.")
        if image_slices and image.shape != image_slices[0].shape:
            raise DataError(images[index], f"size {image.shape} differs from slice 1's {image_slices[0].shape}.")
        image_slices.append(image)
        label_slices.append((mask == 255).astype(np.uint8))
    return np.stack(image_slices, axis=2), np.stack(label_slices, axis=2)


def write_dataset(
    cases: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]],
    dst: str | Path,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    on_error: str = "skip",
    description: str = "",
    progress: bool = True,
) -> dict:
    """
    Write ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` for the given cases.

    Everything is written into a staging folder beside ``dst`` and moved into place only when all cases are done,
    so an interrupted or failed run leaves ``dst`` as it was.

    Args:
        cases: case name -> function returning ``(image, label)`` arrays as :func:`read_patient` does.
        dst: output folder (created if needed).
        num_folds: number of cross-validation folds.
        test_fraction: fraction of patients held out as the test set.
        seed: seed of the patient-level split.
        on_error: ``"skip"`` to skip a bad case with a warning, ``"stop"`` to stop at the first bad case.
        description: free text stored in the datalist.
        progress: show a progress bar.

    Returns:
        the datalist that was written.
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}.")
    dst = Path(dst)
    check_output_dirs(dst)
    staging = Path(tempfile.mkdtemp(dir=dst, prefix=".staging-"))
    try:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        written, skipped = [], {}
        for name in tqdm(sorted(cases), desc="cases", unit="case", disable=not progress):
            try:
                image, label = cases[name]()
            except DataError as e:
                if on_error == "stop":
                    raise
                logger.warning("skipping %s: %s", name, e)
                skipped[name] = str(e)
                continue
            write_nifti(image, LGG_AFFINE, staging / "imagesTr" / f"{name}.nii.gz")
            write_nifti(label, LGG_AFFINE, staging / "labelsTr" / f"{name}.nii.gz")
            written.append(name)
        if not written:
            raise DataError(dst, "no usable case was found.")
        folds, test = split_patients(written, num_folds, test_fraction, seed)

        def entry(name: str) -> dict:
            return {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"}

        datalist = {
            "description": description,
            "split": {"num_folds": num_folds, "test_fraction": test_fraction, "seed": seed, "level": "patient"},
            "skipped": skipped,
            "training": [{**entry(n), "fold": folds[n]} for n in sorted(folds)],
            "testing": [entry(n) for n in test],
        }
        for folder in ("imagesTr", "labelsTr"):
            (dst / folder).mkdir(exist_ok=True)
            for path in sorted((staging / folder).iterdir()):
                path.replace(dst / folder / path.name)
        atomic_write_json(datalist, dst / "datalist.json")
        return datalist
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_dataset(src: str | Path, dst: str | Path, **kwargs) -> dict:
    """
    Convert a ``kaggle_3m`` folder (one sub-folder per patient) into NIfTI volumes and a datalist.

    Args:
        src: the ``kaggle_3m`` folder as downloaded.
        dst: output folder.
        kwargs: passed to :func:`write_dataset`.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, "source folder does not exist.")
    patients = {p.name: p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not patients:
        raise DataError(src, "no patient folders found (expected kaggle_3m/<patient>/<patient>_<n>.tif).")
    cases = {name: (lambda folder=folder: read_patient(folder)) for name, folder in patients.items()}
    kwargs.setdefault("description", f"Kaggle LGG MRI segmentation, {len(cases)} patient folders")
    return write_dataset(cases, dst, **kwargs)
