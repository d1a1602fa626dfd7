"""The fusion variants of XUNet's roadmap: squeeze-and-excitation attention and UNet 3+ style projection."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.blocks import ChannelSELayer
from monai.networks.nets import BasicUNet

from xunet_bundle import CrossBasicUNet
from xunet_bundle.networks import FUSIONS, adaptive_max_pool

FEATURES = (32, 32, 64, 128, 256, 32)


def _parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="fusion must be one of"):
        CrossBasicUNet(fusion="sum")


def test_concat_keeps_the_original_parameters():
    concat = CrossBasicUNet(fusion="concat")
    assert all("attention" not in name and "projections" not in name for name in concat.state_dict())
    assert concat.upcat_1.convs.conv_0.conv.in_channels == 32 + 512


def test_attention_adds_squeeze_and_excitation_on_every_fused_feature():
    net = CrossBasicUNet(fusion="attention", attention_reduction=16)
    for stage, up_chns in ((net.upcat_4, 128), (net.upcat_3, 64), (net.upcat_2, 32), (net.upcat_1, 32)):
        assert isinstance(stage.attention, ChannelSELayer)
        fused_chns = up_chns + 512
        assert stage.attention.fc[0].in_features == fused_chns
        assert stage.attention.fc[0].out_features == fused_chns // 16
        assert stage.convs.conv_0.conv.in_channels == fused_chns
    assert _parameters(net) > _parameters(CrossBasicUNet(fusion="concat"))


def test_projected_reduces_every_source_and_costs_fewer_parameters():
    net = CrossBasicUNet(fusion="projected", projection_chns=16)
    assert len(net.upcat_1.projections) == 5
    assert net.upcat_1.convs.conv_0.conv.in_channels == 32 + 5 * 16
    basic = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=FEATURES)
    assert _parameters(net) < _parameters(CrossBasicUNet(fusion="concat"))
    assert _parameters(net) < 1.2 * _parameters(basic)


def test_projected_max_pools_shallower_sources_and_keeps_deeper_ones_at_their_resolution():
    torch.manual_seed(0)
    stage = CrossBasicUNet(features=(4, 4, 4, 4, 4, 4), fusion="projected", projection_chns=2).upcat_3
    encoder = [torch.randn(1, 4, 64 >> level, 64 >> level) for level in range(5)]
    sources = stage.fusion_sources(encoder, level=2)
    assert [tuple(s.shape[2:]) for s in sources] == [(16, 16), (16, 16), (16, 16), (8, 8), (4, 4)]
    projected_0 = stage.projections[0](encoder[0])
    torch.testing.assert_close(sources[0], torch.nn.functional.max_pool2d(projected_0, 4))
    assert not torch.allclose(sources[0], projected_0[:, :, ::4, ::4])  # pooled, not subsampled


def test_adaptive_max_pool_handles_sizes_that_are_not_multiples():
    x = torch.arange(2 * 9 * 7 * 5, dtype=torch.float32).view(1, 2, 9, 7, 5)
    pooled = adaptive_max_pool(x, [2, 3, 2])
    assert pooled.shape == (1, 2, 2, 3, 2)
    assert pooled.max() == x.max()


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_variant_learns_a_toy_segmentation(spatial_dims, fusion):
    """A few optimiser steps on a fixed bright-square task must lower the loss: gradients flow through the fusion."""
    torch.manual_seed(0)
    net = CrossBasicUNet(spatial_dims, 1, 2, (8, 8, 8, 8, 8, 8), fusion=fusion)
    x = torch.zeros(2, 1, *([32] * spatial_dims))
    x[(slice(None), slice(None)) + (slice(8, 20),) * spatial_dims] = 1.0
    y = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x + 0.1 * torch.randn_like(x)), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_is_set_from_the_bundle_config(fusion):
    parser = ConfigParser()
    parser.read_config("configs/train.json")
    parser["network_def"]["fusion"] = fusion
    net = parser.get_parsed_content("network_def")
    assert net.upcat_2.fusion == fusion
