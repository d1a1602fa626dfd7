"""Post-processing transforms that turn the network's class probabilities into a segmentation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.networks.utils import one_hot
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = ["ForegroundThreshold", "ForegroundThresholdd"]


class ForegroundThreshold(Transform):
    """
    Replace channel-first class probabilities (channel 0: background) by the one-hot segmentation that labels a voxel
    foreground where its foreground probability, the sum over the foreground classes, is at least ``threshold``, and
    gives it the most probable foreground class.

    With two classes this is ``probabilities[1] >= threshold``; at 0.5 it agrees with the argmax except on exact ties.
    A threshold below 0.5 trades precision for recall. The output is one-hot, so a later
    ``AsDiscreted(argmax=True)`` returns its labels unchanged.

    Args:
        threshold: the foreground probability from which a voxel is foreground, in (0, 1].
    """

    def __init__(self, threshold: float) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}.")
        self.threshold = threshold

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        num_classes = probabilities.shape[0]
        if num_classes < 2:
            raise ValueError(
                f"expected class probabilities with a background and at least one foreground channel, "
                f"got shape {tuple(probabilities.shape)}."
            )
        foreground = torch.as_tensor(probabilities)[1:]
        labels = torch.argmax(foreground, dim=0, keepdim=True) + 1
        labels = torch.where(foreground.sum(dim=0, keepdim=True) >= self.threshold, labels, torch.zeros_like(labels))
        segmentation = one_hot(labels, num_classes, dtype=probabilities.dtype, dim=0)
        return convert_to_dst_type(segmentation, probabilities)[0]


class ForegroundThresholdd(MapTransform):
    """
    Dictionary-based :class:`ForegroundThreshold`.

    Args:
        keys: keys of the class probabilities to segment.
        threshold: the foreground probability from which a voxel is foreground, in (0, 1].
        allow_missing_keys: do not fail when a key is absent.
    """

    def __init__(self, keys: KeysCollection, threshold: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.thresholder = ForegroundThreshold(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.thresholder(d[key])
        return d
