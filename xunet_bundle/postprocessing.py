"""Post-processing transforms that turn the network's class probabilities into a segmentation."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.networks.utils import one_hot
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = [
    "PLAIN_POSTPROCESSING",
    "SHIPPED_WEIGHTS_MD5",
    "SHIPPED_WEIGHTS_POSTPROCESSING",
    "ForegroundThreshold",
    "ForegroundThresholdd",
    "postprocessing_for",
]

# Chosen for the shipped LGG weights, out of fold, by the rule of benchmarks/lgg/README.md: it belongs to those weights
# (identified by their md5, as in large_files.yml) and applies only to them, never to a model trained anew, a
# fine-tuned one or one for another dataset. New weights get it only once a choice is made for them.
SHIPPED_WEIGHTS_MD5 = "be69cf3888da7557c19d4144b16bf5df"
SHIPPED_WEIGHTS_POSTPROCESSING = {"mirror_axes": [1], "foreground_threshold": 0.2, "largest_component": True}
# The network's own output: the argmax of the softmax, no test-time mirroring, every component kept.
PLAIN_POSTPROCESSING = {"mirror_axes": [], "foreground_threshold": None, "largest_component": False}


def _md5(path: str | os.PathLike) -> str | None:
    if not os.path.isfile(path):  # a FIFO would block the read
        return None
    try:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def postprocessing_for(checkpoints: str | os.PathLike | Sequence[str | os.PathLike]) -> dict:
    """
    The post-processing settings for a model: :data:`SHIPPED_WEIGHTS_POSTPROCESSING` when every checkpoint is the
    shipped LGG weights (by md5), :data:`PLAIN_POSTPROCESSING` otherwise. The choice is logged; ``--mirror_axes``,
    ``--foreground_threshold`` and ``--largest_component`` override either.

    Args:
        checkpoints: the model file, or the files of an ensemble's members.
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if paths and all(_md5(path) == SHIPPED_WEIGHTS_MD5 for path in paths):
        settings, which = SHIPPED_WEIGHTS_POSTPROCESSING, "the shipped LGG weights' own post-processing"
    else:
        settings, which = PLAIN_POSTPROCESSING, "the network's plain output (argmax, no mirroring)"
    logging.getLogger("xunet_bundle").info(
        f"post-processing defaults for this model: {which} (--mirror_axes {settings['mirror_axes']} "
        f"--foreground_threshold {settings['foreground_threshold']} --largest_component "
        f"{settings['largest_component']}); these options, given on the command line, replace them"
    )
    return {key: list(value) if isinstance(value, list) else value for key, value in settings.items()}


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
