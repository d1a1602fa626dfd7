"""
Build the archive the MONAI Model Zoo hosts: ``<name>_v<version>.zip`` with a single top-level ``<name>/`` folder
holding ``configs/``, ``models/`` (the weights themselves), ``docs/``, ``LICENSE``, the ``xunet_bundle`` package the
configs import, and the data converters its docs tell a user to run (``scripts/prepare_lgg.py``,
``prepare_decathlon.py``, ``prepare_folders.py``, ``stack_channels.py``, ``make_demo_data.py``); no tests, other
scripts, caches or data. The version comes from ``configs/metadata.json``.

``large_files.yml`` is not in the archive, which holds the weights: it is the file a Model Zoo pull request carries
instead of them, and its URL is the address the weights will have once the release is published (fill it in then).
It must list the current ``models/model.pt`` with its hash; ``--update_large_files`` rewrites it.

Usage::

    python scripts/package.py --out_dir dist
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "xunet_lgg_segmentation"
CONTENT = (
    "configs",
    "models",
    "docs",
    "xunet_bundle",
    "LICENSE",
    "scripts/prepare_lgg.py",
    "scripts/prepare_decathlon.py",
    "scripts/prepare_folders.py",
    "scripts/stack_channels.py",
    "scripts/make_demo_data.py",
)
EXCLUDED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
EXCLUDED_SUFFIXES = {".pyc", ".ts", ".onnx"}
WEIGHTS = "models/model.pt"
WEIGHTS_URL = "https://github.com/xunet-bundle/xunet-bundle/releases/download/v{version}/model.pt"


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_files_yml(version: str, weights_md5: str) -> str:
    """The zoo's ``large_files.yml`` for the weights."""
    return (
        f"# For a Model Zoo pull request, which carries no weights. The URL is where v{version}'s weights will be\n"
        "# published: not yet real, to fill in when the release is made. The release zip holds models/model.pt.\n"
        "large_files:\n"
        f'  - path: "{WEIGHTS}"\n'
        f'    url: "{WEIGHTS_URL.format(version=version)}"\n'
        f'    hash_val: "{weights_md5}"\n'
        '    hash_type: "md5"\n'
    )


def bundle_files(root: Path) -> list[Path]:
    """The files that go into the archive, relative to ``root``."""
    files = []
    for entry in CONTENT:
        path = root / entry
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            relative = candidate.relative_to(root)
            if not EXCLUDED_PARTS & set(relative.parts) and candidate.suffix not in EXCLUDED_SUFFIXES:
                files.append(relative)
    return files


def main(out_dir: str = "dist", update_large_files: bool = False, bundle_root: str = str(REPO)) -> None:
    """
    Args:
        out_dir: folder receiving ``<name>_v<version>.zip``.
        update_large_files: rewrite ``large_files.yml`` for the current weights instead of checking it.
        bundle_root: the bundle to package (this repository by default).
    """
    root = Path(bundle_root).resolve()
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    weights = root / WEIGHTS
    if not weights.is_file():
        sys.exit(f"error: {weights}: no trained weights to package.")
    expected = large_files_yml(version, md5(weights))
    listing = root / "large_files.yml"
    if update_large_files:
        listing.write_text(expected)
    elif not listing.is_file() or listing.read_text() != expected:
        sys.exit(f"error: {listing}: does not list the current {WEIGHTS} (md5 {md5(weights)}, version {version}); "
                 "run with --update_large_files.")  # fmt: skip
    out = Path(out_dir) / f"{BUNDLE_NAME}_v{version}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in bundle_files(root):
            archive.write(root / relative, f"{BUNDLE_NAME}/{relative.as_posix()}")
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    fire.Fire(main)
