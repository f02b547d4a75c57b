"""Building blocks shared by the U-Net, the SyncNet and the AVE encoder.

Attribute names (`conv`, `double_conv`, `inconv`, `maxpool_conv`,
`conv_block`) are the original SyncTalk_2D's: its checkpoints must load into
these modules with `strict=True` and no key renames, so they are part of the
file format, not a style choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project."""

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int | tuple[int, int] = 1,
        residual: bool = False,
        expand_ratio: int = 2,
    ):
        super().__init__()
        hidden = inp * expand_ratio
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class DoubleConvDW(nn.Module):
    """Two inverted residuals: the first changes width (and maybe stride)."""

    def __init__(self, inp: int, oup: int, stride: int = 2):
        super().__init__()
        self.double_conv = nn.Sequential(
            InvertedResidual(inp, oup, stride=stride),
            InvertedResidual(oup, oup, stride=1, residual=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class InConv(nn.Module):
    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.inconv = nn.Sequential(InvertedResidual(inp, oup, stride=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inconv(x)


class Down(nn.Module):
    """Halve the resolution (strided depthwise conv, no max-pool despite the name)."""

    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(DoubleConvDW(inp, oup, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Double the resolution, concatenate the skip connection, convolve."""

    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.conv = DoubleConvDW(inp, oup, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Both presets' sides halve evenly down to 10, so the upsampled map
        # always matches its skip and needs no padding.
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([x, skip], dim=1))


class OutConv(nn.Module):
    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvBN(nn.Module):
    """Wav2Lip-style conv + batch norm (+ identity) + activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
        act: nn.Module | None = None,
    ):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding),
            nn.BatchNorm2d(cout),
        )
        self.act = act if act is not None else nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class SequenceEncoder(nn.Module):
    """A window of per-frame feature vectors [B, frames, dim] -> one vector [B, out].

    The audio tower of the models that take Whisper features: each frame is
    normalised and projected, two temporal convolutions look across the
    window, and a linear layer reads the whole window out.
    """

    def __init__(self, dim: int, frames: int, out: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.temporal = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.GELU(),
        )
        self.readout = nn.Linear(hidden * frames, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.project(self.norm(x)))
        return self.readout(self.temporal(x.transpose(1, 2)).flatten(1))
