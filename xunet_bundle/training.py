"""Helpers the training and evaluation configs call: checkpoint discovery and output folder checks."""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import shutil
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.handlers import CheckpointSaver, from_engine

from .data import DataError, check_output_dirs

__all__ = [
    "AtomicCheckpointSaver",
    "FinalModelSaver",
    "LossProgressBar",
    "MidEpochCheckpointSaver",
    "StopOnNonFiniteLoss",
    "check_output_dirs",
    "latest_checkpoint",
    "non_finite_tensors",
    "require_checkpoint",
]

logger = logging.getLogger(__name__)
_CHECKPOINT_NAME = re.compile(r"^checkpoint_(epoch|iteration)=\d+\.pt$")


TRAINING_STATE_KEYS = ("model", "optimizer", "lr_scheduler", "trainer")


def latest_checkpoint(
    folder: str | os.PathLike,
    epochs: int | None = None,
    network: torch.nn.Module | None = None,
    learning_rate: float | None = None,
) -> str:
    """
    The most advanced readable training checkpoint (``checkpoint_epoch=N.pt`` or ``checkpoint_iteration=N.pt``) in
    ``folder``: the one whose saved trainer state has the highest iteration, the newest file on a tie. An unreadable
    one (truncated by a full disk, say) is skipped with a warning, so the run resumes from the newest good one.

    Args:
        folder: the folder the training checkpoints are saved in.
        epochs: the ``--epochs`` of the resumed run; it must be the checkpoint's, whose learning-rate schedule was
            built for its number of epochs (None: not checked).
        network: the network the checkpoint's ``model`` is loaded into; a checkpoint whose weights do not fit it, or
            that lacks part of the training state, is skipped like an unreadable one (None: not checked).
        learning_rate: the ``--learning_rate`` of the resumed run; it must be the checkpoint's, whose optimizer and
            schedule restore their own (None: not checked).

    Raises:
        DataError: when there is nothing readable to resume from, or ``epochs`` differs from the checkpoint's run.
    """
    candidates = [p for p in Path(folder).glob("checkpoint_*.pt") if _CHECKPOINT_NAME.match(p.name)]
    if not candidates:
        raise DataError(folder, "no checkpoint_*.pt to resume from; train without --resume first.")
    readable = []
    expected = None if network is None else getattr(network, "module", network).state_dict()
    for path in candidates:
        if not path.is_file():  # a FIFO would block the read
            logger.warning(f"{path}: not a regular file, skipped")
            continue
        try:
            # mmap reads only what is used, not the weights
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            progress = int(state["trainer"]["iteration"])
        except Exception as e:
            logger.warning(f"{path}: unreadable checkpoint skipped ({type(e).__name__})")
            continue
        missing = [key for key in TRAINING_STATE_KEYS if key not in state]
        mismatch = state_dict_mismatch(state["model"], expected) if expected is not None and not missing else None
        if missing or mismatch:
            logger.warning(
                f"{path}: skipped, " + (f"no {missing[0]} state" if missing else f"its model has {mismatch}")
            )
            continue
        readable.append((progress, path.stat().st_mtime, str(path), state.get("lr_scheduler", {})))
    if not readable:
        raise DataError(folder, "no readable checkpoint_*.pt to resume from; train without --resume.")
    _, _, path, scheduler = max(readable, key=lambda item: item[:2])
    base_lrs = scheduler.get("base_lrs") if isinstance(scheduler, dict) else None
    if learning_rate is not None and base_lrs and not math.isclose(float(base_lrs[0]), float(learning_rate)):
        raise DataError(
            "--learning_rate",
            f"{path} belongs to a run with learning rate {base_lrs[0]:g}, which its optimizer and schedule restore; "
            f"resume it with --learning_rate {base_lrs[0]:g}, or start a new run (another --output_dir).",
        )
    trained_for = scheduler.get("T_max") if isinstance(scheduler, dict) else None
    if epochs is not None and trained_for is not None and int(trained_for) != int(epochs):
        raise DataError(
            "--epochs",
            f"{path} belongs to a run of {trained_for} epochs, whose learning-rate schedule spans them; resume it with "
            f"--epochs {trained_for}, or start a new run (another --output_dir) for {epochs} epochs.",
        )
    return path


def non_finite_tensors(state: object, prefix: str = "") -> list[str]:
    """
    The names of the floating-point tensors in a (nested) state dict that hold NaN or infinite values.

    Args:
        state: a tensor, or a mapping or sequence of them (a state dict, a checkpoint of several).
        prefix: the name of ``state`` itself.
    """
    if isinstance(state, torch.Tensor):
        return [prefix] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [name for key, value in items for name in non_finite_tensors(value, f"{prefix}{'.' if prefix else ''}{key}")]


