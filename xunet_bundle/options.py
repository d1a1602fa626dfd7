"""Checks of the command-line options of the bundle's workflows, run before anything is read or written."""

from __future__ import annotations

import ast
import difflib
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence

from monai.bundle import ConfigParser

from .data import DataError
from .runtime import is_bundle_command

__all__ = ["MAX_ROI_SIZE", "OPTION_RULES", "check_options", "ignored_none_override", "unknown_override"]

MAX_ROI_SIZE = 4096  # voxels along an axis; beyond, one window of a batch outgrows any machine's memory


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return _is_int(value) and value > 0


def _non_negative_int(value: object) -> bool:
    return _is_int(value) and value >= 0


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _boolean(value: object) -> bool:
    return isinstance(value, bool)


def _probability_or_none(value: object) -> bool:
    return value is None or (_positive_number(value) and value <= 1.0)


def _volume_axes(value: object) -> bool:
    """Distinct axes of a volume (0, 1 or 2): the volumes are 3D for the 2D network too, which segments its slices."""
    if not isinstance(value, (list, tuple)) or not all(_is_int(axis) and 0 <= axis <= 2 for axis in value):
        return False
    return len(set(value)) == len(value)


def _roi_size(value: object) -> bool:
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3):
        return False
    return all(_is_int(s) and (0 < s <= MAX_ROI_SIZE or s == -1) for s in value)


def _class_count(value: object) -> bool:
    return _is_int(value) and value >= 2


def _fold(value: object) -> bool:
    return value == "all" or _non_negative_int(value)


def _subset(value: object) -> bool:
    return value in ("train", "validation", "test", "all")


# option -> (test of its value, what the value must be)
OPTION_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": (_positive_int, "a positive integer"),
    "val_interval": (_positive_int, "a positive integer (validate every N epochs)"),
    "volumes_per_batch": (_positive_int, "a positive integer"),
    "slices_per_volume": (_positive_int, "a positive integer"),
    "sw_batch_size": (_positive_int, "a positive integer"),
    "checkpoint_iterations": (_is_int, "an integer (0 or less: no mid-epoch checkpoints)"),
    "num_workers": (_non_negative_int, "a non-negative integer"),
    "seed": (_non_negative_int, "a non-negative integer"),
    "learning_rate": (_positive_number, "a finite positive number"),
    "foreground_threshold": (_probability_or_none, "None (argmax) or a foreground probability in (0, 1]"),
    "mirror_axes": (_volume_axes, "a list of distinct volume axes among 0, 1 and 2, such as [] or [1]"),
    "background_value": (
        lambda value: value is None
        or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)),
        "None (the background is 0) or the finite intensity of the images' background",
    ),
    "flip_axes": (
        lambda value: value is None or _volume_axes(value),
        "None (the left-right axis of the volumes' orientation) or a list of distinct volume axes, such as [] or [1]",
    ),
    "roi_size": (_roi_size, f"a list of 2 (2D) or 3 (3D) sizes, each in 1..{MAX_ROI_SIZE} or -1 (the whole axis)"),
    "in_channels": (_positive_int, "a positive integer (image channels)"),
    "num_classes": (_class_count, "an integer of at least 2 (background and the foreground classes)"),
    "spatial_dims": (lambda value: value in (2, 3) and _is_int(value), "2 or 3"),
    "fold": (_fold, "a fold number (0, 1, ...) or 'all'"),
    "augmentation": (
        lambda value: value in ("standard", "site"),
        "'standard' (flips, small affine, intensity scale and shift) or 'site' (also gamma, contrast, per-channel "
        "intensity, bias field, blur, noise, low resolution and wider scaling)",
    ),
    "eval_subset": (_subset, "one of 'train', 'validation', 'test' or 'all'"),
    "amp": (_boolean, "True or False"),
    "compile": (_boolean, "True or False"),
    "progress": (_boolean, "True or False"),
    "resume": (_boolean, "True or False"),
    "check_data": (_boolean, "True or False"),
    "tune_malloc": (_boolean, "True or False"),
    "gc_freeze": (_boolean, "True or False"),
    "largest_component": (_boolean, "True or False"),
    "confident_components": (
        lambda value: value is None
        or (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
        ),
        "None (off) or [min_peak, min_fraction], two numbers in [0, 1]: keep the components whose highest foreground "
        "probability reaches min_peak and whose size is at least min_fraction of the largest component's",
    ),
    "save_probabilities": (_boolean, "True or False"),
}


