"""Process-level settings that make CPU training and inference fast by default."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import re
import sys
from pathlib import Path

from .data import DataError, OutputWriteError

__all__ = [
    "FreshRunLogFilter",
    "cpu_supports_bf16",
    "freeze_startup_objects",
    "is_bundle_command",
    "log_fresh_runs_as_starting",
    "report_data_errors_briefly",
    "tune_glibc_malloc",
]

logger = logging.getLogger(__name__)

_FRESH_RUN = re.compile(r"^Engine run resuming from iteration 0, epoch (\d+) until (\d+) epochs$")

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def is_bundle_command() -> bool:
    """
    Whether this process is ``python -m monai.bundle ...`` (also each process ``torchrun`` starts for it), which the
    bundle's run owns, rather than a host that loaded the bundle (MONAI Label's server, a user's ``ConfigWorkflow``),
    whose process-wide settings a bundle must leave alone.
    """
    main = Path(sys.argv[0] if sys.argv else "")
    return main.name == "__main__.py" and main.parent.name == "bundle" and main.parent.parent.name == "monai"


def tune_glibc_malloc(
    top_pad: int = 1 << 30, trim_threshold: int = 100_000_000_000, command_line_only: bool = True
) -> bool:
    """
    Keep large tensors on glibc's heap instead of fresh ``mmap`` regions.

    By default glibc serves every allocation above 128 KiB-32 MiB with its own ``mmap`` and returns it to the kernel
    when freed, so each large activation of every training step is page-faulted in again: on CPU this roughly
    doubles the step time (kernel time equals user time). This is the runtime equivalent of
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...``; memory freed by PyTorch stays reserved
    by the process for reuse. It does nothing on other C libraries (macOS, Windows, musl).

    Args:
        top_pad: extra bytes requested from the kernel whenever the heap grows.
        trim_threshold: free memory at the top of the heap above which glibc returns it to the kernel.
        command_line_only: apply them only in a ``monai.bundle`` command (:func:`is_bundle_command`): a host process
            keeps its allocator as it was.

    Returns:
        whether the settings were applied.
    """
    if command_line_only and not is_bundle_command():
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)),
            (_M_TOP_PAD, top_pad),
        )
    )
    logger.info("glibc malloc tuned for large tensors: %s", applied)
    return applied


def freeze_startup_objects(command_line_only: bool = True) -> bool:
    """
    Move every object alive now (in a command at start-up: the modules of PyTorch, MONAI, Ignite and their
    dependencies, some 400,000 objects) out of the garbage collector's reach with :func:`gc.freeze`.

    Python's full collections traverse every tracked object, and the interpreter runs several while it exits: after
    ``import monai`` a command spent about a second exiting. Frozen objects are skipped; objects created later (the
    network, the data, the outputs) are collected as before. What is frozen is never collected, so cyclic garbage among
    it stays until the process ends: harmless for a command, which ends with its run; a host process, which lives on
    and loads other work, keeps its collector as it was.

    Args:
        command_line_only: freeze only in a ``monai.bundle`` command (:func:`is_bundle_command`).

    Returns:
        whether the objects were frozen.
    """
    if command_line_only and not is_bundle_command():
        return False
    gc.freeze()
    logger.info("start-up objects frozen out of the garbage collector's reach (faster exit): %d", gc.get_freeze_count())
    return True


def cpu_supports_bf16() -> bool:
    """
    Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it PyTorch emulates bf16 and autocast
    makes convolutions many times slower than fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def report_data_errors_briefly(command_line_only: bool = True) -> None:
    """
    Make a run that stops on a :class:`~xunet_bundle.data.DataError` (or an
    :class:`~xunet_bundle.data.OutputWriteError`) end with that error's one line (``error: <file>:
    <problem>``) on stderr instead of a traceback through MONAI's config machinery, which wraps the error in
    ``RuntimeError: Failed to evaluate ...``. Other exceptions, and every exception when the environment variable
    ``XUNET_TRACEBACK=1`` is set, keep Python's usual report. It only changes ``sys.excepthook``, which applies to
    exceptions nothing caught; code that calls the bundle in-process sees the exception as usual.

    Args:
        command_line_only: change it only in a ``monai.bundle`` command (:func:`is_bundle_command`): a host process
            keeps its own ``sys.excepthook``.
    """
    if command_line_only and not is_bundle_command():
        return
    previous = sys.excepthook
    if getattr(previous, "reports_data_errors", False):
        return

    def hook(exc_type, exc, traceback) -> None:
        cause, seen = exc, set()
        while cause is not None and not isinstance(cause, DataError) and id(cause) not in seen:
            seen.add(id(cause))
            cause = cause.error if isinstance(cause, OutputWriteError) else cause.__cause__ or cause.__context__
        if isinstance(cause, DataError) and os.environ.get("XUNET_TRACEBACK") != "1":
            print(f"error: {cause}", file=sys.stderr)
        else:
            previous(exc_type, exc, traceback)

    hook.reports_data_errors = True
    sys.excepthook = hook


class FreshRunLogFilter(logging.Filter):
    """
    Reword Ignite's "Engine run resuming from iteration 0, epoch E until M epochs", which every run of a MONAI engine
    logs, fresh or not (MONAI's workflows create the engine's state with ``max_epochs`` set, so Ignite takes every
    run for a resumed one). A run from iteration 0 starts; one from a checkpoint keeps Ignite's message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        match = _FRESH_RUN.match(record.getMessage())
        if match:
            epoch, max_epochs = int(match.group(1)), int(match.group(2))
            record.msg = f"Engine run starting with max_epochs={max_epochs}"
            record.msg += f" at epoch {epoch + 1}." if epoch else "."
            record.args = ()
        return True


def log_fresh_runs_as_starting(*engines) -> None:
    """
    Add a :class:`FreshRunLogFilter` to the loggers of ``engines`` (once each).

    Args:
        engines: Ignite engines (MONAI trainers and evaluators).
    """
    for engine in engines:
        if not any(isinstance(f, FreshRunLogFilter) for f in engine.logger.filters):
            engine.logger.addFilter(FreshRunLogFilter())
