"""
Write a datalist with a case-level split for a task in the Medical Segmentation Decathlon layout (``imagesTr/``,
``labelsTr/``), such as Task04_Hippocampus. The volumes stay where they are.

Usage::

    python scripts/prepare_decathlon.py --src /path/to/Task04_Hippocampus --dst data/hippocampus
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.data import DataError  # noqa: E402
from xunet_bundle.decathlon import prepare_datalist  # noqa: E402


def main(src: str, dst: str, num_folds: int = 5, test_fraction: float = 0.2, seed: int = 0) -> None:
    """
    Args:
        src: the task folder holding ``imagesTr/`` and ``labelsTr/``.
        dst: folder that receives ``datalist.json``.
        num_folds: number of cross-validation folds.
        test_fraction: fraction of cases held out as the test set.
        seed: seed of the case-level split.
    """
    try:
        datalist = prepare_datalist(src, dst, num_folds=num_folds, test_fraction=test_fraction, seed=seed)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(
        f"wrote {dst}/datalist.json: {len(datalist['training'])} cases in {num_folds} folds, "
        f"{len(datalist['testing'])} test"
    )


if __name__ == "__main__":
    fire.Fire(main)
