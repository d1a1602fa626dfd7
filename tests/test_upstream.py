"""Upstream bugs the bundle works around: each reproduction is expected to fail until a MONAI release fixes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage


@pytest.mark.xfail(raises=RuntimeError, strict=True, reason="docs/upstream/saveimage_single_slice.md")
def test_monai_save_image_fails_on_a_single_slice_volume(tmp_path):
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    meta = {"filename_or_obj": "case.nii.gz", "original_affine": affine, "spatial_shape": np.array([64, 64, 1])}
    seg = MetaTensor(torch.zeros(1, 64, 64, 1), affine=torch.as_tensor(affine), meta=meta)
    SaveImage(output_dir=tmp_path, output_postfix="seg", separate_folder=False, resample=False)(seg)
