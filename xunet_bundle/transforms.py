"""Input validation transforms that turn bad cases into clear errors naming the file."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform

from .data import DataError

__all__ = ["CheckCased", "check_cases", "left_right_axes", "zero_background"]

logger = logging.getLogger(__name__)

# a channel's sum of intensities beyond this overflows float32 (3.4e38) in NormalizeIntensity's mean and variance
MAX_INTENSITY_SUM = 1e37


def source_file(data: object) -> str:
    """The file a (meta) tensor was loaded from, or ``"<unknown file>"``."""
    if isinstance(data, MetaTensor):
        name = data.meta.get("filename_or_obj")
        if name:
            return str(name)
    return "<unknown file>"


def _has_no_channel_axis(image: torch.Tensor) -> bool:
    """Whether the file an image was loaded from stored no channel axis (MONAI marks it "no_channel" or NaN)."""
    channel_dim = image.meta.get("original_channel_dim") if isinstance(image, MetaTensor) else None
    return channel_dim == "no_channel" or (isinstance(channel_dim, float) and math.isnan(channel_dim))


class CheckCased(MapTransform):
    """
    Check a channel-first image (and, when present, its label) before they reach the network.

    Raises :class:`~xunet_bundle.data.DataError` naming the file when the image has the wrong number of channels or
    non-finite intensities, when the label's spatial size differs from the image's, or when label values fall outside
    ``0 .. num_classes - 1``.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        num_channels: int = 3,
        num_classes: int = 2,
        spatial_dims: int = 3,
        allow_missing_keys: bool = True,
    ):
        """
        Args:
            image_key: key of the image.
            label_key: key of the label, or None for unlabelled data.
            num_channels: expected number of image channels.
            num_classes: labels must lie in ``0 .. num_classes - 1``.
            spatial_dims: expected number of spatial dimensions of the image.
            allow_missing_keys: do not fail when the label is absent (inference).
        """
        keys: KeysCollection = [image_key] if label_key is None else [image_key, label_key]
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.label_key = label_key
        self.num_channels = num_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.image_key]
        name = source_file(image)
        if image.ndim != self.spatial_dims + 1:
            raise DataError(
                name,
                f"expected a {self.spatial_dims}D volume with {self.num_channels} channels, "
                f"got an array of shape {tuple(image.shape)} (channel first).",
            )
        if image.shape[0] != self.num_channels:
            problem = f"expected {self.num_channels} image channels, got {image.shape[0]}"
            if _has_no_channel_axis(image) and image.shape[-1] == self.num_channels:
                problem += (
                    f"; the file holds an array of shape {tuple(image.shape[1:])}, which looks like a single 2D slice "
                    f"with its channels last: store it as rows x cols x 1 x {self.num_channels} (one-slice volume)"
                )
            else:
                problem += (
                    f" (the network was built for {self.num_channels}); for data of {image.shape[0]} channels train "
                    f"with --in_channels {image.shape[0]} (see docs/training.md), or use models made for it"
                )
            raise DataError(name, problem + ".")
        if image.is_floating_point() and not bool(torch.isfinite(image).all()):
            raise DataError(name, "image contains NaN or infinite intensities.")
        largest = float(image.abs().max()) if image.numel() else 0.0
        if largest * image[0].numel() > MAX_INTENSITY_SUM:
            raise DataError(
                name,
                f"intensities up to {largest:.3g} overflow the float32 sums of intensity normalisation (NaN "
                "segmentations); rescale the image.",
            )
        label = d.get(self.label_key) if self.label_key is not None else None
        if label is not None:
            label_name = source_file(label)
            if label.shape[0] != 1:
                raise DataError(label_name, f"expected a single-channel label, got shape {tuple(label.shape)}.")
            if label.shape[1:] != image.shape[1:]:
                raise DataError(
                    label_name, f"label size {tuple(label.shape[1:])} differs from image size {tuple(image.shape[1:])}."
                )
            values = torch.unique(label)
            valid = (values >= 0) & (values < self.num_classes) & (values == torch.round(values))
            if not bool(valid.all()):
                invalid = values[~valid].tolist()[:10]
                raise DataError(
                    label_name, f"label values must be integers in 0..{self.num_classes - 1}, found {invalid}."
                )
        return d


