"""Post-processing transforms that turn the network's class probabilities into a segmentation."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.utils import one_hot
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = [
    "ConfidentComponents",
    "ConfidentComponentsd",
    "PLAIN_POSTPROCESSING",
    "SHIPPED_WEIGHTS_MD5",
    "SHIPPED_WEIGHTS_POSTPROCESSING",
    "ForegroundThreshold",
    "ForegroundThresholdd",
    "is_shipped_weights",
    "postprocessing_for",
]

# Chosen for the shipped LGG weights, out of fold, by the rule of benchmarks/lgg/README.md: it belongs to those weights
# (identified by their md5, as in large_files.yml) and applies only to them, never to a model trained anew, a
# fine-tuned one or one for another dataset. New weights get it only once a choice is made for them.
SHIPPED_WEIGHTS_MD5 = "be69cf3888da7557c19d4144b16bf5df"
SHIPPED_WEIGHTS_POSTPROCESSING = {
    "mirror_axes": [1],
    "foreground_threshold": 0.2,
    "largest_component": True,
    "confident_components": None,
}
# The network's own output: the argmax of the softmax, no test-time mirroring, every component kept.
PLAIN_POSTPROCESSING = {
    "mirror_axes": [],
    "foreground_threshold": None,
    "largest_component": False,
    "confident_components": None,
}


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


def is_shipped_weights(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file holding the shipped LGG weights (by md5)."""
    return _md5(path) == SHIPPED_WEIGHTS_MD5


def postprocessing_for(checkpoints: str | os.PathLike | Sequence[str | os.PathLike]) -> dict:
    """
    The post-processing settings for a model: :data:`SHIPPED_WEIGHTS_POSTPROCESSING` when every checkpoint is the
    shipped LGG weights (by md5), :data:`PLAIN_POSTPROCESSING` otherwise. The choice is logged; ``--mirror_axes``,
    ``--foreground_threshold``, ``--largest_component`` and ``--confident_components`` override either.

    Args:
        checkpoints: the model file, or the files of an ensemble's members.
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if paths and all(is_shipped_weights(path) for path in paths):
        settings, which = SHIPPED_WEIGHTS_POSTPROCESSING, "the shipped LGG weights' own post-processing"
    else:
        settings, which = PLAIN_POSTPROCESSING, "the network's plain output (argmax, no mirroring)"
    logging.getLogger("xunet_bundle").info(
        f"post-processing defaults for this model: {which} (--mirror_axes {settings['mirror_axes']} "
        f"--foreground_threshold {settings['foreground_threshold']} --largest_component "
        f"{settings['largest_component']} --confident_components {settings['confident_components']}); these "
        "options, given on the command line, replace them"
    )
    return {key: list(value) if isinstance(value, list) else value for key, value in settings.items()}


def _require_class_channels(probabilities: torch.Tensor) -> None:
    """A ValueError unless ``probabilities`` has a background channel and at least one foreground channel."""
    if probabilities.shape[0] < 2:
        raise ValueError(
            f"expected class probabilities with a background and at least one foreground channel, "
            f"got shape {tuple(probabilities.shape)}."
        )


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
        _require_class_channels(probabilities)
        num_classes = probabilities.shape[0]
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


def foreground_components(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """
    Label the connected components of a binary mask, voxels touching by a face, edge or corner being connected (the
    connectivity of MONAI's ``KeepLargestConnectedComponent``). Returns the label array (0: background) and the count.
    """
    structure = ndimage.generate_binary_structure(foreground.ndim, foreground.ndim)
    return ndimage.label(foreground, structure=structure)


class ConfidentComponents(Transform):
    """
    Remove the connected foreground components the network is not confident about from channel-first class
    probabilities (channel 0: background), keeping every component it is confident about, however many.

    The foreground is where the foreground probability (the sum over the foreground classes) reaches ``threshold``,
    or, with ``threshold`` None, where the most probable class is a foreground class (the argmax, ties to background,
    as ``AsDiscrete(argmax=True)`` decides); its 3D components (all spatial dimensions at once) are found as
    :func:`foreground_components` does. A component is
    kept when its highest foreground probability reaches ``min_peak`` and it has at least ``min_fraction`` times the
    voxels of the largest component. The voxels of any other component become background: their foreground
    probabilities move to channel 0, so a later threshold or argmax labels them background. Unlike keeping the largest
    component only, a lesion is not deleted because a larger false-positive blob exists, and multi-focal lesions stay.

    Args:
        threshold: the foreground probability from which a voxel belongs to a component, in (0, 1], or None for the
            argmax; use the one the segmentation is then made with.
        min_peak: the highest foreground probability a component must reach to be kept, in [0, 1].
        min_fraction: the fewest voxels a component must have, as a fraction of the largest component's, in [0, 1].
    """

    def __init__(self, threshold: float | None = None, min_peak: float = 0.0, min_fraction: float = 0.0) -> None:
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be None (argmax) or lie in (0, 1], got {threshold}.")
        for name, value in (("min_peak", min_peak), ("min_fraction", min_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}.")
        self.threshold, self.min_peak, self.min_fraction = threshold, min_peak, min_fraction

    def kept_mask(self, foreground_probability: np.ndarray, foreground: np.ndarray) -> np.ndarray:
        """
        The voxels of the kept components (spatial dimensions only).

        Args:
            foreground_probability: the sum of the foreground classes' probabilities.
            foreground: the foreground voxels, whose components are judged.
        """
        labels, count = foreground_components(foreground)
        if count == 0:
            return np.zeros(labels.shape, dtype=bool)
        index = np.arange(1, count + 1)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        peaks = np.asarray(ndimage.maximum(foreground_probability, labels, index))
        kept = (peaks >= self.min_peak) & (sizes >= self.min_fraction * sizes.max())
        return np.isin(labels, index[kept])

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        _require_class_channels(probabilities)
        values = torch.as_tensor(probabilities).detach().cpu().float()
        foreground = values[1:].sum(dim=0)
        voxels = values.argmax(dim=0) > 0 if self.threshold is None else foreground >= self.threshold
        removed = torch.from_numpy(~self.kept_mask(foreground.numpy(), voxels.numpy()))
        filtered = values.clone()
        filtered[0] = torch.where(removed, values[0] + foreground, values[0])
        filtered[1:] = torch.where(removed[None], torch.zeros_like(values[1:]), values[1:])
        return convert_to_dst_type(filtered, probabilities)[0]


class ConfidentComponentsd(MapTransform):
    """
    Dictionary-based :class:`ConfidentComponents`.

    Args:
        keys: keys of the class probabilities to filter.
        threshold: the foreground probability from which a voxel belongs to a component, in (0, 1], or None for the
            argmax.
        min_peak: the highest foreground probability a component must reach to be kept, in [0, 1].
        min_fraction: the fewest voxels a component must have, as a fraction of the largest component's.
        allow_missing_keys: do not fail when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | None = None,
        min_peak: float = 0.0,
        min_fraction: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.filter = ConfidentComponents(threshold, min_peak, min_fraction)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.filter(d[key])
        return d
