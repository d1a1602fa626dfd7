"""
The MONAI Model Zoo's CI checks of a bundle; only the package index is reached.

Checks, in order: necessary files (``configs/metadata.json``, ``LICENSE``) and preferred files (``models/model.pt``,
``configs/inference.json``); the version listed in the changelog; ``metadata.json`` against its schema (a local
copy); the metadata's package pins installable on the oldest Python that ``pyproject.toml`` supports (pip's resolver,
reading the package index); ``verify_net_in_out``; the zoo-style unit tests (``tests/test_zoo_workflow.py``);
export to TorchScript with ``ckpt_export`` and loading it back; ``onnx_export``; JSON configs indented 4 spaces with
keys as written; black, isort and flake8 at line length 120; no file over 1 MB outside ``models/``. Exits non-zero,
listing every failure, when a check fails.

Usage::

    python scripts/verify_zoo.py --schema ../shared/reference/meta_schema_20240725.json
    python scripts/verify_zoo.py --bundle_root /path/to/unpacked/bundle --schema /path/to/schema.json

The schema's URL is ``metadata.json``'s ``"schema"``; download it once for ``--schema``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export, verify_metadata, verify_net_in_out

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metadata_pins import metadata_pins  # noqa: E402

NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
PREFERRED_FILES = ("models/model.pt", "configs/inference.json")
MAX_FILE_BYTES = 1_000_000  # the zoo's limit outside models/ (large files go through large_files.yml)
SKIPPED_DIRS = {"__pycache__", "runs", "eval", "data", "dist"}
CODE_DIRS = ("xunet_bundle", "scripts", "tests")


def bundle_files(root: Path) -> list[Path]:
    """
    The files of the bundle: those git tracks in a checkout; otherwise every file but hidden folders, environments,
    caches and run outputs.
    """
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True)
        return [root / name for name in listed.stdout.split("\0") if name and (root / name).is_file()]
    files = []
    for path in sorted(root.rglob("*")):
        folders = path.relative_to(root).parts[:-1]
        if path.is_file() and not SKIPPED_DIRS & set(folders) and not any(f.startswith(".") for f in folders):
            files.append(path)
    return files


def check_files(root: Path) -> None:
    missing = [f for f in NECESSARY_FILES + PREFERRED_FILES if not (root / f).is_file()]
    if missing:
        raise AssertionError(f"missing files: {missing}")


def check_changelog(root: Path) -> None:
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    if meta["version"] not in meta.get("changelog", {}):
        raise AssertionError(f"version {meta['version']} is not in the changelog")


def oldest_supported_python() -> str:
    """The lowest Python version ``pyproject.toml``'s ``requires-python = ">=X.Y"`` admits."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    match = re.search(r'^requires-python\s*=\s*">=\s*([0-9]+\.[0-9]+)"', text, re.MULTILINE)
    if match is None:
        raise AssertionError('pyproject.toml: no requires-python = ">=X.Y"')
    return match[1]


def check_pins_install(root: Path) -> None:
    """
    Resolve the metadata pins, with their dependencies, for the oldest supported Python, as the zoo's CI installs them
    (``pip install -r requirements.txt``): pip's dry run reads each package's ``Requires-Python`` and downloads no
    wheel it has metadata for.
    """
    python = oldest_supported_python()
    with tempfile.TemporaryDirectory() as target:
        pins = metadata_pins(root / "configs" / "metadata.json")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
             "--only-binary=:all:", "--python-version", python, "--target", target, *pins],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        raise AssertionError(f"the metadata pins do not install on Python {python}: {' '.join(errors)[:600]}")


def check_zoo_unit_tests(root: Path) -> None:
    """
    Run the bundle's zoo-style unit tests (``tests/test_zoo_workflow.py``, the shape of the zoo's
    ``ci/unit_tests/test_<bundle>.py``: ``ConfigWorkflow`` with overrides, ``check_properties``, ``run``) when the
    bundle folder has them; a release archive ships none.
    """
    tests = root / "tests" / "test_zoo_workflow.py"
    if not tests.is_file():
        print(f"        (no {tests.relative_to(root)} in this bundle folder)")
        return
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=root, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"{tests.name} failed: {result.stdout.strip().splitlines()[-1:]}")


def check_metadata(root: Path, schema: Path) -> None:
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))


def check_net_in_out(root: Path) -> None:
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        bundle_root=str(root),
    )


