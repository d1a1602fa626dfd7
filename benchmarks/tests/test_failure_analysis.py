"""benchmarks/tools/failure_analysis.py: the failure kinds of issue 34 and the predict / analyse / sweep steps."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from xunet_bundle import CrossBasicUNet

pytestmark = pytest.mark.slow  # a protocol tool (benchmarks/tools/)

sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "tools"))
from failure_analysis import KINDS, failure_kind, segment  # noqa: E402
from overlay import dice  # noqa: E402

SCRIPT = str(REPO_ROOT / "benchmarks" / "tools" / "failure_analysis.py")


def box(shape, *slices) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[slices] = True
    return mask


SHAPE = (64, 64, 8)


@pytest.mark.parametrize(
    "truth, thresholded, final, kind",
    [
        # 1. large tumour (32768 true voxels), a quarter found
        (box((128, 128, 2), slice(0, 128), slice(0, 128)), box((128, 128, 2), slice(0, 64), slice(0, 64)), None, 0),
        # 2. the lesion is in the thresholded prediction, the kept largest component is a blob elsewhere
        (box(SHAPE, slice(0, 10), slice(0, 10)), box(SHAPE, slice(0, 10), slice(0, 10)) | box(SHAPE, slice(30, 60),
         slice(30, 60)), box(SHAPE, slice(30, 60), slice(30, 60)), 1),  # fmt: skip
        # 3. a prediction that touches no true voxel
        (box(SHAPE, slice(0, 10), slice(0, 10)), box(SHAPE, slice(30, 40), slice(30, 40)), None, 2),
        # 4. a small lesion, a fifth found
        (box(SHAPE, slice(0, 10), slice(0, 10)), box(SHAPE, slice(0, 2), slice(0, 10)), None, 3),
        # 5. nothing predicted
        (box(SHAPE, slice(0, 10), slice(0, 10)), np.zeros(SHAPE, dtype=bool), None, 4),
        # 6. four times the lesion predicted around it
        (box(SHAPE, slice(0, 10), slice(0, 10)), box(SHAPE, slice(0, 20), slice(0, 20)), None, 5),
        # 7. the right size, half of it beside the lesion
        (box(SHAPE, slice(0, 10), slice(0, 10)), box(SHAPE, slice(6, 16), slice(0, 10)), None, 6),
    ],
)
def test_failure_kinds(truth, thresholded, final, kind):
    final = thresholded if final is None else final
    assert dice(final, truth) < 0.5
    assert failure_kind(truth, thresholded, final) == KINDS[kind]


def test_segment_keeps_a_confident_lesion_that_the_largest_component_deletes():
    probability = np.full(SHAPE, 0.01, dtype=np.float32)
    probability[0:4, 0:4, 0:2] = 0.95
    probability[30:50, 30:50, 0:4] = 0.4
    largest = segment(probability, 0.2, largest_component=True)
    confident = segment(probability, 0.2, largest_component=False, confident=(0.9, 0.0))
    assert not largest[0:4, 0:4, 0:2].any() and largest[30:50, 30:50, 0:4].all()
    assert confident[0:4, 0:4, 0:2].all() and not confident[30:50, 30:50, 0:4].any()


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_predict_analyse_and_sweep_on_the_demo_data(demo_dir, tmp_path):
    """The three steps on the demo's test patients with an untrained network: the cached probabilities are the
    bundle's (softmax of the inferer's logits), and analyse and sweep score them as ``overlay.dice`` does."""
    torch.manual_seed(0)
    models = tmp_path / "models"
    models.mkdir()
    torch.save(CrossBasicUNet(spatial_dims=2, in_channels=3, out_channels=2).state_dict(), models / "model.pt")
    cache = tmp_path / "probabilities"
    run("predict", "--dataset_dir", str(demo_dir), "--ckpt_dir", str(models), "--eval_subset", "test",
        "--mirror_axes", "[]", "--out_dir", str(cache))  # fmt: skip
    index = json.loads((cache / "cases.json").read_text())
    assert index["source"]["subset"] == "test" and len(index["cases"]) == 2
    for name in index["cases"]:
        with np.load(cache / f"{name}.npz") as f:
            probability, label = f["probability"], f["label"]
        assert probability.shape == label.shape and probability.dtype == np.float16
        assert 0 <= probability.min() and probability.max() <= 1 and set(np.unique(label)) <= {0, 1}

    table = tmp_path / "analysis.csv"
    printed = run("analyse", str(cache), "--threshold", "0.5", "--largest_component", "False", "--out", str(table))
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["case"] for row in rows) == sorted(index["cases"])
    for row in rows:
        with np.load(cache / f"{row['case']}.npz") as f:
            probability, label = f["probability"].astype(np.float32), f["label"] > 0
        assert float(row["dice"]) == pytest.approx(dice(probability >= 0.5, label), abs=1e-4)
        assert int(row["true_voxels"]) == int(label.sum())
        assert (row["kind"] in KINDS) == (float(row["dice"]) < 0.5)
    assert "patients, threshold 0.5" in printed.stdout

    swept = tmp_path / "sweep.csv"
    printed = run("sweep", str(cache), "--threshold", "0.5", "--out", str(swept))
    with open(swept) as f:
        columns = list(csv.DictReader(f))
    every = {row["case"]: float(row["every component"]) for row in columns}
    assert every == {row["case"]: pytest.approx(float(row["dice"]), abs=1e-4) for row in rows}
    assert printed.stdout.count("below 0.5") == 8  # one line per candidate
