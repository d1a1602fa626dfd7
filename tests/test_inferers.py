"""Test-time mirroring (``MirroringInferer``) around MONAI's inferers, and how the configs set it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer

from conftest import REPO_ROOT
from xunet_bundle import CrossBasicUNet, runtime
from xunet_bundle.data import LGG_AFFINE, write_nifti
from xunet_bundle.inferers import CpuAutocastInferer, MirroringInferer


def lateralised_network(spatial_dims: int) -> torch.nn.Module:
    """A convolution whose weights are not symmetric, so its mirrored predictions differ from its plain ones."""
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(2, 3, 3, padding=1)
    torch.manual_seed(0)
    with torch.no_grad():
        conv.weight.normal_()
    return conv.eval()


def mean_mirrored_probabilities(inferer, inputs, network, flips):
    probabilities = [
        torch.flip(torch.softmax(inferer(torch.flip(inputs, dims), network), dim=1), dims) for dims in flips
    ]
    return torch.stack(probabilities).mean(dim=0)


@pytest.mark.parametrize(
    "inner, network_dims, shape, axes, flips",
    [
        (SliceInferer(roi_size=(-1, -1), spatial_dim=2), 2, (2, 2, 9, 7, 4), [1], [(), (3,)]),
        (SliceInferer(roi_size=(-1, -1), spatial_dim=2), 2, (1, 2, 9, 7, 4), [0, 1], [(), (2,), (3,), (2, 3)]),
        (SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25), 3, (1, 2, 11, 9, 10), [2], [(), (4,)]),
        (SimpleInferer(), 2, (3, 2, 10, 6), [0], [(), (2,)]),
    ],
)
def test_softmax_of_the_output_is_the_mean_of_the_mirrored_predictions(inner, network_dims, shape, axes, flips):
    network = lateralised_network(network_dims)
    inputs = torch.randn(shape)
    with torch.no_grad():
        output = MirroringInferer(inner, axes)(inputs, network)
        expected = mean_mirrored_probabilities(inner, inputs, network, flips)
        plain = torch.softmax(inner(inputs, network), dim=1)
    assert output.shape == plain.shape
    torch.testing.assert_close(torch.softmax(output, dim=1), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, plain, atol=1e-3)  # the mirrored copies did contribute


def test_without_axes_the_wrapped_inferer_output_is_returned_unchanged():
    network = lateralised_network(2)
    inputs = torch.randn(1, 2, 8, 8, 3)
    inner = SliceInferer(roi_size=(-1, -1), spatial_dim=2)
    with torch.no_grad():
        assert torch.equal(MirroringInferer(inner, [])(inputs, network), inner(inputs, network))


def test_keeps_the_input_geometry():
    affine = torch.diag(torch.tensor([0.5, 0.6, 3.0, 1.0], dtype=torch.float64))
    inputs = MetaTensor(torch.randn(1, 2, 8, 6, 3), affine=affine)
    with torch.no_grad():
        output = MirroringInferer(SliceInferer(roi_size=(-1, -1), spatial_dim=2), [0, 1])(
            inputs, lateralised_network(2)
        )
    assert isinstance(output, MetaTensor)
    torch.testing.assert_close(output.affine, affine)


@pytest.mark.parametrize("axes, message", [([1, 1], "distinct"), ([-1], "non-negative")])
def test_rejects_invalid_axes(axes, message):
    with pytest.raises(ValueError, match=message):
        MirroringInferer(SimpleInferer(), axes)


def test_rejects_an_axis_the_input_does_not_have():
    with pytest.raises(ValueError, match=r"spatial axis 2 .* 2 spatial axes"):
        MirroringInferer(SimpleInferer(), [2])(torch.randn(1, 2, 8, 8), lateralised_network(2))


@pytest.mark.parametrize(
    "config_files, inner_type, shipped_weights, default_axes",
    [
        (["train.json"], SliceInferer, True, ()),
        (["inference.json"], SliceInferer, True, (1,)),
        (["inference.json"], SliceInferer, False, ()),
        (["train.json", "evaluate.json"], SliceInferer, True, (1,)),
        (["train.json", "evaluate.json"], SliceInferer, False, ()),
        (["train.json", "hippocampus.json", "evaluate.json"], SlidingWindowInferer, False, ()),
        (["inference.json", "hippocampus.json"], SlidingWindowInferer, False, ()),
    ],
)
def test_configs_wrap_their_inferer_with_their_default_mirroring(
    config_files, inner_type, shipped_weights, default_axes, tmp_path
):
    """Training validates without mirroring; evaluation and inference mirror left-right only the shipped LGG weights
    (chosen for them on their out-of-fold patients), any other model not."""
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / name) for name in config_files])
    if not shipped_weights:
        parser["ckpt_dir"] = str(tmp_path)  # another model (no file: not the shipped weights' md5)
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, MirroringInferer) and isinstance(inferer.inferer, CpuAutocastInferer)
    assert isinstance(inferer.inferer.inferer, inner_type)
    assert inferer.spatial_axes == default_axes
    parser["mirror_axes"] = []
    assert parser.get_parsed_content("inferer", lazy=False).spatial_axes == ()


def test_lgg_training_flips_slices_along_the_volume_axis_mirror_axes_names(tmp_path):
    """A 2D slice's second axis is the volume's axis 1 (SliceInferer slices along the last axis), so LGG models can
    be mirrored with ``--mirror_axes "[1]"``."""
    write_nifti(np.zeros((8, 8, 2, 3), np.float32), LGG_AFFINE, tmp_path / "lgg.nii.gz")  # as prepare_lgg.py writes
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
    parser["train#dataset#data"] = [{"image": str(tmp_path / "lgg.nii.gz")}]
    assert parser["window_inferer"]["spatial_dim"] == 2
    flips = [t for t in parser.get_parsed_content("train_transforms") if type(t).__name__ == "RandFlipd"]
    assert [flip.flipper.spatial_axis for flip in flips] == [[1]]


def test_amp_on_cpu_runs_the_network_in_bf16_where_supported(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    torch.manual_seed(0)
    net = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
    dtypes = []
    net.final_conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    with torch.no_grad():
        out = CpuAutocastInferer(SimpleInferer(), enabled=True)(x, net)
    assert dtypes == [torch.bfloat16] and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0.1, atol=0.1)
    assert all(p.dtype == torch.float32 for p in net.state_dict().values())


@pytest.mark.parametrize(
    "enabled, device, supported", [(False, "cpu", True), (True, "cpu", False), (True, "meta", True)]
)
def test_amp_leaves_the_network_alone_otherwise(monkeypatch, enabled, device, supported):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: supported)
    autocast = []

    def network(x):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return x

    x = torch.zeros(1, 1, 4, 4, device=device)
    assert CpuAutocastInferer(SimpleInferer(), enabled=enabled)(x, network) is x
    assert autocast == [False]
