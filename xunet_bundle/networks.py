"""XUNet (``CrossBasicUNet``): BasicUNet with full-scale fusion of all encoder features in each decoder stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution, UpSample
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv
from monai.utils import ensure_tuple_rep

from .fusion import (
    add_conv_nearest_upsampled,
    conv_nd,
    fold_kernels,
    integer_scale,
    nearest_resized_mean,
    nearest_subsampled,
)

__all__ = [
    "FUSIONS",
    "MIN_SPATIAL_SIZE",
    "ChannelsLastInstanceNorm2d",
    "CrossBasicUNet",
    "UpCatAll",
    "adaptive_max_pool",
    "match_spatial_size",
]


def match_spatial_size(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """
    Replicate-pad the trailing spatial dimensions of ``x`` up to ``size``.

    Max pooling floors odd edge lengths, so an upsampled decoder feature can be one voxel shorter than the encoder
    feature of the same level; like MONAI's ``UpCat``, pad it with its border values instead of shrinking the output.

    Args:
        x: tensor of shape ``(batch, channels, *spatial)``.
        size: the target spatial size, one entry per spatial dimension, none smaller than ``x``'s.
    """
    pads: list[int] = []
    for dim in range(len(size) - 1, -1, -1):
        pads += [0, size[dim] - x.shape[dim + 2]]
    if any(p != 0 for p in pads):
        x = F.pad(x, pads, mode="replicate")
    return x


logger = logging.getLogger(__name__)

FUSIONS = ("concat", "attention", "projected")

# four 2x poolings must leave at least two voxels per axis, the fewest that instance norm can normalise
MIN_SPATIAL_SIZE = 32


def adaptive_max_pool(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Max-pool the spatial dimensions of ``x`` (2D or 3D) down to ``size``, whatever the ratio."""
    if x.dim() == 5:
        return F.adaptive_max_pool3d(x, size)
    return F.adaptive_max_pool2d(x, size)


