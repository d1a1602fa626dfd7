"""End to end through ``python -m monai.bundle``: train, resume, evaluate and infer on the synthetic demo data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, SaveImaged
from scipy import ndimage

from conftest import REPO_ROOT, run_bundle, write_channel_files
from xunet_bundle import CrossBasicUNet
from xunet_bundle.data import load_split
from xunet_bundle.runtime import cpu_supports_bf16
from xunet_bundle.training import latest_checkpoint

TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"
ENSEMBLE_EVALUATE = "['configs/train.json','configs/evaluate.json','configs/ensemble.json']"


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> Path:
    """
    A run of three epochs on the demo data stopped after two, as an interrupted run is (the trainer's max_epochs set
    below the schedule's --epochs); returns its output folder.
    """
    out = tmp_path_factory.mktemp("run")
    run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(out),
        "--ckpt_dir", str(out / "models"), "--epochs", "3", "--train#trainer#max_epochs", "2", "--num_workers", "0",
        "--progress", "False",
    )  # fmt: skip
    return out


def test_training_keeps_a_tensor_only_best_checkpoint(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = CrossBasicUNet()
    net.load_state_dict(state, strict=True)
    assert list(trained.glob("tensorboard/events.out.tfevents.*"))
    assert [p.name for p in (trained / "checkpoints").iterdir()] == ["checkpoint_epoch=2.pt"]
    resume_state = torch.load(trained / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert set(resume_state) == {"model", "optimizer", "lr_scheduler", "trainer", "best_model_tracker", "checkpointer"}
    assert resume_state["trainer"]["iteration"] == 2 * resume_state["trainer"]["epoch_length"]


@pytest.mark.slow  # a longer workflow: every fold trained on
def test_training_on_every_fold_saves_the_final_model(demo_dir, tmp_path):
    result = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path),
        "--ckpt_dir", str(tmp_path / "models"), "--epochs", "1", "--num_workers", "0", "--progress", "False",
        "--fold", "all", "--volumes_per_batch", "1",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "val_mean_dice" not in log and f"saved {tmp_path / 'models' / 'model.pt'}" in log
    num_train = len(load_split(demo_dir / "datalist.json", "train", "all"))
    resume_state = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    assert resume_state["trainer"]["epoch_length"] == num_train  # one volume per step: every fold is trained on
    final = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in resume_state["model"].items())


def best_score(checkpoint: Path) -> float:
    """The validation Dice of the best model so far, as recorded in a resume checkpoint."""
    (saved,) = torch.load(checkpoint, weights_only=True)["best_model_tracker"]["_saved"]
    return saved[0]


def test_training_resumes_from_its_last_checkpoint(trained, demo_dir):
    best_before = best_score(trained / "checkpoints" / "checkpoint_epoch=2.pt")
    result = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(trained),
        "--ckpt_dir", str(trained / "models"), "--epochs", "3", "--num_workers", "0", "--progress", "False",
        "--resume", "True",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert f"Restored all variables from {trained / 'checkpoints' / 'checkpoint_epoch=2.pt'}" in log
    assert "Epoch: 1/3" not in log and "Epoch: 3/3" in log
    assert Path(latest_checkpoint(trained / "checkpoints")).name == "checkpoint_epoch=3.pt"
    assert [p.name for p in (trained / "checkpoints").iterdir()] == ["checkpoint_epoch=3.pt"]  # epoch 2's is removed
    # the best-model tracking survives the restart: model.pt is only replaced by a better epoch
    assert best_score(trained / "checkpoints" / "checkpoint_epoch=3.pt") >= best_before > 0


def test_resume_with_another_number_of_epochs_is_refused(trained, demo_dir, tmp_path):
    """The checkpoint's cosine schedule spans its run's epochs: extending the run on resume would not rebuild it."""
    shutil.copytree(trained / "checkpoints", tmp_path / "checkpoints")
    result = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path),
        "--ckpt_dir", str(tmp_path / "models"), "--epochs", "5", "--num_workers", "0", "--resume", "True",
        expect_success=False,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: --epochs: " in result.stderr and "belongs to a run of 3 epochs" in result.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


def test_resume_without_checkpoint_fails_clearly(demo_dir, tmp_path):
    result = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path),
        "--ckpt_dir", str(tmp_path / "m"), "--resume", "True", expect_success=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no checkpoint_*.pt to resume from" in result.stderr


@pytest.mark.slow  # a training variant
@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_amp_trains_in_bf16_on_a_cpu_with_native_bf16(demo_dir, tmp_path):
    result = run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path),
        "--ckpt_dir", str(tmp_path / "models"), "--epochs", "1", "--num_workers", "0", "--progress", "False",
        "--amp", "True",
    )  # fmt: skip
    assert "amp: bfloat16 autocast on CPU" in result.stdout + result.stderr
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow  # torch.compile builds its kernels with a C++ compiler: minutes on 2 cores
def test_compiled_training_saves_the_plain_network_and_resumes(demo_dir, tmp_path):
    # inductor writes the kernels it compiles here: an option that was ignored would leave the folder empty
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    args = ["--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path / "models")]
    args += ["--num_workers", "0", "--progress", "False", "--val_interval", "2", "--compile", "True"]
    # a 2-epoch run stopped after its first epoch, then resumed
    run_bundle(
        "run", "training", "--config_file", TRAIN, *args, "--epochs", "2", "--train#trainer#max_epochs", "1", env=env
    )
    assert any(path.is_file() for path in (tmp_path / "inductor").rglob("*"))
    result = run_bundle("run", "training", "--config_file", TRAIN, *args, "--epochs", "2", "--resume", "True", env=env)
    assert "Restored all variables from" in result.stdout + result.stderr
    plain_keys = set(CrossBasicUNet().state_dict())
    resume_state = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert set(resume_state["model"]) == plain_keys  # no ``_orig_mod.`` prefixes from the compiled wrapper
    CrossBasicUNet().load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True), strict=True)


@pytest.fixture(scope="module")
def evaluation(trained, demo_dir) -> Path:
    """The evaluation of the trained run on the demo test patients; returns its output folder."""
    out = trained / "eval"
    run_bundle(
        "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(demo_dir), "--ckpt_dir",
        str(trained / "models"), "--output_dir", str(out), "--num_workers", "0",
    )  # fmt: skip
    return out


def test_evaluation_writes_per_patient_dice_and_hd95(evaluation, demo_dir):
    out = evaluation
    test_patients = {Path(item["image"]).name for item in load_split(demo_dir / "datalist.json", "test")}
    for metric in ("test_mean_dice", "test_hd95"):
        with open(out / f"{metric}_raw.csv") as f:
            rows = list(csv.DictReader(f))
        assert {Path(row["filename"]).name for row in rows} == test_patients
        with open(out / f"{metric}_summary.csv") as f:
            summary = {row["class"]: row for row in csv.DictReader(f)}
        assert {"mean", "median"} <= set(summary["mean"])
    dice = [float(row["mean"]) for row in csv.DictReader(open(out / "test_mean_dice_raw.csv"))]
    assert all(0.0 <= d <= 1.0 for d in dice)


def per_patient_dice(eval_dir: Path) -> dict[str, float]:
    """The per-patient Dice an evaluation wrote, by file name."""
    with open(eval_dir / "test_mean_dice_raw.csv") as f:
        return {Path(row["filename"]).name: float(row["mean"]) for row in csv.DictReader(f)}


def channel_file_datalist(demo_dir: Path, folder: Path) -> Path:
    """A copy of the demo datalist in ``folder`` whose images are listed as one file per channel."""
    datalist = json.loads((demo_dir / "datalist.json").read_text())
    for item in datalist["training"] + datalist["testing"]:
        channel_files = write_channel_files(demo_dir / item["image"], folder / "channels")
        item["image"] = [str(path.relative_to(folder)) for path in channel_files]  # relative, as prepared datalists
        item["label"] = str(demo_dir / item["label"])  # an absolute path stays as it is
    (folder / "datalist.json").write_text(json.dumps(datalist, indent=4))
    return folder


def test_evaluation_of_a_datalist_of_channel_files_scores_as_the_stacked_volumes(
    trained, evaluation, demo_dir, tmp_path
):
    """A datalist may list a case's image as one file per channel (as MONAI's BraTS bundle does)."""
    run_bundle(
        "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(channel_file_datalist(demo_dir, tmp_path)),
        "--ckpt_dir", str(trained / "models"), "--output_dir", str(tmp_path / "eval"), "--num_workers", "0",
    )  # fmt: skip
    from_channels = {
        name.replace("_0000.nii.gz", ".nii.gz"): d for name, d in per_patient_dice(tmp_path / "eval").items()
    }
    assert from_channels == pytest.approx(per_patient_dice(evaluation), abs=1e-6)


@pytest.mark.slow  # a training variant; the fast tier evaluates and segments channel files
def test_training_on_a_datalist_of_channel_files(demo_dir, tmp_path):
    run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(channel_file_datalist(demo_dir, tmp_path)),
        "--output_dir", str(tmp_path / "run"), "--ckpt_dir", str(tmp_path / "models"), "--epochs", "1",
        "--num_workers", "0", "--progress", "False",
    )  # fmt: skip
    CrossBasicUNet().load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    # validated on fold 0's channel-file cases: the best-model tracker holds a Dice
    assert 0.0 <= best_score(tmp_path / "run" / "checkpoints" / "checkpoint_epoch=1.pt") <= 1.0


def test_an_ensemble_of_one_model_twice_scores_as_that_model(trained, evaluation, demo_dir):
    ensemble, model = trained / "eval_ensemble", str(trained / "models" / "model.pt")
    result = run_bundle(
        "run", "evaluating", "--config_file", ENSEMBLE_EVALUATE, "--dataset_dir", str(demo_dir), "--output_dir",
        str(ensemble), "--num_workers", "0", "--ensemble_checkpoints", f"['{model}','{model}']",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "EnsembleEvaluator" in log and log.count(f"Restored all variables from {model}") == 2
    # the members carry the trained weights (an untrained member would change the averaged probabilities)
    assert per_patient_dice(ensemble) == pytest.approx(per_patient_dice(evaluation), abs=1e-6)


def test_ensemble_inference_of_one_model_twice_segments_as_that_model(trained, demo_dir):
    single, ensemble, model = trained / "seg_single", trained / "seg_ensemble", str(trained / "models" / "model.pt")
    run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(demo_dir / "imagesTr"),
        "--ckpt_dir", str(trained / "models"), "--output_dir", str(single),
    )  # fmt: skip
    result = run_bundle(
        "run", "inference", "--config_file", "['configs/inference.json','configs/ensemble.json']",
        "--dataset_dir", str(demo_dir / "imagesTr"), "--output_dir", str(ensemble),
        "--ensemble_checkpoints", f"['{model}','{model}']",
    )  # fmt: skip
    assert (result.stdout + result.stderr).count(f"Restored all variables from {model}") == 2
    outputs = sorted(p.name for p in single.iterdir())
    assert outputs and sorted(p.name for p in ensemble.iterdir()) == outputs
    for name in outputs:
        expected, segmentation = nib.load(single / name), nib.load(ensemble / name)
        np.testing.assert_array_equal(np.asarray(segmentation.dataobj), np.asarray(expected.dataobj))
        np.testing.assert_allclose(segmentation.affine, expected.affine)


@pytest.mark.parametrize("members", ["one", "missing"])
def test_an_ensemble_without_two_existing_checkpoints_fails_clearly(trained, demo_dir, tmp_path, members):
    model = str(trained / "models" / "model.pt")
    missing = str(tmp_path / "absent" / "model.pt")
    checkpoints = f"['{model}']" if members == "one" else f"['{model}','{missing}']"
    result = run_bundle(
        "run", "evaluating", "--config_file", ENSEMBLE_EVALUATE, "--dataset_dir", str(demo_dir), "--output_dir",
        str(tmp_path / "eval"), "--ensemble_checkpoints", checkpoints, expect_success=False,
    )  # fmt: skip
    assert result.returncode != 0
    expected = f"{missing}: model weights not found"
    if members == "one":
        expected = "an ensemble needs a list of at least two model files"
    assert expected in result.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow  # a protocol tool (benchmarks/tools/threshold_sweep.py) against four evaluations
@pytest.mark.parametrize("mirror_axes", ["[]", "[0,1]"])
def test_threshold_sweep_matches_the_evaluation_at_its_thresholds(trained, demo_dir, tmp_path, mirror_axes):
    out = tmp_path / "sweep.csv"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "tools" / "threshold_sweep.py"), "--dataset_dir", str(demo_dir),
         "--ckpt_dir", str(trained / "models"), "--eval_subset", "test", "--thresholds", "[0.5,0.3,0.0]",
         "--mirror_axes", mirror_axes, "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    with open(out) as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    evaluated = {}
    for threshold in ("$None", "0.3"):  # monai.bundle drops a plain None override: "$None" sets the argmax
        run_bundle(
            "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(demo_dir), "--ckpt_dir",
            str(trained / "models"), "--output_dir", str(tmp_path / f"eval_{threshold}"), "--num_workers", "0",
            "--mirror_axes", mirror_axes, "--foreground_threshold", threshold, "--largest_component", "True",
        )  # fmt: skip  # the sweep keeps the largest component by default
        evaluated[threshold] = per_patient_dice(tmp_path / f"eval_{threshold}")
    # the argmax of two softmax channels is a tumour probability of at least one half
    assert {case: float(row["dice_at_0.5"]) for case, row in rows.items()} == pytest.approx(
        evaluated["$None"], abs=1e-5
    )
    at_threshold = {case: float(row["dice_at_0.3"]) for case, row in rows.items()}
    assert at_threshold == pytest.approx(evaluated["0.3"], abs=1e-5)
    assert at_threshold != pytest.approx(evaluated["$None"], abs=1e-5)  # the threshold changed something
    # at threshold 0 every voxel is tumour: Dice = 2 |label| / (|label| + |volume|)
    for case, row in rows.items():
        label = np.asarray(nib.load(demo_dir / "labelsTr" / case).dataobj) > 0
        assert float(row["dice_at_0.0"]) == pytest.approx(2 * label.sum() / (label.sum() + label.size), rel=1e-4)


@pytest.mark.parametrize("mirror_axes", ["[]", "[0,1]"])
def test_inference_writes_one_segmentation_per_volume_with_its_geometry(trained, demo_dir, mirror_axes):
    out = trained / ("pred" if mirror_axes == "[]" else "pred_mirrored")
    run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(demo_dir / "imagesTr"),
        "--ckpt_dir", str(trained / "models"), "--output_dir", str(out), "--mirror_axes", mirror_axes,
    )  # fmt: skip
    inputs = sorted((demo_dir / "imagesTr").glob("*.nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name.replace(".nii.gz", "_seg.nii.gz") for p in inputs)
    for path in inputs:
        image, seg = nib.load(path), nib.load(out / path.name.replace(".nii.gz", "_seg.nii.gz"))
        assert seg.shape == image.shape[:3]
        np.testing.assert_allclose(seg.affine, image.affine)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}


@pytest.mark.parametrize("threshold", ["$None", "0.3"])
def test_inference_saves_the_class_probabilities_its_segmentation_is_decided_from(trained, demo_dir, threshold):
    """Without a threshold the segmentation is the argmax of the saved probabilities; with one, the voxels whose
    tumour probability reaches it."""
    out = trained / f"pred_probabilities_{threshold.strip('$')}"
    run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(demo_dir / "imagesTr"),
        "--ckpt_dir", str(trained / "models"), "--output_dir", str(out), "--save_probabilities", "True",
        "--largest_component", "False", "--mirror_axes", "[]", "--foreground_threshold", threshold,
    )  # fmt: skip
    cutoff = 0.5 if threshold == "$None" else float(threshold)  # "$None": the argmax
    for path in sorted((demo_dir / "imagesTr").glob("*.nii.gz")):
        image = nib.load(path)
        probabilities = nib.load(out / path.name.replace(".nii.gz", "_prob.nii.gz"))
        seg = np.asarray(nib.load(out / path.name.replace(".nii.gz", "_seg.nii.gz")).dataobj)
        assert probabilities.shape == (*image.shape[:3], 2)
        np.testing.assert_allclose(probabilities.affine, image.affine)
        probabilities = np.asarray(probabilities.dataobj)
        assert probabilities.dtype == np.float32 and probabilities.min() >= 0.0
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
        decided = np.abs(probabilities[..., 1] - cutoff) > 1e-4  # leave out ties, which rounding can tip
        np.testing.assert_array_equal(seg[decided], (probabilities[..., 1] >= cutoff)[decided])
        if cutoff != 0.5:  # the threshold made a difference here
            assert ((probabilities[..., 1] >= cutoff) & (probabilities[..., 1] < 0.5))[decided].any()


def test_inference_on_one_file_per_channel_segments_as_on_the_stacked_volume(trained, demo_dir, tmp_path):
    """Cases stored as nnU-Net stores them (``<case>_0000.nii.gz``...) give the stacked volumes' segmentations."""
    stacked, channels = tmp_path / "stacked", tmp_path / "channels"
    stacked.mkdir()
    for path in sorted((demo_dir / "imagesTr").glob("*.nii.gz"))[:3]:
        shutil.copy(path, stacked / path.name)
        write_channel_files(path, channels)
    for folder in (stacked, channels):
        run_bundle(
            "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(folder),
            "--ckpt_dir", str(trained / "models"), "--output_dir", str(folder.with_name(folder.name + "_seg")),
            *(["--channel_suffixes", "['_0000','_0001','_0002']"] if folder == channels else []),
        )  # fmt: skip
    expected = sorted(p.name.replace(".nii.gz", "_seg.nii.gz") for p in stacked.iterdir())
    assert sorted(p.name for p in (tmp_path / "channels_seg").iterdir()) == expected
    for name in expected:
        from_channels, from_stacked = nib.load(tmp_path / "channels_seg" / name), nib.load(
            tmp_path / "stacked_seg" / name
        )
        np.testing.assert_array_equal(np.asarray(from_channels.dataobj), np.asarray(from_stacked.dataobj))
        np.testing.assert_allclose(from_channels.affine, from_stacked.affine)
        assert np.asarray(from_stacked.dataobj).any()  # the comparison is not between two empty volumes


