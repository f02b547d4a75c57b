"""AVE audio features: one 512-d vector per 25 fps video frame.

`load_encoder` reads SyncTalk's `audio_visual_encoder.pth` layout (the
AudioEncoder's state dict with the "audio_encoder." prefix stripped);
`save_encoder` writes the same layout, so an encoder trained here can be
used by the original code and vice versa.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from synctalk.device import resolve_device
from synctalk.media.audio import (
    MEL_WINDOW,
    mel_window_start,
    melspectrogram,
    video_frame_count,
)
from synctalk.models.audio_encoder import EMBEDDING_DIM, AudioEncoder
from synctalk.models.checkpoint import atomic_torch_save, read_state_dict

log = logging.getLogger(__name__)

_PREFIX = "audio_encoder."


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> AudioEncoder:
    """An AudioEncoder in eval mode from an official-layout file (strict)."""
    state = read_state_dict(path)
    if any(k.startswith(_PREFIX) for k in state):  # tolerate a file saved with the prefix
        state = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    encoder = AudioEncoder()
    try:
        encoder.audio_encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not an AVE audio encoder checkpoint: {exc}") from None
    return encoder.to(resolve_device(device)).eval()


def save_encoder(encoder: AudioEncoder, path: str | Path) -> None:
    """Write `encoder` in the official layout (keys without the prefix), atomically."""
    atomic_torch_save(encoder.audio_encoder.state_dict(), path)


def mel_windows(mel: np.ndarray) -> np.ndarray:
    """Every video frame's encoder input, float32 [N, 1, 80, 16]."""
    n_frames = video_frame_count(mel.shape[0])
    starts = [mel_window_start(i, mel.shape[0]) for i in range(n_frames)]
    windows = np.stack([mel[s : s + MEL_WINDOW].T for s in starts])
    return windows[:, None].astype(np.float32)


@torch.inference_mode()
def encode_frames(wav: np.ndarray, encoder: AudioEncoder, batch_size: int = 256) -> np.ndarray:
    """Per-frame AVE features of 16 kHz mono `wav`, float32 [N, 512]."""
    windows = mel_windows(melspectrogram(wav))
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = np.empty((len(windows), EMBEDDING_DIM), dtype=np.float32)
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[i : i + batch_size]).to(device)
        out[i : i + len(batch)] = encoder(batch).float().cpu().numpy()
    encoder.train(was_training)
    return out
