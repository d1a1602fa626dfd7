"""Helpers the training and evaluation configs call: checkpoint discovery and output folder checks."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import DiskSaver, ProgressBar
from monai.handlers import from_engine

from .data import DataError, check_output_dirs

__all__ = [
    "CheckedDiskSaver",
    "LossProgressBar",
    "StopOnNonFiniteLoss",
    "check_output_dirs",
    "latest_checkpoint",
    "inside_epochs",
    "non_finite_tensors",
    "require_checkpoint",
    "resume_point_name",
]

logger = logging.getLogger(__name__)
_CHECKPOINT_NAME = re.compile(r"^checkpoint_(epoch|iteration)=\d+\.pt$")


TRAINING_STATE_KEYS = ("model", "optimizer", "lr_scheduler", "trainer", "checkpointer")


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


class CheckedDiskSaver(DiskSaver):
    """
    Ignite's ``DiskSaver`` in atomic mode (the checkpoint goes to a temporary file in the same folder, which then
    replaces the target, so a run killed during a save never leaves a truncated file), for Ignite's ``Checkpoint``,
    that also:

    - removes the files the ``Checkpoint`` drops only after the new file is written, so a failed or interrupted save
      keeps the previous one (``Checkpoint`` asks for the removal first);
    - refuses to save tensors holding NaN or infinite values: the run stops with an error naming the folder;
    - reports a failed write (a full disk) as a :class:`DataError` naming the folder and its free space;
    - with ``supersedes``, removes every other file of that name pattern once a save succeeds, so that the folder holds
      one resume point even across restarts and after an earlier run in the same folder, where ``--resume`` would
      otherwise pick the earlier run's more advanced checkpoint.

    Args:
        dirname: the folder the files are saved in (created if missing).
        supersedes: a regular expression (whole file name) of the files a successful save makes obsolete.
        log_saves: log each saved file's path (off for frequent resume points).
        kwargs: passed to ``ignite.handlers.DiskSaver``.
    """

    def __init__(
        self, dirname: str | os.PathLike, supersedes: str | None = None, log_saves: bool = True, **kwargs
    ) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.supersedes = re.compile(supersedes) if supersedes else None
        self.log_saves = log_saves
        self.dropped: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        bad = non_finite_tensors(checkpoint)
        if bad:
            raise DataError(
                self.dirname,
                f"{len(bad)} tensors to save hold NaN or infinite values (first: {bad[0]}): the training diverged, "
                "nothing was saved; lower --learning_rate.",
            )
        try:
            super().__call__(checkpoint, filename, metadata)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError of its zip writer
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:200]
            free = shutil.disk_usage(self.dirname).free / 2**20
            raise DataError(
                self.dirname,
                f"cannot save {filename} ({reason}; {free:.0f} MiB free on its disk): the previous files are kept.",
            ) from e
        if self.log_saves:
            logger.info(f"saved {self.dirname / filename}")
        obsolete = set(self.dropped)
        if self.supersedes is not None and self.supersedes.fullmatch(filename):
            obsolete.update(path.name for path in self.dirname.iterdir() if self.supersedes.fullmatch(path.name))
        self.dropped.clear()
        for name in obsolete - {filename}:
            with contextlib.suppress(FileNotFoundError):
                super().remove(name)

    def remove(self, filename: str) -> None:
        """
        Args:
            filename: a file the ``Checkpoint`` drops; removed after the next successful save.
        """
        self.dropped.append(filename)


def resume_point_name(engine, event) -> str:
    """
    ``epoch=N`` at the end of an epoch, ``iteration=N`` inside one: the ``global_step_transform`` that names the
    training checkpoints ``checkpoint_epoch=N.pt`` and ``checkpoint_iteration=N.pt``.

    Args:
        engine: the trainer.
        event: the event the checkpoint is saved on.
    """
    if event == Events.EPOCH_COMPLETED:
        return f"epoch={engine.state.epoch}"
    return f"iteration={engine.state.iteration}"


def inside_epochs(every: int):
    """
    An Ignite ``event_filter`` for ``ITERATION_COMPLETED``: every ``every`` iterations, but not at the last iteration of
    an epoch, whose checkpoint is saved after validation so that it also records the epoch's validation result.

    Args:
        every: the number of iterations between two checkpoints.
    """
    return lambda engine, iteration: iteration % every == 0 and iteration % engine.state.epoch_length != 0
