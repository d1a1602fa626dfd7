"""The post-processing transforms (foreground threshold, confident components) against the decisions they make."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, KeepLargestConnectedComponent

from xunet_bundle.postprocessing import (
    ConfidentComponents,
    ConfidentComponentsd,
    ForegroundThreshold,
    ForegroundThresholdd,
)


def random_probabilities(num_classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(num_classes, 6, 7, 5, generator=generator), dim=0)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.1])
def test_two_classes_are_foreground_where_the_tumour_probability_reaches_the_threshold(threshold):
    probabilities = random_probabilities(2)
    segmentation = ForegroundThreshold(threshold)(probabilities)
    assert segmentation.shape == probabilities.shape and segmentation.dtype == probabilities.dtype
    torch.testing.assert_close(segmentation.sum(dim=0), torch.ones(6, 7, 5))  # one-hot
    assert torch.equal(segmentation[1].bool(), probabilities[1] >= threshold)


def test_one_half_agrees_with_the_argmax():
    probabilities = random_probabilities(2, seed=1)
    assert torch.equal(ForegroundThreshold(0.5)(probabilities).argmax(dim=0), probabilities.argmax(dim=0))


def test_several_foreground_classes_are_decided_together_then_labelled_by_the_most_probable():
    probabilities = torch.tensor([[0.40, 0.60, 0.75], [0.35, 0.10, 0.15], [0.25, 0.30, 0.10]]).reshape(3, 3, 1)
    labels = ForegroundThreshold(0.5)(probabilities).argmax(dim=0).flatten().tolist()
    # foreground 0.60 >= 0.5 although the background is the most probable class; then 0.40 and 0.25 fall short
    assert labels == [1, 0, 0]
    assert ForegroundThreshold(0.2)(probabilities).argmax(dim=0).flatten().tolist() == [1, 2, 1]


def test_the_image_metadata_survives():
    probabilities = MetaTensor(random_probabilities(2), meta={"filename_or_obj": "case_001.nii.gz"})
    segmentation = ForegroundThreshold(0.3)(probabilities)
    assert isinstance(segmentation, MetaTensor) and segmentation.meta["filename_or_obj"] == "case_001.nii.gz"


def test_the_dictionary_transform_feeds_the_configs_argmax():
    probabilities = random_probabilities(2, seed=2)
    discretize = Compose([ForegroundThresholdd("pred", 0.2), AsDiscreted("pred", argmax=True)])
    assert torch.equal(discretize({"pred": probabilities})["pred"][0].bool(), probabilities[1] >= 0.2)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_a_threshold_outside_zero_to_one_is_refused(threshold):
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        ForegroundThreshold(threshold)


def test_a_single_channel_is_refused():
    with pytest.raises(ValueError, match="background and at least one foreground channel"):
        ForegroundThreshold(0.5)(torch.rand(1, 4, 4))


def two_class_probabilities(foreground: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - foreground, foreground])


def lesion_and_blob() -> torch.Tensor:
    """A small lesion the network is sure of (peak 0.95) and a larger, unsure false-positive blob (peak 0.6)."""
    foreground = torch.full((20, 20, 6), 0.01)
    foreground[2:6, 2:6, 1:3] = 0.95  # 32 voxels
    foreground[10:18, 10:18, 1:4] = 0.6  # 192 voxels
    return two_class_probabilities(foreground)


def test_a_confident_lesion_is_kept_where_the_largest_component_would_delete_it():
    probabilities = lesion_and_blob()
    largest = KeepLargestConnectedComponent(applied_labels=[1])(probabilities.argmax(dim=0, keepdim=True))
    assert not largest[0, 2:6, 2:6, 1:3].any() and largest[0, 10:18, 10:18, 1:4].all()
    filtered = ConfidentComponents(threshold=0.5, min_peak=0.9)(probabilities)
    segmentation = filtered.argmax(dim=0)
    assert segmentation[2:6, 2:6, 1:3].all() and not segmentation[10:18, 10:18, 1:4].any()
    torch.testing.assert_close(filtered.sum(dim=0), torch.ones(20, 20, 6))
    kept = segmentation.bool()
    assert torch.equal(filtered[:, kept], probabilities[:, kept])  # the kept voxels are untouched


def test_several_confident_lesions_are_all_kept():
    foreground = torch.full((20, 20, 4), 0.01)
    foreground[1:4, 1:4, 1:3] = 0.97
    foreground[12:19, 12:19, 0:4] = 0.92
    probabilities = two_class_probabilities(foreground)
    filtered = ConfidentComponents(threshold=0.5, min_peak=0.9)(probabilities)
    assert torch.equal(filtered.argmax(dim=0), probabilities.argmax(dim=0))


def test_components_smaller_than_a_fraction_of_the_largest_are_removed_and_the_threshold_defines_them():
    foreground = torch.full((20, 20, 4), 0.01)
    foreground[2:12, 2:12, 0:4] = 0.9  # 400 voxels
    foreground[15, 15, 1] = 0.99  # one voxel, sure
    foreground[15:19, 2:6, 0:2] = 0.3  # 32 voxels, below 0.5 but above 0.2
    probabilities = two_class_probabilities(foreground)
    filtered = ConfidentComponents(threshold=0.2, min_fraction=0.05)(probabilities)
    assert ForegroundThreshold(0.2)(filtered)[1, 15, 15, 1] == 0  # 1 < 0.05 * 400
    assert ForegroundThreshold(0.2)(filtered)[1, 15:19, 2:6, 0:2].all()  # 32 >= 20: kept at this threshold
    assert ConfidentComponents(threshold=0.5, min_fraction=0.05)(probabilities)[1, 15, 15, 1] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fraction_of_one_keeps_the_same_component_as_monai_largest_component(seed):
    """The same connectivity as MONAI's ``KeepLargestConnectedComponent``, checked on random speckle."""
    generator = torch.Generator().manual_seed(seed)
    foreground = torch.rand(12, 12, 8, generator=generator) ** 3
    probabilities = two_class_probabilities(foreground)
    filtered = ConfidentComponents(min_fraction=1.0)(probabilities)
    largest = KeepLargestConnectedComponent(applied_labels=[1])(probabilities.argmax(dim=0, keepdim=True))
    assert largest.sum() > 1
    assert torch.equal(filtered.argmax(dim=0), largest[0].long())