def check_options(options: Mapping[str, object]) -> None:
    """
    Check the options a workflow was given (``--epochs 0``, ``--learning_rate nan``, ``--mirror_axes "[3]"``...)
    before it reads or writes anything, so that a bad value ends the run with one line naming the option instead of a
    traceback, or a run that does something else than asked.

    Args:
        options: option name (the config id, as given on the command line without ``--``) -> its value. Names
            without a rule in :data:`OPTION_RULES` are not checked.

    Raises:
        DataError: naming the first option whose value is not allowed, what it got and what it must be; in a
            ``monai.bundle`` command, naming an option of the command line that is no id of its configs
            (:func:`unknown_override`) or that is a plain ``None`` (:func:`ignored_none_override`).
    """
    if is_bundle_command():
        for found in (unknown_override(sys.argv[1:]), ignored_none_override(sys.argv[1:])):
            if found is not None:
                raise DataError(*found)
    for name, value in options.items():
        rule = OPTION_RULES.get(name)
        if rule is not None and not rule[0](value):
            raise DataError(f"--{name}", f"must be {rule[1]}, got {value!r}.")
    if options.get("largest_component") is True and options.get("confident_components") is not None:
        logging.getLogger("xunet_bundle").warning(
            "--confident_components is followed by the largest-component step (--largest_component True: the default "
            "of the shipped weights), which keeps one component anyway; add --largest_component False to keep every "
            "confident component"
        )


# the options of ``monai.bundle run`` itself, which are no config ids
RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def unknown_override(argv: Sequence[str]) -> tuple[str, str] | None:
    """
    The first ``--name`` of a ``monai.bundle run`` command line whose top-level id (``name`` up to its first ``#``)
    is in none of the command's config files, with what is wrong: MONAI adds such an override as a new id, so a
    misspelt option (``--epoch 1``) would be ignored without a word and the run would use the default.

    Args:
        argv: the command line after the program, ``["run", "training", "--config_file", "...", "--epochs", "1"]``.

    Returns:
        ``("--name", problem)``, or None when every option names an id (or the config files cannot be read, which
        MONAI reports itself).
    """
    names = [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--") and len(arg) > 2]
    values = dict(zip(argv, argv[1:]))
    config_file = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config_file=")), None)
    config_file = config_file or values.get("--config_file")
    if config_file is None:
        return None
    try:
        files = ast.literal_eval(config_file) if config_file.strip().startswith("[") else config_file
        ids = set(ConfigParser.load_config_files(files))
    except Exception:
        return None
    for name in names:
        top = name.split("#", 1)[0].split("::", 1)[0]
        if top not in ids and top not in RUN_ARGUMENTS:
            close = difflib.get_close_matches(top, sorted(ids), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            return f"--{name}", f"not an option of this config: no id {top!r} in {config_file}{hint}"
    return None


def ignored_none_override(argv: Sequence[str]) -> tuple[str, str] | None:
    """
    The first ``--name None`` (or ``--name=None``) of a ``monai.bundle run`` command line: ``monai.bundle`` drops an
    override whose value is ``None``, so the option would keep its default without a word, whatever the user meant
    (``--augmentation None`` still augments). ``'$None'`` is the way to set None.

    Args:
        argv: the command line after the program.

    Returns:
        ``("--name", problem)``, or None when no option is a plain None.
    """
    for index, arg in enumerate(argv):
        if not arg.startswith("--") or len(arg) <= 2:
            continue
        name, equals, value = arg[2:].partition("=")
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if value.strip() == "None" and name not in RUN_ARGUMENTS:
            problem = "a plain None is dropped by monai.bundle, so the default would run instead"
            if name in OPTION_RULES and not OPTION_RULES[name][0](None):
                return f"--{name}", f"{problem}; this option takes {OPTION_RULES[name][1]}"
            return f"--{name}", f"{problem}; write '$None' to set None"
    return None
