"""A diverged training stops with one line and saves nothing; diverged or broken weights are refused up front."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from conftest import run_bundle
from xunet_bundle import CrossBasicUNet
from xunet_bundle.data import DataError
from xunet_bundle.training import StopOnNonFiniteLoss, non_finite_tensors, require_checkpoint


def test_training_that_diverges_stops_with_one_line_and_saves_no_model(demo_dir, tmp_path):
    result = run_bundle(
        "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(demo_dir),
        "--output_dir", str(tmp_path / "run"), "--ckpt_dir", str(tmp_path / "models"), "--fold", "all",
        "--epochs", "2", "--learning_rate", "1e20", "--num_workers", "0", "--progress", "False",
        expect_success=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "error: --learning_rate: the training loss became" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "model.pt").exists()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("*.pt"):  # what was saved before is finite
        assert not non_finite_tensors(torch.load(checkpoint, weights_only=True))


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_stops_the_engine(loss):
    engine = Engine(lambda engine, batch: [{"loss": torch.tensor(loss if engine.state.iteration == 2 else 1.0)}])
    StopOnNonFiniteLoss().attach(engine)
    with pytest.raises(DataError, match="iteration 2"):
        engine.run([0, 1, 2], max_epochs=1)


def test_weights_that_cannot_be_used_are_refused_before_any_data_is_read(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(CrossBasicUNet().state_dict(), good)
    assert require_checkpoint(good) == str(good)
    diverged = CrossBasicUNet().state_dict()
    next(iter(diverged.values()))[0] = float("nan")
    torch.save(diverged, tmp_path / "nan.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not weights")
    cases = {"nan.pt": "hold NaN or infinite values", "missing.pt": "model weights not found"}
    cases.update({name: "not a readable PyTorch weights file" for name in ("truncated.pt", "empty.pt", "text.pt")})
    for name, problem in cases.items():
        with pytest.raises(DataError, match=problem) as raised:
            require_checkpoint(tmp_path / name)
        assert str(raised.value).startswith(str(tmp_path / name)) and "\n" not in str(raised.value)


def test_inference_refuses_diverged_weights_and_writes_nothing(demo_dir, tmp_path):
    diverged = {name: torch.full_like(value, float("nan")) for name, value in CrossBasicUNet().state_dict().items()}
    (tmp_path / "models").mkdir()
    torch.save(diverged, tmp_path / "models" / "model.pt")
    result = run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--dataset_dir", str(demo_dir / "imagesTr"),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"), expect_success=False,
    )  # fmt: skip
    assert result.returncode != 0 and "hold NaN or infinite values" in result.stderr
    assert not (tmp_path / "out").exists()
