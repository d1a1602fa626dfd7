"""
Stack cases stored as one file per sequence (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...) into one
multi-channel NIfTI volume per case (``<case>.nii.gz``, channels last), the layout MONAI Label studies need: its
``monaibundle`` app hands the bundle one image per study. ``monai.bundle run inference`` reads the separate files
itself (``--channel_suffixes``).

Every file is checked before anything is written (one channel each; a case's files on one voxel grid); each volume is
written atomically, so the destination holds only complete volumes.

Usage::

    python scripts/stack_channels.py --src /path/to/cases --dst data/studies \
        --channel_suffixes "['_0000','_0001','_0002']"
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np
from monai.transforms import LoadImage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.data import DataError, case_name, check_output_dirs, find_volumes, write_nifti  # noqa: E402
from xunet_bundle.transforms import check_cases  # noqa: E402


def stack_cases(src: str, dst: str, channel_suffixes: Sequence[str], num_channels: int = 3) -> list[Path]:
    """
    Write ``dst/<case>.nii.gz`` for every case of ``src``, its channel files stacked in the order of the suffixes.

    Args:
        src: folder of the channel files, ``<case><suffix>.nii.gz``.
        dst: folder that receives the stacked volumes.
        channel_suffixes: the file-name endings of a case's channel files, in channel order.
        num_channels: the number of channels each case must have.

    Returns:
        the volumes written.
    """
    cases = find_volumes(src, channel_suffixes)
    check_cases(cases, num_channels=num_channels)
    check_output_dirs(dst)
    load = LoadImage(image_only=True, ensure_channel_first=True, dtype=None)
    written = []
    for case in cases:
        volume = Path(dst) / f"{case_name(case['image'][0], channel_suffixes[0])}.nii.gz"
        image = load(case["image"])
        write_nifti(np.moveaxis(image.numpy(), 0, -1), image.affine.numpy(), volume)
        written.append(volume)
    return written


def main(src: str, dst: str, channel_suffixes: Sequence[str] = ("_0000", "_0001", "_0002"), num_channels: int = 3):
    """
    Args:
        src: folder of the channel files, ``<case><suffix>.nii.gz``.
        dst: folder that receives ``<case>.nii.gz``.
        channel_suffixes: the file-name endings of a case's channel files, in channel order (pre-contrast, FLAIR,
            post-contrast for the LGG model).
        num_channels: the number of channels each case must have.
    """
    try:
        written = stack_cases(src, dst, channel_suffixes, num_channels)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {len(written)} volumes of {num_channels} channels to {dst}")


if __name__ == "__main__":
    fire.Fire(main)
