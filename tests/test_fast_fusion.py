"""The fast full-scale fusion against the straightforward formulation it replaces."""

from __future__ import annotations

import copy

import pytest
import torch

from xunet_bundle import CrossBasicUNet
from xunet_bundle.fusion import (
    add_conv_nearest_upsampled,
    nearest_resized_mean,
    nearest_subsampled,
    reference_conv_nearest_upsampled,
)
from xunet_bundle.networks import FUSIONS

SMALL = (8, 8, 16, 16, 32, 8)


@pytest.mark.parametrize("scale", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conv_of_nearest_upsampled_equals_reference(spatial_dims, scale):
    torch.manual_seed(scale)
    source = [3, 2, 4][:spatial_dims] if scale < 8 else [2] * spatial_dims
    x = torch.randn(2, 5, *source, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, *([3] * spatial_dims), dtype=torch.float64, requires_grad=True)
    out = torch.zeros(2, 4, *[scale * s for s in source], dtype=torch.float64)
    fast = add_conv_nearest_upsampled(out, x, weight)
    reference = reference_conv_nearest_upsampled(x, weight, list(out.shape[2:]))
    torch.testing.assert_close(fast, reference)
    grad = torch.randn_like(reference)
    fast_grads = torch.autograd.grad(fast, (x, weight), grad)
    reference_grads = torch.autograd.grad(reference, (x, weight), grad)
    for a, b in zip(fast_grads, reference_grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(add_conv_nearest_upsampled(torch.zeros_like(out), x, weight), reference)


def test_non_integer_scale_falls_back_to_the_reference():
    x, weight = torch.randn(1, 2, 7, 5), torch.randn(3, 2, 3, 3)
    out = add_conv_nearest_upsampled(torch.zeros(1, 3, 15, 11), x, weight)
    torch.testing.assert_close(out, reference_conv_nearest_upsampled(x, weight, [15, 11]))


@pytest.mark.parametrize(
    "shape, size", [((2, 3, 64, 48), [16, 12]), ((1, 2, 32, 32, 16), [8, 8, 4]), ((1, 2, 30, 30), [8, 8])]
)
def test_nearest_subsampled_equals_nearest_interpolation(shape, size):
    x = torch.randn(*shape)
    assert torch.equal(nearest_subsampled(x, size), torch.nn.functional.interpolate(x, size=size, mode="nearest"))
    assert nearest_subsampled(x, list(shape[2:])) is x


@pytest.mark.parametrize("size", [[8, 12], [9, 13], [6, 4, 10]])
def test_mean_of_nearest_resized_equals_reference(size):
    x = torch.randn(2, 3, *[s // 2 for s in size], dtype=torch.float64)
    resized = torch.nn.functional.interpolate(x, size=size, mode="nearest")
    torch.testing.assert_close(nearest_resized_mean(x, size), resized.mean(dim=list(range(2, x.dim()))))


def _pair(
    spatial_dims: int, upsample: str = "deconv", dropout: float = 0.0, fusion: str = "concat"
) -> tuple[CrossBasicUNet, CrossBasicUNet]:
    torch.manual_seed(0)
    fast = CrossBasicUNet(spatial_dims, 3, 2, SMALL, upsample=upsample, dropout=dropout, fusion=fusion).double()
    reference = copy.deepcopy(fast)
    reference.fast_fusion = False
    assert fast.fast_fusion and not reference.fast_fusion
    return fast, reference


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "spatial_dims, shape",
    [
        (2, (1, 64, 64)),
        pytest.param(2, (3, 48, 80), marks=pytest.mark.slow),  # the larger sizes in float64: minutes on 2 cores
        pytest.param(2, (2, 250, 250), marks=pytest.mark.slow),
        (2, (1, 33, 47)),
        pytest.param(3, (1, 32, 32, 32), marks=pytest.mark.slow),
        pytest.param(3, (2, 35, 50, 35), marks=pytest.mark.slow),
    ],
)
def test_network_outputs_and_gradients_match_reference(spatial_dims, shape, train, fusion):
    fast, reference = _pair(spatial_dims, fusion=fusion)
    fast.train(train)
    reference.train(train)
    x = torch.randn(shape[0], 3, *shape[1:], dtype=torch.float64)
    out_fast, out_reference = fast(x), reference(x)
    torch.testing.assert_close(out_fast, out_reference)
    grad = torch.randn_like(out_fast)
    out_fast.backward(grad)
    out_reference.backward(grad)
    for (name, p_fast), p_reference in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p_fast.grad, p_reference.grad, msg=name)


@pytest.mark.parametrize("upsample", ["pixelshuffle", "nontrainable"])
def test_every_upsample_mode_matches_reference(upsample):
    fast, reference = _pair(2, upsample=upsample)
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), reference.eval()(x))


