"""The AVE AudioEncoder: one 512-d vector from 16 mel frames (0.2 s).

Wav2Lip's audio tower, as SyncTalk ships it in `audio_visual_encoder.pth`.
Input [B, 1, 80, 16] (mels x time), output [B, 512].
"""

from __future__ import annotations

import torch
from torch import nn

from synctalk.models.blocks import ConvBN

MEL_WINDOW_SHAPE = (1, 80, 16)
EMBEDDING_DIM = 512


class AudioEncoder(nn.Module):
    def __init__(self):
        super().__init__()

        def res(c: int) -> ConvBN:
            return ConvBN(c, c, 3, 1, 1, residual=True)

        self.audio_encoder = nn.Sequential(
            ConvBN(1, 32, 3, 1, 1),
            res(32),
            res(32),
            ConvBN(32, 64, 3, (3, 1), 1),
            res(64),
            res(64),  # 80x16 -> 27x16
            ConvBN(64, 128, 3, 3, 1),
            res(128),
            res(128),  # -> 9x6
            ConvBN(128, 256, 3, (3, 2), 1),
            res(256),  # -> 3x3
            ConvBN(256, EMBEDDING_DIM, 3, 1, 0),  # -> 1x1
            ConvBN(EMBEDDING_DIM, EMBEDDING_DIM, 1, 1, 0),
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(mel).flatten(1)
