"""scripts/verify_zoo.py: the Model Zoo's checks pass on this bundle and catch what the zoo's CI would reject."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, copy_bundle

CONTENT = ("configs", "models", "docs", "xunet_bundle", "scripts", "tests", "LICENSE")


def verify(bundle_root: Path, schema: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "verify_zoo.py"), "--bundle_root", str(bundle_root),
         "--schema", str(schema)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_bundle_passes_the_zoo_checks(shipped_weights, schema_path):
    result = verify(REPO_ROOT, schema_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "all 11 checks passed" in result.stdout


def test_zoo_checks_report_each_problem(shipped_weights, schema_path, tmp_path):
    copy_bundle(tmp_path, CONTENT)
    (tmp_path / "LICENSE").unlink()
    meta = json.loads((tmp_path / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"  # not in the changelog
    meta["numpy_version"] = "2.4.6"  # requires Python 3.11, the bundle supports 3.10
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))  # nor indented 4 spaces
    (tmp_path / "docs" / "big.bin").write_bytes(b"\0" * 1_100_000)
    result = verify(tmp_path, schema_path)
    assert result.returncode != 0
    for failure in ("FAILED  files: missing files: ['LICENSE']", "FAILED  changelog", "FAILED  JSON format",
                    "FAILED  file sizes: files over 1 MB outside models/: ['docs/big.bin",
                    "FAILED  pins install on the oldest Python: the metadata pins do not install on Python 3.1",
                    ):  # fmt: skip
        assert failure in result.stdout, result.stdout
    assert "ok      TorchScript export" in result.stdout and "ok      ONNX export" in result.stdout, result.stdout
