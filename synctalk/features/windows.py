"""The audio window each video frame is conditioned on.

Frame i sees the 16 per-frame feature vectors i-8 .. i+7 (0.64 s centred on
it). Boundary rules are the original's: before the start the first vector is
repeated; a window that would run past the end is 16 copies of the last
vector. The U-Net and SyncNet take the window reshaped to their audio input
shape (e.g. [16, 512] -> [32, 16, 16] for AVE).
"""

from __future__ import annotations

import numpy as np

WINDOW = 16
HALF = WINDOW // 2


def window_indices(frame: int, n_frames: int) -> np.ndarray:
    """Row indices of `frame`'s feature window, int64 [16]."""
    if n_frames <= 0:
        raise ValueError("no audio features")
    if not 0 <= frame < n_frames:
        raise IndexError(f"frame {frame} outside 0..{n_frames - 1}")
    if frame + HALF > n_frames:
        return np.full(WINDOW, n_frames - 1, dtype=np.int64)
    return np.clip(np.arange(frame - HALF, frame + HALF), 0, None)


def feature_window(
    features: np.ndarray, frame: int, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """`frame`'s window of per-frame features [16, D], reshaped to `shape` if given."""
    window = features[window_indices(frame, len(features))]
    return window.reshape(shape) if shape is not None else window
