"""
Why patients fail: per-patient failure kinds and component post-processing candidates, from cached probabilities.

Three steps, each a subcommand:

- ``predict`` runs a model over one subset with the bundle's own preprocessing and inferer (as ``evaluate.json``) and
  caches each patient's tumour probability and label (``<out_dir>/<case>.npz``, float16 and uint8) with
  ``cases.json`` (image and label paths, model md5). One network pass per patient; the other steps reuse it.
- ``analyse`` segments each cached patient with one post-processing, scores it, and classifies every patient below a
  Dice of 0.5 into the failure kinds of issue 34 (below); writes a per-patient CSV, prints a Markdown table and,
  with ``--overlays``, draws each failing patient (``overlay.py``).
- ``sweep`` scores every component post-processing candidate (:data:`CANDIDATES`, fixed here as the tail study's plan
  fixed them: every component, the largest component, and six ``ConfidentComponents`` settings) on the cached patients
  and prints the mean, median and the counts of patients below 0.5 and 0.3 for each.

Failure kinds of a patient below 0.5 (in this order; sizes in voxels):

1. ``large tumour under-segmented``: at least 10,000 true voxels and fewer than half of them predicted;
2. ``lesion deleted by the largest component``: the thresholded prediction overlaps the lesion, the kept largest
   component does not;
3. ``false positives only``: a prediction that touches no true voxel;
4. ``small lesion under-segmented``: fewer than 10,000 true voxels and fewer than half of them predicted;
5. ``nothing predicted``; 6. ``over-segmented`` (more than twice the true voxels); 7. ``misplaced``: the rest.

Usage (the shipped weights on the 12 test patients, then on out-of-fold patients of fold models)::

    python benchmarks/tools/failure_analysis.py predict --dataset_dir runs/lgg/data --ckpt_dir models \\
        --eval_subset test --mirror_axes "[1]" --out_dir runs/lgg/probabilities/shipped_test
    python benchmarks/tools/failure_analysis.py analyse runs/lgg/probabilities/shipped_test \\
        --threshold 0.2 --largest_component True --out benchmarks/lgg/tail/shipped_test.csv
    python benchmarks/tools/failure_analysis.py sweep runs/lgg/probabilities/shipped_test --threshold 0.2 \\
        --out benchmarks/lgg/tail/shipped_test_components.csv
    # a fold model's out-of-fold patients (fold 1's model on fold 1); analyse and sweep take several folders
    python benchmarks/tools/failure_analysis.py predict --dataset_dir runs/lgg/data --ckpt_dir runs/fold1/models \\
        --eval_subset validation --fold 1 --mirror_axes "[1]" --out_dir runs/lgg/probabilities/fold1
    python benchmarks/tools/failure_analysis.py sweep runs/lgg/probabilities/fold0,runs/lgg/probabilities/fold1 \\
        --threshold 0.5 --out oof_components.csv
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import fire
import nibabel as nib
import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent

from xunet_bundle.data import nifti_stem
from xunet_bundle.postprocessing import ConfidentComponents, _md5, foreground_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overlay import dice  # noqa: E402
from overlay import main as draw_overlay  # noqa: E402
from threshold_sweep import bundle_evaluation  # noqa: E402

LARGE_TUMOUR = 10_000  # true voxels from which a tumour counts as large (kind 1 against kind 4)
KINDS = (
    "large tumour under-segmented",
    "lesion deleted by the largest component",
    "false positives only",
    "small lesion under-segmented",
    "nothing predicted",
    "over-segmented",
    "misplaced",
)
# the component candidates of ``sweep``: name -> (largest component, ConfidentComponents settings or None)
CANDIDATES = {
    "every component": (False, None),
    "largest component": (True, None),
    **{
        f"confident: peak >= {peak}, size >= {fraction} of largest": (False, (peak, fraction))
        for peak in (0.8, 0.9, 0.95)
        for fraction in (0.0, 0.1)
    },
}


def predict(
    dataset_dir: str,
    ckpt_dir: str,
    out_dir: str,
    eval_subset: str = "test",
    fold: int | str = 0,
    mirror_axes: Sequence[int] = (),
) -> None:
    """
    Cache the tumour probability and the label of every patient of a subset.

    Args:
        dataset_dir: a prepared dataset (``datalist.json``).
        ckpt_dir: the folder holding ``model.pt``.
        out_dir: where ``<case>.npz`` and ``cases.json`` are written.
        eval_subset: ``"test"`` or ``"validation"`` (fold ``fold``: the out-of-fold patients of a fold model).
        fold: the validation fold.
        mirror_axes: test-time mirroring, as the configs' ``mirror_axes``; none by default, as for any model but the
            shipped weights (``"[1]"``: left-right, their post-processing and that of the tail study).
    """
    network, inferer, dataset, weights = bundle_evaluation(dataset_dir, ckpt_dir, eval_subset, fold, mirror_axes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = {}
    with torch.no_grad():
        for index, item in enumerate(dataset):
            probability = torch.softmax(inferer(item["image"][None], network), dim=1)[0, 1:].sum(dim=0)
            image = str(item["image"].meta["filename_or_obj"])
            name = nifti_stem(Path(image).name)
            with tempfile.NamedTemporaryFile(dir=out, suffix=".npz", delete=False) as f:
                np.savez_compressed(
                    f,
                    probability=probability.numpy().astype(np.float16),
                    label=item["label"][0].numpy().astype(np.uint8),
                )
            os.replace(f.name, out / f"{name}.npz")
            cases[name] = {"image": image, "label": str(dataset.data[index]["label"])}
            print(name, f"{int((probability >= 0.5).sum())} voxels at 0.5", flush=True)
    source = {"model": str(weights), "model_md5": _md5(weights), "subset": eval_subset, "fold": fold}
    source["mirror_axes"] = list(mirror_axes)
    (out / "cases.json").write_text(json.dumps({"source": source, "cases": cases}, indent=4) + "\n")


def load_cases(probabilities: str) -> tuple[dict, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The cached patients of one or more ``predict`` folders (comma-separated), in name order."""
    infos, loaded = {}, []
    for folder in str(probabilities).split(","):
        index = json.loads((Path(folder) / "cases.json").read_text())
        for name, info in index["cases"].items():
            with np.load(Path(folder) / f"{name}.npz") as f:
                loaded.append((name, f["probability"].astype(np.float32), f["label"] > 0))
            infos[name] = info
    return infos, sorted(loaded, key=lambda item: item[0])


