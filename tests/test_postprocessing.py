"""The foreground-threshold post-processing against the decisions it should make."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose

from xunet_bundle.postprocessing import ForegroundThreshold, ForegroundThresholdd


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
