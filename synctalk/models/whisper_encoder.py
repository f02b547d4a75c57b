"""Whisper tiny's audio encoder, in PyTorch, loaded from a CTranslate2 model.bin.

The encoder is small (a conv stem and 4 transformer layers, 384 wide). It is
re-implemented here rather than run through CTranslate2 because the layers
below the last carry more of how the mouth moves than the last one, which is
tuned to words, and CTranslate2 only returns the last. Its last layer equals
CTranslate2's own `encode()` (tests/test_whisper.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_MELS = 80
WINDOW_VECTORS = 1500  # one 30 s input window gives 50 vectors per second
WIDTH, HEADS, DEPTH = 384, 6, 4
VECTORS_PER_FRAME = 2  # 50 vectors per second, 25 video frames per second
# Hidden states the lip-sync models are fed: 0 is the conv stem, k the output
# of transformer layer k, DEPTH + 1 the final layer norm (what `encode()` gives).
LAYERS = (2,)
FEATURE_DIM = VECTORS_PER_FRAME * len(LAYERS) * WIDTH  # per video frame
# Frames of features a lip-sync model sees for frame i: i-4 .. i+4. The
# features already carry seconds of context; a short window keeps the models'
# audio towers small enough to learn from minutes of one avatar.
WINDOW_FRAMES = 9


class WhisperError(RuntimeError):
    """The Whisper weights are missing or are not the expected file."""


# --------------------------------------------------------------------------
# the encoder


class _Block(nn.Module):
    """A pre-norm transformer layer: self-attention, then a 4x MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.attn_out = nn.Linear(WIDTH, WIDTH)
        self.mlp_norm = nn.LayerNorm(WIDTH)
        self.mlp_in = nn.Linear(WIDTH, 4 * WIDTH)
        self.mlp_out = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, WIDTH)
        x = x + self.attn_out(attended)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))


class WhisperEncoder(nn.Module):
    """Whisper tiny's audio encoder: log-mel [B, 80, 3000] -> hidden states [B, 1500, 384]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, WIDTH, 3, padding=1)
        self.conv2 = nn.Conv1d(WIDTH, WIDTH, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(WINDOW_VECTORS, WIDTH))
        self.blocks = nn.ModuleList(_Block() for _ in range(DEPTH))
        self.final_norm = nn.LayerNorm(WIDTH)

    def forward(self, mel: torch.Tensor, layers: tuple[int, ...] = LAYERS) -> torch.Tensor:
        """The hidden states of `layers`, stacked: [B, len(layers), 1500, 384]."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))
        x = x.transpose(1, 2) + self.positions
        states = [x]
        for block in self.blocks[: max(layers)]:
            states.append(x := block(x))
        if max(layers) > DEPTH:
            states.append(self.final_norm(x))
        return torch.stack([states[i] for i in layers], dim=1)


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin, as float32 arrays (int ones skipped).

    The layout is CTranslate2's `ModelSpec._serialize`: a version, the spec
    name, a revision, then (name, rank, dims, dtype id, byte count, bytes)
    per variable.
    """
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values[0]

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = bytes(data[pos : pos + n - 1]).decode()
        pos += n
        return text

    take("I"), string(), take("I")  # binary version, spec name, revision
    dtypes = {0: np.float32, 4: np.float16}  # CTranslate2's DataType ids
    out = {}
    for _ in range(take("I")):
        name = string()
        dims = [take("I") for _ in range(take("B"))]
        dtype, size = take("B"), take("I")
        if dtype in dtypes:
            raw = np.frombuffer(data[pos : pos + size], dtype=dtypes[dtype])
            out[name] = raw.astype(np.float32).reshape(dims)
        pos += size
    return out


def state_dict_from_ctranslate2(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    names = {
        "conv1.weight": "encoder/conv1/weight",
        "conv1.bias": "encoder/conv1/bias",
        "conv2.weight": "encoder/conv2/weight",
        "conv2.bias": "encoder/conv2/bias",
        "positions": "encoder/position_encodings/encodings",
        "final_norm.weight": "encoder/layer_norm/gamma",
        "final_norm.bias": "encoder/layer_norm/beta",
    }
    for i in range(DEPTH):
        ct2 = f"encoder/layer_{i}"
        for ours, theirs in (
            ("attn_norm", "self_attention/layer_norm"),
            ("mlp_norm", "ffn/layer_norm"),
        ):
            names[f"blocks.{i}.{ours}.weight"] = f"{ct2}/{theirs}/gamma"
            names[f"blocks.{i}.{ours}.bias"] = f"{ct2}/{theirs}/beta"
        for ours, theirs in (
            ("qkv", "self_attention/linear_0"),
            ("attn_out", "self_attention/linear_1"),
            ("mlp_in", "ffn/linear_0"),
            ("mlp_out", "ffn/linear_1"),
        ):
            names[f"blocks.{i}.{ours}.weight"] = f"{ct2}/{theirs}/weight"
            names[f"blocks.{i}.{ours}.bias"] = f"{ct2}/{theirs}/bias"
    return {ours: torch.from_numpy(variables[theirs]) for ours, theirs in names.items()}
