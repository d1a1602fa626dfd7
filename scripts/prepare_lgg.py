"""
Convert the Kaggle LGG MRI segmentation dataset (``kaggle_3m``) into one NIfTI volume per patient and a datalist.

Usage::

    python scripts/prepare_lgg.py --src /path/to/kaggle_3m --dst data/lgg
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.data import DataError  # noqa: E402
from xunet_bundle.lgg import prepare_dataset  # noqa: E402


def main(
    src: str, dst: str, num_folds: int = 5, test_fraction: float = 0.2, seed: int = 0, on_error: str = "skip"
) -> None:
    """
    Args:
        src: the ``kaggle_3m`` folder as downloaded (one sub-folder per patient, compressed or uncompressed TIFF).
        dst: output folder; receives ``imagesTr/<patient>.nii.gz``, ``labelsTr/<patient>.nii.gz`` and
            ``datalist.json``.
        num_folds: number of cross-validation folds.
        test_fraction: fraction of patients held out as the test set.
        seed: seed of the patient-level split.
        on_error: ``"skip"`` a bad patient with a warning, or ``"stop"`` at the first one.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        datalist = prepare_dataset(
            src, dst, num_folds=num_folds, test_fraction=test_fraction, seed=seed, on_error=on_error
        )
    except DataError as e:
        sys.exit(f"error: {e}")
    print(
        f"wrote {len(datalist['training']) + len(datalist['testing'])} patients to {dst} "
        f"({len(datalist['training'])} in {num_folds} folds, {len(datalist['testing'])} test, "
        f"{len(datalist['skipped'])} skipped)"
    )


if __name__ == "__main__":
    fire.Fire(main)
