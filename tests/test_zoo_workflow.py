"""
The Model Zoo's in-process smoke test (as its ``ci/unit_tests`` run every bundle): ``ConfigWorkflow`` on the bundle's
configs with keyword overrides, ``initialize()``, ``check_properties()``, ``run()``, ``finalize()``, here on tiny
synthetic data so that it runs in seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import shutil
import sys

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def zoo_workflow(config_file: str, workflow_type: str, **override) -> ConfigWorkflow:
    """A workflow built as the zoo's CI builds one: config, logging and metadata files, then keyword overrides."""
    return ConfigWorkflow(
        config_file=str(CONFIGS / config_file),
        logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(REPO_ROOT),
        **override,
    )


def run_checked(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    missing = workflow.check_properties()
    assert not missing, f"the config lacks the properties the zoo requires of a {workflow.type} workflow: {missing}"
    workflow.run()
    workflow.finalize()


def test_train_workflow_in_process(demo_dir, tmp_path):
    # ckpt_dir is given, so that no default can make the run write into the bundle's models/
    trainer = zoo_workflow(
        "train.json", "train", dataset_dir=str(demo_dir), output_dir=str(tmp_path), ckpt_dir=str(tmp_path / "models"),
        epochs=1, num_workers=0, progress=False,
    )  # fmt: skip
    run_checked(trainer)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    network = trainer.parser.get_parsed_content("network_def", lazy=False)  # a fresh instance from the config
    network.load_state_dict(state, strict=True)


def test_infer_workflow_in_process(shipped_weights, demo_dir, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for path in sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[:3]:  # a few demo volumes are enough
        shutil.copy(path, images / path.name)
    inferrer = zoo_workflow(
        "inference.json", "infer", dataset_dir=str(images), output_dir=str(out), ckpt_dir=str(shipped_weights.parent),
    )  # fmt: skip
    run_checked(inferrer)
    inputs = sorted(images.iterdir())
    expected = sorted(path.name.replace(".nii.gz", "_seg.nii.gz") for path in inputs)
    assert len(expected) == 3 and sorted(path.name for path in out.iterdir()) == expected
    for path in inputs:
        segmentation = nib.load(out / path.name.replace(".nii.gz", "_seg.nii.gz"))
        assert segmentation.shape == nib.load(path).shape[:3]  # the input's spatial shape (its channels are last)


def test_infer_workflow_without_weights_when_the_zoo_disables_the_loader(demo_dir, tmp_path):
    """The zoo's inference tests run without model.pt, disabling the checkpoint loader with ``handlers#0``."""
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    shutil.copy(sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[0], images / "case.nii.gz")
    inferrer = zoo_workflow(
        "inference.json", "infer", dataset_dir=str(images), output_dir=str(out), ckpt_dir=str(tmp_path / "no_models"),
        **{"handlers#0#_disabled_": True},
    )  # fmt: skip
    run_checked(inferrer)
    assert nib.load(out / "case_seg.nii.gz").shape == nib.load(images / "case.nii.gz").shape[:3]
    assert not (tmp_path / "no_models").exists()


def mmapped_bytes_of_a_large_allocation() -> int:
    """
    How many bytes glibc serves from mmap for a 1 GiB allocation: all of them by default, none once tuned. (1 GiB, not
    less: an untuned long-lived process may hold a smaller free block on its heap, which glibc would reuse.)
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

    fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields]

    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblkhd
    block = bytearray(1 << 30)
    during = libc.mallinfo2().hblkhd
    del block
    return during - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_host_process_keeps_its_excepthook_allocator_and_collector(demo_dir, tmp_path):
    """MONAI Label's server or a user's script loads and runs the bundle in-process: it must change none of them."""
    hook = sys.excepthook
    frozen = gc.get_freeze_count()
    assert mmapped_bytes_of_a_large_allocation() >= 1 << 30
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[0], images / "case.nii.gz")
    inferrer = zoo_workflow(
        "inference.json", "infer", dataset_dir=str(images), output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path / "no_models"), **{"handlers#0#_disabled_": True},
    )  # fmt: skip
    run_checked(inferrer)
    assert (tmp_path / "out" / "case_seg.nii.gz").is_file()
    assert sys.excepthook is hook
    assert gc.get_freeze_count() == frozen
    assert mmapped_bytes_of_a_large_allocation() >= 1 << 30
