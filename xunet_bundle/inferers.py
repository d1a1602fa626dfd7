"""Test-time mirroring and CPU bfloat16 autocast around any MONAI inferer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import torch
from monai.inferers import Inferer

from . import runtime

__all__ = ["CpuAutocastInferer", "MirroringInferer"]

logger = logging.getLogger(__name__)


class CpuAutocastInferer(Inferer):
    """
    Runs ``inferer`` under bfloat16 autocast when the input is on a CPU that computes bf16 natively (AVX512-BF16 or
    AMX), and returns float32, so that losses, softmax and metrics are computed as without it. The choice is made,
    and logged, when the inferer is built; on other CPUs (where PyTorch emulates bf16, many times slower) and on CUDA
    ``inferer`` runs as it is. MONAI's trainers and evaluators autocast only on CUDA (``amp=True``); this gives the
    same switch a meaning on such CPUs, in the bundle's commands and in MONAI Label alike.

    Args:
        inferer: the inferer to run, e.g. ``SliceInferer`` or ``SimpleInferer``.
        enabled: the bundle's ``amp`` switch.
    """

    def __init__(self, inferer: Inferer, enabled: bool = True) -> None:
        self.inferer = inferer
        self.enabled = bool(enabled) and runtime.cpu_supports_bf16()
        if enabled and not self.enabled:
            logger.info("amp: float32 on CPU: this CPU has no native bfloat16, where autocast would be slower")
        elif self.enabled:
            logger.info("amp: bfloat16 autocast on CPU (native bfloat16 found); float32 on CUDA unless MONAI's amp")
        else:
            logger.info("amp: off, float32")

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled or inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inferer(inputs, network, *args, **kwargs).float()


class MirroringInferer(Inferer):
    """
    Runs ``inferer`` on the input and on its mirror images along every subset of ``spatial_axes``, mirrors each
    prediction back and averages the softmax probabilities (test-time mirroring, as nnU-Net does).

    The result is the logarithm of the averaged probabilities, so a later softmax (``Activationsd(softmax=True)``)
    gives back exactly the averaged probabilities and an argmax picks their largest class. With no ``spatial_axes``
    the wrapped inferer's output is returned unchanged.

    Args:
        inferer: the inferer run on each mirrored copy, e.g. ``SliceInferer`` or ``SlidingWindowInferer``.
        spatial_axes: spatial axes to mirror, 0 being the first spatial axis (tensor dimension 2). Every subset is
            used, so ``2 ** len(spatial_axes)`` predictions are averaged. Mirror only along axes the training
            augmentation flipped: the network has not learned the others.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = ()) -> None:
        axes = tuple(int(axis) for axis in spatial_axes)
        if len(set(axes)) != len(axes) or any(axis < 0 for axis in axes):
            raise ValueError(f"spatial_axes must be distinct non-negative spatial axes, got {list(spatial_axes)}.")
        self.inferer = inferer
        self.spatial_axes = axes
        self.flipped_dims = [
            tuple(axis + 2 for axis in subset) for size in range(len(axes) + 1) for subset in combinations(axes, size)
        ]

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.spatial_axes:
            return self.inferer(inputs, network, *args, **kwargs)
        spatial_dims = inputs.ndim - 2
        if max(self.spatial_axes) >= spatial_dims:
            raise ValueError(
                f"cannot mirror spatial axis {max(self.spatial_axes)} of an input with {spatial_dims} spatial axes "
                f"(shape {tuple(inputs.shape)})."
            )
        probabilities = None
        for dims in self.flipped_dims:
            logits = self.inferer(torch.flip(inputs, dims) if dims else inputs, network, *args, **kwargs)
            mirrored_back = torch.softmax(logits.float(), dim=1)
            if dims:
                mirrored_back = torch.flip(mirrored_back, dims)
            probabilities = mirrored_back if probabilities is None else probabilities + mirrored_back
        probabilities = probabilities / len(self.flipped_dims)
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))