def check_cases(
    cases: Sequence[Mapping[str, str | Sequence[str]]],
    num_channels: int = 3,
    num_classes: int = 2,
    image_key: str = "image",
    label_key: str = "label",
    require_label: bool = False,
    background_value: float | None = None,
) -> None:
    """
    Read every case once before a run starts, so that a bad file stops the run at once with a single
    :class:`~xunet_bundle.data.DataError` naming the file and the problem, before any output is written (inside a
    dataset, MONAI would report it wrapped in a transform error, and possibly after hours of training).

    Besides what :class:`CheckCased` checks, each file's header must hold a finite, invertible voxel-to-world affine
    (MONAI's reader would replace a NaN one by the identity, and the writer fails on a singular one), and a label must
    lie on its image's voxel grid (same affine: spacing, origin and orientation). An image that is constant (all
    zero, say) in a channel is accepted with a warning naming the file: its segmentation means nothing.

    Args:
        cases: items of a datalist, ``{"image": path, "label": path}``; the image may be a list of paths, one
            single-channel file per channel, which must share their spatial size and affine.
        num_channels: expected number of image channels.
        num_classes: labels must lie in ``0 .. num_classes - 1``.
        image_key: key of the image path.
        label_key: key of the label path.
        require_label: every case must have a label (training, evaluation).
        background_value: the images' background intensity that the run sets to 0 before normalisation (None: 0
            already; a channel mostly of one other value is then warned about).
    """
    load = LoadImage(image_only=True, reader="NibabelReader", squeeze_non_spatial_dims=True)  # as the configs do
    channel_first = EnsureChannelFirst()
    check = CheckCased(image_key, label_key, num_channels=num_channels, num_classes=num_classes)
    check_channel = CheckCased(image_key, None, num_channels=1)

    def read(path: Path, key: str) -> MetaTensor:
        if not path.is_file():
            raise DataError(path, f"not a regular file ({key})." if path.exists() else f"{key} file not found.")
        affine = _header_affine(path, key)
        try:
            data = channel_first(load(path))
        except Exception as e:  # readers raise anything from EOFError to zlib.error on damaged files
            raise DataError(path, f"cannot read the {key} ({type(e).__name__}: {e}).") from e
        if affine is not None:
            data.meta["header_affine"] = affine
        return data

    for case in cases:
        if image_key not in case:
            raise DataError("<datalist>", f"a case has no {image_key!r} entry: {dict(case)}.")
        if require_label and label_key not in case:
            raise DataError(
                case[image_key] if isinstance(case[image_key], str) else case[image_key][0],
                f"this case has no {label_key!r} in the datalist; training and evaluation need one.",
            )
        loaded = {}
        if isinstance(case[image_key], (list, tuple)):
            paths = [Path(path) for path in case[image_key]]
            if len(paths) != num_channels:
                raise DataError(
                    paths[0] if paths else "<datalist>", f"expected {num_channels} channel files, got {len(paths)}."
                )
            channels = [check_channel({image_key: read(path, image_key)})[image_key] for path in paths]
            for path, channel in zip(paths[1:], channels[1:]):
                _check_same_grid(path, channel, paths[0], channels[0])
            loaded[image_key] = torch.cat(channels)
            image_path = paths[0]
        else:
            image_path = Path(case[image_key])
            loaded[image_key] = read(image_path, image_key)
        if label_key in case:
            label_path = Path(case[label_key])
            loaded[label_key] = read(label_path, label_key)
            _check_label_grid(label_path, loaded[label_key], image_path, loaded[image_key])
        check(loaded)
        _warn_if_constant(image_path, loaded[image_key])
        if background_value is None:
            _warn_if_background_not_zero(image_path, loaded[image_key])


