"""CrossBasicUNet: shapes, compatibility with the original XUNet's state_dicts, dropout, TorchScript and ONNX."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet
from original_xunet import OriginalCrossBasicUNet

from xunet_bundle import CrossBasicUNet
from xunet_bundle.networks import ChannelsLastInstanceNorm2d


@pytest.mark.parametrize(
    "spatial_dims, shape",
    [
        (2, (2, 3, 64, 64)),
        (2, (1, 3, 250, 250)),
        (2, (3, 3, 17, 45)),
        (2, (1, 3, 33, 16)),
        (3, (1, 1, 32, 32, 32)),
        (3, (2, 1, 35, 50, 35)),
    ],
)
def test_output_has_input_spatial_size(spatial_dims, shape):
    net = CrossBasicUNet(spatial_dims=spatial_dims, in_channels=shape[1], out_channels=3, features=(8, 8, 8, 16, 16, 8))
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("upsample", ["deconv", "pixelshuffle", "nontrainable"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loads_original_state_dict_strict_and_matches_outputs(spatial_dims, upsample):
    torch.manual_seed(0)
    kwargs = dict(spatial_dims=spatial_dims, in_channels=3, out_channels=2, features=(8, 8, 16, 16, 32, 8))
    original = OriginalCrossBasicUNet(**kwargs, upsample=upsample).eval()
    # channels-first, as the original computes (channels-last differs by rounding: see the test below)
    ours = CrossBasicUNet(**kwargs, upsample=upsample, cpu_channels_last=False).eval()
    assert list(ours.state_dict()) == list(original.state_dict())
    ours.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(2, 3, *([32] * spatial_dims))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x))


@pytest.mark.parametrize("fusion", ["concat", "attention", "projected"])
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 45, 17), (3, 3, 8, 8)])
def test_cpu_inference_runs_channels_last_with_the_same_outputs(fusion, shape):
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, out_channels=2, features=(8, 8, 16, 16, 32, 8), fusion=fusion)
    fast = CrossBasicUNet(**kwargs).eval()
    reference = CrossBasicUNet(**kwargs, cpu_channels_last=False).eval()
    reference.load_state_dict(fast.state_dict(), strict=True)
    x = torch.randn(shape)
    assert fast.runs_channels_last(x) and not reference.runs_channels_last(x)
    with torch.no_grad():
        out = fast(x)
        torch.testing.assert_close(out, reference(x), rtol=1e-3, atol=1e-3)
    assert out.is_contiguous()  # handed back channels-first
    # a norm that returned channels-first would make every following convolution convert back
    norm = fast.upcat_1.convs.conv_0.adn.N
    assert norm(torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("in_channels", [1, 3])
def test_channels_last_path_runs_channels_last_for_any_channel_count(in_channels):
    net = CrossBasicUNet(in_channels=in_channels, features=(8, 8, 8, 8, 8, 8)).eval()
    seen = []
    net.conv_0.conv_0.conv.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        out = net(torch.randn(2, in_channels, 32, 32))
    # one channel is contiguous in both formats; the convolutions must still run channels-last
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert out.is_contiguous()
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, 5, 7)).is_contiguous()  # small inputs: cropped, then contiguous


def test_channels_last_instance_norm_matches_instance_norm_on_every_input():
    torch.manual_seed(0)
    plain = torch.nn.InstanceNorm2d(4, affine=True)
    torch.nn.init.normal_(plain.weight)
    ours = ChannelsLastInstanceNorm2d(4, affine=True)
    ours.load_state_dict(plain.state_dict())
    batched = torch.randn(2, 4, 6, 5)
    for x in (batched, batched.contiguous(memory_format=torch.channels_last), batched[0]):  # unbatched too
        torch.testing.assert_close(ours(x), plain(x))
    torch.testing.assert_close(torch.jit.script(ours)(batched[0]), plain(batched[0]))


@pytest.mark.parametrize(
    "name, value", [("cpu_channels_last", "maybe"), ("cpu_channels_last", "False"), ("fast_fusion", 0)]
)
def test_switches_must_be_booleans(name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        CrossBasicUNet(**{name: value})


def test_training_and_3d_keep_the_channels_first_path():
    net = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8))
    x = torch.randn(2, 3, 32, 32)
    assert not net.train().runs_channels_last(x)
    assert net.eval().runs_channels_last(x)
    assert (
        not CrossBasicUNet(spatial_dims=3, features=(8, 8, 8, 8, 8, 8))
        .eval()
        .runs_channels_last(torch.randn(1, 3, 32, 32, 32))
    )
    # training is bit-identical to instance norm in channels-first: the replaced norm runs it as it is
    torch.manual_seed(0)
    plain = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8), cpu_channels_last=False)
    ours = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8))
    ours.load_state_dict(plain.state_dict())
    assert torch.equal(plain.train()(x), ours.train()(x))


def test_original_shrinks_odd_sizes_and_ours_does_not():
    kwargs = dict(in_channels=3, out_channels=2, features=(8, 8, 8, 8, 8, 8))
    x = torch.randn(1, 3, 250, 250)
    with torch.no_grad():
        assert OriginalCrossBasicUNet(**kwargs)(x).shape[2:] == (240, 240)
        assert CrossBasicUNet(**kwargs)(x).shape[2:] == (250, 250)


def test_default_layout_and_parameter_names():
    net = CrossBasicUNet()
    names = {name.split(".")[0] for name in net.state_dict()}
    expected = {"conv_0", "down_1", "down_2", "down_3", "down_4", "upcat_4", "upcat_3", "upcat_2", "upcat_1"}
    assert names == expected | {"final_conv"}
    assert "upcat_1.upsample.deconv.weight" in net.state_dict()
    # upcat_1 fuses the 32-channel upsampled feature with all five encoder features: 32 + (32+32+64+128+256)
    assert net.upcat_1.convs.conv_0.conv.in_channels == 32 + 512
    # the encoder is BasicUNet's, only the decoder's first convolutions are wider
    basic = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    assert sum(p.numel() for p in net.parameters()) > sum(p.numel() for p in basic.parameters())


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    net = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8), dropout=0.5)
    x = torch.randn(1, 3, 32, 32)
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x))


def test_gradients_reach_every_parameter():
    net = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8))
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_matches_eager(spatial_dims):
    net = CrossBasicUNet(spatial_dims=spatial_dims, features=(8, 8, 8, 8, 8, 8)).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 3, *([35] * spatial_dims))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("fusion", ["concat", "attention", "projected"])
def test_onnx_export_matches_eager(tmp_path, fusion):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = CrossBasicUNet(features=(8, 8, 8, 8, 8, 8), fusion=fusion).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "xunet.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["pred"], dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial_dims, size", [(2, (1, 1)), (2, (3, 3)), (2, (1, 32)), (2, (17, 5)), (3, (5, 40, 9))])
def test_inputs_smaller_than_32_voxels_keep_their_size(spatial_dims, size):
    net = CrossBasicUNet(spatial_dims=spatial_dims, in_channels=2, out_channels=3)
    x = torch.randn(2, 2, *size)
    net.train()
    net(x).sum().backward()
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *size)
