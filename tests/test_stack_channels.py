"""scripts/stack_channels.py: one file per sequence stacked into the multi-channel volumes MONAI Label studies need."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import REPO_ROOT, write_channel_files
from xunet_bundle.data import write_nifti

SCRIPT = str(REPO_ROOT / "scripts" / "stack_channels.py")


def stack(src: Path, dst: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, SCRIPT, "--src", str(src), "--dst", str(dst)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_stacked_volumes_equal_the_volumes_the_channel_files_came_from(demo_dir, tmp_path):
    volumes = sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[:3]
    for path in volumes:
        write_channel_files(path, tmp_path / "channels")
    result = stack(tmp_path / "channels", tmp_path / "studies")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == [p.name for p in volumes]
    for path in volumes:
        original, stacked = nib.load(path), nib.load(tmp_path / "studies" / path.name)
        np.testing.assert_array_equal(np.asarray(stacked.dataobj), np.asarray(original.dataobj))
        np.testing.assert_allclose(stacked.affine, original.affine)


def test_a_case_missing_a_channel_file_stops_before_anything_is_written(demo_dir, tmp_path):
    volumes = sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[:2]
    for path in volumes:
        write_channel_files(path, tmp_path / "channels")
    flair = tmp_path / "channels" / volumes[1].name.replace(".nii.gz", "_0001.nii.gz")
    flair.unlink()
    result = stack(tmp_path / "channels", tmp_path / "studies")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {flair}: channel file not found"), last_line
    assert not (tmp_path / "studies").exists()


def test_channel_files_stored_as_one_channel_4d_volumes_stack_to_the_original(demo_dir, tmp_path):
    volume = sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[0]
    original = nib.load(volume)
    array = np.asarray(original.dataobj)
    affine = original.affine.copy()
    affine[:3, 3] = [12.5, -3.0, 40.0]  # an origin of its own: the output must keep the first channel file's
    for channel in range(array.shape[-1]):  # (x, y, z, 1), as some tools save a single channel
        path = tmp_path / "channels" / f"case_{channel:04d}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        write_nifti(array[..., channel : channel + 1], affine, path)
        assert nib.load(path).shape == (*array.shape[:3], 1)
    result = stack(tmp_path / "channels", tmp_path / "studies")
    assert result.returncode == 0, result.stderr
    stacked = nib.load(tmp_path / "studies" / "case.nii.gz")
    assert stacked.shape == array.shape
    np.testing.assert_array_equal(np.asarray(stacked.dataobj), array)
    np.testing.assert_allclose(stacked.affine, nib.load(tmp_path / "channels" / "case_0000.nii.gz").affine)
    np.testing.assert_allclose(stacked.affine, affine)


def test_a_two_channel_file_is_refused_naming_it_before_anything_is_written(demo_dir, tmp_path):
    volumes = sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[:2]
    for path in volumes:
        write_channel_files(path, tmp_path / "channels")
    last = tmp_path / "channels" / volumes[1].name.replace(".nii.gz", "_0002.nii.gz")
    image = nib.load(volumes[1])
    write_nifti(np.asarray(image.dataobj)[..., :2], image.affine, last)
    result = stack(tmp_path / "channels", tmp_path / "studies")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {last}: holds 2 channels"), last_line
    assert not (tmp_path / "studies").exists()