def test_float32_matches_reference_within_tolerance():
    fast, reference = _pair(2)
    fast, reference = fast.float().eval(), reference.float().eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-4)


def test_dropout_applies_after_the_fused_convolution():
    fast, reference = _pair(2, dropout=0.3)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(1)
    out_fast = fast.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out_fast, reference.train()(x))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_torchscript_runs_the_reference_with_the_same_outputs(fusion):
    net = CrossBasicUNet(features=SMALL, fusion=fusion).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_torch_compile_matches_eager(fusion):
    net = CrossBasicUNet(features=SMALL, fusion=fusion).eval()
    x = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(net, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # compiles a backward pass
def test_torch_compile_trains_with_the_same_gradients():
    torch.manual_seed(0)
    net = CrossBasicUNet(features=SMALL)
    compiled_net = copy.deepcopy(net)
    compiled = torch.compile(compiled_net, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    grad = torch.randn(2, 2, 32, 32)
    net(x).backward(grad)
    compiled(x).backward(grad)
    for (name, p_eager), p_compiled in zip(net.named_parameters(), compiled_net.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_accumulator_is_updated_in_place_unless_it_is_a_leaf_that_requires_grad():
    x, weight = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    expected = reference_conv_nearest_upsampled(x, weight, [16, 16])
    out = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    assert add_conv_nearest_upsampled(out, x, weight) is out
    torch.testing.assert_close(out, expected)
    leaf = torch.zeros(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    result = add_conv_nearest_upsampled(leaf, x, weight)
    assert result is not leaf and not leaf.detach().any()
    grad = torch.randn_like(result)
    result.backward(grad)
    torch.testing.assert_close(leaf.grad, grad)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_inference_folds_the_kernels_once_and_again_when_the_weights_change(fusion):
    torch.manual_seed(0)
    net = CrossBasicUNet(features=SMALL, fusion=fusion).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = net(x)
        kernels = net.upcat_1.kernel_cache[2]
        assert torch.equal(net(x), first)
        assert net.upcat_1.kernel_cache[2] is kernels  # reused, not folded again
    with torch.enable_grad():
        torch.testing.assert_close(net(x), first, rtol=0, atol=0)  # autograd folds every call: the same outputs
    with torch.no_grad():
        # through .data, as fused optimizers and weight-swapping code do: no new version, the values change
        net.upcat_1.convs.conv_0.conv.weight.data.mul_(0.5)
        changed = net(x)
        assert net.upcat_1.kernel_cache[2] is not kernels
    fresh = CrossBasicUNet(features=SMALL, fusion=fusion).eval()
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert not torch.equal(changed, first)
        assert torch.equal(changed, fresh(x))
        as_double = net.double()(x.double())  # cast: kernels folded again in float64
    assert as_double.dtype == torch.float64
    torch.testing.assert_close(as_double.float(), changed, rtol=1e-4, atol=1e-4)


def test_inference_kernels_follow_the_autocast_dtype():
    net = CrossBasicUNet(features=SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = net(x)
        assert net.upcat_1.kernel_cache[2][0].dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
        assert net.upcat_1.kernel_cache[2][0].dtype == torch.bfloat16
        assert torch.equal(net(x), full)  # back to float32 kernels
    torch.testing.assert_close(low.float(), full, rtol=0.1, atol=0.1)


def test_fused_optimizer_steps_between_evaluations_are_seen():
    torch.manual_seed(0)
    net = CrossBasicUNet(features=SMALL)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, fused=True)  # updates without bumping versions
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        net.train()
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
        net.eval()
        fresh = CrossBasicUNet(features=SMALL).eval()
        fresh.load_state_dict(net.state_dict())
        with torch.no_grad():
            assert torch.equal(net(x), fresh(x))


def test_float64_network_under_bf16_autocast_keeps_float64_kernels():
    net = CrossBasicUNet(features=SMALL).eval().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves float64 alone
            out = net(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)


def test_pickled_and_copied_networks_leave_the_inference_kernels_behind():
    net = CrossBasicUNet(features=SMALL).eval()
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    assert net.upcat_1.kernel_cache is not None
    assert copy.deepcopy(net).upcat_1.kernel_cache is None
    assert net.upcat_1.kernel_cache is not None  # the original keeps them
