"""
Convert the Kaggle LGG MRI segmentation dataset (``kaggle_3m``) into one NIfTI volume per patient and a datalist.

Usage::

    python scripts/prepare_lgg.py --src /path/to/kaggle_3m --dst data/lgg

A bad option, folder or file stops the run with one final line ``error: <file or --option>: <problem>`` and a
non-zero exit status, leaving the destination as it was.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.data import DataError  # noqa: E402
from xunet_bundle.lgg import check_command_line, command_line_errors, prepare_dataset  # noqa: E402


def main(
    src: str | None = None,
    dst: str | None = None,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    on_error: str = "skip",
) -> None:
    """
    Args:
        src: the ``kaggle_3m`` folder as downloaded (one sub-folder per patient, compressed or uncompressed TIFF).
        dst: output folder, outside ``src``; receives ``imagesTr/<patient>.nii.gz``, ``labelsTr/<patient>.nii.gz``
            and ``datalist.json``, which replace those of an earlier run as a whole (other files are left alone).
        num_folds: number of cross-validation folds.
        test_fraction: fraction of patients held out as the test set, in [0, 1).
        seed: seed of the patient-level split.
        on_error: ``"skip"`` a bad patient with a warning, or ``"stop"`` at the first one.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with command_line_errors():
        for option, value in (("--src", src), ("--dst", dst)):
            if value is None:
                raise DataError(option, "is required (prepare_lgg.py --src <kaggle_3m folder> --dst <output folder>).")
        datalist = prepare_dataset(
            src, dst, num_folds=num_folds, test_fraction=test_fraction, seed=seed, on_error=on_error
        )
    print(
        f"wrote {len(datalist['training']) + len(datalist['testing'])} patients to {dst} "
        f"({len(datalist['training'])} in {num_folds} folds, {len(datalist['testing'])} test, "
        f"{len(datalist['skipped'])} skipped)"
    )


if __name__ == "__main__":
    with command_line_errors():
        check_command_line(sys.argv[1:], main)
    fire.Fire(main)
