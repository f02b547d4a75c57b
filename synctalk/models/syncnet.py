"""SyncNet: does this mouth crop go with this audio window?

A face tower encodes the S x S training crop (the lower face: the crop's top
edge is the nose bridge) and an audio tower encodes the same audio window the
U-Net sees; both end in a 512 x 3 x 3 map, flattened and L2-normalised. Their
cosine similarity is trained with BCE on in-sync vs shifted pairs, and later
serves as the U-Net's sync loss and the sync score of evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.config import AUDIO_MODES, resolution
from synctalk.models.blocks import ConvBN, SequenceEncoder
from synctalk.models.whisper_encoder import FEATURE_DIM, WINDOW_FRAMES

# The audio tower's input per front-end. The original SyncNet for wenet takes
# half the U-Net's channels ([128,16,32]); kept so its checkpoints load.
SYNCNET_AUDIO_SHAPES: dict[str, tuple[int, int, int]] = {
    "ave": (32, 16, 16),
    "hubert": (32, 32, 32),
    "wenet": (128, 16, 32),
    "whisper": (WINDOW_FRAMES, FEATURE_DIM),  # as the U-Net's
}
# Stride of the audio tower's first down-sampling conv, bringing each
# front-end's window to 16 x 16.
_AUDIO_STRIDE = {"ave": 1, "hubert": 2, "wenet": (1, 2)}


def _conv(cin, cout, k, s, p, residual=False) -> ConvBN:
    return ConvBN(cin, cout, k, s, p, residual=residual, act=nn.LeakyReLU(0.01, inplace=True))


def _residuals(c: int, n: int) -> list[ConvBN]:
    return [_conv(c, c, 3, 1, 1, residual=True) for _ in range(n)]


def _stage(cin: int, cout: int, n_residual: int, stride=2) -> list[ConvBN]:
    """A 3x3 conv that changes width (and resolution), then residual convs."""
    return [_conv(cin, cout, 3, stride, 1)] + _residuals(cout, n_residual)


class SyncNet(nn.Module):
    def __init__(
        self,
        preset: str = "328",
        audio_mode: str = "ave",
        mobile: bool = False,
        luminance_only: bool = False,
    ):
        super().__init__()
        if audio_mode not in AUDIO_MODES:
            raise ValueError(f"unknown audio mode {audio_mode!r}; expected {AUDIO_MODES}")
        geometry = resolution(preset)
        self.preset = geometry.name
        self.audio_mode = audio_mode
        self.mobile = mobile
        # The face tower sees grey faces: then the gradient of the U-Net's sync term
        # is the same on R, G and B, so it can move a mouth's brightness but cannot
        # paint a hue no mouth has. SyncTalk_2D's SyncNet sees colour.
        self.luminance_only = luminance_only
        # mobile: every width halved (a quarter of the compute), like the mobile
        # U-Net; the full widths are the original's and load its checkpoints.
        w = {c: c // 2 if mobile else c for c in (32, 64, 128, 256, 512)}
        # One 5x5 stride-2 stem conv per U-Net level above the 160 preset's
        # four, so both sides end at 3 x 3.
        stem_widths = [w[32]] * (geometry.unet_depth - 4) + [w[64]]
        face = [_conv(3, w[32], 7, 1, 3)]
        cin = w[32]
        for cout in stem_widths:
            face.append(_conv(cin, cout, 5, 2, 1))
            cin = cout
        face += _residuals(w[64], 2)
        face += _stage(w[64], w[128], 3) + _stage(w[128], w[256], 2) + _stage(w[256], w[512], 2)
        face += [
            _conv(w[512], w[512], 3, 2, 1),
            _conv(w[512], w[512], 3, 1, 0),
            _conv(w[512], w[512], 1, 1, 0),
        ]
        self.face_encoder = nn.Sequential(*face)

        if audio_mode == "whisper":
            # One vector the size of the face tower's flattened 512 x 3 x 3 map; as
            # non-negative as the face tower's (which ends in an activation), so
            # their cosine similarity is a probability in [0, 1].
            self.audio_encoder = nn.Sequential(
                SequenceEncoder(FEATURE_DIM, WINDOW_FRAMES, w[512] * 9), nn.ReLU()
            )
            return
        in_ch = SYNCNET_AUDIO_SHAPES[audio_mode][0]
        audio = _stage(in_ch, w[128], 2, stride=1)
        audio += _stage(w[128], w[256], 2, stride=_AUDIO_STRIDE[audio_mode])
        audio += [_conv(w[256], w[256], 3, 2, 2)] + _residuals(w[256], 2)
        audio += _stage(w[256], w[512], 2)
        audio += [_conv(w[512], w[512], 3, 1, 0), _conv(w[512], w[512], 1, 1, 0)]
        self.audio_encoder = nn.Sequential(*audio)

    def forward(self, face: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length (audio_embedding, face_embedding), each [B, 4608] ([B, 2304] mobile)."""
        a = self.audio_encoder(audio).flatten(1)
        return F.normalize(a, p=2, dim=1), self.embed_face(face)

    def embed_face(self, face: torch.Tensor) -> torch.Tensor:
        """Unit-length face embeddings of [B, 3, S, S] crops."""
        if self.luminance_only:
            face = face.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        return F.normalize(self.face_encoder(face).flatten(1), p=2, dim=1)


def sync_probability(audio_embedding: torch.Tensor, face_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit embeddings, clamped into (0, 1) for BCE."""
    return F.cosine_similarity(audio_embedding, face_embedding).clamp(1e-7, 1 - 1e-7)


def build_syncnet(
    preset: str | int = "328",
    audio_mode: str = "ave",
    mobile: bool = False,
    luminance_only: bool = False,
) -> SyncNet:
    return SyncNet(str(preset), audio_mode, mobile, luminance_only)
