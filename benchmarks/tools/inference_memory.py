"""
Peak memory of bundle inference on large volumes (issue 6): ``python -m monai.bundle run inference`` on synthetic
512x512xN 3-channel volumes of two depths, each in a fresh process, reporting the process's peak resident memory.

The network sees ``sw_batch_size`` slices at a time (``SliceInferer``), so the peak is the volume's own arrays (input,
output probabilities) plus a constant for the network: the difference between the two depths shows the per-slice
cost, the intercept the network's.

Usage::

    python benchmarks/tools/inference_memory.py --depths "[50,200]" --json_out benchmarks/large_volume/cpu_2cores.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from xunet_bundle import CrossBasicUNet  # noqa: E402
from xunet_bundle.data import LGG_AFFINE, write_nifti  # noqa: E402
from xunet_bundle.demo import synthetic_patient  # noqa: E402


def run_inference(input_dir: Path, output_dir: Path, ckpt_dir: Path, sw_batch_size: int) -> tuple[float, float]:
    """Run bundle inference in a fresh process; return its wall-clock seconds and peak resident memory in MiB."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json",
        "--dataset_dir", str(input_dir), "--output_dir", str(output_dir), "--ckpt_dir", str(ckpt_dir),
        "--sw_batch_size", str(sw_batch_size),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"inference failed: {process.stderr.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(
    depths: tuple[int, ...] = (50, 200),
    size: int = 512,
    sw_batch_size: int = 4,
    work_dir: str = "runs/large_volume",
    ckpt_dir: str | None = None,
    json_out: str | None = None,
) -> None:
    """
    Args:
        depths: numbers of slices of the volumes measured.
        size: in-plane size (rows and columns).
        sw_batch_size: slices per network call.
        work_dir: receives the synthetic volumes and the segmentations.
        ckpt_dir: folder with the weights to use (default: untrained weights; memory does not depend on them).
        json_out: also write the results as JSON.
    """
    work = Path(work_dir).resolve()
    if ckpt_dir is None:
        ckpt = work / "models"
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.save(CrossBasicUNet().state_dict(), ckpt / "model.pt")
    else:
        ckpt = Path(ckpt_dir).resolve()
    rows = []
    for depth in depths:
        input_dir, output_dir = work / f"images_{depth}", work / f"seg_{depth}"
        input_dir.mkdir(parents=True, exist_ok=True)
        image, _ = synthetic_patient(seed=depth, size=size, num_slices=depth)
        write_nifti(image, LGG_AFFINE, input_dir / "large.nii.gz")
        del image
        seconds, peak_mib = run_inference(input_dir, output_dir, ckpt, sw_batch_size)
        seg = nib.load(output_dir / "large_seg.nii.gz")
        if seg.shape != (size, size, depth):
            raise RuntimeError(f"segmentation shape {seg.shape} differs from the input's {(size, size, depth)}")
        volume_mib = size * size * depth * 3 * 4 / 2**20  # the image as float32
        rows.append(
            {"shape": [size, size, depth, 3], "seconds": seconds, "peak_mib": peak_mib, "image_mib": volume_mib}
        )
    per_slice = (rows[-1]["peak_mib"] - rows[0]["peak_mib"]) / max(1, depths[-1] - depths[0])
    lines = [
        f"# bundle inference, XUNet, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"sw_batch_size {sw_batch_size}",
        f'# command: python benchmarks/tools/inference_memory.py --depths "{list(depths)}" --size {size} '
        f"--sw_batch_size {sw_batch_size}",
        "| volume | image as float32 (MiB) | peak resident memory (MiB) | seconds |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {'x'.join(map(str, r['shape']))} | {r['image_mib']:.0f} | {r['peak_mib']:.0f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    lines.append(f"\nPeak memory grows by {per_slice:.1f} MiB per slice of {size}x{size}x3.")
    print("\n".join(lines))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps({"rows": rows, "per_slice_mib": per_slice, "table": lines}, indent=4))


if __name__ == "__main__":
    fire.Fire(main)
