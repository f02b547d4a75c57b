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

import numpy as np

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
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(features, sigma, axis=0, mode="nearest").astype(features.dtype)
