"""
Write the JSON record of one benchmark protocol run (``benchmarks/run.sh``): code version, commands, per-patient test
metrics and the training curve read back from the run's TensorBoard events.

Usage::

    python benchmarks/tools/record_run.py --run_dir runs/lgg/xunet_seed0 --network xunet --seed 0 --seconds 5400 \
        --eval_command "..." --out benchmarks/lgg/records/xunet_seed0.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from describe_machine import describe_machine  # noqa: E402

from xunet_bundle.data import atomic_write_json  # noqa: E402
from xunet_bundle.training import latest_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def current_commit() -> str:
    """The checked-out commit, with ``-dirty`` appended when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    return commit + ("-dirty" if dirty else "")


def read_raw_table(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a MONAI ``MetricsSaver`` ``*_raw.csv`` (one per case: ``filename``, per-class columns, ``mean``)."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows or "filename" not in rows[0]:
        raise ValueError(f"{csv_path}: not a MetricsSaver per-case table.")
    return rows


def per_case(rows: list[dict[str, str]], column: str = "mean") -> dict[str, float]:
    """One column of a raw table, keyed by the case's file name."""
    return {Path(row["filename"]).name.split(".")[0]: float(row[column]) for row in rows}


def read_per_case(csv_path: Path) -> dict[str, float]:
    """Per-case values (the mean over classes) of a ``MetricsSaver`` ``*_raw.csv``, keyed by the case's file name."""
    return per_case(read_raw_table(csv_path))


def per_label(rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """
    Per-label values of a raw table (columns ``class0``, ``class1``, ... for labels 1, 2, ... when the background is
    excluded), as ``{label: {case: value}}``; empty for a single foreground label.
    """
    classes = [column for column in rows[0] if column.startswith("class")]
    if len(classes) < 2:
        return {}
    return {str(int(column.removeprefix("class")) + 1): per_case(rows, column) for column in classes}


def read_commands(log: Path) -> list[str]:
    """The training commands of the run, one per sitting, as ``run.sh`` logged them (time stamp first)."""
    if not log.is_file():
        raise ValueError(f"{log}: no command log; runs are started with benchmarks/run.sh.")
    return [line for line in log.read_text().splitlines() if line.strip()]


def read_machines(log: Path) -> list[dict]:
    """
    Where each sitting of the run trained, as ``run.sh`` logged it (one ``describe_machine.py`` JSON line per sitting);
    empty for runs from before the log existed.
    """
    if not log.is_file():
        return []
    machines = []
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            machines.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{log}, line {number}: not a JSON machine description ({error.msg}).") from error
    return machines


def read_curves(tensorboard_dir: Path) -> dict[str, list[list[float]]]:
    """Every scalar of the run's TensorBoard events as ``{tag: [[step, value], ...]}``."""
    accumulator = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [[e.step, e.value] for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def main(
    run_dir: str,
    network: str,
    seed: int,
    seconds: float,
    eval_command: str,
    out: str,
    git_commit: str | None = None,
    largest_component_eval_command: str | None = None,
) -> None:
    """
    Args:
        run_dir: the run's output folder (``tensorboard/``, ``eval/``, ``models/model.pt``, whose md5 the record
            keeps so that shipped weights can be traced to their run; ``machines.log``, where each sitting trained).
            The record's ``machine`` is the one that evaluated the model and wrote the record.
        network: name of the network trained.
        seed: the run's seed.
        seconds: wall-clock time of training and evaluation.
        eval_command: the evaluation command line, as run.
        out: the JSON record to write.
        git_commit: the commit the run started from (default: the one checked out now).
        largest_component_eval_command: the second evaluation, with the largest-component post-processing, whose
            metrics are in ``eval_largest_component/`` (LGG).
    """
    run_dir = Path(run_dir)
    dice_table = read_raw_table(run_dir / "eval" / "test_mean_dice_raw.csv")
    dice = per_case(dice_table)
    hd95 = read_per_case(run_dir / "eval" / "test_hd95_raw.csv")
    curves = read_curves(run_dir / "tensorboard")
    trainer = torch.load(latest_checkpoint(run_dir / "checkpoints"), weights_only=True)["trainer"]
    record = {
        "network": network,
        "seed": seed,
        "git_commit": git_commit or current_commit(),
        "train_commands": read_commands(run_dir / "commands.log"),
        "eval_command": eval_command,
        "machine": describe_machine(),
        "sitting_machines": read_machines(run_dir / "machines.log"),
        "model_md5": hashlib.md5((run_dir / "models" / "model.pt").read_bytes()).hexdigest(),
        "seconds": seconds,
        "epochs": int(trainer["iteration"]) // int(trainer["epoch_length"]),
        "epoch_length": int(trainer["epoch_length"]),
        "test_dice": dice,
        "test_hd95": hd95,
        "test_dice_per_label": per_label(dice_table),
        "train_loss": curves.get("train_loss", []),
        "val_mean_dice": curves.get("val_mean_dice", []),
    }
    if largest_component_eval_command:
        lcc_dir = run_dir / "eval_largest_component"
        record["largest_component_eval_command"] = largest_component_eval_command
        record["test_dice_largest_component"] = read_per_case(lcc_dir / "test_mean_dice_raw.csv")
        record["test_hd95_largest_component"] = read_per_case(lcc_dir / "test_hd95_raw.csv")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, out)
    print(f"wrote {out}: {len(dice)} test patients, mean Dice {sum(dice.values()) / len(dice):.4f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--network", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--eval_command", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--git_commit")
    parser.add_argument("--largest_component_eval_command")
    return parser.parse_args()


if __name__ == "__main__":
    main(**vars(parse_args()))