class ChannelsLastInstanceNorm2d(nn.InstanceNorm2d):
    """
    ``nn.InstanceNorm2d`` (without running statistics) that keeps a channels-last input channels-last.

    PyTorch computes instance norm on a channels-first copy and returns channels-first, so every convolution after it
    would convert back. Without running statistics, instance norm is group norm with one group per channel, which
    PyTorch computes in either memory format: a channels-last input takes that form (the same function, the same
    parameters and state_dict keys). Any other input runs as in ``nn.InstanceNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        self._check_input_dim(x)
        if x.dim() == self._get_no_batch_dim():
            return self._handle_no_batch_input(x)
        return self._apply_instance_norm(x)


def keep_channels_last(module: nn.Module) -> None:
    """
    Replace, in place, every batched-use ``nn.InstanceNorm2d`` without running statistics inside ``module`` by a
    :class:`ChannelsLastInstanceNorm2d` holding the same parameters.
    """
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.InstanceNorm2d and not child.track_running_stats:
                norm = ChannelsLastInstanceNorm2d(child.num_features, child.eps, child.momentum, child.affine)
                norm.load_state_dict(child.state_dict())
                setattr(parent, name, norm)


class UpCatAll(nn.Module):
    """
    Upsampling followed by full-scale fusion: the upsampled decoder feature is concatenated with all encoder
    features, each resized to this stage's size, then two convolutions are applied.

    ``fusion`` chooses how the encoder features enter:

    - ``"concat"``: as they are, resized by nearest interpolation (the original XUNet). The concatenation order
      ``[upsampled, encoder_0, ..., encoder_4]`` and the parameter names (``upsample``, ``convs``) are those of the
      original, so its state_dicts load unchanged.
    - ``"attention"``: as ``"concat"``, then squeeze-and-excitation channel attention (MONAI's ``ChannelSELayer``)
      reweights the fused channels before the convolutions.
    - ``"projected"``: UNet 3+ style; each encoder feature is first reduced to ``projection_chns`` channels by a
      1x1 convolution (with norm and activation) at its own resolution, then max-pooled (shallower features) or
      nearest-upsampled (deeper features) to this stage's size.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        encoder_chns: Sequence[int],
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        halves: bool = True,
        fusion: str = "concat",
        attention_reduction: int = 16,
        projection_chns: int = 16,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of channels of the decoder feature to be upsampled.
            encoder_chns: number of channels of each encoder feature, shallowest first.
            out_chns: number of output channels.
            act: activation type and arguments.
            norm: feature normalization type and arguments.
            bias: whether to have a bias term in convolution blocks.
            dropout: dropout ratio. Defaults to no dropout.
            upsample: upsampling mode, available options are ``"deconv"``, ``"pixelshuffle"``, ``"nontrainable"``.
            halves: whether to halve the number of channels during upsampling.
            fusion: ``"concat"``, ``"attention"`` or ``"projected"`` (see the class docstring).
            attention_reduction: reduction ratio of the squeeze-and-excitation layer (``"attention"`` only).
            projection_chns: channels each encoder feature is reduced to (``"projected"`` only).
        """
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
        up_chns = in_chns if upsample == "nontrainable" or not halves else in_chns // 2
        self.fusion = fusion
        self.upsample = UpSample(spatial_dims, in_chns, up_chns, 2, mode=upsample)
        self.projections = nn.ModuleList()
        if fusion == "projected":
            for chns in encoder_chns:
                self.projections.append(
                    Convolution(spatial_dims, chns, projection_chns, kernel_size=1, act=act, norm=norm, bias=bias)
                )
            encoder_chns = [projection_chns] * len(encoder_chns)
        fused_chns = up_chns + sum(encoder_chns)
        self.attention: nn.Module = nn.Identity()
        if fusion == "attention":
            self.attention = ChannelSELayer(spatial_dims, fused_chns, r=attention_reduction)
        self.convs = TwoConv(spatial_dims, fused_chns, out_chns, act, norm, bias, dropout)
        self.fast = True
        self.kernel_cache: tuple[tuple, torch.Tensor, list] | None = None

    def forward(self, x: torch.Tensor, encoder_features: list[torch.Tensor], level: int) -> torch.Tensor:
        """
        Args:
            x: decoder feature to be upsampled.
            encoder_features: all encoder features, shallowest first.
            level: index in ``encoder_features`` of the feature that has this stage's resolution.
        """
        target_size = list(encoder_features[level].shape[2:])
        x_up = match_spatial_size(self.upsample(x), target_size)
        sources = self.fusion_sources(encoder_features, level)
        if torch.jit.is_scripting():
            fused = self.reference_fused_conv(x_up, sources)
        else:
            fused = self.eager_fused_conv(x_up, sources, level)
        return self.convs.conv_1(self.convs.conv_0.adn(fused))

    def fusion_sources(self, encoder_features: list[torch.Tensor], level: int) -> list[torch.Tensor]:
        """
        The encoder features as they enter the fusion, each still at its own resolution except that, for
        ``"projected"``, shallower features are already max-pooled to this stage's size.
        """
        if self.fusion != "projected":
            return encoder_features
        target_size = list(encoder_features[level].shape[2:])
        sources: list[torch.Tensor] = []
        for index, projection in enumerate(self.projections):
            source = projection(encoder_features[index])
            sources.append(adaptive_max_pool(source, target_size) if index < level else source)
        return sources

    def reference_fused_conv(self, x_up: torch.Tensor, sources: list[torch.Tensor]) -> torch.Tensor:
        """
        The first convolution of the stage over the concatenation ``[x_up, resized sources]`` (after channel
        attention, if any), computed as written: every source is resized to this stage's size by nearest
        interpolation and the 3x3 convolution runs on all of them.
        """
        target_size = list(x_up.shape[2:])
        fused = [x_up]
        for source in sources:
            fused.append(F.interpolate(source, size=target_size, mode="nearest"))
        return self.convs.conv_0.conv(self.attention(torch.cat(fused, dim=1)))

    @torch.jit.unused
    def eager_fused_conv(self, x_up: torch.Tensor, sources: list[torch.Tensor], level: int) -> torch.Tensor:
        """The fast form when enabled, except under ONNX export, whose tracer cannot give the folded kernels a shape."""
        if self.fast and not torch.onnx.is_in_onnx_export():
            return self.fast_fused_conv(x_up, sources, level)
        return self.reference_fused_conv(x_up, sources)

    @torch.jit.unused
    def fast_fused_conv(self, x_up: torch.Tensor, sources: list[torch.Tensor], level: int) -> torch.Tensor:
        """
        The same function as :meth:`reference_fused_conv`, without resized copies of the deeper sources.

        A convolution of a concatenation is the sum of one convolution per source (the kernel split along its input
        channels). The upsampled decoder feature, the source of this level and the (cheap, smaller) subsampled
        shallower sources are convolved together at this stage's size; each deeper source is convolved at its own
        resolution with folded kernels (see :mod:`xunet_bundle.fusion`). Channel attention scales each source at
        its own resolution: the mean of a nearest-upsampled map is the mean of its source.
        """
        conv = self.convs.conv_0.conv
        target_size = list(x_up.shape[2:])
        attention = isinstance(self.attention, ChannelSELayer)
        shallow = [x_up]
        for source in sources[: level + 1]:
            shallow.append(nearest_subsampled(source, target_size))
        if not attention:
            # the convolution casts its input to the autocast dtype anyway (that of the upsampled feature); casting the
            # pieces first spares a full-size float32 concatenation
            shallow = [piece.to(x_up.dtype) for piece in shallow]
        near = torch.cat(shallow, dim=1)
        far = sources[level + 1 :]
        if attention:
            means = [near.mean(dim=list(range(2, near.dim())))]
            means += [nearest_resized_mean(source, target_size) for source in far]
            scales = self.attention.fc(torch.cat(means, dim=1))
            scales = scales.view(*scales.shape, *[1] * len(target_size))
            near = near * scales[:, : near.shape[1]]
            far_scales = scales[:, near.shape[1] :].split([source.shape[1] for source in far], dim=1)
            far = [source * scale for source, scale in zip(far, far_scales)]
        near_kernel, *far_kernels = self.fast_kernels(near.shape[1], far, target_size)
        fused = conv_nd(near, near_kernel, conv.bias, padding=1)
        start = near.shape[1]
        for source, kernels in zip(far, far_kernels):
            chns = source.shape[1]
            fused = add_conv_nearest_upsampled(fused, source, conv.weight[:, start : start + chns], kernels)
            start += chns
        return fused

    @torch.jit.unused
    def fast_kernels(
        self, near_chns: int, far: list[torch.Tensor], target_size: list[int]
    ) -> list[torch.Tensor | list[torch.Tensor] | None]:
        """
        The kernels of :meth:`fast_fused_conv`: the first convolution's weight for the ``near_chns`` near channels,
        then the folded kernels of each deeper source (``None`` where its size is no integer fraction of
        ``target_size``, or under autograd, where the folding must be recorded and happens in the convolution).

        Without autograd (inference), they are computed once, in the dtype the convolutions run in (autocast's, if
        it applies), and kept while the weight equals a copy taken then: folding and casting them on every call took
        about a tenth of the network's time on a CPU. The comparison, one pass over the weight, catches every change
        (fused optimizers, for one, update parameters without bumping their version counter).
        """
        weight = self.convs.conv_0.conv.weight
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return [weight[:, :near_chns], *[None] * len(far)]
        device = weight.device.type
        dtype = weight.dtype
        if torch.is_autocast_enabled(device) and weight.is_floating_point() and weight.dtype != torch.float64:
            dtype = torch.get_autocast_dtype(device)  # autocast leaves float64 alone
        scales = tuple(integer_scale(target_size, list(source.shape[2:])) for source in far)
        key = (weight.device, weight.dtype, dtype, near_chns, scales)
        cache = self.kernel_cache
        if cache is None or cache[0] != key or not torch.equal(cache[1], weight):
            kernels: list = [weight[:, :near_chns].to(dtype)]
            start = near_chns
            for source, scale in zip(far, scales):
                chns = source.shape[1]
                folded = fold_kernels(weight[:, start : start + chns], scale) if scale else None
                kernels.append(None if folded is None else [kernel.to(dtype) for kernel in folded])
                start += chns
            self.kernel_cache = (key, weight.detach().clone(), kernels)
        return self.kernel_cache[2]

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without the inference kernels, which are folded again when needed."""
        state = self.__dict__.copy()
        state["kernel_cache"] = None
        return state


class CrossBasicUNet(nn.Module):
    """
    XUNet: a BasicUNet whose every decoder stage fuses all five encoder features (full-scale skip connections).

    The output has the spatial size of the input for any input size; sizes divisible by 16 avoid padding. An input
    smaller than ``MIN_SPATIAL_SIZE`` (32) along an axis is zero-padded to it (zero is the background of an image
    normalised with ``NormalizeIntensity(nonzero=True)``) and its output cropped back.

    Example::

        net = CrossBasicUNet(spatial_dims=2, in_channels=3, out_channels=2)
        logits = net(torch.rand(4, 3, 256, 256))  # (4, 2, 256, 256)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        fast_fusion: bool = True,
        fusion: str = "concat",
        attention_reduction: int = 16,
        projection_chns: int = 16,
        cpu_channels_last: bool = True,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_channels: number of input channels.
            out_channels: number of output channels (logits, no activation applied).
            features: six integers, the number of channels of the five encoder levels and of the last decoder stage.
            act: activation type and arguments.
            norm: feature normalization type and arguments.
            bias: whether to have a bias term in convolution blocks.
            dropout: dropout ratio. Defaults to no dropout.
            upsample: upsampling mode, available options are ``"deconv"``, ``"pixelshuffle"``, ``"nontrainable"``.
            fast_fusion: compute the decoder's fused convolutions without resized copies of the deeper encoder
                features (same parameters, same outputs, much less compute and memory). False runs the
                straightforward formulation, kept as the reference. TorchScript and ONNX export always run the
                reference.
            fusion: how each decoder stage fuses the encoder features: ``"concat"`` (the original XUNet),
                ``"attention"`` (squeeze-and-excitation on the fused channels) or ``"projected"`` (UNet 3+ style:
                1x1-projected, max-pooled when going down). See :class:`UpCatAll`.
            attention_reduction: reduction ratio of the squeeze-and-excitation layers (``"attention"`` only).
            projection_chns: channels each encoder feature is projected to (``"projected"`` only).
            cpu_channels_last: in eval mode on a CPU, run 2D inputs in channels-last memory format, where PyTorch's
                oneDNN convolutions are much faster (a 40-slice LGG patient 1.7x faster in bf16, 1.35x in fp32:
                ``benchmarks/latency``); the outputs are the same up to floating-point rounding and come back
                channels-first. Training (slower in channels-last on a CPU), CUDA, 3D, TorchScript and export are
                unchanged.
        """
        super().__init__()
        for name, flag in (("fast_fusion", fast_fusion), ("cpu_channels_last", cpu_channels_last)):
            if not isinstance(flag, bool):
                raise TypeError(f"CrossBasicUNet: {name} must be True or False, got {flag!r}.")
        fea = ensure_tuple_rep(features, 6)
        encoder_chns = fea[:5]
        fusion_args = {"fusion": fusion, "attention_reduction": attention_reduction, "projection_chns": projection_chns}

        self.conv_0 = TwoConv(spatial_dims, in_channels, fea[0], act, norm, bias, dropout)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = Down(spatial_dims, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = Down(spatial_dims, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = Down(spatial_dims, fea[3], fea[4], act, norm, bias, dropout)

        common = (act, norm, bias, dropout, upsample)
        self.upcat_4 = UpCatAll(spatial_dims, fea[4], encoder_chns, fea[3], *common, **fusion_args)
        self.upcat_3 = UpCatAll(spatial_dims, fea[3], encoder_chns, fea[2], *common, **fusion_args)
        self.upcat_2 = UpCatAll(spatial_dims, fea[2], encoder_chns, fea[1], *common, **fusion_args)
        self.upcat_1 = UpCatAll(spatial_dims, fea[1], encoder_chns, fea[5], *common, halves=False, **fusion_args)

        self.final_conv = Conv["conv", spatial_dims](fea[5], out_channels, kernel_size=1)
        self.fast_fusion = fast_fusion
        self.min_spatial_size = MIN_SPATIAL_SIZE
        self.cpu_channels_last = cpu_channels_last
        self.logged_channels_last = False
        if spatial_dims == 2:
            keep_channels_last(self)

    @property
    def fast_fusion(self) -> bool:
        return self.upcat_1.fast

    @fast_fusion.setter
    def fast_fusion(self, value: bool) -> None:
        for stage in (self.upcat_4, self.upcat_3, self.upcat_2, self.upcat_1):
            stage.fast = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(batch, in_channels, *spatial)`` with ``spatial_dims`` spatial dimensions.

        Returns:
            logits of shape ``(batch, out_channels, *spatial)``.
        """
        if torch.jit.is_scripting():
            return self._padded_forward(x)
        else:  # an ``else`` branch, which TorchScript skips: it cannot compile the channels-last helpers
            if self.runs_channels_last(x):
                return self._padded_forward(self.to_channels_last(x)).contiguous()
            return self._padded_forward(x)

    @torch.jit.unused
    def runs_channels_last(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is to be run channels-last (see ``cpu_channels_last``)."""
        if not self.cpu_channels_last or self.training or x.dim() != 4 or x.device.type != "cpu":
            return False
        return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())

    @torch.jit.unused
    def to_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in channels-last memory format; the first time, the log says that this path runs."""
        if not self.logged_channels_last:
            logger.info("CrossBasicUNet: CPU inference in channels-last memory format (faster convolutions)")
            self.logged_channels_last = True
        # a copy into channels-last strides: with one channel ``contiguous(memory_format=...)`` keeps channels-first
        # strides (both formats are then contiguous) and the convolutions would stay channels-first
        return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)

    def _padded_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass, zero-padding inputs smaller than ``min_spatial_size`` and cropping the output back."""
        size = x.shape[2:]
        pads: list[int] = []
        for dim in range(len(size) - 1, -1, -1):
            pads += [0, max(self.min_spatial_size - size[dim], 0)]
        if any(p != 0 for p in pads):
            logits = self._forward(F.pad(x, pads))
            if len(size) == 2:
                return logits[:, :, : size[0], : size[1]]
            return logits[:, :, : size[0], : size[1], : size[2]]
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        encoder_features = [x0, x1, x2, x3, x4]

        u4 = self.upcat_4(x4, encoder_features, 3)
        u3 = self.upcat_3(u4, encoder_features, 2)
        u2 = self.upcat_2(u3, encoder_features, 1)
        u1 = self.upcat_1(u2, encoder_features, 0)
        return self.final_conv(u1)
