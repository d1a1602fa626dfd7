"""
Per-patient inference latency (issue 35): ``python -m monai.bundle run inference`` on one patient at a time, in a
fresh process each time, for several settings; reports the whole command's wall-clock seconds and the engine's (the
"Engine run finished. Time taken" line of Ignite's log), the median of ``repeats`` runs (the settings alternating
within each repeat), and the seconds ``import monai`` alone takes in a fresh process (the bulk of the start-up). With
``--network True`` it also times the network's forward alone on ``batch`` slices of 256 x 256 for the other runtimes:
PyTorch fp32 and bf16, ONNX Runtime fp32, and ``torch.compile`` (with its compile time), the shipped weights loaded.
With ``--ensemble_checkpoints`` it also times the ensemble of those models (``configs/ensemble.json``).

``dice`` evaluates the test patients once per numeric setting (fp32 and bf16 here) with ``evaluate.json`` and
reports each patient's Dice and the paired difference against the first setting.

Usage::

    python benchmarks/tools/latency.py latency --dataset_dir data/lgg --repeats 2 \
        --json_out benchmarks/latency/cpu_2cores.json
    python benchmarks/tools/latency.py dice --dataset_dir data/lgg --json_out benchmarks/latency/dice_bf16.json
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record_run import current_commit  # noqa: E402

from xunet_bundle import CrossBasicUNet  # noqa: E402
from xunet_bundle.runtime import cpu_supports_bf16  # noqa: E402

# each setting: the overrides it adds to the defaults of configs/inference.json
CHANNELS_FIRST = ["--network_def#cpu_channels_last", "False"]
SETTINGS = {
    "default": [],
    "fp32, channels-first": ["--amp", "False", *CHANNELS_FIRST],
    "bf16, channels-first": ["--amp", "True", *CHANNELS_FIRST],
    "fp32": ["--amp", "False"],
    "bf16": ["--amp", "True"],
    "fp32, no mirroring": ["--amp", "False", "--mirror_axes", "[]"],
    "bf16, no mirroring": ["--amp", "True", "--mirror_axes", "[]"],
    "bf16, 8 slices per call": ["--amp", "True", "--sw_batch_size", "8"],
    "no gc freeze": ["--gc_freeze", "False"],
}
ENGINE_TIME = re.compile(r"Engine run finished\. Time taken: (\d+):(\d+):(\d+\.\d+)")


def ensemble_overrides(checkpoints: tuple[str, ...]) -> list[str]:
    """The overrides that segment with the ensemble of ``checkpoints`` (``configs/ensemble.json``), default settings."""
    members = [str(Path(path).absolute()) for path in checkpoints]
    return [
        "--config_file",
        "['configs/inference.json','configs/ensemble.json']",
        "--ensemble_checkpoints",
        str(members),
    ]


def run_inference(image: Path, overrides: list[str], work: Path) -> tuple[float, float]:
    """
    Segment ``image`` alone in a fresh process; return the command's and the engine's seconds. ``overrides`` may
    replace the config file (an ensemble's).
    """
    input_dir, output_dir = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work))
    os.symlink(image, input_dir / image.name)
    if "--config_file" not in overrides:
        overrides = ["--config_file", "configs/inference.json", *overrides]
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference", *overrides,
        "--dataset_dir", str(input_dir), "--output_dir", str(output_dir),
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    match = ENGINE_TIME.search(result.stdout + result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"inference failed: {(result.stdout + result.stderr)[-3000:]}")
    hours, minutes, secs = match.groups()
    return seconds, int(hours) * 3600 + int(minutes) * 60 + float(secs)


def import_seconds(repeats: int) -> tuple[float, float]:
    """
    The medians, over fresh processes, of the seconds ``import monai`` takes inside the process and of the wall-clock
    seconds of the whole ``python -c "import monai"`` (start, import and exit, whose garbage collections traverse
    every imported object).
    """
    code = "import time; start = time.perf_counter(); import monai; print(time.perf_counter() - start)"
    inside, whole = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        whole.append(time.perf_counter() - start)
        inside.append(float(result.stdout.split()[-1]))
    return statistics.median(inside), statistics.median(whole)


def forward_seconds(function, x: torch.Tensor, repeats: int) -> float:
    """The median seconds of ``function(x)`` after one warm-up call."""
    with torch.inference_mode():
        function(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_runtimes(batch: int, repeats: int, compile_network: bool) -> dict[str, float]:
    """Seconds per slice of the network's forward under each runtime, with the shipped weights."""
    network = CrossBasicUNet(features=(32, 32, 64, 128, 256, 32), fast_fusion=True).eval()
    network.load_state_dict(torch.load(REPO / "models" / "model.pt", weights_only=True))
    x = torch.randn(batch, 3, 256, 256)

    def bf16(function):
        def run(inputs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return function(inputs).float()

        return run

    results = {"torch fp32": forward_seconds(network, x, repeats) / batch}
    if cpu_supports_bf16():
        results["torch bf16"] = forward_seconds(bf16(network), x, repeats) / batch
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "xunet.onnx")
            torch.onnx.export(network, (x,), path, input_names=["image"], output_names=["pred"], dynamo=False)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            array = x.numpy()
            results["onnxruntime fp32"] = forward_seconds(lambda _: session.run(None, {"image": array}), x, repeats)
            results["onnxruntime fp32"] /= batch
    if compile_network:
        compiled = torch.compile(network)
        run = bf16(compiled) if cpu_supports_bf16() else compiled
        start = time.perf_counter()
        with torch.inference_mode():
            run(x)
        results["torch.compile first call (s)"] = time.perf_counter() - start
        results["torch.compile" + (" bf16" if cpu_supports_bf16() else " fp32")] = (
            forward_seconds(run, x, repeats) / batch
        )
    return results


def main(
    dataset_dir: str,
    patients: tuple[str, ...] = ("TCGA_DU_7309_19960831", "TCGA_HT_7881_19981015"),
    settings: tuple[str, ...] = tuple(name for name in SETTINGS if name != "bf16"),
    repeats: int = 3,
    network: bool = True,
    batch: int = 4,
    compile_network: bool = True,
    ensemble_checkpoints: tuple[str, ...] = (),
    json_out: str | None = None,
) -> None:
    """
    Args:
        dataset_dir: a folder prepared by ``scripts/prepare_lgg.py`` (its ``imagesTr``).
        patients: the patients (file names without ``.nii.gz``) to segment.
        settings: names in :data:`SETTINGS`.
        ensemble_checkpoints: if given, also time the ensemble of these ``model.pt`` files (``configs/ensemble.json``)
            with the default settings, as the setting "ensemble of N". Its latency does not depend on the weights'
            values, only on their number.
        repeats: runs per patient and setting (the median is reported).
        network: also time the network alone under each runtime.
        batch: slices per network call for those timings.
        compile_network: include ``torch.compile`` (minutes of compilation on 2 cores).
        json_out: where to write the JSON record.
    """
    record = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": current_commit(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "native_bf16": cpu_supports_bf16(),
        },
    }
    record["import_monai_s"], record["python_import_monai_s"] = import_seconds(repeats)
    record["patients"] = {}
    overrides = {name: SETTINGS[name] for name in settings}
    if ensemble_checkpoints:
        overrides[f"ensemble of {len(ensemble_checkpoints)}"] = ensemble_overrides(tuple(ensemble_checkpoints))
    print(
        f"import monai: {record['import_monai_s']:.2f} s; python -c 'import monai' as a whole (start, import, exit): "
        f"{record['python_import_monai_s']:.2f} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as work:
        for patient in patients:
            image = (Path(dataset_dir) / "imagesTr" / f"{patient}.nii.gz").absolute()
            slices = int(__import__("nibabel").load(image).shape[2])
            # the settings alternate within each repeat, so that a machine slowing down or speeding up during the
            # benchmark weighs on all of them alike
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in overrides}
            for _ in range(repeats):
                for name in overrides:
                    runs[name].append(run_inference(image, overrides[name], Path(work)))
            rows = {}
            for name in overrides:
                command = statistics.median(r[0] for r in runs[name])
                engine = statistics.median(r[1] for r in runs[name])
                rows[name] = {
                    "command_s": round(command, 2),
                    "engine_s": round(engine, 2),
                    "runs": [{"command_s": round(c, 2), "engine_s": round(e, 2)} for c, e in runs[name]],
                }
                print(f"{patient} ({slices} slices) {name}: command {command:.2f} s, engine {engine:.2f} s", flush=True)
            record["patients"][patient] = {"slices": slices, "settings": rows}
    if network:
        record["network_s_per_slice"] = {
            k: round(v, 4) for k, v in network_runtimes(batch, repeats, compile_network).items()
        }
        print(json.dumps(record["network_s_per_slice"], indent=2), flush=True)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(record, indent=4) + "\n")


