"""A handler that records which volumes each distributed rank trained on, for tests/test_distributed.py."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch.distributed as dist
from ignite.engine import Engine, Events


class InputRecorder:
    """
    Write ``inputs_rank<R>.json`` into ``folder`` when training completes: for every epoch, the volumes (file names)
    this rank's batches came from, in order.

    Args:
        folder: where the record is written.
    """

    def __init__(self, folder: str):
        self.path = Path(folder) / f"inputs_rank{dist.get_rank()}.json"
        self.seen: dict[int, list[str]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine: Engine) -> None:
        # MONAI's trainer has decollated the batch into one dictionary per slice by now
        names = [item["image"].meta["filename_or_obj"] for item in engine.state.batch]
        for name in dict.fromkeys(names):  # the slices of one volume share its name
            self.seen[engine.state.epoch].append(Path(name).name)

    def write(self, engine: Engine) -> None:
        self.path.write_text(json.dumps(self.seen))


def record_handler_types(folder: str, handlers: list) -> None:
    """
    Write ``handlers_rank<R>.json`` into ``folder``: the class names of the trainer's handlers on this rank.

    Args:
        folder: where the record is written.
        handlers: the trainer's ``train_handlers``.
    """
    names = [type(handler).__name__ for handler in handlers if handler is not None]
    (Path(folder) / f"handlers_rank{dist.get_rank()}.json").write_text(json.dumps(names))