def segment(probability: np.ndarray, threshold: float, largest_component: bool, confident=None) -> np.ndarray:
    """The binary segmentation of one post-processing (``confident``: ``(min_peak, min_fraction)`` or None)."""
    if confident is not None:
        two_class = torch.from_numpy(np.stack([1 - probability, probability]))
        probability = ConfidentComponents(threshold, *confident)(two_class)[1].numpy()
    mask = probability >= threshold
    if largest_component:
        mask = KeepLargestConnectedComponent(applied_labels=[1])(torch.from_numpy(mask[None]).to(torch.uint8))
        mask = np.asarray(mask[0]) > 0
    return mask


def failure_kind(truth: np.ndarray, thresholded: np.ndarray, final: np.ndarray) -> str:
    """The kind (see the module docstring) of a patient below 0.5, from its truth and its two predictions."""
    true_voxels, predicted = int(truth.sum()), int(final.sum())
    if predicted < 0.5 * true_voxels and true_voxels >= LARGE_TUMOUR and (final & truth).any():
        return KINDS[0]
    if (thresholded & truth).any() and not (final & truth).any():
        return KINDS[1]
    if predicted and not (final & truth).any():
        return KINDS[2]
    if predicted < 0.5 * true_voxels and predicted:
        return KINDS[0] if true_voxels >= LARGE_TUMOUR else KINDS[3]
    if not predicted:
        return KINDS[4]
    return KINDS[5] if predicted > 2 * true_voxels else KINDS[6]


def summary(values: Sequence[float]) -> str:
    values = np.asarray(values)
    return (
        f"mean {values.mean():.4f}, median {np.median(values):.4f}, below 0.5: {int((values < 0.5).sum())}, "
        f"below 0.3: {int((values < 0.3).sum())} (of {len(values)})"
    )