def _header_affine(path: Path, key: str) -> np.ndarray | None:
    """
    The voxel-to-world affine in a NIfTI file's header, checked finite and invertible; None for other formats.
    """
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    try:
        image = nib.load(path)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as e:
        raise DataError(path, f"cannot read the {key}'s header ({type(e).__name__}: {e}).") from e
    if image.get_data_dtype().kind not in "biuf":
        raise DataError(path, f"voxel type {image.get_data_dtype()} is not a real number (integer or float).")
    if not np.isfinite(affine).all():
        raise DataError(path, "the header's voxel-to-world affine (sform/qform) holds NaN or infinite values.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "the header's voxel-to-world affine (sform/qform) is singular (a voxel size of 0).")
    return affine


def _check_label_grid(label_path: Path, label: torch.Tensor, image_path: Path, image: torch.Tensor) -> None:
    """Raise a DataError naming the label when its header places it elsewhere than its image."""
    label_affine = label.meta.get("header_affine") if isinstance(label, MetaTensor) else None
    image_affine = image.meta.get("header_affine") if isinstance(image, MetaTensor) else None
    if label_affine is None or image_affine is None or np.allclose(label_affine, image_affine, atol=1e-4):
        return
    label_spacing = np.linalg.norm(label_affine[:3, :3], axis=0).round(4).tolist()
    image_spacing = np.linalg.norm(image_affine[:3, :3], axis=0).round(4).tolist()
    raise DataError(
        label_path,
        f"the label's affine differs from its image's ({image_path.name}): spacing {label_spacing} vs "
        f"{image_spacing}, origin {label_affine[:3, 3].round(4).tolist()} vs {image_affine[:3, 3].round(4).tolist()}"
        "; a label must lie on its image's voxel grid (resample it first).",
    )


def _warn_if_constant(path: Path, image: torch.Tensor) -> None:
    """Warn, naming the file, when a channel of ``image`` holds one value only: no network output means much there."""
    flat = image.reshape(image.shape[0], -1)
    constant = [c for c in range(flat.shape[0]) if bool((flat[c] == flat[c, 0]).all())]
    if constant:
        value = float(flat[constant[0], 0])
        logger.warning(
            f"{path}: channel(s) {constant} hold a single value ({value:g}): the image is empty or constant, "
            "so its segmentation is meaningless."
        )


# share of a channel's voxels that one non-zero value may hold before it is taken for a background that is not 0 (the
# LGG and Hippocampus channels reach 0.44; z-scored BraTS volumes 0.8)
NONZERO_BACKGROUND_SHARE = 0.6


def _warn_if_background_not_zero(path: Path, image: torch.Tensor) -> None:
    """
    Warn, naming the file, when the value of a channel's first voxel (a corner, where the background is), not 0, fills
    most of the channel: a background that is not 0 (z-scored data), which ``NormalizeIntensityd(nonzero=True)``
    counts as foreground, so the statistics are mostly background's.
    """
    for channel, values in enumerate(image.reshape(image.shape[0], -1)):
        value = values[0]
        count = int((values == value).sum())
        if float(value) != 0.0 and count > NONZERO_BACKGROUND_SHARE * values.numel():
            logger.warning(
                f"{path}: {count / values.numel():.0%} of channel {channel} holds the value {float(value):g}; if that "
                "is the background, intensity normalisation (which leaves out zeros only) is computed mostly on it: "
                f"pass --background_value {float(value):g} (docs/own_data.md)."
            )
            return


def _check_same_grid(path: Path, channel: torch.Tensor, first_path: Path, first: torch.Tensor) -> None:
    """Raise a DataError naming ``path`` when its channel file is not on the same voxel grid as the first one."""
    if channel.shape[1:] != first.shape[1:]:
        raise DataError(
            path, f"spatial size {tuple(channel.shape[1:])} differs from {first_path.name}'s {tuple(first.shape[1:])}."
        )
    if not torch.allclose(channel.affine.double(), first.affine.double(), atol=1e-4):
        raise DataError(
            path,
            f"affine differs from {first_path.name}'s: the channel files of a case must be on the same voxel grid "
            "(resample them onto one first).",
        )


def left_right_axes(cases: Sequence[Mapping], slice_axis: int | None = 2, image_key: str = "image") -> list[int]:
    """
    The volume axis that runs left-right according to the cases' NIfTI headers, as the ``spatial_axis`` of the
    training flip: ``[1]`` for the LGG volumes of ``scripts/prepare_lgg.py``, ``[0]`` for RAS or LPS ones. Empty (no
    flip), with a warning, when that axis is the one slices are cut across, or when the cases disagree or a header
    names no left-right axis. Headers that cannot be read are left to the pre-run check, which names them.

    Args:
        cases: items of a datalist; the image may be a list of channel files (the first is read).
        slice_axis: the axis the 2D network's slices are cut across (None for 3D).
        image_key: key of the image path.
    """
    axes = set()
    for case in cases:
        path = case[image_key] if isinstance(case[image_key], str) else case[image_key][0]
        try:
            codes = nib.orientations.aff2axcodes(nib.load(path).affine)
        except Exception:  # unreadable or not NIfTI: check_cases reports it
            continue
        axes.add(next((axis for axis, code in enumerate(codes) if code in ("L", "R")), None))
    if len(axes) == 1 and None not in axes and axes != {slice_axis}:
        return sorted(axes)
    if axes:
        logger.warning(
            f"no left-right training flip: the volumes' left-right axis is {sorted(axes, key=str)} by their headers "
            f"(slices cut across axis {slice_axis}); set --flip_axes to flip along other axes."
        )
    return []


def zero_background(image: torch.Tensor, value: float) -> torch.Tensor:
    """
    ``image`` with the voxels equal to ``value`` set to 0, for ``Lambdad`` before ``NormalizeIntensityd(nonzero=True)``
    on data whose background is not 0 (z-scored volumes).

    Args:
        image: the image (a MetaTensor keeps its metadata).
        value: the background intensity.
    """
    return torch.where(image == value, torch.zeros_like(image), image)
