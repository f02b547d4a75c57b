"""AVE audio features: one 512-d vector per 25 fps video frame.

`load_encoder` reads SyncTalk's `audio_visual_encoder.pth` layout (the
AudioEncoder's state dict with the "audio_encoder." prefix stripped);
`save_encoder` writes the same layout, so an encoder trained here can be
used by the original code and vice versa.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from synctalk.config import FPS, SAMPLE_RATE
from synctalk.device import resolve_device
from synctalk.media.audio import (
    MEL,
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


def encode_frames(wav: np.ndarray, encoder: AudioEncoder, batch_size: int = 256) -> np.ndarray:
    """Per-frame AVE features of 16 kHz mono `wav`, float32 [N, 512]."""
    video_frame_count(1 + len(wav) // MEL.hop_length)  # too short: ValueError
    return np.concatenate(list(encode_stream([wav], encoder, batch_size)))


# Streamed audio is encoded in blocks of frames, each from its own stretch of
# samples with a second of context either side, which is more than a frame's
# mel window reaches (0.2 s, plus half an STFT window); the context absorbs
# where a stretch's edges differ from the whole file's (the STFT's reflected
# padding, the pre-emphasis filter's start). Blocks start on multiples of 5
# frames (0.2 s, a whole number of mel hops), so their mel rows line up with
# the whole file's.
_BLOCK_FRAMES = 750  # 30 s
_CONTEXT = 16_000  # samples, 1 s
_ALIGN = 5  # frames


def encode_stream(
    chunks: Iterable[np.ndarray], encoder: AudioEncoder, batch_size: int = 256
) -> Iterator[np.ndarray]:
    """`encode_frames` of the concatenated `chunks`, in consecutive blocks of frames,
    float32 [k, 512], as the audio arrives; memory stays flat with its length.
    Audio too short for one mel window gives no frames."""
    per_frame = SAMPLE_RATE // FPS
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # samples dropped from the buffer's front
    first = 0  # the next frame to encode
    chunks = iter(chunks)
    ended = False
    while True:
        end = (first + _BLOCK_FRAMES) * per_frame + _CONTEXT
        while not ended and offset + len(buffer) < end:
            chunk = next(chunks, None)
            if chunk is None:
                ended = True
            else:
                buffer = np.concatenate([buffer, np.asarray(chunk, dtype=np.float32)])
        lo = max(0, first * per_frame - _CONTEXT)  # a whole number of mel hops
        row0 = lo // MEL.hop_length  # the whole file's mel row of this stretch's first
        if ended:
            n_mel = 1 + (offset + len(buffer)) // MEL.hop_length  # the whole file's
            stop = video_frame_count(n_mel) if n_mel >= MEL_WINDOW else 0
            stretch = buffer[lo - offset :]
        else:  # no window of this block reaches the file's end: none is shifted back
            n_mel, stop = None, first + _BLOCK_FRAMES
            stretch = buffer[lo - offset : end - offset]
        if stop > first:
            mel = melspectrogram(stretch)
            starts = [
                (mel_window_start(i, n_mel) if n_mel else MEL.frames_per_second * i // FPS) - row0
                for i in range(first, stop)
            ]
            windows = np.stack([mel[s : s + MEL_WINDOW].T for s in starts])[:, None]
            yield _encode_windows(windows.astype(np.float32), encoder, batch_size)
        if ended:
            return
        first = stop
        drop = first * per_frame - _CONTEXT - offset
        buffer, offset = buffer[drop:], offset + drop


@torch.inference_mode()
def _encode_windows(windows: np.ndarray, encoder: AudioEncoder, batch_size: int) -> np.ndarray:
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = np.empty((len(windows), EMBEDDING_DIM), dtype=np.float32)
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[i : i + batch_size]).to(device)
        out[i : i + len(batch)] = encoder(batch).float().cpu().numpy()
    encoder.train(was_training)
    return out
