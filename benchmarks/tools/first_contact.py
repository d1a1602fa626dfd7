"""
Time what a new user waits for, on this machine: ``scripts/demo.sh`` (its training and validation, the install
excluded, and the best validation Dice it prints), and ``monai.bundle run inference`` with the shipped weights on one
demo volume and on real LGG patients, with and without test-time mirroring: the whole command and the engine alone.
Run it on idle cores; it writes a JSON record and prints a markdown table.

Usage::

    python benchmarks/tools/first_contact.py --out benchmarks/demo/cpu_2cores.json \
        --lgg_patients "['TCGA_DU_7309_19960831','TCGA_HT_7881_19981015']"
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import fire
import nibabel as nib

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from describe_machine import describe_machine  # noqa: E402

from xunet_bundle.data import write_nifti  # noqa: E402
from xunet_bundle.lgg import LGG_AFFINE, read_patient  # noqa: E402

ENGINE_TIME = re.compile(r"SupervisedEvaluator - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)")
DEMO_TIME = re.compile(r"demo: training and validation took (\d+) s")
DEMO_DICE = re.compile(r"best validation Dice ([\d.]+) at epoch (\d+)")


def run_demo() -> dict:
    """Run ``scripts/demo.sh`` as a user does and read its own report of time and Dice."""
    start = time.perf_counter()
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    output = result.stdout + result.stderr
    dice = DEMO_DICE.search(output)
    return {
        "command": "bash scripts/demo.sh",
        "training_and_validation_seconds": int(DEMO_TIME.search(output).group(1)),
        "whole_command_seconds": round(wall, 1),
        "best_validation_dice": float(dice.group(1)),
        "best_epoch": int(dice.group(2)),
        "summary": [line for line in result.stdout.splitlines() if line.startswith("summary:")][-1],
    }


def time_inference(volume: Path, mirror_axes: str, repeats: int) -> dict:
    """Median whole-command and engine seconds of inference on one volume with the shipped weights."""
    whole, engine = [], []
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json",
            "--dataset_dir", str(volume.parent), "--output_dir", out, "--mirror_axes", mirror_axes,
        ]  # fmt: skip
        for _ in range(repeats):
            start = time.perf_counter()
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            whole.append(time.perf_counter() - start)
            hours, minutes, seconds = ENGINE_TIME.search(result.stdout + result.stderr).groups()
            engine.append(int(hours) * 3600 + int(minutes) * 60 + float(seconds))
    command_line = " ".join(command[1:]).replace(out, "<out>").replace(str(volume.parent), "<folder>")
    return {
        "volume": volume.name,
        "slices": nib.load(volume).shape[2],
        "mirror_axes": mirror_axes,
        "whole_command_seconds": round(statistics.median(whole), 2),
        "engine_seconds": round(statistics.median(engine), 2),
        "repeats": repeats,
        "command": f"python {command_line}",
    }


def lgg_volume(patient: str, src: Path, folder: Path) -> Path:
    """One LGG patient converted as ``scripts/prepare_lgg.py`` converts it, alone in its own folder."""
    image, _ = read_patient(src / patient)
    path = folder / patient / f"{patient}.nii.gz"
    path.parent.mkdir(parents=True)
    write_nifti(image, LGG_AFFINE, path)
    return path


def main(
    out: str = "benchmarks/demo/cpu_2cores.json",
    lgg_patients: Sequence[str] = ("TCGA_DU_7309_19960831", "TCGA_HT_7881_19981015"),
    lgg_src: str = str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"),
    repeats: int = 3,
    demo: bool = True,
) -> None:
    """
    Args:
        out: the JSON record to write.
        lgg_patients: LGG patient folders of ``lgg_src`` to time inference on (a typical ~40-slice one, a large one).
        lgg_src: the Kaggle LGG ``kaggle_3m`` folder.
        repeats: runs of each inference command (the median is kept).
        demo: also run ``scripts/demo.sh`` (which writes ``data/demo`` and ``runs/demo``).
    """
    record = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": describe_machine()}
    if demo:
        record["demo"] = run_demo()
    with tempfile.TemporaryDirectory() as tmp:
        volumes = [REPO / "data" / "demo" / "imagesTr" / "demo_000.nii.gz"]
        if not volumes[0].is_file():
            raise SystemExit(f"error: {volumes[0]}: no demo data; run bash scripts/demo.sh first")
        single = Path(tmp) / "demo" / volumes[0].name
        single.parent.mkdir()
        single.symlink_to(volumes[0])
        volumes = [single] + [lgg_volume(patient, Path(lgg_src), Path(tmp)) for patient in lgg_patients]
        record["inference"] = [
            time_inference(volume, mirror_axes, repeats) for volume in volumes for mirror_axes in ("[]", "[1]")
        ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=4) + "\n")
    if demo:
        d = record["demo"]
        print(
            f"demo: training and validation {d['training_and_validation_seconds']} s, best validation Dice "
            f"{d['best_validation_dice']:.3f} (epoch {d['best_epoch']})\n"
        )
    print("| volume | slices | mirroring | whole command (s) | engine (s) |\n| --- | --- | --- | --- | --- |")
    for row in record["inference"]:
        mirroring = "left-right" if row["mirror_axes"] == "[1]" else "off"
        print(
            f"| {row['volume']} | {row['slices']} | {mirroring} | {row['whole_command_seconds']:.1f} | "
            f"{row['engine_seconds']:.1f} |"
        )


if __name__ == "__main__":
    fire.Fire(main)
