"""
Per-case Dice of a trained model at several foreground-probability thresholds, from one inference pass per case.

The bundle's segmentation is the argmax of the softmax, which for two classes is a tumour probability of at least 0.5.
A lower threshold trades precision for recall; this script measures that trade on one subset (choose on validation,
then measure on test), with the bundle's own preprocessing, inferer and largest-component post-processing.

Usage::

    python benchmarks/tools/threshold_sweep.py --dataset_dir runs/lgg/data --ckpt_dir runs/models_050 \
        --eval_subset validation \
        --thresholds "[0.5,0.4,0.3,0.2]" --out benchmarks/lgg/thresholds/validation_050.csv

``--mirror_axes "[1]"`` averages each slice's probabilities with those of its left-right mirror image first.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import fire
import torch
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import KeepLargestConnectedComponent

from xunet_bundle.training import require_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(REPO_ROOT / "configs" / "train.json"), str(REPO_ROOT / "configs" / "evaluate.json")]


def case_dice(probability: torch.Tensor, label: torch.Tensor, threshold: float, largest_component: bool) -> float:
    """
    Dice of the tumour label for one case.

    Args:
        probability: the tumour probability, shape (1, *spatial).
        label: the manual label (0 or 1), shape (1, *spatial).
        threshold: tumour where ``probability >= threshold``.
        largest_component: keep only the largest connected tumour component, as ``inference.json`` does.
    """
    prediction = (probability >= threshold).to(torch.uint8)
    if largest_component:
        prediction = KeepLargestConnectedComponent(applied_labels=[1])(prediction)
    dice = compute_dice(one_hot(prediction[None], 2), one_hot(label[None].long(), 2), include_background=False)
    return float(dice.item())


def bundle_evaluation(
    dataset_dir: str, ckpt_dir: str, eval_subset: str, fold: int | str, mirror_axes: Sequence[int]
) -> tuple[torch.nn.Module, Callable, Dataset, Path]:
    """
    What ``evaluate.json`` would use for one subset: the network with the weights of ``<ckpt_dir>/model.pt`` loaded
    (in eval mode), the inferer (with ``mirror_axes``), the dataset of preprocessed cases, and the weights' path.
    """
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update(
        {
            "dataset_dir": dataset_dir,
            "ckpt_dir": ckpt_dir,
            "eval_subset": eval_subset,
            "fold": fold,
            "mirror_axes": list(mirror_axes),
        }
    )
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    dataset = parser.get_parsed_content("validate#dataset")
    weights = require_checkpoint(Path(ckpt_dir) / "model.pt")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    return network, inferer, dataset, weights


def main(
    dataset_dir: str,
    ckpt_dir: str,
    out: str,
    eval_subset: str = "validation",
    fold: int | str = 0,
    thresholds: Sequence[float] = (0.5, 0.4, 0.3, 0.2),
    largest_component: bool = True,
    mirror_axes: Sequence[int] = (),
) -> None:
    """
    Write ``out`` (one row per case, one column per threshold) and print the mean and median per threshold.

    Args:
        dataset_dir: a prepared dataset (``datalist.json``).
        ckpt_dir: the folder holding ``model.pt``.
        out: the CSV to write.
        eval_subset: ``"validation"`` (fold ``fold``) or ``"test"``.
        fold: the validation fold.
        thresholds: the tumour-probability thresholds to measure.
        largest_component: keep the largest tumour component before scoring.
        mirror_axes: test-time mirroring, as the configs' ``mirror_axes`` (``[1]``: left-right); none by default.
    """
    network, inferer, dataset, _ = bundle_evaluation(dataset_dir, ckpt_dir, eval_subset, fold, mirror_axes)
    rows = []
    with torch.no_grad():
        for item in dataset:
            probability = torch.softmax(inferer(item["image"][None], network), dim=1)[0, 1:]
            dice = [case_dice(probability, item["label"], t, largest_component) for t in thresholds]
            rows.append([Path(item["image"].meta["filename_or_obj"]).name, *dice])
            print(rows[-1][0], " ".join(f"{d:.4f}" for d in dice), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", *[f"dice_at_{t}" for t in thresholds]])
        writer.writerows([[row[0], *[f"{d:.6f}" for d in row[1:]]] for row in rows])
    for column, threshold in enumerate(thresholds, start=1):
        values = torch.tensor([row[column] for row in rows])
        print(f"threshold {threshold}: mean {values.mean():.4f} median {values.median():.4f} ({len(rows)} cases)")


if __name__ == "__main__":
    fire.Fire(main)
