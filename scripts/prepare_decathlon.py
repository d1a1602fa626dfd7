"""
Write a datalist with a case-level split for a task in the Medical Segmentation Decathlon layout (``imagesTr/``,
``labelsTr/``), such as Task04_Hippocampus. The volumes stay where they are.

Usage::

    python scripts/prepare_decathlon.py --src /path/to/Task04_Hippocampus --dst data/hippocampus

A bad option, folder or file stops the run with one final line ``error: <file or --option>: <problem>`` and a
non-zero exit status, writing nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.data import DataError  # noqa: E402
from xunet_bundle.decathlon import prepare_datalist  # noqa: E402
from xunet_bundle.lgg import check_command_line, command_line_errors  # noqa: E402


def main(
    src: str | None = None, dst: str | None = None, num_folds: int = 5, test_fraction: float = 0.2, seed: int = 0
) -> None:
    """
    Args:
        src: the task folder holding ``imagesTr/`` and ``labelsTr/``.
        dst: folder that receives ``datalist.json`` (may be the task folder itself).
        num_folds: number of cross-validation folds.
        test_fraction: fraction of cases held out as the test set, in [0, 1).
        seed: seed of the case-level split.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with command_line_errors():
        for option, value in (("--src", src), ("--dst", dst)):
            if value is None:
                raise DataError(option, "is required (prepare_decathlon.py --src <task folder> --dst <folder>).")
        datalist = prepare_datalist(src, dst, num_folds=num_folds, test_fraction=test_fraction, seed=seed)
    print(
        f"wrote {dst}/datalist.json: {len(datalist['training'])} cases in {num_folds} folds, "
        f"{len(datalist['testing'])} test"
    )


if __name__ == "__main__":
    with command_line_errors():
        check_command_line(sys.argv[1:], main)
    fire.Fire(main)
