"""The LGG protocol scripts end to end on the demo data: a run per network, its JSON record, and the comparison."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # the protocol tools: benchmarks/run.sh per network, records, comparisons

NETWORKS = ("xunet", "basicunet", "xunet_projected")
# the shipped weights evaluated with the configs' default post-processing (benchmarks/lgg/README.md)
SHIPPED_DEFAULT_EVALUATION = REPO_ROOT / "benchmarks" / "lgg" / "cv300" / "test_shipped_0.10.0_default"


def protocol_command(network: str, work: Path, records_dir: Path, **extra_env: str) -> tuple[list[str], dict]:
    """The command and environment of a one-epoch ``benchmarks/run.sh`` run of ``network`` (seed 3) in ``work``."""
    env = {**os.environ, "EPOCHS": "1", "VAL_INTERVAL": "1", "RECORDS_DIR": str(records_dir), **extra_env}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return ["bash", "benchmarks/run.sh", network, "3", "unused-source", str(work)], env


def run_protocol(network: str, work: Path, records_dir: Path, **extra_env: str) -> None:
    """A one-epoch ``benchmarks/run.sh`` run of ``network`` (seed 3) in ``work``, recorded in ``records_dir``."""
    command, env = protocol_command(network, work, records_dir, **extra_env)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def records(demo_dir, tmp_path_factory) -> Path:
    """Records of a one-epoch protocol run of each network on the demo data (already prepared, so reused)."""
    work = tmp_path_factory.mktemp("lgg_protocol")
    shutil.copytree(demo_dir, work / "data")
    # the last run lies outside the protocol, as the shipped weights' run does: extra training overrides (here every
    # fold trained on, no validation), kept apart by its suffix
    outside = {"TRAIN_ARGS": "--learning_rate 0.0005 --amp False --fold all", "RUN_SUFFIX": "_all_folds"}
    for network, extra_env in [(name, {}) for name in NETWORKS] + [("xunet", outside)]:
        run_protocol(network, work, work / "records", **extra_env)
    return work / "records"


def test_record_holds_commands_curves_and_per_patient_metrics(records, demo_dir):
    record = json.loads((records / "xunet_seed3.json").read_text())
    test_patients = json.loads((demo_dir / "datalist.json").read_text())["testing"]
    assert len(record["test_dice"]) == len(test_patients) == len(record["test_hd95"])
    assert all(0.0 <= d <= 1.0 for d in record["test_dice"].values())
    (command,) = record["train_commands"]
    assert "--seed 3" in command and "configs/evaluate.json" in record["eval_command"]
    assert len(record["git_commit"]) >= 40
    (sitting_machine,) = record["sitting_machines"]
    assert sitting_machine["device"] == record["machine"]["device"]  # trained and evaluated here
    assert sitting_machine["cpu_count"] == os.cpu_count() and command[:20] <= sitting_machine["started"]
    assert record["epochs"] == 1 and len(record["train_loss"]) == record["epoch_length"]
    assert [step for step, _ in record["val_mean_dice"]] == [1]
    assert record["test_dice_per_label"] == {}  # a single foreground label
    assert "--largest_component False" in record["eval_command"]
    assert "--largest_component True" in record["largest_component_eval_command"]
    # the protocol freezes test-time mirroring and the foreground threshold off, as for the recorded runs, whatever
    # the configs' defaults
    for pinned in ("--mirror_axes []", "--foreground_threshold $None"):
        assert (
            pinned in command
            and pinned in record["eval_command"]
            and pinned in record["largest_component_eval_command"]
        )
    assert set(record["test_dice_largest_component"]) == set(record["test_dice"])
    variant = json.loads((records / "xunet_projected_seed3.json").read_text())
    assert "--network_def#fusion projected" in variant["train_commands"][0]
    assert "--network_def#fusion projected" in variant["eval_command"]


def test_run_outside_the_protocol_keeps_its_own_record(records):
    record = json.loads((records / "xunet_all_folds_seed3.json").read_text())
    assert record["network"] == "xunet_all_folds"
    (command,) = record["train_commands"]
    assert command.endswith("--learning_rate 0.0005 --amp False --fold all") and "--seed 3" in command
    protocol = json.loads((records / "xunet_seed3.json").read_text())
    assert (
        "--learning_rate" not in protocol["train_commands"][0]
        and record["test_dice"].keys() == record["test_hd95"].keys()
    )
    # trained on the validation fold too, so its epochs are longer and nothing was validated; the final model was kept
    assert record["epoch_length"] > protocol["epoch_length"] and record["val_mean_dice"] == []
    assert record["model_md5"] != protocol["model_md5"] and len(record["model_md5"]) == 32


def test_a_run_spread_over_two_sittings_records_the_time_of_both(records, tmp_path):
    """A second sitting (``RESUME=1``) keeps the first's commands and adds its own seconds to the first's."""
    work = tmp_path / "work"
    shutil.copytree(records.parent, work, ignore=shutil.ignore_patterns("records"))
    first = json.loads((records / "xunet_seed3.json").read_text())
    (first_sitting,) = [int(line) for line in (work / "xunet_seed3" / "sittings.log").read_text().split()]
    assert first["seconds"] <= first_sitting
    run_protocol("xunet", work, tmp_path / "records", RESUME="1")
    second = json.loads((tmp_path / "records" / "xunet_seed3.json").read_text())
    sittings = [int(line) for line in (work / "xunet_seed3" / "sittings.log").read_text().split()]
    assert len(sittings) == 2 and sittings[0] == first_sitting
    # the second sitting only evaluates the finished model, so its time alone is shorter than the first's
    assert first_sitting < second["seconds"] <= sum(sittings)
    assert len(second["train_commands"]) == 2 and second["train_commands"][1].endswith("--resume True")
    assert len(second["sitting_machines"]) == 2  # each sitting says where it ran
    assert second["model_md5"] == first["model_md5"] and second["test_dice"] == first["test_dice"]


def test_a_damaged_machine_log_is_named_in_the_error(records, tmp_path):
    """A machines.log line that is not JSON stops the record, and the error names the log and the line."""
    work = tmp_path / "work"
    shutil.copytree(records.parent, work, ignore=shutil.ignore_patterns("records"))
    log = work / "xunet_seed3" / "machines.log"
    log.write_text(log.read_text() + '{"started": "2026-12-04T13:14:14Z", "dev\n')
    command, env = protocol_command("xunet", work, tmp_path / "records", RESUME="1")
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and not (tmp_path / "records" / "xunet_seed3.json").exists()
    assert f"{log}, line 2: not a JSON machine description" in result.stderr


def start_sitting_until_its_first_heartbeat(records, tmp_path):
    """Starts a resumed sitting in its own process group; returns it and its run folder once it has a heartbeat."""
    work = tmp_path / "work"
    shutil.copytree(records.parent, work, ignore=shutil.ignore_patterns("records"))
    run_dir = work / "xunet_seed3"
    command, env = protocol_command("xunet", work, tmp_path / "records", RESUME="1", HEARTBEAT_SECONDS="1")
    sitting = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "sitting.open").exists() and sitting.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sitting.poll() is None, "the sitting ended before its first heartbeat"
    return sitting, run_dir


def test_a_sitting_stopped_by_sigterm_counts_itself(records, tmp_path):
    """SIGTERM to the whole process group (how a sitting is ended by hand) still appends the sitting's seconds."""
    sitting, run_dir = start_sitting_until_its_first_heartbeat(records, tmp_path)
    os.killpg(sitting.pid, signal.SIGTERM)
    sitting.wait(timeout=60)
    sittings = [int(line) for line in (run_dir / "sittings.log").read_text().split()]
    assert len(sittings) == 2 and sittings[1] >= 1
    assert not (run_dir / "sitting.open").exists()


