"""
Draw a few slices of a patient with the true and the predicted tumour outlines (FLAIR channel), as a PNG.

Usage::

    python benchmarks/tools/overlay.py --image data/lgg/imagesTr/P.nii.gz --truth data/lgg/labelsTr/P.nii.gz \
        --prediction eval/P_seg.nii.gz --out docs/overlay.png
"""

from __future__ import annotations

from pathlib import Path

import fire
import matplotlib
import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAIR = 1  # channel order of the prepared LGG volumes: pre-contrast, FLAIR, post-contrast


def pick_slices(truth: np.ndarray, num_slices: int) -> list[int]:
    """Slices spread over the tumour's extent (the middle slices when the truth is empty)."""
    with_tumour = np.flatnonzero(truth.reshape(-1, truth.shape[-1]).any(axis=0))
    candidates = with_tumour if len(with_tumour) else np.arange(truth.shape[-1])
    positions = np.linspace(0, len(candidates) - 1, num_slices + 2)[1:-1]
    return sorted({int(candidates[int(round(p))]) for p in positions})


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty), by MONAI's ``compute_dice``."""
    as_batch = [torch.as_tensor(mask > 0, dtype=torch.float32)[None, None] for mask in (prediction, truth)]
    return float(compute_dice(*as_batch, include_background=True, ignore_empty=False))


def main(image: str, truth: str, prediction: str, out: str, num_slices: int = 4, title: str = "") -> None:
    """
    Args:
        image: the patient's prepared volume (rows x columns x slices x 3).
        truth: its label volume.
        prediction: the bundle's segmentation of it (``<name>_seg.nii.gz``).
        out: the PNG to write.
        num_slices: how many slices to show.
        title: figure title (default: the patient and its 3D Dice).
    """
    volume = np.asarray(nib.load(image).dataobj)[..., FLAIR].astype(np.float32)
    truth_mask = np.asarray(nib.load(truth).dataobj) > 0
    predicted_mask = np.asarray(nib.load(prediction).dataobj) > 0
    if not volume.shape == truth_mask.shape == predicted_mask.shape:
        raise ValueError(f"shapes differ: image {volume.shape}, truth {truth_mask.shape}, {predicted_mask.shape}")
    slices = pick_slices(truth_mask, num_slices)
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.6), squeeze=False)
    for ax, k in zip(axes[0], slices):
        ax.imshow(volume[..., k], cmap="gray")
        if truth_mask[..., k].any():
            ax.contour(truth_mask[..., k], levels=[0.5], colors="lime", linewidths=1.2)
        if predicted_mask[..., k].any():
            ax.contour(predicted_mask[..., k], levels=[0.5], colors="red", linewidths=1.2, linestyles="--")
        ax.set_title(f"slice {k}, Dice {dice(predicted_mask[..., k], truth_mask[..., k]):.2f}", fontsize=9)
        ax.axis("off")
    name = Path(image).name.split(".")[0]
    fig.suptitle(title or f"{name}: FLAIR, truth (green), prediction (red dashed); 3D Dice "
                 f"{dice(predicted_mask, truth_mask):.3f}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    fire.Fire(main)
