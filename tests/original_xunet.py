"""
A re-implementation of the original XUNet segmentation network, used as the reference for state_dict compatibility.

It keeps the original's module names and behaviour, including its flaw: encoder features are resized to the size of
the upsampled decoder feature, so inputs not divisible by 16 give smaller outputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv


class OriginalUpCatAll(nn.Module):
    def __init__(self, spatial_dims, in_chns, encoder_chns, out_chns, act, norm, bias, dropout, upsample, halves=True):
        super().__init__()
        up_chns = in_chns if upsample == "nontrainable" or not halves else in_chns // 2
        self.upsample = UpSample(spatial_dims, in_chns, up_chns, 2, mode=upsample)
        self.convs = TwoConv(spatial_dims, up_chns + sum(encoder_chns), out_chns, act, norm, bias, dropout)

    def forward(self, x, encoder_features):
        x_up = self.upsample(x)
        resized = [F.interpolate(f, size=x_up.shape[2:], mode="nearest") for f in encoder_features]
        return self.convs(torch.cat([x_up] + resized, dim=1))


class OriginalCrossBasicUNet(nn.Module):
    def __init__(
        self,
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        features=(32, 32, 64, 128, 256, 32),
        act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm=("instance", {"affine": True}),
        bias=True,
        dropout=0.0,
        upsample="deconv",
    ):
        super().__init__()
        fea = features
        enc = list(fea[:5])
        args = (act, norm, bias, dropout)
        self.conv_0 = TwoConv(spatial_dims, in_channels, fea[0], *args)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], *args)
        self.down_2 = Down(spatial_dims, fea[1], fea[2], *args)
        self.down_3 = Down(spatial_dims, fea[2], fea[3], *args)
        self.down_4 = Down(spatial_dims, fea[3], fea[4], *args)
        self.upcat_4 = OriginalUpCatAll(spatial_dims, fea[4], enc, fea[3], *args, upsample)
        self.upcat_3 = OriginalUpCatAll(spatial_dims, fea[3], enc, fea[2], *args, upsample)
        self.upcat_2 = OriginalUpCatAll(spatial_dims, fea[2], enc, fea[1], *args, upsample)
        self.upcat_1 = OriginalUpCatAll(spatial_dims, fea[1], enc, fea[5], *args, upsample, halves=False)
        self.final_conv = Conv["conv", spatial_dims](fea[5], out_channels, kernel_size=1)

    def forward(self, x):
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        enc = [x0, x1, x2, x3, x4]
        u = self.upcat_4(x4, enc)
        u = self.upcat_3(u, enc)
        u = self.upcat_2(u, enc)
        u = self.upcat_1(u, enc)
        return self.final_conv(u)