def test_basicunet_override_trains_with_the_same_pipeline(demo_dir, tmp_path):
    run_bundle(
        "run", "training", "--config_file", "['configs/train.json','configs/basicunet.json']", "--dataset_dir",
        str(demo_dir), "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path / "models"), "--epochs", "1",
        "--num_workers", "0", "--progress", "False",
    )  # fmt: skip
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "upcat_1.convs.conv_0.conv.weight" in state
    assert state["upcat_1.convs.conv_0.conv.weight"].shape[1] == 64  # BasicUNet's single skip: 32 + 32 channels


SITE_TRANSFORMS = {
    "RandScaleIntensityFixedMeand",
    "RandAdjustContrastd",
    "RandBiasFieldd",
    "RandGaussianSmoothd",
    "RandGaussianNoised",
    "RandSimulateLowResolutiond",
}


@pytest.mark.parametrize("config", [[TRAIN], [TRAIN, "configs/hippocampus.json"]], ids=["lgg", "hippocampus"])
def test_site_augmentation_adds_intensity_transforms_to_the_standard_ones(config):
    """``--augmentation site`` adds nnU-Net's intensity perturbations and wider scaling; the standard recipe is
    unchanged. Every added transform runs on a batch of this task's dimensionality and keeps the image finite."""
    recipes = {}
    for augmentation in ("standard", "site"):
        parser = ConfigParser()
        parser.read_config([str(REPO_ROOT / c) for c in config])
        parser["augmentation"] = augmentation
        intensity = parser.get_parsed_content("intensity_augmentation")
        # the affine alone: the whole list would read the datalist (the flip's axis comes from its headers)
        index = next(
            i
            for i, t in enumerate(parser["train_transforms"])
            if isinstance(t, dict) and t.get("_target_") == "RandAffined"
        )
        affine = parser.get_parsed_content(f"train_transforms#{index}")
        recipes[augmentation] = ([type(t).__name__ for t in intensity.transforms], affine, intensity)
    standard, site = recipes["standard"], recipes["site"]
    assert standard[0] == ["RandScaleIntensityd", "RandShiftIntensityd"]
    assert set(site[0]) - set(standard[0]) == SITE_TRANSFORMS
    assert standard[1].rand_affine.rand_affine_grid.scale_range[0] == 0.1
    assert site[1].rand_affine.rand_affine_grid.scale_range[0] == 0.3
    spatial = (16, 16, 16) if len(config) > 1 else (32, 32)
    image = torch.randn(2, *spatial)
    image[:, :4] = 0
    intensity = site[2]
    intensity.set_random_state(seed=0)
    changed = 0
    for _ in range(20):
        out = intensity({"image": image.clone()})["image"]
        assert out.shape == image.shape and torch.isfinite(torch.as_tensor(out)).all()
        changed += not torch.equal(torch.as_tensor(out), image)
    assert changed > 10


