"""configs/metadata.json against the bundle schema, and the network against its declared data format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


def test_metadata_is_valid_against_the_schema(schema_path):
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema_path))  # raises when invalid


def test_metadata_rejects_a_broken_file(schema_path, tmp_path):
    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(schema_path))


@pytest.mark.parametrize("config", ["inference.json", "train.json"])
def test_network_matches_declared_inputs_and_outputs(config):
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / config))


def test_metadata_agrees_with_the_configs():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / name))
        assert fmt["inputs"]["image"]["num_channels"] == parser.get_parsed_content("network_def#in_channels")
        assert fmt["outputs"]["pred"]["num_channels"] == parser.get_parsed_content("network_def#out_channels")
        assert len(fmt["inputs"]["image"]["spatial_shape"]) == parser.get_parsed_content("network_def#spatial_dims")
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "tumor"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_configs_are_indented_four_spaces(path):
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"


def test_one_version_everywhere():
    """pyproject.toml, the package and metadata.json name the same version, which the changelog describes."""
    import xunet_bundle

    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == xunet_bundle.__version__ == meta["version"]
    assert meta["version"] in meta["changelog"]
