"""Shared fixtures: paths of the repository and of the real data in ../shared (optional for users, mandatory in CI)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from xunet_bundle.data import nifti_stem, write_nifti

REPO_ROOT = Path(__file__).resolve().parent
SHARED = REPO_ROOT.parent / "shared"
LGG_ROOT = SHARED / "data" / "lgg" / "kaggle_3m"
HIPPOCAMPUS_ROOT = SHARED / "data" / "hippocampus"
SCHEMA = SHARED / "reference" / "meta_schema_20240725.json"


def require_shared(path: Path, what: str = "the real data") -> Path:
    """
    Return ``path``, or skip the test when it is absent (fail instead when XUNET_REQUIRE_SHARED_DATA=1, as in CI); the
    reason names the missing path and ``what`` it is.
    """
    if path.exists():
        return path
    reason = f"{path} is not available: this test needs {what}, kept beside the checkout in ../shared"
    if os.environ.get("XUNET_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(reason + " (XUNET_REQUIRE_SHARED_DATA=1 makes it mandatory)")
    pytest.skip(reason)


def run_bundle(
    *args: str,
    nproc: int = 1,
    expect_success: bool = True,
    env: dict[str, str] | None = None,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess:
    """
    Run ``python -m monai.bundle ARGS`` from the bundle root, in ``nproc`` processes through ``torchrun`` when
    ``nproc > 1``; by default fail the test with the command's output when it fails. Modules in ``tests/`` can be
    imported by the configs. ``env`` adds environment variables. ``file_size_limit`` (bytes) makes the kernel refuse
    to write any file beyond that size, as a full disk would (Python ignores SIGXFSZ, so writes fail with EFBIG).
    """
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    command = [sys.executable, "-m", "monai.bundle", *args]
    if nproc > 1:
        env["OMP_NUM_THREADS"] = "1"  # the processes share the machine's cores
        command[1:1] = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=limit_file_size if file_size_limit else None,
    )
    if expect_success:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def copy_bundle(dst: Path, entries: tuple[str, ...]) -> Path:
    """Copy the given top-level files and folders of the bundle into ``dst`` (without Python caches)."""
    for entry in entries:
        source = REPO_ROOT / entry
        if source.is_dir():
            shutil.copytree(source, dst / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, dst / entry)
    return dst


def write_channel_files(volume: Path, folder: Path) -> list[Path]:
    """
    Write a multi-channel NIfTI volume as one file per channel into ``folder``, as nnU-Net stores cases
    (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...); returns the files in channel order.
    """
    image = nib.load(volume)
    array = np.asarray(image.dataobj)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{nifti_stem(volume.name)}_{channel:04d}.nii.gz" for channel in range(array.shape[-1])]
    for channel, path in enumerate(files):
        write_nifti(array[..., channel], image.affine, path)
    return files


@pytest.fixture
def lgg_root() -> Path:
    return require_shared(LGG_ROOT)


@pytest.fixture
def schema_path() -> Path:
    return require_shared(SCHEMA, "the Model Zoo's metadata schema (the URL of configs/metadata.json's \"schema\")")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset in the prepared-LGG layout, shared by the tests of one session."""
    from xunet_bundle.demo import make_demo_dataset

    folder = tmp_path_factory.mktemp("demo")
    make_demo_dataset(folder, num_patients=10, size=48, num_slices=8, progress=False)
    return folder


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    """The bundle's trained weights, ``models/model.pt``; tests of what is built from them skip without them."""
    path = REPO_ROOT / "models" / "model.pt"
    if not path.is_file():
        pytest.skip(f"{path} is not there: this test needs the shipped weights")
    return path
