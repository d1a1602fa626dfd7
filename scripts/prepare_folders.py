"""
Write a datalist with a case-level split for cases stored one file per channel, found by path patterns with a
``{case}`` placeholder: one folder per case (the BraTS layout) or flat folders (nnU-Net's raw layout). The images stay
where they are; labels are rewritten into ``<dst>/labelsTr/`` only when ``--label_map`` changes their values.

Usage::

    # BraTS: BraTS_001/BraTS_001_flair.nii.gz, ..._t1ce.nii.gz, ..._seg.nii.gz (labels 0, 1, 2, 4; whole tumour)
    python scripts/prepare_folders.py --src /data/brats --dst data/brats \\
        --images "['{case}/*_flair.nii.gz','{case}/*_t1ce.nii.gz']" --label "{case}/*_seg.nii.gz" \\
        --label_map "{2: 1, 4: 1}"
    # nnU-Net raw: imagesTr/<case>_0000.nii.gz, imagesTr/<case>_0001.nii.gz, labelsTr/<case>.nii.gz
    python scripts/prepare_folders.py --src /data/Dataset001 --dst data/dataset001 \\
        --images "['imagesTr/{case}_0000.nii.gz','imagesTr/{case}_0001.nii.gz']" --label "labelsTr/{case}.nii.gz"

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
from xunet_bundle.decathlon import prepare_case_folders  # noqa: E402
from xunet_bundle.lgg import check_command_line, command_line_errors  # noqa: E402


def main(
    src: str | None = None,
    dst: str | None = None,
    images: list[str] | None = None,
    label: str | None = None,
    label_map: dict | None = None,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> None:
    """
    Args:
        src: the dataset's folder.
        dst: folder that receives ``datalist.json``.
        images: one path pattern per channel, relative to ``src``, in channel order, each holding ``{case}`` once.
        label: the label's path pattern, relative to ``src``.
        label_map: label values to change, such as ``{2: 1, 4: 1}``; other values are kept.
        num_folds: number of cross-validation folds.
        test_fraction: fraction of cases held out as the test set, in [0, 1).
        seed: seed of the case-level split.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with command_line_errors():
        for option, value in (("--src", src), ("--dst", dst), ("--images", images), ("--label", label)):
            if value is None:
                raise DataError(option, "is required (see the usage at the top of scripts/prepare_folders.py).")
        datalist = prepare_case_folders(src, dst, images, label, label_map, num_folds, test_fraction, seed)
    print(
        f"wrote {dst}/datalist.json: {len(datalist['training'])} cases in {num_folds} folds, "
        f"{len(datalist['testing'])} test; train with --in_channels {len(images)}"
    )


if __name__ == "__main__":
    with command_line_errors():
        check_command_line(sys.argv[1:], main)
    fire.Fire(main)
