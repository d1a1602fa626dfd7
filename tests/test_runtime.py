"""Process settings: glibc malloc tuning, the collector's frozen start-up objects, one-line data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning applies to Linux only")
def test_tune_glibc_malloc_applies_on_linux():
    # in a process of its own: the settings last for the process, and other tests check that hosts keep theirs
    code = (
        "import xunet_bundle.runtime as r; print(r.tune_glibc_malloc(command_line_only=False), r.tune_glibc_malloc())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["True", "False"]  # applied when asked; not in a process that is no bundle command


@pytest.mark.parametrize("full_traceback", [False, True])
def test_uncaught_data_error_ends_with_one_line(full_traceback, tmp_path):
    code = (
        "from xunet_bundle.runtime import report_data_errors_briefly\n"
        "from xunet_bundle.data import DataError\n"
        "report_data_errors_briefly(command_line_only=False)\n"
        "try:\n"
        "    raise DataError('/data/case.nii.gz', 'label values must be integers in 0..1, found [3].')\n"
        "except DataError as e:\n"
        "    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XUNET_TRACEBACK": "1" if full_traceback else "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 1
    message = "error: /data/case.nii.gz: label values must be integers in 0..1, found [3]."
    if full_traceback:
        assert "Traceback" in result.stderr and "RuntimeError: Failed to evaluate" in result.stderr
    else:
        assert result.stderr.strip() == message


def test_freeze_startup_objects_only_where_asked():
    # in a process of its own: frozen objects stay frozen for the process's life
    code = (
        "import gc, xunet_bundle.runtime as r\n"
        "print(r.freeze_startup_objects(), gc.get_freeze_count())\n"
        "print(r.freeze_startup_objects(command_line_only=False), gc.get_freeze_count() > 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # not in a process that is no bundle command (a host keeps its collector); frozen when asked
    assert result.stdout.split() == ["False", "0", "True", "True"]


@pytest.mark.parametrize(
    "config, overrides, frozen", [("inference", [], True), ("train", ["--gc_freeze", "False"], False)]
)
def test_bundle_commands_freeze_startup_objects(config, overrides, frozen, tmp_path):
    # a real ``monai.bundle run`` whose run section only reports what the configs' initialize section did
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"run": ["$print('frozen objects:', __import__('gc').get_freeze_count() > 0)"]}))
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file",
        f"['configs/{config}.json', '{probe.as_posix()}']", *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"frozen objects: {frozen}" in result.stdout
