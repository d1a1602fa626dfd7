"""The checks of the workflows' command-line options (xunet_bundle/options.py)."""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT
from xunet_bundle.data import DataError
from xunet_bundle.options import OPTION_RULES, check_options

VALID = {
    "epochs": 300,
    "val_interval": 1,
    "volumes_per_batch": 2,
    "slices_per_volume": 4,
    "sw_batch_size": 4,
    "checkpoint_iterations": 0,
    "num_workers": 0,
    "seed": 0,
    "learning_rate": 1e-3,
    "foreground_threshold": None,
    "mirror_axes": [],
    "flip_axes": None,
    "background_value": None,
    "roi_size": [-1, -1],
    "fold": "all",
    "eval_subset": "test",
    "amp": False,
    "compile": True,
    "progress": True,
    "resume": False,
    "check_data": True,
    "tune_malloc": True,
    "gc_freeze": True,
    "largest_component": True,
    "confident_components": None,
    "augmentation": "standard",
    "save_probabilities": False,
    "in_channels": 3,
    "num_classes": 2,
    "spatial_dims": 2,
}


def test_every_rule_has_a_valid_example_and_the_defaults_pass():
    assert set(VALID) == set(OPTION_RULES)
    check_options(VALID)
    check_options({**VALID, "foreground_threshold": 0.2, "mirror_axes": [0, 1, 2], "fold": 3, "roi_size": [64, 64, 8]})
    check_options({**VALID, "flip_axes": []})
    check_options({**VALID, "flip_axes": [0], "background_value": -3.6})
    check_options({**VALID, "confident_components": [0.9, 0.1], "augmentation": "site"})
    check_options({**VALID, "confident_components": (1, 0)})
    check_options({"not_an_option": object()})


@pytest.mark.parametrize(
    "name, value",
    [
        ("epochs", 0),
        ("epochs", -1),
        ("epochs", 2.5),
        ("epochs", True),
        ("epochs", "10"),
        ("val_interval", 0),
        ("volumes_per_batch", 0),
        ("slices_per_volume", 0),
        ("sw_batch_size", -4),
        ("checkpoint_iterations", 2.0),
        ("num_workers", -1),
        ("seed", -3),
        ("learning_rate", "nan"),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("learning_rate", 0),
        ("learning_rate", -1e-3),
        ("foreground_threshold", 0),
        ("foreground_threshold", 1.5),
        ("foreground_threshold", float("nan")),
        ("mirror_axes", [3]),
        ("mirror_axes", [1, 1]),
        ("mirror_axes", [-1]),
        ("mirror_axes", 1),
        ("flip_axes", [3]),
        ("flip_axes", "auto"),
        ("background_value", float("nan")),
        ("background_value", "-3.6"),
        ("roi_size", [0, 0]),
        ("roi_size", [64]),
        ("roi_size", "64"),
        ("roi_size", [100000, 100000]),
        ("in_channels", 0),
        ("num_classes", "two"),
        ("num_classes", 1),
        ("spatial_dims", 4),
        ("fold", -1),
        ("fold", "0"),
        ("eval_subset", "everything"),
        ("resume", "yes"),
        ("amp", 1),
        ("largest_component", None),
        ("confident_components", 0.9),
        ("confident_components", [0.9]),
        ("confident_components", [0.9, 1.5]),
        ("confident_components", [float("nan"), 0.1]),
        ("confident_components", [True, 0.1]),
        ("augmentation", "strong"),
        ("augmentation", None),
    ],
)
def test_a_bad_option_is_named_with_what_it_got_and_must_be(name, value):
    with pytest.raises(DataError) as error:
        check_options({**VALID, name: value})
    assert error.value.path == f"--{name}"
    assert repr(value) in error.value.problem and "must be" in error.value.problem


def test_an_option_that_names_no_config_id_is_found_with_a_hint(tmp_path):
    from xunet_bundle.options import unknown_override

    train = str(REPO_ROOT / "configs" / "train.json")
    evaluate = str([train, str(REPO_ROOT / "configs" / "evaluate.json")])
    assert (
        unknown_override(["run", "training", "--config_file", train, "--epochs", "1", "--network_def#fusion", "x"])
        is None
    )
    assert unknown_override(["run", "evaluating", "--config_file", evaluate, "--eval_subset", "all"]) is None
    assert unknown_override(["run", "training", "--config_file", train, "--meta_file", "m.json", "--epochs=2"]) is None
    name, problem = unknown_override(["run", "training", "--config_file", train, "--epoch", "1"])
    assert name == "--epoch" and problem.endswith("did you mean --epochs?")
    name, problem = unknown_override(["run", "training", "--config_file", train, "--eval_subset", "all"])
    assert name == "--eval_subset" and f"no id 'eval_subset' in {train}" in problem
    assert (
        unknown_override(["run", "training", "--config_file", str(REPO_ROOT / "missing.json"), "--epoch", "1"]) is None
    )


@pytest.mark.parametrize(
    "argv, found, hint",
    [
        (["run", "training", "--augmentation", "None"], "--augmentation", "this option takes 'standard'"),
        (["run", "inference", "--gc_freeze", "None"], "--gc_freeze", "this option takes True or False"),
        (["run", "inference", "--confident_components=None"], "--confident_components", "'$None'"),
        (["run", "training", "--epochs", "2", "--flip_axes", " None "], "--flip_axes", "'$None'"),
        (["run", "training", "--foreground_threshold", "$None", "--run_id", "training"], None, None),
        (["run", "training", "--epochs", "2"], None, None),
    ],
)
def test_a_plain_none_is_named_since_monai_bundle_would_drop_it(argv, found, hint):
    from xunet_bundle.options import ignored_none_override

    result = ignored_none_override(argv)
    assert (result and result[0]) == found
    if found:
        assert "dropped by monai.bundle" in result[1] and hint in result[1]
        # '$None' is suggested only where None is a value the option takes
        assert ("'$None'" in result[1]) == (hint == "'$None'")


def test_confident_components_with_the_largest_component_warn(caplog):
    with caplog.at_level("WARNING", logger="xunet_bundle"):
        check_options({**VALID, "largest_component": True, "confident_components": [0.9, 0.1]})
    assert "add --largest_component False" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="xunet_bundle"):
        check_options({**VALID, "largest_component": False, "confident_components": [0.9, 0.1]})
    assert caplog.text == ""