def test_training_with_site_augmentation_saves_a_model(demo_dir, tmp_path):
    run_bundle(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(demo_dir), "--output_dir", str(tmp_path),
        "--ckpt_dir", str(tmp_path / "models"), "--epochs", "1", "--num_workers", "0", "--progress", "False",
        "--augmentation", "site",
    )  # fmt: skip
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.isfinite(value).all() for value in state.values())


@pytest.mark.slow  # three more inference runs; the fast tier checks the transforms themselves
def test_largest_component_option_leaves_one_tumour_component(trained, demo_dir):
    out = {}
    for largest in ("False", "True"):
        out[largest] = trained / f"pred_largest_{largest}"
        run_bundle(
            "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(demo_dir / "imagesTr"),
            "--ckpt_dir", str(trained / "models"), "--output_dir", str(out[largest]), "--largest_component", largest,
        )  # fmt: skip
    counts = {}
    for largest, folder in out.items():
        # connected through faces, edges or corners, as MONAI's default full connectivity
        masks = [np.asarray(nib.load(p).dataobj) for p in sorted(folder.iterdir())]
        counts[largest] = [ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] for mask in masks]
    assert all(n <= 1 for n in counts["True"])
    for n_all, n_largest in zip(counts["False"], counts["True"]):
        assert n_largest == min(n_all, 1)
    # confident components at a fraction of 1 of the largest: the largest component again, by another code path
    confident = trained / "pred_confident_largest"
    run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(demo_dir / "imagesTr"),
        "--ckpt_dir", str(trained / "models"), "--output_dir", str(confident), "--confident_components", "[0, 1]",
    )  # fmt: skip
    for expected, got in zip(sorted(out["True"].iterdir()), sorted(confident.iterdir())):
        assert expected.name == got.name
        assert np.array_equal(np.asarray(nib.load(expected).dataobj), np.asarray(nib.load(got).dataobj))