def require_checkpoint(path: str | os.PathLike, network: torch.nn.Module | None = None) -> str:
    """
    Return ``path`` if it holds readable, finite model weights that fit ``network``, so that evaluation and inference
    stop before reading any data when they are missing, unreadable (truncated, not a PyTorch file), diverged (NaN or
    infinite values, which would give all-background masks) or made for another network (3D weights for the 2D
    config, another number of channels or classes, missing layers).

    Args:
        path: the model weights (``model.pt``): a state dict, or a checkpoint holding one under ``"model"``.
        network: the network the weights will be loaded into (its ``module`` when wrapped in DistributedDataParallel);
            None checks readability and finiteness only.
    """
    if Path(path).exists() and not Path(path).is_file():
        raise DataError(path, "not a regular file (model weights must be a file saved by torch.save).")
    if not Path(path).is_file():
        raise DataError(path, "model weights not found: train first, or point --ckpt_dir to a folder with model.pt.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(path, f"not a readable PyTorch weights file ({type(e).__name__}: {reason}).") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "not a model state dict (a mapping of layer names to tensors).")
    bad = non_finite_tensors(state)
    if bad:
        raise DataError(
            path, f"{len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]}): the training diverged."
        )
    if network is not None:
        mismatch = state_dict_mismatch(state, getattr(network, "module", network).state_dict())
        if mismatch:
            raise DataError(path, f"the weights do not fit this network ({mismatch}); check --ckpt_dir and the config.")
    return str(path)


def state_dict_mismatch(saved: dict, expected: dict) -> str | None:
    """
    How a saved state dict differs from a network's (missing or unexpected layers, other shapes), in a few words, or
    None when it fits.

    Args:
        saved: the state dict read from a file.
        expected: the state dict of the network it is to be loaded into.
    """
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    reshaped = [key for key in expected if key in saved and tuple(saved[key].shape) != tuple(expected[key].shape)]
    if reshaped:
        key = reshaped[0]
        return (
            f"{len(reshaped)} tensors of another shape, first {key}: {tuple(saved[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} in the network"
        )
    if missing:
        return f"{len(missing)} layers missing, first {missing[0]}"
    if unexpected:
        return f"{len(unexpected)} unexpected layers, first {unexpected[0]}"
    return None


class StopOnNonFiniteLoss:
    """
    Stop training with an error naming the learning rate when the loss becomes NaN or infinite, before any checkpoint
    or model of the diverged weights is saved (unlike Ignite's ``TerminateOnNan``, which ends the run as a success).
    List it first among the trainer's handlers.
    """

    def attach(self, engine) -> None:
        """
        Args:
            engine: the MONAI trainer.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        loss = from_engine(["loss"], first=True)(engine.state.output)
        if not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            raise DataError(
                "--learning_rate",
                f"the training loss became {float(torch.as_tensor(loss).float().mean())} at epoch "
                f"{engine.state.epoch}, iteration {engine.state.iteration}: the training diverged and was stopped, "
                "nothing of it saved; lower the learning rate.",
            )


def ensemble_members(network: torch.nn.Module, checkpoints: list[str]) -> list[torch.nn.Module]:
    """
    One copy of ``network`` per checkpoint, for MONAI's ``EnsembleEvaluator``; ``CheckpointLoader`` handlers load each
    copy's weights when the evaluation starts.

    Args:
        network: the network the checkpoints were trained as.
        checkpoints: the members' weights (``model.pt`` files); each must exist.
    """
    if not isinstance(checkpoints, (list, tuple)) or len(checkpoints) < 2:
        raise DataError(
            "--ensemble_checkpoints", f"an ensemble needs a list of at least two model files, got {checkpoints!r}."
        )
    for path in checkpoints:
        require_checkpoint(path, network)
    return [copy.deepcopy(network) for _ in checkpoints]


class LossProgressBar(ProgressBar):
    """
    Ignite's tqdm progress bar showing the training loss of a MONAI trainer as ``loss=``, one line per epoch.

    List it first among the trainer's handlers: it then ends its line before other epoch-end handlers log, so log
    lines never continue the bar's. On a stream that is not a terminal (a log file) tqdm writes nothing.

    Args:
        desc: the bar's label.
        tqdm_kwargs: passed to tqdm.
    """

    def __init__(self, desc: str = "train", **tqdm_kwargs) -> None:
        tqdm_kwargs.setdefault("disable", None)
        super().__init__(persist=True, desc=desc, **tqdm_kwargs)

    def attach(self, engine, **kwargs) -> None:
        """
        Args:
            engine: the MONAI trainer.
            kwargs: passed to :meth:`ignite.handlers.ProgressBar.attach`.
        """
        loss = from_engine(["loss"], first=True)
        kwargs.setdefault("output_transform", lambda output: {"loss": loss(output)})
        super().attach(engine, **kwargs)


class AtomicCheckpointSaver(CheckpointSaver):
    """
    MONAI's ``CheckpointSaver`` writing every file atomically: the checkpoint goes to a temporary file in the same
    folder, which then replaces the target, so a run killed during a save never leaves a truncated ``model.pt``.

    MONAI turns Ignite's atomic mode off because older Ignite releases left such files readable by their owner only;
    Ignite 0.5 restores group and other read permission after the rename. Arguments are those of ``CheckpointSaver``.

    Its interval checkpoints keep ``n_saved`` across restarts too: once a save succeeds, files of the same kind
    (``checkpoint_epoch=N.pt`` for an epoch-level saver) that this saver does not track are removed. Ignite only knows
    the files it saved in this process, so without this every ``--resume`` would leave the checkpoint it resumed
    from behind, and a fresh run in an old run's folder would leave the old run's more advanced checkpoints where
    ``--resume`` would pick them.

    Weights holding NaN or infinite values are never saved: the run stops with an error instead, and the previous
    files stay in place.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True

    def _require_finite(self) -> None:
        state = {key: obj.state_dict() if hasattr(obj, "state_dict") else obj for key, obj in self.save_dict.items()}
        bad = non_finite_tensors(state)
        if bad:
            raise DataError(
                self.save_dir,
                f"{len(bad)} tensors to save hold NaN or infinite values (first: {bad[0]}): the training diverged, "
                "nothing was saved; lower --learning_rate.",
            )

    def _save(self, save, engine) -> None:
        """Run one of ``CheckpointSaver``'s save methods, refusing non-finite weights and reporting a failed write."""
        self._require_finite()
        try:
            save(engine)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError of its zip writer
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:200]
            free = shutil.disk_usage(self.save_dir).free / 2**20
            raise DataError(
                self.save_dir,
                f"cannot save a checkpoint ({reason}; {free:.0f} MiB free on its disk): the previous files are kept.",
            ) from e

    def completed(self, engine) -> None:
        """
        Args:
            engine: the trainer.
        """
        self._save(super().completed, engine)

    def metrics_completed(self, engine) -> None:
        """
        Args:
            engine: the evaluator.
        """
        self._save(super().metrics_completed, engine)

    def interval_completed(self, engine) -> None:
        """
        Args:
            engine: the trainer.
        """
        self._save(super().interval_completed, engine)
        self._remove_untracked_interval_checkpoints()

    def _remove_untracked_interval_checkpoints(self) -> None:
        checkpoint = self._interval_checkpoint
        tracked = {filename for _, filename in checkpoint.state_dict()["_saved"]}
        if not tracked:
            return
        kind = re.compile(re.escape(next(iter(tracked)).split("=")[0]) + r"=\d+\.pt")
        for path in Path(self.save_dir).iterdir():
            if kind.fullmatch(path.name) and path.name not in tracked:
                checkpoint.save_handler.remove(path.name)


class MidEpochCheckpointSaver(AtomicCheckpointSaver):
    """
    An iteration-level :class:`AtomicCheckpointSaver` (``epoch_level=False``) that skips the last iteration of each
    epoch, so that a run killed in the middle of a long epoch resumes from at most ``save_interval`` iterations back.

    The epoch's own checkpoint is left to the epoch-level saver, which runs after validation and so also records the
    epoch's validation result for the best-model tracker. Arguments are those of ``CheckpointSaver``.
    """

    def interval_completed(self, engine) -> None:
        """
        Args:
            engine: the trainer.
        """
        if engine.state.iteration % engine.state.epoch_length != 0:
            super().interval_completed(engine)


class FinalModelSaver(AtomicCheckpointSaver):
    """
    Save the model when training completes (``save_final=True``), for runs without validation data, where the
    best-model saver never fires: MONAI Label's default split leaves validation empty with one or two labelled volumes.
    Unlike MONAI's ``CheckpointSaver``, it saves nothing when training fails, so the previous weights stay in place.
    Arguments are those of ``CheckpointSaver``.
    """

    def exception_raised(self, engine, e: Exception) -> None:
        """
        Args:
            engine: the trainer.
            e: the exception, raised again.
        """
        raise e
