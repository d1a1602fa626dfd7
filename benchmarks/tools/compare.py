"""
Turn the JSON records of protocol runs (``benchmarks/run.sh``) into the results table and plots.

For each network, a patient's (case's) Dice is the mean over that network's seeds (``--by_seed True`` keeps every run
apart); the table gives the mean, median and a bootstrap 95% confidence interval across test patients, and, against
the baseline network, the per-patient paired difference with its paired bootstrap interval. With several labels
(Hippocampus) a per-label table follows. With ``--costs`` (a ``benchmarks/tools/benchmark.py`` JSON), a
Dice-against-cost table and plot are added.

Usage::

    python benchmarks/tools/compare.py --records benchmarks/lgg/records --out_dir benchmarks/lgg
    python benchmarks/tools/compare.py --records benchmarks/lgg/variants/records --out_dir benchmarks/lgg/variants \
        --costs benchmarks/speed/variants_cpu_2cores.json
    python benchmarks/tools/compare.py \
        --records benchmarks/lgg/all_folds/records,benchmarks/lgg/all_folds/seed1/records \
        --by_seed True --baseline xunet_all_folds_bf16_seed0 --out_dir benchmarks/lgg/all_folds/seed1/seed_to_seed
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import fire
import matplotlib
import numpy as np
from scipy import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIDENCE = 0.95
# the benchmarks/tools/benchmark.py model measuring each network's cost
BENCHMARK_MODEL = {
    "basicunet": "basicunet",
    "xunet": "xunet_fast",
    "xunet_attention": "xunet_attention",
    "xunet_projected": "xunet_projected",
}


def load_records(folders: Sequence[str | Path]) -> dict[str, list[dict]]:
    """The records in the given folders grouped by network, each group sorted by seed."""
    records = defaultdict(list)
    for path in sorted(path for folder in folders for path in Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        missing = {"network", "seed", "test_dice", "test_hd95", "val_mean_dice", "train_loss", "epoch_length"}
        missing -= set(record)
        if missing:
            raise ValueError(f"{path}: not a run record, missing {sorted(missing)}.")
        record["path"] = str(path)
        records[record["network"]].append(record)
    if not records:
        raise FileNotFoundError(f"{', '.join(map(str, folders))}: no run records (*.json).")
    return {network: sorted(runs, key=lambda r: r["seed"]) for network, runs in records.items()}


def per_patient(runs: list[dict], key: str) -> dict[str, float]:
    """A metric per test patient, averaged over the runs (seeds); all runs must cover the same patients."""
    patients = set(runs[0][key])
    for run in runs[1:]:
        if set(run[key]) != patients:
            raise ValueError(f"{run['path']}: its test patients differ from those of {runs[0]['path']}.")
    return {p: float(np.mean([run[key][p] for run in runs])) for p in sorted(patients)}


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """Bootstrap (BCa) 95% confidence interval of the mean of ``values``, resampling patients."""
    if len(values) < 3 or np.ptp(values) == 0:
        return float(np.mean(values)), float(np.mean(values))
    result = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=10000, random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summary_rows(records: dict[str, list[dict]], baseline: str, suffix: str = "") -> list[str]:
    """
    Markdown rows: per network, then the paired differences to ``baseline``.

    Args:
        records: run records grouped by network.
        baseline: network the others are compared with.
        suffix: ``""`` for the network's own output, ``"_largest_component"`` for the post-processed evaluation.
    """
    dice_key, hd95_key = "test_dice" + suffix, "test_hd95" + suffix
    rows = [
        "| network | seeds | mean Dice per seed | mean Dice | 95% CI | median Dice | mean HD95 | median HD95 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for network, runs in records.items():
        dice = np.array(list(per_patient(runs, dice_key).values()))
        hd95 = np.array(list(per_patient(runs, hd95_key).values()))
        seed_means = ", ".join(f"{np.mean(list(run[dice_key].values())):.3f}" for run in runs)
        low, high = mean_interval(dice)
        rows.append(
            f"| {network} | {len(runs)} | {seed_means} | {dice.mean():.3f} | {low:.3f} - {high:.3f} | "
            f"{np.median(dice):.3f} | {np.nanmean(hd95):.1f} | {np.nanmedian(hd95):.1f} |"
        )
    if baseline in records:
        base = per_patient(records[baseline], dice_key)
        rows += [
            "",
            "| paired difference (per patient) | mean | 95% CI (paired bootstrap) | patients better | p (Wilcoxon) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for network, runs in records.items():
            if network == baseline:
                continue
            other = per_patient(runs, dice_key)
            if set(other) != set(base):
                raise ValueError(f"{network} and {baseline} were tested on different patients.")
            diff = np.array([other[p] - base[p] for p in base])
            low, high = mean_interval(diff)
            p_value = stats.wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
            rows.append(
                f"| {network} - {baseline} | {diff.mean():+.3f} | {low:+.3f} - {high:+.3f} | "
                f"{int((diff > 0).sum())} of {len(diff)} | {p_value:.3f} |"
            )
    return rows


def per_patient_rows(records: dict[str, list[dict]], suffixes: tuple[str, ...]) -> list[str]:
    """
    Markdown rows: each test patient's Dice, one column per network and evaluation (the mean over the seeds).

    Args:
        records: run records grouped by network.
        suffixes: the evaluations to show: ``""`` for the network's own output, ``"_largest_component"`` for the
            post-processed one.
    """
    columns = {
        f"{network}{' (largest component)' if suffix else ''}": per_patient(runs, f"test_dice{suffix}")
        for network, runs in records.items()
        for suffix in suffixes
    }
    first = next(iter(columns.values()))
    rows = ["", "Dice per test patient:", "", "| patient | " + " | ".join(columns) + " |"]
    rows.append("| --- |" + " --- |" * len(columns))
    for patient in first:
        rows.append(f"| {patient} | " + " | ".join(f"{dice[patient]:.3f}" for dice in columns.values()) + " |")
    return rows


def per_label_rows(records: dict[str, list[dict]]) -> list[str]:
    """Markdown rows of the per-label test Dice (mean over seeds, then over cases), when runs recorded labels."""
    rows = []
    for network, runs in records.items():
        labels = runs[0].get("test_dice_per_label") or {}
        for label in sorted(labels, key=int):
            per_case = {
                case: np.mean([run["test_dice_per_label"][label][case] for run in runs]) for case in labels[label]
            }
            dice = np.array(list(per_case.values()))
            low, high = mean_interval(dice)
            rows.append(f"| {network} | {label} | {dice.mean():.3f} | {low:.3f} - {high:.3f} | {np.median(dice):.3f} |")
    if not rows:
        return []
    return ["", "| network | label | mean Dice | 95% CI | median Dice |", "| --- | --- | --- | --- | --- |"] + rows


def cost_rows(records: dict[str, list[dict]], costs: list[dict], case: str) -> tuple[list[str], dict[str, dict]]:
    """Markdown rows of test Dice against cost (ratios to BasicUNet from one benchmark run), and the figures."""
    measured = {(row["model"], row["mode"]): row for row in costs if row["case"] == case and "time_ratio" in row}
    figures = {}
    for network, runs in records.items():
        model = BENCHMARK_MODEL.get(network)
        if (model, "train") not in measured:
            continue
        train, infer = measured[(model, "train")], measured[(model, "infer")]
        figures[network] = {
            "dice": float(np.mean(list(per_patient(runs, "test_dice").values()))),
            "parameters": train["parameters"],
            "train_ratio": train["time_ratio"],
            "infer_ratio": infer["time_ratio"],
            "memory_ratio": train["memory_ratio"],
        }
    rows = [
        "",
        f"Cost: `benchmarks/tools/benchmark.py`, case `{case}`, ratios to BasicUNet measured in the same run.",
        "",
        "| network | parameters | mean test Dice | train step (x BasicUNet) | inference (x BasicUNet) | "
        "peak training memory (x BasicUNet) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for network, f in figures.items():
        rows.append(
            f"| {network} | {f['parameters']:,} | {f['dice']:.3f} | {f['train_ratio']:.2f} | {f['infer_ratio']:.2f} | "
            f"{f['memory_ratio']:.2f} |"
        )
    return rows, figures


def plot_dice_against_cost(figures: dict[str, dict], case: str, path: Path) -> None:
    """Mean test Dice against train-step time (ratio to BasicUNet), one point per network, sized by parameters."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    largest = max(f["parameters"] for f in figures.values())
    for network, f in figures.items():
        ax.scatter(f["train_ratio"], f["dice"], s=300 * f["parameters"] / largest, alpha=0.7)
        ax.annotate(network, (f["train_ratio"], f["dice"]), textcoords="offset points", xytext=(8, 4))
    ax.set_xlabel(f"train step time, x BasicUNet ({case}, same benchmark run)")
    ax.set_ylabel("mean test Dice")
    ax.set_title("Dice against cost (marker area: parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(records: dict[str, list[dict]], path: Path) -> None:
    """Validation Dice and training loss per epoch of every run."""
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (network, runs) in zip(colors, records.items()):
        for i, run in enumerate(runs):
            label = network if i == 0 else None
            loss = np.array(run["train_loss"])
            epochs = len(loss) // run["epoch_length"]
            if epochs:
                per_epoch = loss[: epochs * run["epoch_length"], 1].reshape(epochs, -1).mean(axis=1)
                ax_loss.plot(np.arange(1, epochs + 1), per_epoch, color=color, alpha=0.8, label=label)
            dice = np.array(run["val_mean_dice"])
            if len(dice):
                ax_dice.plot(dice[:, 0], dice[:, 1], "o-", color=color, alpha=0.8, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (Dice + CE), epoch mean", title="Training loss")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Validation Dice (fold 0)")
    if not ax_dice.lines:  # runs trained on every fold (--fold all) validate on nothing
        ax_dice.text(0.5, 0.5, "no run was validated", ha="center", va="center", transform=ax_dice.transAxes)
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_patient(records: dict[str, list[dict]], path: Path) -> None:
    """Per-patient test Dice of every network (mean over seeds), patients sorted by the first network's Dice."""
    networks = list(records)
    dice = {network: per_patient(runs, "test_dice") for network, runs in records.items()}
    patients = sorted(dice[networks[0]], key=dice[networks[0]].get)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(patients)), 4))
    width = 0.8 / len(networks)
    for i, network in enumerate(networks):
        positions = np.arange(len(patients)) + (i - (len(networks) - 1) / 2) * width
        ax.bar(positions, [dice[network][p] for p in patients], width=width, label=network)
    ax.set_xticks(np.arange(len(patients)), [p.removeprefix("TCGA_") for p in patients], rotation=70, fontsize=7)
    ax.set(ylabel="Dice (mean over seeds)", ylim=(0, 1), title="Per-patient test Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    records: str | tuple = "benchmarks/lgg/records",
    out_dir: str = "benchmarks/lgg",
    baseline: str = "basicunet",
    costs: str | None = None,
    cost_case: str = "2d_b4",
    title: str = "LGG protocol results",
    by_seed: bool = False,
    plots: bool = True,
) -> None:
    """
    Args:
        records: folder of run records (``<network>_seed<seed>.json``), or comma-separated folders.
        out_dir: receives ``results.md``, ``learning_curves.png``, ``per_patient_dice.png`` and, with ``costs``,
            ``dice_vs_cost.png``.
        baseline: network the others are compared with, patient by patient.
        costs: a JSON written by ``benchmarks/tools/benchmark.py --json_out``, for the Dice-against-cost table and plot.
        cost_case: the benchmark case giving the costs (``2d_b4`` for LGG, ``3d_b1`` for Hippocampus).
        title: heading of ``results.md``.
        by_seed: compare every run on its own, as ``<network>_seed<seed>``, instead of averaging a network's seeds:
            for one seed against another, or one seed against another network (``baseline`` names such a run).
        plots: also draw the PNGs; ``False`` for a second comparison of records whose plots are drawn already (the
            plots do not depend on ``baseline``).
    """
    folders = records.split(",") if isinstance(records, str) else list(records)
    grouped = load_records(folders)
    if by_seed:
        grouped = {f"{network}_seed{run['seed']}": [run] for network, runs in grouped.items() for run in runs}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(grouped, baseline) + per_label_rows(grouped)
    suffixes = ("",)
    if all("test_dice_largest_component" in run for runs in grouped.values() for run in runs):
        rows += ["", "With the largest-component post-processing (`--largest_component True`):", ""]
        rows += summary_rows(grouped, baseline, "_largest_component")
        suffixes += ("_largest_component",)
    rows += per_patient_rows(grouped, suffixes)
    figures = {}
    if costs:
        more, figures = cost_rows(grouped, json.loads(Path(costs).read_text()), cost_case)
        rows += more
    num_patients = len(next(iter(grouped.values()))[0]["test_dice"])
    header = [
        f"# {title}",
        "",
        f"Generated by `python benchmarks/tools/compare.py --records {','.join(folders)} --out_dir {out_dir}"
        + (f" --costs {costs} --cost_case {cost_case}" if costs else "")
        + (f" --baseline {baseline}" if baseline != "basicunet" else "")
        + (f" --title '{title}'" if title != "LGG protocol results" else "")
        + (" --by_seed True" if by_seed else "")
        + ("" if plots else " --plots False")
        + f"` from {sum(len(r) for r in grouped.values())} run records; {num_patients} test patients (cases); "
        "Dice per patient in 3D of the network's own output unless stated (the mean over foreground labels when "
        "there are several); HD95 in voxels; intervals are bootstrap (BCa) 95% intervals across patients.",
        "",
    ]
    (out / "results.md").write_text("\n".join(header + rows) + "\n")
    if plots:
        plot_learning_curves(grouped, out / "learning_curves.png")
        plot_per_patient(grouped, out / "per_patient_dice.png")
        if figures:
            plot_dice_against_cost(figures, cost_case, out / "dice_vs_cost.png")
    print("\n".join(rows))


if __name__ == "__main__":
    fire.Fire(main)