def dice(
    dataset_dir: str,
    settings: tuple[str, ...] = ("fp32", "bf16"),
    tolerance: float = 0.002,
    json_out: str | None = None,
) -> None:
    """
    Per-patient test Dice of the shipped weights with their default post-processing, for each numeric setting.

    Args:
        dataset_dir: a folder prepared by ``scripts/prepare_lgg.py``.
        settings: names in :data:`SETTINGS`; the first is the reference.
        tolerance: the largest per-patient paired difference that counts as the same Dice.
        json_out: where to write the JSON record.
    """
    per_setting = {}
    with tempfile.TemporaryDirectory() as work:
        for name in settings:
            output_dir = Path(work) / name.replace(" ", "_")
            command = [
                sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
                "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(Path(dataset_dir).absolute()),
                "--eval_subset", "test", "--num_workers", "0", "--output_dir", str(output_dir), *SETTINGS[name],
            ]  # fmt: skip
            subprocess.run(command, cwd=REPO, check=True, capture_output=True)
            with open(output_dir / "test_mean_dice_raw.csv") as f:
                rows = list(csv.reader(f))[1:]
            per_setting[name] = {Path(row[0]).name.split(".")[0]: float(row[1]) for row in rows}
    reference = per_setting[settings[0]]
    record = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "tolerance": tolerance}
    for name in settings:
        differences = [per_setting[name][patient] - reference[patient] for patient in reference]
        record[name] = {
            "mean_dice": round(statistics.mean(per_setting[name].values()), 4),
            "max_abs_paired_difference": round(max(abs(d) for d in differences), 4),
            "same_dice": max(abs(d) for d in differences) <= tolerance,
            "per_patient": {patient: round(value, 4) for patient, value in per_setting[name].items()},
        }
        print(f"{name}: mean {record[name]['mean_dice']:.4f}, largest paired difference "
              f"{record[name]['max_abs_paired_difference']:.4f}", flush=True)  # fmt: skip
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(record, indent=4) + "\n")


if __name__ == "__main__":
    fire.Fire({"latency": main, "dice": dice})
