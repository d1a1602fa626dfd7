"""Checkpoint helpers: atomic saves and finding the checkpoint to resume from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from xunet_bundle.data import DataError
from xunet_bundle.training import CheckedDiskSaver, inside_epochs, latest_checkpoint, resume_point_name


def _engine_with_saver(folder: Path, net: torch.nn.Module) -> Engine:
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint({"model": net}, CheckedDiskSaver(folder), n_saved=1))
    return engine


def test_interrupted_save_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    net = torch.nn.Linear(3, 2)
    _engine_with_saver(tmp_path, net).run([0], max_epochs=1)
    (first,) = tmp_path.iterdir()
    before = first.read_bytes()
    assert oct(first.stat().st_mode & 0o044) == oct(0o044)  # readable by group and others, as a plain save

    def killed_while_writing(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_writing)
    engine = _engine_with_saver(tmp_path, net)
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", 0))
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=1)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file, no temporary left
    assert first.read_bytes() == before
    torch.load(first, weights_only=True)


def test_a_failed_save_keeps_the_file_it_would_replace(tmp_path, monkeypatch):
    net = torch.nn.Linear(3, 2)
    engine = Engine(lambda engine, batch: None)
    saver = Checkpoint({"model": net}, CheckedDiskSaver(tmp_path), filename_pattern="model.pt", n_saved=1)
    engine.add_event_handler(Events.EPOCH_COMPLETED, saver)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "model.pt").read_bytes()

    def failed_save(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failed_save)
    with pytest.raises(DataError, match=r"cannot save model\.pt \(No space left on device; \d+ MiB free on its disk\)"):
        engine.run([0], max_epochs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == before


def test_non_finite_weights_are_never_saved(tmp_path):
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.bias[0] = float("nan")
    engine = _engine_with_saver(tmp_path, net)
    with pytest.raises(DataError, match=r"1 tensors to save hold NaN or infinite values \(first: bias\)"):
        engine.run([0], max_epochs=1)
    assert list(tmp_path.iterdir()) == []


def training_state(network: torch.nn.Module | None = None) -> dict:
    """What the bundle's training checkpoints hold, but for the trainer's progress."""
    return {
        "model": (network or torch.nn.Linear(3, 2)).state_dict(),
        "optimizer": {},
        "lr_scheduler": {},
        "checkpointer": {"_saved": []},
    }


def test_latest_checkpoint_picks_the_most_advanced_training_state(tmp_path):
    with pytest.raises(DataError, match="no checkpoint_"):
        latest_checkpoint(tmp_path)

    def save(name: str, iteration: int) -> None:
        trainer = {"iteration": iteration, "epoch_length": 20, "max_epochs": 60}
        torch.save({**training_state(), "trainer": trainer}, tmp_path / name)

    saved = {"checkpoint_epoch=2.pt": 40, "checkpoint_epoch=10.pt": 200, "checkpoint_epoch=9.pt": 180}
    saved["checkpoint_iteration=190.pt"] = 190
    for name, iteration in saved.items():
        save(name, iteration)
    (tmp_path / "other.pt").write_bytes(b"")
    os.utime(tmp_path / "checkpoint_epoch=2.pt")  # the newest file is not the most advanced
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_epoch=10.pt"
    save("checkpoint_iteration=205.pt", 205)  # inside epoch 11
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_iteration=205.pt"


def test_latest_checkpoint_skips_unreadable_files_and_refuses_another_schedule(tmp_path, caplog):
    def save(name: str, iteration: int, epochs: int = 60) -> None:
        state = {**training_state(), "trainer": {"iteration": iteration}}
        state["lr_scheduler"] = {"T_max": epochs, "last_epoch": iteration // 20}
        torch.save(state, tmp_path / name)

    save("checkpoint_epoch=9.pt", 180)
    save("checkpoint_iteration=190.pt", 190)
    newest = tmp_path / "checkpoint_iteration=190.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    assert Path(latest_checkpoint(tmp_path, epochs=60)).name == "checkpoint_epoch=9.pt"
    assert "checkpoint_iteration=190.pt: unreadable checkpoint skipped" in caplog.text
    for epochs in (59, 120):  # the cosine schedule was built for 60 epochs
        with pytest.raises(DataError, match=r"^--epochs: .*checkpoint_epoch=9\.pt belongs to a run of 60 epochs"):
            latest_checkpoint(tmp_path, epochs=epochs)
    (tmp_path / "checkpoint_epoch=9.pt").write_bytes(b"")
    with pytest.raises(DataError, match="no readable checkpoint"):
        latest_checkpoint(tmp_path)


def test_latest_checkpoint_skips_fifos_foreign_and_incomplete_checkpoints(tmp_path, caplog):
    network = torch.nn.Linear(3, 2)

    def save(name: str, iteration: int, **changes) -> None:
        torch.save({**training_state(network), "trainer": {"iteration": iteration}, **changes}, tmp_path / name)

    save("checkpoint_epoch=1.pt", 20)
    save("checkpoint_epoch=2.pt", 40, model=torch.nn.Linear(4, 2).state_dict())
    save("checkpoint_epoch=3.pt", 60, model={**network.state_dict(), "extra.weight": torch.zeros(1)})
    torch.save({"model": network.state_dict(), "trainer": {"iteration": 80}}, tmp_path / "checkpoint_epoch=4.pt")
    os.mkfifo(tmp_path / "checkpoint_iteration=90.pt")  # opening it for reading would block
    assert Path(latest_checkpoint(tmp_path, network=network)).name == "checkpoint_epoch=1.pt"
    for skipped in ("epoch=2.pt: skipped, its model has 1 tensors of another shape", "epoch=3.pt: skipped, its model "
                    "has 1 unexpected layers", "epoch=4.pt: skipped, no optimizer state",
                    "iteration=90.pt: not a regular file"):  # fmt: skip
        assert skipped in caplog.text


def test_one_resume_point_is_kept_across_restarts_and_earlier_runs(tmp_path, monkeypatch):
    net = torch.nn.Linear(3, 2)
    # an earlier sitting's epoch checkpoint, an earlier run's more advanced one, and a mid-epoch one
    leftovers = ["checkpoint_epoch=2.pt", "checkpoint_epoch=150.pt", "checkpoint_iteration=30.pt"]
    for name in leftovers:
        torch.save({"weight": net.weight}, tmp_path / name)
    (tmp_path / "checkpoint_epoch=best.pt").write_bytes(b"not a checkpoint of this saver")

    def run_with_resume_checkpoints() -> None:
        engine = Engine(lambda engine, batch: None)
        checkpointer = Checkpoint(
            {"model": net},
            CheckedDiskSaver(tmp_path, supersedes=r"checkpoint_(epoch|iteration)=\d+\.pt"),
            filename_pattern="checkpoint_{global_step}.pt",
            global_step_transform=resume_point_name,
            score_function=lambda engine: engine.state.iteration,
            n_saved=1,
            include_self=True,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=inside_epochs(2)), checkpointer)
        engine.run([0, 0, 0], max_epochs=1)

    def failed_save(obj, f, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(torch, "save", failed_save)
        with pytest.raises(DataError, match=r"cannot save checkpoint_iteration=2\.pt \(disk full; \d+ MiB free"):
            run_with_resume_checkpoints()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*leftovers, "checkpoint_epoch=best.pt"])

    run_with_resume_checkpoints()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=best.pt"]
    state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["checkpointer"]["_saved"] == [(3, "checkpoint_epoch=1.pt")]


def test_latest_checkpoint_refuses_another_learning_rate(tmp_path):
    state = {**training_state(), "trainer": {"iteration": 20}}
    state["lr_scheduler"] = {"T_max": 2, "base_lrs": [0.001], "last_epoch": 1}
    torch.save(state, tmp_path / "checkpoint_epoch=1.pt")
    assert Path(latest_checkpoint(tmp_path, epochs=2, learning_rate=1e-3)).name == "checkpoint_epoch=1.pt"
    with pytest.raises(
        DataError, match=r"^--learning_rate: .*checkpoint_epoch=1\.pt belongs to a run with learning rate 0\.001"
    ):
        latest_checkpoint(tmp_path, epochs=2, learning_rate=0.5)