def analyse(
    probabilities: str,
    out: str,
    threshold: float = 0.2,
    largest_component: bool = True,
    overlays: str | None = None,
    show_poorest: int = 3,
) -> None:
    """
    Per-patient Dice, voxel counts and components of one post-processing; the failure kind of each patient below 0.5.

    Args:
        probabilities: ``predict`` output folder(s), comma-separated.
        out: the per-patient CSV to write.
        threshold: the tumour-probability threshold.
        largest_component: keep the largest 3D component.
        overlays: a folder for one PNG per listed patient (FLAIR with the true and predicted outlines).
        show_poorest: the table lists the patients below 0.5 and at least this many of the poorest.
    """
    infos, cases = load_cases(probabilities)
    rows, finals = [], {}
    for name, probability, truth in cases:
        thresholded = probability >= threshold
        final = finals[name] = segment(probability, threshold, largest_component)
        score = dice(final, truth)
        _, count = foreground_components(thresholded)
        kind = failure_kind(truth, thresholded, final) if score < 0.5 else ""
        rows.append(
            {
                "case": name,
                "dice": round(score, 4),
                "dice_every_component": round(dice(thresholded, truth), 4),
                "true_voxels": int(truth.sum()),
                "predicted_voxels": int(final.sum()),
                "thresholded_voxels": int(thresholded.sum()),
                "components": count,
                "kind": kind,
            }
        )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"{len(rows)} patients, threshold {threshold}, largest component {largest_component}: "
        f"{summary([row['dice'] for row in rows])}"
    )
    print("\n| patient | Dice | every component | true voxels | predicted (share of true) | components | kind |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    poorest = sorted(rows, key=lambda row: row["dice"])
    listed = [row for rank, row in enumerate(poorest) if row["kind"] or rank < show_poorest]
    if overlays:
        draw(infos, finals, listed, overlays)
    for row in listed:
        share = row["predicted_voxels"] / max(row["true_voxels"], 1)
        print(
            f"| {row['case']} | {row['dice']:.3f} | {row['dice_every_component']:.3f} | {row['true_voxels']} | "
            f"{row['predicted_voxels']} ({share:.0%}) | {row['components']} | {row['kind'] or '(above 0.5)'} |"
        )


def draw(infos: dict, finals: dict, rows: list[dict], folder: str) -> None:
    """One overlay PNG per row (``overlay.py``: FLAIR with the true and predicted outlines), named after the patient."""
    for row in rows:
        with tempfile.TemporaryDirectory() as tmp:
            seg = Path(tmp) / "seg.nii.gz"
            nib.save(nib.Nifti1Image(finals[row["case"]].astype(np.uint8), np.eye(4)), seg)
            kind = row["kind"] or "above 0.5"
            draw_overlay(
                infos[row["case"]]["image"],
                infos[row["case"]]["label"],
                str(seg),
                str(Path(folder) / f"{row['case']}.png"),
                title=f"{row['case']}: {kind}, Dice {row['dice']:.2f}, {row['predicted_voxels']} of "
                f"{row['true_voxels']} voxels",
            )


def sweep(probabilities: str, out: str, threshold: float = 0.2) -> None:
    """
    Per-patient Dice of every component candidate (:data:`CANDIDATES`) at one threshold; prints one summary line each.

    Args:
        probabilities: ``predict`` output folder(s), comma-separated.
        out: the per-patient CSV to write (one column per candidate).
        threshold: the tumour-probability threshold.
    """
    _, cases = load_cases(probabilities)
    scores = {name: [] for name in CANDIDATES}
    for _, probability, truth in cases:
        for name, (largest, confident) in CANDIDATES.items():
            scores[name].append(dice(segment(probability, threshold, largest, confident), truth))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", *CANDIDATES])
        for index, (name, _, _) in enumerate(cases):
            writer.writerow([name, *[f"{scores[c][index]:.6f}" for c in CANDIDATES]])
    print(f"threshold {threshold}, {len(cases)} patients")
    for name, values in scores.items():
        print(f"{name}: {summary(values)}")


if __name__ == "__main__":
    fire.Fire({"predict": predict, "analyse": analyse, "sweep": sweep})
