"""The audio window each video frame is conditioned on.

Frame i sees the per-frame feature vectors around it: the 16 vectors
i-8 .. i+7 (0.64 s) for SyncTalk_2D's front-ends, the 9 vectors i-4 .. i+4
for Whisper features, which carry their own context. The window's length is
read off the model's audio input shape. Boundary rules are the original's:
before the start the first vector is repeated; a window that would run past
the end is all copies of the last vector. The models take the window
reshaped to their audio input shape (e.g. [16, 512] -> [32, 16, 16] for AVE).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
from scipy.ndimage import gaussian_filter1d

WINDOW = 16  # SyncTalk_2D's window


def window_indices(frame: int, n_frames: int, size: int = WINDOW) -> np.ndarray:
    """Row indices of `frame`'s feature window of `size` vectors, int64 [size]."""
    if n_frames <= 0:
        raise ValueError("no audio features")
    if not 0 <= frame < n_frames:
        raise IndexError(f"frame {frame} outside 0..{n_frames - 1}")
    before = size // 2
    after = size - before  # frame i's window ends before i + after
    if frame + after > n_frames:
        return np.full(size, n_frames - 1, dtype=np.int64)
    return np.clip(np.arange(frame - before, frame + after), 0, None)


def window_size(features: np.ndarray, shape: tuple[int, ...]) -> int:
    """How many per-frame vectors of `features` make one window of `shape`."""
    size, rest = divmod(math.prod(shape), features.shape[-1])
    if rest:
        raise ValueError(f"{features.shape[-1]}-d features do not fill an audio input {shape}")
    return size


def feature_window(
    features: np.ndarray, frame: int, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """`frame`'s window of per-frame features [size, D], reshaped to `shape` if given."""
    size = WINDOW if shape is None else window_size(features, shape)
    window = features[window_indices(frame, len(features), size)]
    return window.reshape(shape) if shape is not None else window


def smooth_features(features: np.ndarray, sigma: float) -> np.ndarray:
    """`features` [N, D] blurred along time by a Gaussian of `sigma` frames (0: unchanged).

    The U-Net draws each frame from its own audio window, so a mouth can
    flicker between neighbouring frames where speech does not; a light blur
    of what drives it keeps the lips' motion as smooth as a speaker's.
    """
    if sigma <= 0:
        return features
    return gaussian_filter1d(features, sigma, axis=0, mode="nearest").astype(features.dtype)


def smooth_stream(blocks: Iterable[np.ndarray], sigma: float) -> Iterator[np.ndarray]:
    """`smooth_features` of the concatenated `blocks` of rows, in consecutive blocks.

    A row is final once the rows the Gaussian reaches past it have arrived
    (its radius, 4 sigma), so the blocks are the whole array's smoothed rows.
    """
    if sigma <= 0:
        yield from blocks
        return
    radius = int(4.0 * sigma + 0.5)  # gaussian_filter1d's reach (truncate=4)
    held = None  # rows not yet final, with the `radius` final rows before them
    done = 0  # rows of `held` already yielded
    for block in blocks:
        held = block if held is None else np.concatenate([held, block])
        smoothed = smooth_features(held, sigma)
        ready = len(held) - radius
        if ready > done:
            yield smoothed[done:ready]
            keep = max(0, ready - radius)
            held, done = held[keep:], ready - keep
    if held is not None and len(held) > done:
        yield smooth_features(held, sigma)[done:]