def test_without_a_threshold_components_follow_the_argmax_and_its_ties():
    """A tumour probability of exactly 0.5 (bf16 inference makes ties) is background for the argmax: such voxels
    must not join a fragment to the largest component, or the fragment would survive that the largest-component step
    removes."""
    foreground = torch.full((12, 12, 3), 0.01)
    foreground[0:6, 0:6, 1] = 0.9  # the largest component
    foreground[6, 6, 1] = 0.5  # a tie, touching both
    foreground[7:9, 7:9, 1] = 0.9  # a fragment
    probabilities = two_class_probabilities(foreground)
    largest = KeepLargestConnectedComponent(applied_labels=[1])(probabilities.argmax(dim=0, keepdim=True))[0]
    filtered = ConfidentComponents(min_fraction=1.0)(probabilities).argmax(dim=0)
    assert not largest[7:9, 7:9, 1].any()
    assert torch.equal(filtered, largest.long())
    assert ConfidentComponents(threshold=0.5, min_fraction=1.0)(probabilities)[1, 7:9, 7:9, 1].gt(0.5).all()


def test_confident_components_of_several_classes_keep_metadata_and_feed_the_threshold():
    probabilities = MetaTensor(random_probabilities(3, seed=3), meta={"filename_or_obj": "case.nii.gz"})
    out = Compose(
        [
            ConfidentComponentsd("pred", threshold=0.3, min_peak=0.99),
            ForegroundThresholdd("pred", threshold=0.3),
        ]
    )({"pred": probabilities})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii.gz"
    assert out.shape == probabilities.shape


@pytest.mark.parametrize(
    "arguments", [{"threshold": 0.0}, {"threshold": float("nan")}, {"min_peak": 1.5}, {"min_fraction": -0.1}]
)
def test_confident_components_refuse_settings_outside_zero_to_one(arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        ConfidentComponents(**arguments)
