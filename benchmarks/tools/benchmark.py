"""
Speed and memory of XUNet (fast and straightforward fusion) against MONAI's BasicUNet, measured in the same run.

Every measurement runs in a fresh process, so that peak memory (the high-water mark of the resident set on CPU,
``max_memory_allocated`` on CUDA) belongs to that model alone. Ratios are to BasicUNet under the same settings.

Usage::

    python benchmarks/tools/benchmark.py                      # all cases, markdown table on stdout
    python benchmarks/tools/benchmark.py --cases 2d_b4 --repeats 5 --json_out runs/benchmark.json
    python benchmarks/tools/benchmark.py --cases 2d_b4 --models xunet_fast --cpu_path False \
        --metatensor True  # input types
    python benchmarks/tools/benchmark.py --cases 2d_b4 --models xunet_fast --cpu_path False \
        --compiled True  # torch.compile
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire
import torch
from monai.data import MetaTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from xunet_bundle import CrossBasicUNet  # noqa: E402
from xunet_bundle.runtime import cpu_supports_bf16, tune_glibc_malloc  # noqa: E402

CASES = {
    "2d_b1": {"spatial_dims": 2, "batch": 1, "size": (256, 256), "in_channels": 3},
    "2d_b4": {"spatial_dims": 2, "batch": 4, "size": (256, 256), "in_channels": 3},
    "3d_b1": {"spatial_dims": 3, "batch": 1, "size": (96, 96, 96), "in_channels": 1},
}
MODELS = ("basicunet", "xunet_fast", "xunet_reference", "xunet_attention", "xunet_projected")
FEATURES = (32, 32, 64, 128, 256, 32)
# glibc keeps large blocks on its heap instead of mmap-ing and page-faulting them again on every step
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000"}


def build(model: str, spatial_dims: int, in_channels: int) -> torch.nn.Module:
    """
    Args:
        model: ``basicunet``, ``xunet_fast`` / ``xunet_reference`` (concat fusion, fast or straightforward), or
            ``xunet_attention`` / ``xunet_projected`` (those fusion variants, fast).
    """
    if model == "basicunet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims, in_channels, 2, FEATURES)
    fusion = model.removeprefix("xunet_") if model in ("xunet_attention", "xunet_projected") else "concat"
    return CrossBasicUNet(spatial_dims, in_channels, 2, FEATURES, fast_fusion=model != "xunet_reference", fusion=fusion)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    model: str,
    case: str,
    mode: str,
    repeats: int = 3,
    device: str = "cpu",
    bf16: bool = False,
    threads: int = 0,
    mallopt: bool = False,
    metatensor: bool = False,
    compiled: bool = False,
) -> None:
    """
    One measurement in this process; prints a JSON line. Called by :func:`main` in a fresh process.

    Args:
        model: one of ``MODELS`` (see :func:`build`).
        case: a key of ``CASES``.
        mode: ``train`` (forward, Dice-free cross-entropy on logits, backward, AdamW step) or ``infer`` (forward
            under ``torch.inference_mode``, eval mode).
        repeats: timed repetitions after one warm-up; the median is reported.
        device: ``cpu`` or ``cuda``.
        bf16: autocast to bfloat16.
        threads: torch intra-op threads (0: PyTorch's default).
        mallopt: tune glibc malloc at run time (:func:`xunet_bundle.runtime.tune_glibc_malloc`), as the bundle does.
        metatensor: feed MONAI ``MetaTensor`` images and labels, as MONAI pipelines give unless the metadata is dropped.
        compiled: run the network through ``torch.compile`` (the warm-up compiles it; its time is reported apart).
    """
    if mallopt:
        tune_glibc_malloc(command_line_only=False)
    if threads:
        torch.set_num_threads(threads)
    spec = CASES[case]
    torch.manual_seed(0)
    net = build(model, spec["spatial_dims"], spec["in_channels"]).to(device)
    parameters = sum(p.numel() for p in net.parameters())
    x = torch.randn(spec["batch"], spec["in_channels"], *spec["size"], device=device)
    y = torch.randint(0, 2, (spec["batch"], *spec["size"]), device=device)
    if metatensor:
        x, y = MetaTensor(x), MetaTensor(y)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    if compiled:
        net = torch.compile(net)
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def run() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            if mode == "train":
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
                loss.backward()
                optimizer.step()
            else:
                with torch.inference_mode():
                    net(x)
        if device_type == "cuda":
            torch.cuda.synchronize()

    net.train(mode == "train")
    baseline = _rss_mb()
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    run()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device_type == "cuda" else _peak_rss_mb()
    print(
        json.dumps(
            {
                "seconds": statistics.median(times),
                "peak_mb": peak - baseline,
                "warmup_seconds": warmup,
                "threads": torch.get_num_threads(),
                "parameters": parameters,
            }
        )
    )


def _run_one(
    model: str,
    case: str,
    mode: str,
    repeats: int,
    device: str,
    bf16: bool,
    threads: int,
    env: dict | None = None,
    mallopt: bool = False,
    metatensor: bool = False,
    compiled: bool = False,
) -> dict:
    command = [sys.executable, __file__, "measure", model, case, mode, f"--repeats={repeats}", f"--device={device}"]
    command += [f"--bf16={bf16}", f"--threads={threads}", f"--mallopt={mallopt}", f"--metatensor={metatensor}"]
    command += [f"--compiled={compiled}"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(
    cases: str | tuple = tuple(CASES),
    models: str | tuple = MODELS,
    repeats: int = 3,
    device: str = "cpu",
    threads: int = 0,
    cpu_path: bool = True,
    metatensor: bool = False,
    compiled: bool = False,
    json_out: str | None = None,
) -> None:
    """
    Args:
        cases: comma-separated keys of ``CASES`` (``2d_b1``, ``2d_b4``, ``3d_b1``).
        models: comma-separated keys of ``MODELS``; ``basicunet``, the reference of every ratio, is always measured.
        repeats: timed repetitions per measurement (after one warm-up); medians are reported.
        device: ``cpu`` or ``cuda``.
        threads: torch intra-op threads (0: PyTorch's default).
        cpu_path: also measure glibc malloc tuning and bf16 autocast for the 2D batch-4 case on CPU.
        metatensor: also measure each case's train step with ``MetaTensor`` inputs against plain tensors (the
            bundle's train pipeline drops the metadata before batching).
        compiled: also measure each case's train step with the network compiled by ``torch.compile`` (the bundle's
            ``--compile True``), in bf16 autocast on CUDA and on CPUs with native bf16 (the bundle's ``--amp True``),
            else fp32.
        json_out: also write all measurements to this JSON file.
    """
    cases = cases.split(",") if isinstance(cases, str) else list(cases)
    models = models.split(",") if isinstance(models, str) else list(models)
    models = ["basicunet"] + [m for m in models if m != "basicunet"]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {MODELS}.")
    tuned = device == "cpu"  # glibc malloc tuned at run time, as the bundle's configs do by default
    rows = []
    print(
        f"# benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"# command: python benchmarks/tools/benchmark.py {' '.join(sys.argv[1:])}")
    print(f"# device {device}, malloc {'tuned (mallopt)' if tuned else 'default'}, fp32, median of {repeats}")
    print("| case | mode | model | parameters | seconds | ratio | peak MiB | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        for mode in ("train", "infer"):
            results = {m: _run_one(m, case, mode, repeats, device, False, threads, mallopt=tuned) for m in models}
            base = results["basicunet"]
            for model, r in results.items():
                row = {"case": case, "mode": mode, "model": model, "malloc": "mallopt" if tuned else "default", **r}
                row["time_ratio"] = r["seconds"] / base["seconds"]
                row["memory_ratio"] = r["peak_mb"] / base["peak_mb"]
                rows.append(row)
                print(
                    f"| {case} | {mode} | {model} | {r['parameters']:,} | {r['seconds']:.3f} | "
                    f"{row['time_ratio']:.2f} | {r['peak_mb']:.0f} | {row['memory_ratio']:.2f} |",
                    flush=True,
                )
    if cpu_path and device == "cpu":
        bf16_options = (False, True) if cpu_supports_bf16() else (False,)
        if len(bf16_options) == 1:
            print("\n# this CPU has no native bf16 (AVX512-BF16/AMX): bf16 autocast is emulated and not measured")
        print("\n# CPU path, 2d_b4 train step: glibc malloc default, tuned by environment variables (env) or at run")
        print("# time by the bundle (mallopt); fp32, and bf16 autocast where the CPU supports it")
        print("| model | malloc | dtype | seconds | ratio to BasicUNet default fp32 |")
        print("| --- | --- | --- | --- | --- |")
        reference = None
        for model in ("basicunet", "xunet_fast"):
            variants = (("default", {}, False), ("env", TUNED_MALLOC, False), ("mallopt", {}, True))
            for malloc, malloc_env, mallopt in variants:
                for bf16 in bf16_options:
                    if bf16 and malloc == "default":
                        continue
                    r = _run_one(model, "2d_b4", "train", repeats, device, bf16, threads, malloc_env, mallopt)
                    reference = reference or r["seconds"]
                    dtype = "bf16" if bf16 else "fp32"
                    rows.append(
                        {"case": "2d_b4", "mode": "train", "model": model, "malloc": malloc, "dtype": dtype, **r}
                    )
                    print(f"| {model} | {malloc} | {dtype} | {r['seconds']:.3f} | {r['seconds'] / reference:.2f} |")
    if metatensor:
        print(
            "\n# train step with MONAI MetaTensor inputs against plain tensors (what the bundle's train pipeline gives)"
        )
        print("| case | model | input | seconds | ratio to plain tensors |")
        print("| --- | --- | --- | --- | --- |")
        for case in cases:
            for model in models:
                plain, meta = (
                    _run_one(model, case, "train", repeats, device, False, threads, mallopt=tuned, metatensor=wrapped)
                    for wrapped in (False, True)
                )
                for name, r in (("tensor", plain), ("MetaTensor", meta)):
                    rows.append({"case": case, "mode": "train", "model": model, "input": name, **r})
                    print(f"| {case} | {model} | {name} | {r['seconds']:.3f} | {r['seconds'] / plain['seconds']:.2f} |")
    if compiled:
        bf16 = device == "cuda" or cpu_supports_bf16()
        print(f"\n# train step, eager and compiled by torch.compile ({'bf16 autocast' if bf16 else 'fp32'})")
        print("| case | model | network | seconds | ratio to BasicUNet eager | speed-up over eager | warm-up seconds |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for case in cases:
            eager = {}
            for model in models:
                for wrapped in (False, True):
                    name = "compiled" if wrapped else "eager"
                    try:
                        r = _run_one(
                            model, case, "train", repeats, device, bf16, threads, mallopt=tuned, compiled=wrapped
                        )
                    except subprocess.CalledProcessError as error:  # a compiler error is a result too
                        errors = [
                            line for line in error.stderr.splitlines() if re.match(r"[\w.]*(Error|Exception)\b", line)
                        ]
                        reason = errors[-1] if errors else "no error message"
                        rows.append({"case": case, "mode": "train", "model": model, "network": name, "error": reason})
                        print(f"| {case} | {model} | {name} | fails: {reason} | | | |", flush=True)
                        continue
                    eager.setdefault(model, r)
                    rows.append({"case": case, "mode": "train", "model": model, "network": name, "bf16": bf16, **r})
                    print(
                        f"| {case} | {model} | {name} | {r['seconds']:.3f} | "
                        f"{r['seconds'] / eager['basicunet']['seconds']:.2f} | "
                        f"{eager[model]['seconds'] / r['seconds']:.2f} | {r['warmup_seconds']:.0f} |",
                        flush=True,
                    )
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(rows, indent=4) + "\n")


if __name__ == "__main__":
    fire.Fire({"main": main, "measure": measure} if len(sys.argv) > 1 and sys.argv[1] == "measure" else main)
