"""The Model Zoo archive: contents, a fresh-process inference from the unpacked bundle, and monai.bundle.load."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
import torch

from conftest import REPO_ROOT

BUNDLE_NAME = "xunet_lgg_segmentation"


@pytest.fixture(scope="module")
def unpacked(shipped_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "scripts/package.py", "--out_dir", str(out)], cwd=REPO_ROOT, check=True)
    (archive,) = out.glob("*.zip")
    assert archive.name.startswith(f"{BUNDLE_NAME}_v")
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert {n.split("/")[0] for n in names} == {BUNDLE_NAME}
        z.extractall(target)
    return target


def bundle_env(bundle: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(bundle)}


def test_archive_holds_the_bundle_and_nothing_else(unpacked, shipped_weights):
    bundle = unpacked / BUNDLE_NAME
    top = {p.name for p in bundle.iterdir()}
    assert top == {"configs", "models", "docs", "xunet_bundle", "LICENSE", "scripts"}
    scripts = {"prepare_lgg.py", "prepare_decathlon.py", "prepare_folders.py", "stack_channels.py", "make_demo_data.py"}
    assert {p.name for p in (bundle / "scripts").iterdir()} == scripts  # the converters its docs tell users to run
    assert not list(bundle.rglob("__pycache__")) and not list(bundle.rglob("test_*"))
    assert (bundle / "models" / "model.pt").read_bytes() == shipped_weights.read_bytes()
    listing = (REPO_ROOT / "large_files.yml").read_text()  # for a zoo pull request, which carries no weights
    assert f'hash_val: "{hashlib.md5(shipped_weights.read_bytes()).hexdigest()}"' in listing


def test_unpacked_bundle_runs_inference_from_elsewhere(unpacked, demo_dir, tmp_path):
    bundle = unpacked / BUNDLE_NAME
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = bundle_env(bundle)
    imported = subprocess.run(
        [sys.executable, "-c", "import xunet_bundle; print(xunet_bundle.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(imported.stdout.strip()).is_relative_to(bundle)  # the packaged code, not this checkout
    result = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run", "inference",
            "--config_file", str(bundle / "configs" / "inference.json"),
            "--logging_file", str(bundle / "configs" / "logging.conf"),
            "--bundle_root", str(bundle), "--dataset_dir", str(demo_dir / "imagesTr"),
        ],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    segmentations = sorted((bundle / "eval").glob("*_seg.nii.gz"))
    assert len(segmentations) == len(list((demo_dir / "imagesTr").glob("*.nii.gz")))
    assert nib.load(segmentations[0]).shape == nib.load(demo_dir / "imagesTr" / "demo_000.nii.gz").shape[:3]


@pytest.mark.parametrize("workflow_type", ["train", "inference"])  # "train" is monai.bundle.load's default
def test_monai_bundle_load_returns_the_shipped_network(unpacked, shipped_weights, tmp_path, workflow_type):
    code = (
        "import monai.bundle, torch, sys;"
        f"net = monai.bundle.load(name={BUNDLE_NAME!r}, bundle_dir=sys.argv[1], workflow_type={workflow_type!r},"
        " device='cpu');"
        "torch.save(net.state_dict(), sys.argv[2])"
    )
    out = tmp_path / "loaded.pt"  # in a folder without data: loading the network reads no datalist
    subprocess.run(
        [sys.executable, "-c", code, str(unpacked), str(out)],
        cwd=tmp_path, env=bundle_env(unpacked / BUNDLE_NAME), check=True, timeout=300,
    )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["loaded.pt"]  # and writes nothing
    loaded, shipped = torch.load(out, weights_only=True), torch.load(shipped_weights, weights_only=True)
    assert loaded.keys() == shipped.keys()
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)
