"""A small deterministic synthetic dataset in the layout of the prepared LGG data, for demos and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .lgg import write_dataset

__all__ = ["make_demo_dataset", "synthetic_patient"]


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (((grid - centre) / radii) ** 2).sum(-1)


def synthetic_patient(seed: int, size: int = 64, num_slices: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """
    One synthetic patient: an elliptical "brain" with a bright rim, and a lesion that is bright in FLAIR, dim in
    pre-contrast and rim-enhancing in post-contrast, in a few consecutive slices.

    Args:
        seed: random seed; the same seed gives the same arrays.
        size: in-plane size (rows and columns).
        num_slices: number of slices.

    Returns:
        ``(image, label)``: image ``(size, size, num_slices, 3)`` uint8, label ``(size, size, num_slices)`` uint8.
    """
    rng = np.random.default_rng(seed)
    shape = (size, size, num_slices)
    brain_radii = np.array([size * rng.uniform(0.36, 0.44), size * rng.uniform(0.30, 0.38), num_slices * 0.9])
    brain = _ellipsoid(shape, np.array([size / 2, size / 2, num_slices / 2]), brain_radii)
    lesion_radii = np.array([size * rng.uniform(0.06, 0.14), size * rng.uniform(0.06, 0.14), rng.uniform(2.0, 4.0)])
    offset = rng.uniform(-0.5, 0.5, 2) * (brain_radii[:2] - lesion_radii[:2])
    lesion_centre = np.array([size / 2 + offset[0], size / 2 + offset[1], rng.uniform(0.3, 0.7) * num_slices])
    lesion = _ellipsoid(shape, lesion_centre, lesion_radii)
    inside, rim = brain <= 1.0, (brain > 0.85) & (brain <= 1.0)
    label = ((lesion <= 1.0) & inside).astype(np.uint8)
    lesion_rim = (lesion > 0.6) & (lesion <= 1.0) & inside

    texture = rng.normal(0.0, 1.0, shape)
    base = np.where(inside, 90.0 + 12.0 * texture, 0.0) + np.where(rim, 50.0, 0.0)
    pre = base - 25.0 * label
    flair = base + 70.0 * label
    post = base + 20.0 * label + 60.0 * lesion_rim
    image = np.stack([pre, flair, post], axis=-1) + rng.normal(0.0, 4.0, (*shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_demo_dataset(
    dst: str | Path, num_patients: int = 12, size: int = 64, num_slices: int = 16, seed: int = 0, progress: bool = True
) -> dict:
    """
    Write ``num_patients`` synthetic patients to ``dst`` in the prepared-LGG layout, with a 5-fold datalist and a
    held-out test set.

    Args:
        dst: output folder.
        num_patients: number of synthetic patients.
        size: in-plane size of each volume.
        num_slices: number of slices of each volume.
        seed: base seed; the output depends only on the arguments.
        progress: show a progress bar.
    """
    cases = {
        f"demo_{i:03d}": (lambda i=i: synthetic_patient(seed * 1000 + i, size, num_slices)) for i in range(num_patients)
    }
    return write_dataset(
        cases,
        dst,
        num_folds=5,
        test_fraction=0.2,
        seed=seed,
        on_error="stop",
        description=f"synthetic demo data: {num_patients} patients of {size}x{size}x{num_slices}, 3 channels",
        progress=progress,
    )