def test_a_sitting_killed_without_warning_is_counted_by_the_next(records, tmp_path):
    """A sitting ended by SIGKILL runs no trap: its last heartbeat is what the next sitting adds to the record."""
    sitting, run_dir = start_sitting_until_its_first_heartbeat(records, tmp_path)
    heartbeat = run_dir / "sitting.open"
    os.killpg(sitting.pid, signal.SIGKILL)
    sitting.wait(timeout=30)
    killed_seconds = int(heartbeat.read_text())
    assert killed_seconds >= 1
    assert len((run_dir / "sittings.log").read_text().split()) == 1  # the killed sitting could not count itself

    run_protocol("xunet", run_dir.parent, tmp_path / "records", RESUME="1")
    sittings = [int(line) for line in (run_dir / "sittings.log").read_text().split()]
    assert len(sittings) == 3 and sittings[1] == killed_seconds and not heartbeat.exists()
    record = json.loads((tmp_path / "records" / "xunet_seed3.json").read_text())
    assert sum(sittings[:2]) < record["seconds"] <= sum(sittings)


def test_shipped_weights_are_traced_to_their_run_record(shipped_weights):
    """``models/model.pt`` is the model of exactly one recorded run; ``metadata.json`` reports its test Dice with the
    configs' default post-processing, evaluated on that run's test patients."""
    weights_md5 = hashlib.md5(shipped_weights.read_bytes()).hexdigest()
    records = [json.loads(p.read_text()) for p in sorted((REPO_ROOT / "benchmarks").glob("*/**/records/*.json"))]
    (shipped,) = [record for record in records if record.get("model_md5") == weights_md5]
    with open(SHIPPED_DEFAULT_EVALUATION / "val_mean_dice_raw.csv") as f:
        test_dice = {
            Path(row["filename"]).name.removesuffix(".nii.gz"): float(row["mean"]) for row in csv.DictReader(f)
        }
    assert set(test_dice) == set(shipped["test_dice_largest_component"])
    metadata = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"]["mean_dice"] == round(float(np.mean(list(test_dice.values()))), 4)


