"""
Choose a foreground threshold and test-time mirroring from per-case Dice written by
``benchmarks/tools/threshold_sweep.py``, by a rule fixed before the data is seen: pool the cases of every file (the
validation folds of a cross-validation), and adopt the candidate with the highest mean Dice only if it beats the default
by at least ``min_gain``; ties go to the cheaper candidate (no mirroring before mirroring, then the higher threshold).

Usage (fold 0 of ``benchmarks/lgg/README.md``; a sweep without mirroring ends in ``_mirror.csv`` and its mirrored one
in ``_mirror1.csv``; several folds are pooled by listing their files, comma-separated)::

    python benchmarks/tools/choose_postprocessing.py --plain benchmarks/lgg/thresholds_300/validation_mirror.csv \
        --mirrored benchmarks/lgg/thresholds_300/validation_mirror1.csv
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import NamedTuple, Sequence

import fire

from xunet_bundle.data import DataError

COLUMN_PREFIX = "dice_at_"


class Candidate(NamedTuple):
    """A post-processing candidate: tumour where its probability is at least ``threshold``, mirrored or not."""

    threshold: float
    mirrored: bool


def read_sweep(path: str | Path) -> dict[float, dict[str, float]]:
    """
    The per-case Dice of one ``threshold_sweep.py`` CSV, by threshold then case.

    Args:
        path: the CSV: a ``case`` column, then one ``dice_at_<threshold>`` column per threshold.
    """
    if not Path(path).is_file():
        raise DataError(path, "threshold sweep not found: run benchmarks/tools/threshold_sweep.py first.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        columns = [name for name in fields if name.startswith(COLUMN_PREFIX)]
        if "case" not in fields or not columns:
            raise DataError(path, f"expected a 'case' column and '{COLUMN_PREFIX}<threshold>' columns, got {fields}.")
        rows = list(reader)
    if not rows:
        raise DataError(path, "the threshold sweep lists no case.")
    return {
        float(column.removeprefix(COLUMN_PREFIX)): {row["case"]: float(row[column]) for row in rows}
        for column in columns
    }


def pool_sweeps(paths: Sequence[str]) -> dict[float, dict[str, float]]:
    """
    The per-case Dice of several sweeps (one per validation fold) pooled, by threshold then case.

    Args:
        paths: the CSVs; each must measure the same thresholds, and no case may appear in two of them.
    """
    pooled: dict[float, dict[str, float]] = {}
    owner: dict[str, str] = {}
    for path in paths:
        sweep = read_sweep(path)
        if pooled and set(sweep) != set(pooled):
            raise DataError(path, f"measures thresholds {sorted(sweep)}, the other sweeps {sorted(pooled)}.")
        cases = next(iter(sweep.values()))
        for case in cases:
            if case in owner:
                raise DataError(path, f"case {case} is also in {owner[case]}: a case belongs to one validation fold.")
            owner[case] = str(path)
        for threshold, dice in sweep.items():
            pooled.setdefault(threshold, {}).update(dice)
    return pooled


def candidate_dice(
    plain: dict[float, dict[str, float]], mirrored: dict[float, dict[str, float]]
) -> dict[Candidate, dict[str, float]]:
    """
    Every candidate's per-case Dice, the cheapest candidate first (no mirroring before mirroring, then the higher
    threshold).

    Args:
        plain: per-case Dice without mirroring, by threshold then case.
        mirrored: the same with mirroring; it must hold the same cases.
    """
    if set(next(iter(mirrored.values()))) != set(next(iter(plain.values()))):
        raise ValueError("the sweeps with and without mirroring must hold the same cases.")
    return {
        Candidate(threshold, mirror): sweep[threshold]
        for mirror, sweep in ((False, plain), (True, mirrored))
        for threshold in sorted(sweep, reverse=True)
    }


def choose(dice: dict[Candidate, dict[str, float]], default: Candidate, min_gain: float = 0.005) -> Candidate:
    """
    The adopted candidate: the one with the highest mean Dice (the cheapest of equals) if it beats ``default`` by at
    least ``min_gain``, otherwise ``default``.

    Args:
        dice: every candidate's per-case Dice, cheapest first, as :func:`candidate_dice` gives it.
        default: the candidate in use.
        min_gain: the smallest gain in mean Dice over the default that adopts another candidate.
    """
    if default not in dice:
        raise ValueError(f"the default {default} was not measured.")
    means = {candidate: statistics.fmean(per_case.values()) for candidate, per_case in dice.items()}
    best = max(means, key=means.get)  # the first of equal means, so the cheapest
    return best if means[best] - means[default] >= min_gain else default


def main(
    plain: Sequence[str],
    mirrored: Sequence[str],
    min_gain: float = 0.005,
    default_threshold: float = 0.5,
    apply_rule: bool = True,
) -> None:
    """
    Print every candidate's mean and median Dice over the pooled cases, its mean gain over the default with the cases it
    makes better and worse, and the adopted candidate.

    Args:
        plain: the sweeps without mirroring, one per validation fold (comma-separated or a list).
        mirrored: the sweeps with mirroring, of the same folds.
        min_gain: the smallest gain over the default that adopts another candidate.
        default_threshold: the default's threshold (without mirroring).
        apply_rule: mark the adopted candidate; ``False`` only measures, for patients nothing may be chosen on (test).
    """
    dice = candidate_dice(
        pool_sweeps(plain.split(",") if isinstance(plain, str) else plain),
        pool_sweeps(mirrored.split(",") if isinstance(mirrored, str) else mirrored),
    )
    default = Candidate(default_threshold, False)
    adopted = choose(dice, default, min_gain) if apply_rule else None
    baseline = dice[default]
    rule = f"adopted if it gains >= {min_gain}" if apply_rule else "measured only, nothing chosen"
    print(f"{len(baseline)} cases; default: threshold {default.threshold}, no mirroring; {rule}")
    for candidate, per_case in dice.items():
        gains = [per_case[case] - baseline[case] for case in baseline]
        mirroring = "mirroring" if candidate.mirrored else "no mirroring"
        mark = "  <- adopted" if candidate == adopted else ""
        print(
            f"threshold {candidate.threshold}, {mirroring}: {statistics.fmean(per_case.values()):.4f}"
            f" ({statistics.fmean(gains):+.4f}), median {statistics.median(per_case.values()):.4f},"
            f" better on {sum(gain > 0 for gain in gains)}, worse on {sum(gain < 0 for gain in gains)}{mark}"
        )


if __name__ == "__main__":
    fire.Fire(main)