@pytest.mark.parametrize("largest, expected_components", [(False, 2), (True, 1)])
def test_largest_component_postprocessing_removes_smaller_islands(largest, expected_components):
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
    parser["largest_component"] = largest
    transforms = [t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)]
    logits = torch.zeros(2, 16, 16, 4)
    logits[0] = 5.0  # background, far from any threshold
    logits[1, 2:8, 2:8, 1:3] = 10.0  # a tumour of 72 voxels
    logits[1, 12:14, 12:14, 2] = 10.0  # and a 4-voxel island apart from it
    pred = Compose(transforms)({"pred": MetaTensor(logits)})["pred"]
    assert ndimage.label(pred[0].numpy() > 0)[1] == expected_components
    assert pred[0, 2:8, 2:8, 1:3].all()


def test_training_batches_drop_metadata_and_keep_the_same_augmentations(demo_dir):
    """Training batches are plain tensors (MetaTensor's per-op bookkeeping costs every network op of every step), and
    dropping the metadata after the augmentations changes none of their voxels."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
    parser.update({"dataset_dir": str(demo_dir), "num_workers": 0})
    item = load_split(parser.get_parsed_content("datalist"), "train", 0)[0]
    untracked = parser.get_parsed_content("train#preprocessing", lazy=False)
    # fresh instances (lazy=False), so that each pipeline draws from its own random state
    tracked = Compose(
        parser.get_parsed_content("load_transforms", lazy=False)
        + parser.get_parsed_content("train_transforms", lazy=False)
    )
    untracked.set_random_state(seed=7)
    tracked.set_random_state(seed=7)
    for _ in range(3):  # a few draws, so that the affine and intensity transforms are applied too
        samples, reference = untracked(item), tracked(item)
        assert len(samples) == len(reference) == parser["slices_per_volume"]
        for sample, expected in zip(samples, reference):
            for key in ("image", "label"):
                assert type(sample[key]) is torch.Tensor and isinstance(expected[key], MetaTensor)
                assert torch.equal(sample[key], expected[key].as_tensor())
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    slices_per_batch = parser["volumes_per_batch"] * parser["slices_per_volume"]
    assert type(batch["image"]) is torch.Tensor and batch["image"].shape[0] == slices_per_batch