def test_compare_tabulates_both_networks_with_paired_difference(records, tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", str(records), "--out_dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    dice = {n: json.loads((records / f"{n}_seed3.json").read_text())["test_dice"] for n in NETWORKS}
    for network in NETWORKS:
        assert f"| {network} | 1 | {np.mean(list(dice[network].values())):.3f} |" in table
    difference = np.mean([dice["xunet"][p] - dice["basicunet"][p] for p in dice["xunet"]])
    assert f"| xunet - basicunet | {difference:+.3f} |" in table
    assert "With the largest-component post-processing" in table
    processed = json.loads((records / "basicunet_seed3.json").read_text())["test_dice_largest_component"]
    assert f"| basicunet | 1 | {np.mean(list(processed.values())):.3f} |" in table
    patient = sorted(processed)[0]  # the per-patient table starts with basicunet (records are read in name order)
    own, post_processed = dice["basicunet"][patient], processed[patient]
    assert "| patient | basicunet | basicunet (largest component) | xunet_all_folds |" in table
    assert f"| {patient} | {own:.3f} | {post_processed:.3f} | " in table
    for png in ("learning_curves.png", "per_patient_dice.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_puts_dice_against_cost(records, tmp_path):
    costs = []
    for model, train_ratio, params in (
        ("basicunet", 1.0, 100),
        ("xunet_fast", 1.4, 150),
        ("xunet_projected", 1.1, 110),
    ):
        for mode in ("train", "infer"):
            row = {"case": "2d_b4", "mode": mode, "model": model, "parameters": params}
            costs.append({**row, "time_ratio": train_ratio if mode == "train" else 1.2, "memory_ratio": 1.05})
    (tmp_path / "costs.json").write_text(json.dumps(costs))
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", str(records), "--out_dir", str(tmp_path),
         "--costs", str(tmp_path / "costs.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    dice = np.mean(list(json.loads((records / "xunet_projected_seed3.json").read_text())["test_dice"].values()))
    assert f"| xunet_projected | 110 | {dice:.3f} | 1.10 | 1.20 | 1.05 |" in table
    assert "| xunet | 150 |" in table and "| basicunet | 100 |" in table
    assert "--costs" in table  # the command that made the table
    assert (tmp_path / "dice_vs_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_records_of_different_patients(records, tmp_path):
    for network in NETWORKS:
        shutil.copy(records / f"{network}_seed3.json", tmp_path)
    other = json.loads((tmp_path / "basicunet_seed3.json").read_text())
    other["test_dice"].popitem()
    (tmp_path / "basicunet_seed3.json").write_text(json.dumps(other))
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", str(tmp_path), "--out_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "different patients" in result.stderr


def test_compare_reads_several_folders_against_any_baseline(records, tmp_path):
    protocol, outside = tmp_path / "protocol", tmp_path / "outside"
    protocol.mkdir(), outside.mkdir()
    shutil.copy(records / "xunet_seed3.json", protocol)
    shutil.copy(records / "xunet_all_folds_seed3.json", outside)
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", f"{protocol},{outside}", "--baseline", "xunet",
         "--out_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "out" / "results.md").read_text()
    dice = {
        name: json.loads((records / f"{name}_seed3.json").read_text())["test_dice"]
        for name in ("xunet", "xunet_all_folds")
    }
    difference = np.mean([dice["xunet_all_folds"][p] - dice["xunet"][p] for p in dice["xunet"]])
    assert f"| xunet_all_folds - xunet | {difference:+.3f} |" in table
    assert f"--records {protocol},{outside}" in table and "--baseline xunet" in table


def test_compare_plots_runs_that_validated_nothing_without_warnings(records, tmp_path):
    """Runs trained on every fold have no validation curve: the plot says so instead of an empty, legend-less panel."""
    shutil.copy(records / "xunet_all_folds_seed3.json", tmp_path)
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "benchmarks/tools/compare.py", "--records", str(tmp_path),
         "--baseline", "xunet_all_folds", "--out_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_by_seed_sets_one_seed_against_another(records, tmp_path):
    """``--by_seed True`` keeps every run apart: a second seed of the same network is compared with the first."""
    first = json.loads((records / "xunet_all_folds_seed3.json").read_text())
    second = {**first, "seed": 4}
    for key in ("test_dice", "test_dice_largest_component"):
        second[key] = {patient: dice / 2 for patient, dice in first[key].items()}
    (tmp_path / "xunet_all_folds_seed3.json").write_text(json.dumps(first))
    (tmp_path / "xunet_all_folds_seed4.json").write_text(json.dumps(second))
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", str(tmp_path), "--by_seed", "True",
         "--baseline", "xunet_all_folds_seed3", "--out_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "out" / "results.md").read_text()
    for run in (first, second):
        assert f"| xunet_all_folds_seed{run['seed']} | 1 | {np.mean(list(run['test_dice'].values())):.3f} |" in table
    difference = np.mean([second["test_dice"][p] - first["test_dice"][p] for p in first["test_dice"]])
    assert f"| xunet_all_folds_seed4 - xunet_all_folds_seed3 | {difference:+.3f} |" in table
    assert "--by_seed True" in table and "| xunet_all_folds |" not in table


def test_compare_without_plots_writes_the_table_only(records, tmp_path):
    """``--plots False`` (a second comparison of the same records) writes ``results.md`` and says so, but no PNG."""
    result = subprocess.run(
        [sys.executable, "benchmarks/tools/compare.py", "--records", str(records), "--baseline", "xunet",
         "--plots", "False", "--out_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--plots False" in (tmp_path / "out" / "results.md").read_text()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["results.md"]