def example_input(root: Path) -> torch.Tensor:
    """A random input of the shape ``metadata.json`` declares (spatial sizes of 64 where any size is allowed)."""
    image = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    spatial = [s if isinstance(s, int) and s > 0 else 64 for s in image["spatial_shape"]]
    return torch.rand(1, image["num_channels"], *spatial)


def eager_network(root: Path) -> torch.nn.Module:
    """
    The inference config's network with the bundle's weights, in eval mode, channels-first as the exported models run:
    its CPU channels-last path differs from them by rounding (tested against channels-first in the network tests).
    """
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.cpu_channels_last = False
    return net.eval()


def export_args(root: Path) -> dict[str, str]:
    """What MONAI's export commands need to find the bundle's network, weights and configs."""
    return {
        "net_id": "network_def",
        "ckpt_file": str(root / "models" / "model.pt"),
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.json"),
        "bundle_root": str(root),
    }


def check_torchscript(root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ts_path = Path(tmp) / "model.ts"
        ckpt_export(filepath=str(ts_path), **export_args(root))
        scripted = torch.jit.load(str(ts_path))
        x = example_input(root)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), eager_network(root)(x), rtol=1e-4, atol=1e-4)


def check_onnx(root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        x = example_input(root)
        onnx_export(filepath=str(onnx_path), input_shape=list(x.shape), **export_args(root))
        import onnxruntime

        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(output), eager_network(root)(x), rtol=1e-3, atol=1e-3)


def check_json_format(root: Path) -> None:
    badly_formatted = []
    for path in sorted((root / "configs").glob("*.json")):
        text = path.read_text()
        if text != json.dumps(json.loads(text), indent=4) + "\n":
            badly_formatted.append(path.name)
    if badly_formatted:
        raise AssertionError(f"not indented 4 spaces with keys as written: {badly_formatted}")


def check_code_style(root: Path) -> None:
    targets = [str(root / d) for d in CODE_DIRS if (root / d).is_dir()]
    commands = {
        "black": [sys.executable, "-m", "black", "--check", "--quiet", "--line-length", "120", *targets],
        "isort": [
            sys.executable,
            "-m",
            "isort",
            "--check-only",
            "--profile",
            "black",
            "--line-length",
            "120",
            *targets,
        ],
        "flake8": [sys.executable, "-m", "flake8", "--max-line-length", "120", *targets],
    }
    failures = []
    for name, command in commands.items():
        result = subprocess.run(command, capture_output=True, text=True, cwd=root)
        if result.returncode != 0:
            failures.append(f"{name}: {(result.stdout + result.stderr).strip()[:2000]}")
    if failures:
        raise AssertionError("\n".join(failures))


def check_file_sizes(root: Path) -> None:
    large = [
        f"{p.relative_to(root)} ({p.stat().st_size} bytes)"
        for p in bundle_files(root)
        if p.stat().st_size > MAX_FILE_BYTES and p.relative_to(root).parts[0] != "models"
    ]
    if large:
        raise AssertionError(f"files over 1 MB outside models/: {large[:10]}" + (" ..." if len(large) > 10 else ""))


def main(bundle_root: str = ".", schema: str = "../shared/reference/meta_schema_20240725.json") -> None:
    """
    Args:
        bundle_root: the bundle folder to check.
        schema: local copy of the metadata schema named in ``metadata.json``.
    """
    root, schema_path = Path(bundle_root).resolve(), Path(schema).resolve()
    if not schema_path.is_file():
        sys.exit(f'error: {schema_path}: schema not found; download the URL in configs/metadata.json\'s "schema".')
    sys.path.insert(0, str(root))  # the configs import the bundle's own package
    checks: dict[str, Callable[[], None]] = {
        "files": lambda: check_files(root),
        "changelog": lambda: check_changelog(root),
        "metadata schema": lambda: check_metadata(root, schema_path),
        "pins install on the oldest Python": lambda: check_pins_install(root),
        "network input/output": lambda: check_net_in_out(root),
        "zoo-style unit tests": lambda: check_zoo_unit_tests(root),
        "TorchScript export": lambda: check_torchscript(root),
        "ONNX export": lambda: check_onnx(root),
        "JSON format": lambda: check_json_format(root),
        "code style": lambda: check_code_style(root),
        "file sizes": lambda: check_file_sizes(root),
    }
    failed = []
    for name, check in checks.items():
        try:
            check()
            print(f"ok      {name}")
        except Exception as e:  # report every failing check, not only the first
            print(f"FAILED  {name}: {e}")
            failed.append(name)
    if failed:
        sys.exit(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")
    print(f"all {len(checks)} checks passed")


if __name__ == "__main__":
    fire.Fire(main)
