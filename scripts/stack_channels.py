"""
Stack cases stored as one file per sequence (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...) into one
multi-channel NIfTI volume per case (``<case>.nii.gz``, channels last), the layout MONAI Label studies need: its
``monaibundle`` app hands the bundle one image per study. ``monai.bundle run inference`` reads the separate files
itself (``--channel_suffixes``).

Every file is checked before anything is written (a regular file; one channel each, stored as ``(x, y, z)`` or
``(x, y, z, 1)``; a finite, invertible affine; a case's files on one voxel grid); each volume keeps the affine of its
first channel file and is written atomically, so the destination holds only complete volumes. A bad option or file
stops the run with one final line ``error: <file or --option>: <problem>`` and a non-zero exit status.

Usage::

    python scripts/stack_channels.py --src /path/to/cases --dst data/studies \
        --channel_suffixes "['_0000','_0001','_0002']"
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.data import (  # noqa: E402
    DataError,
    case_name,
    channel_suffix_list,
    check_output_dirs,
    find_volumes,
    write_nifti,
)
from xunet_bundle.lgg import (  # noqa: E402
    MAX_VOLUME_BYTES,
    check_command_line,
    command_line_errors,
    describe,
    file_type,
    output_lock,
    path_option,
    remove_leftovers,
    whole_number,
)
from xunet_bundle.transforms import check_cases  # noqa: E402


def check_channel_file(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """
    Read the header of one channel file and check it holds one channel on a usable voxel grid.

    Args:
        path: the channel file.

    Returns:
        ``(spatial shape, affine)``, the affine as nibabel reads it (the sform, else the qform).

    Raises:
        DataError: naming the file when it cannot be read, holds several channels or is not 3D, or its affine has
            NaN or infinite values or is singular.
    """
    try:
        image = nib.load(path)
        shape, affine, itemsize = tuple(image.shape), image.affine, image.get_data_dtype().itemsize
    except Exception as e:  # nibabel raises anything from ImageFileError to EOFError on damaged files
        raise DataError(path, f"cannot read the image ({type(e).__name__}: {e}).") from e
    if len(shape) == 4 and shape[3] != 1:
        raise DataError(
            path, f"holds {shape[3]} channels (shape {shape}); a channel file must hold one: (x, y, z) or (x, y, z, 1)."
        )
    if len(shape) not in (3, 4):
        raise DataError(path, f"expected a 3D volume (x, y, z) or (x, y, z, 1), got shape {shape}.")
    if np.prod(shape, dtype=float) * max(itemsize, 4) > MAX_VOLUME_BYTES:
        raise DataError(path, f"a volume of shape {shape} is larger than the {MAX_VOLUME_BYTES // 2**30} GiB limit.")
    if affine is None or not np.all(np.isfinite(affine)):
        raise DataError(path, "the affine (sform/qform) holds NaN or infinite values: the voxel grid is unknown.")
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if singular[-1] <= 1e-6 * singular[0]:
        raise DataError(path, "the affine (sform/qform) is singular (zero determinant): the voxel grid is unusable.")
    return shape[:3], affine


def stack_cases(
    src: str, dst: str, channel_suffixes: Sequence[str] = ("_0000", "_0001", "_0002"), num_channels: int = 3
) -> list[Path]:
    """
    Write ``dst/<case>.nii.gz`` for every case of ``src``, its channel files stacked in the order of the suffixes.

    Args:
        src: folder of the channel files, ``<case><suffix>.nii.gz``.
        dst: folder that receives the stacked volumes; not ``src``.
        channel_suffixes: the file-name endings of a case's channel files, in channel order.
        num_channels: the number of channels each case must have (the number of suffixes).

    Returns:
        the volumes written.
    """
    src, dst = path_option(src, "--src"), path_option(dst, "--dst")
    num_channels = whole_number(num_channels, "--num_channels", minimum=1)
    suffixes = channel_suffix_list(channel_suffixes)
    if len(suffixes) != num_channels:
        raise DataError("--num_channels", f"is {num_channels}, but {len(suffixes)} channel suffixes are given.")
    if dst.resolve() == src.resolve():
        raise DataError("--dst", f"{dst} is the --src folder: the volumes would be mixed with the channel files.")
    cases = find_volumes(src, suffixes)
    grids = []
    for case in cases:
        paths = [Path(path) for path in case["image"]]
        (shape, affine), *others = [check_channel_file(path) for path in paths]
        for path, (other_shape, other_affine) in zip(paths[1:], others):
            if other_shape != shape:
                raise DataError(path, f"spatial size {other_shape} differs from {paths[0].name}'s {shape}.")
            if not np.allclose(other_affine, affine, atol=1e-4):
                raise DataError(
                    path,
                    f"affine differs from {paths[0].name}'s: the channel files of a case must be on the same voxel "
                    "grid (resample them onto one first).",
                )
        grids.append((shape, affine))
    check_cases(cases, num_channels=num_channels)
    outputs = [dst / f"{case_name(case['image'][0], suffixes[0])}.nii.gz" for case in cases]
    seen: dict[Path, str] = {}
    for output, case in zip(outputs, cases):
        if seen.setdefault(output, case["image"][0]) != case["image"][0]:
            raise DataError(case["image"][0], f"would be written as {output.name}, like {seen[output]}.")
        kind = file_type(output)
        if kind not in ("file", "missing", "a symbolic link whose target does not exist"):
            raise DataError(output, f"exists and is not a regular file ({describe(kind)}).")
    check_output_dirs(dst)
    with output_lock(dst):
        # atomic_path's temporary files of a killed run: .<case>.nii.gz.<random>.nii.gz
        remove_leftovers(dst, [re.escape(f".{output.name}.") + r"[A-Za-z0-9_-]+\.nii\.gz" for output in outputs])
        for case, output, (shape, affine) in zip(cases, outputs, grids):
            channels = [np.asanyarray(nib.load(path).dataobj).reshape(shape) for path in case["image"]]
            write_nifti(np.stack(channels, axis=-1), affine, output)
    return outputs


def main(
    src: str | None = None,
    dst: str | None = None,
    channel_suffixes: Sequence[str] = ("_0000", "_0001", "_0002"),
    num_channels: int = 3,
) -> None:
    """
    Args:
        src: folder of the channel files, ``<case><suffix>.nii.gz``.
        dst: folder that receives ``<case>.nii.gz``; not ``src``.
        channel_suffixes: the file-name endings of a case's channel files, in channel order (pre-contrast, FLAIR,
            post-contrast for the LGG model).
        num_channels: the number of channels each case must have.
    """
    with command_line_errors():
        for option, value in (("--src", src), ("--dst", dst)):
            if value is None:
                raise DataError(option, "is required (stack_channels.py --src <folder> --dst <folder>).")
        written = stack_cases(src, dst, channel_suffixes, num_channels)
    print(f"wrote {len(written)} volumes of {num_channels} channels to {dst}")


if __name__ == "__main__":
    with command_line_errors():
        check_command_line(sys.argv[1:], main)
    fire.Fire(main)
