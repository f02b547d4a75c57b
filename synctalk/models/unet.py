"""SyncTalk_2D's audio-conditioned U-Net, one definition for every preset.

Input: 6 channels (a reference crop of another frame + the current crop with
the mouth masked), S x S, values in [0, 1]. Audio: a window of audio features
(ave [32,16,16], hubert [32,32,32], wenet [256,16,32]) encoded by a small conv
branch to the bottleneck's 10 x 10 grid and fused there. Output: the S x S
crop through a sigmoid.

The 160 preset has 4 down/up stages; the 328 preset (S = 320) adds a fifth at
full resolution whose head is half as wide. Parameter counts equal the
original's: 12,163,591 (160/ave) and 12,186,935 (328/ave).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from synctalk.config import AUDIO_MODES, Resolution, resolution
from synctalk.models.blocks import (
    DoubleConvDW,
    Down,
    InConv,
    InvertedResidual,
    OutConv,
    SequenceEncoder,
    Up,
)
from synctalk.models.whisper_encoder import FEATURE_DIM, WINDOW_FRAMES

log = logging.getLogger(__name__)

FULL_WIDTHS = (32, 64, 128, 256, 512)
IMAGE_CHANNELS = 6  # reference crop (3) + masked current crop (3)

# Shape of the audio window one frame is conditioned on, per audio front-end.
UNET_AUDIO_SHAPES: dict[str, tuple[int, int, int]] = {
    "ave": (32, 16, 16),  # 16 frames x 512-d AVE features
    "hubert": (32, 32, 32),
    "wenet": (256, 16, 32),
    "whisper": (WINDOW_FRAMES, FEATURE_DIM),  # frames i-4..i+4, as they come
}


@dataclass(frozen=True)
class UNetSpec:
    resolution: str = "328"
    audio_mode: str = "ave"
    mobile: bool = False
    input_mask: str = "mouth"  # see synctalk.config.InputMask

    def __post_init__(self) -> None:
        resolution(self.resolution).input_mask(self.input_mask)  # validates both
        if self.audio_mode not in AUDIO_MODES:
            raise ValueError(f"unknown audio mode {self.audio_mode!r}; expected {AUDIO_MODES}")

    @property
    def masked_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end-exclusive: what of the current crop the model is not shown."""
        return self.geometry.input_mask(self.input_mask)

    @property
    def geometry(self) -> Resolution:
        return resolution(self.resolution)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(w // 2 for w in FULL_WIDTHS) if self.mobile else FULL_WIDTHS

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        return UNET_AUDIO_SHAPES[self.audio_mode]


class AudioBranch(nn.Module):
    """Encodes one audio window to [widths[4], 10, 10] for the bottleneck."""

    def __init__(self, audio_mode: str, widths: tuple[int, ...]):
        super().__init__()
        in_ch = UNET_AUDIO_SHAPES[audio_mode][0]
        w = widths
        if audio_mode == "wenet":
            # [256,16,32]: keep the width, halve the time axis only.
            c1, c2, stride3 = w[3], w[3], (1, 2)
        else:
            # ave [32,16,16] keeps 16x16; hubert [32,32,32] halves to 16x16.
            c1, c2, stride3 = w[1], w[2], (2 if audio_mode == "hubert" else 1)
        self.conv1 = InvertedResidual(in_ch, c1, residual=in_ch == c1)
        self.conv2 = InvertedResidual(c1, c2, residual=c1 == c2)
        self.conv3 = nn.Conv2d(c2, w[3], kernel_size=3, padding=1, stride=stride3)
        self.bn3 = nn.BatchNorm2d(w[3])
        self.conv4 = InvertedResidual(w[3], w[3], residual=True)
        # 16x16 -> 10x10 (padding 3, stride 2), the bottleneck grid of both presets.
        self.conv5 = nn.Conv2d(w[3], w[4], kernel_size=3, padding=3, stride=2)
        self.bn5 = nn.BatchNorm2d(w[4])
        self.relu = nn.ReLU()
        self.conv6 = InvertedResidual(w[4], w[4], residual=True)
        self.conv7 = InvertedResidual(w[4], w[4], residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.conv4(x)
        x = self.relu(self.bn5(self.conv5(x)))
        return self.conv7(self.conv6(x))


class SequenceAudioBranch(nn.Module):
    """Encodes a window of per-frame features [frames, dim] to [widths[4], 1, 1].

    The vector is the same at every cell of the bottleneck grid (the U-Net
    broadcasts it): what is said does not depend on where in the face one is.
    """

    def __init__(self, audio_mode: str, widths: tuple[int, ...]):
        super().__init__()
        frames, dim = UNET_AUDIO_SHAPES[audio_mode]
        self.encoder = SequenceEncoder(dim, frames, widths[4])
        # The mean audio vector over the training frames (fit_audio_centre), what
        # `articulate` pushes vectors away from; NaN until fitted.
        self.register_buffer("centre", torch.full((widths[4],), float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[:, :, None, None]


class UNet(nn.Module):
    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        w = spec.widths
        depth = spec.geometry.unet_depth
        head = spec.geometry.unet_head_width // (2 if spec.mobile else 1)
        # Encoder widths per level, full resolution first. The 328 preset
        # repeats the first width for its extra full-resolution level.
        enc = [w[0]] * (depth - 3) + list(w[1:])

        branch = SequenceAudioBranch if spec.audio_mode == "whisper" else AudioBranch
        self.audio_model = branch(spec.audio_mode, w)
        self.fuse_conv = nn.Sequential(
            DoubleConvDW(w[4] * 2, w[4], stride=1),
            DoubleConvDW(w[4], w[3], stride=1),
        )
        self.inc = InConv(IMAGE_CHANNELS, enc[0])
        for i in range(depth):
            setattr(self, f"down{i + 1}", Down(enc[i], enc[i + 1]))
        # up k joins the skip of level depth-k; its output matches the next skip.
        x_ch = w[3]
        for k in range(1, depth + 1):
            skip = enc[depth - k]
            out = enc[depth - k - 1] if k < depth else head
            setattr(self, f"up{k}", Up(x_ch + skip, out))
            x_ch = out
        self.outc = OutConv(head, 3)
        self.depth = depth

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for i in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        bottleneck = skips.pop()
        audio = self.audio_model(audio).expand(-1, -1, *bottleneck.shape[-2:])
        x = torch.cat([bottleneck, audio], dim=1)
        x = self.fuse_conv(x)
        for k in range(1, self.depth + 1):
            x = getattr(self, f"up{k}")(x, skips.pop())
        return torch.sigmoid(self.outc(x))


def build_unet(
    preset: str | int = "328", audio_mode: str = "ave", mobile: bool = False, input_mask="mouth"
) -> UNet:
    """The U-Net for a resolution preset ("160" or "328") and audio front-end."""
    return UNet(UNetSpec(str(preset), audio_mode, mobile, input_mask))


def make_unet_input(reference: torch.Tensor, current: torch.Tensor, spec: UNetSpec) -> torch.Tensor:
    """[B,6,S,S]: the reference crop, then the current crop with its masked box blacked out."""
    x0, y0, x1, y1 = spec.masked_box
    masked = current.clone()
    masked[..., y0:y1, x0:x1] = 0
    return torch.cat([reference, masked], dim=-3)


@torch.inference_mode()
def fit_audio_centre(model: UNet, windows: torch.Tensor, batch: int = 256) -> None:
    """Store the mean audio vector of `windows` (the training frames' audio windows,
    on the model's device) in a Whisper U-Net; other audio modes have no centre."""
    branch = model.audio_model
    if not isinstance(branch, SequenceAudioBranch):
        return
    was_training = model.training
    model.eval()
    total = sum(branch.encoder(chunk).double().sum(0) for chunk in windows.split(batch))
    branch.centre.copy_(total / len(windows))
    model.train(was_training)


def articulate(model: UNet, gain: float) -> UNet:
    """`model` with its audio vector pushed `gain` times as far from its training centre.

    A U-Net trained on one avatar's seconds of speech draws the mouth a new
    voice asks for, but timidly: its mouths open less than the speaker's, and
    the lips read off a render follow the new audio less than they could.
    Scaling the audio vector's distance from its training mean (e' = c + g (e - c))
    makes the mouth say more. The read-out layer is linear, so the gain folds
    into its weights: the returned copy (the same object when `gain` is 1 or the
    model cannot be articulated) runs exactly like any U-Net.
    """
    if gain == 1:
        return model
    branch = model.audio_model
    if not isinstance(branch, SequenceAudioBranch):
        log.warning(
            "articulation %.2f ignored: audio mode %s has no linear audio read-out",
            gain,
            model.spec.audio_mode,
        )
        return model
    if torch.isnan(branch.centre).any():
        log.warning(
            "articulation %.2f ignored: this U-Net was trained before its audio "
            "centre was recorded (retrain it to articulate)",
            gain,
        )
        return model
    model = copy.deepcopy(model)
    readout = model.audio_model.encoder.readout
    centre = model.audio_model.centre
    with torch.no_grad():
        readout.bias.copy_(gain * readout.bias + (1 - gain) * centre.to(readout.bias.dtype))
        readout.weight.mul_(gain)
    return model
