"""Following one face through a video, and filling the frames where it is lost.

With several people in shot, the main face is the largest one in the first
frame that has a face; after that each frame takes the face that overlaps
most with the previous frame's choice, so the track does not jump to a
passer-by who happens to be bigger. Frames without the face are filled by
linear interpolation when the gap is short (a blink of the detector); a long
gap means the person left the shot or turned away, and preparing the avatar
stops with the list of frame ranges so the user can trim the video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synctalk.config import FPS
from synctalk.face.landmarks import Face


class FaceGapError(ValueError):
    """The face is missing for longer than can be interpolated."""


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class MainFaceTracker:
    """Feed it each frame's faces in order; it returns the main face or None."""

    def __init__(self, min_iou: float = 0.1):
        self.previous: np.ndarray | None = None
        self.min_iou = min_iou

    def choose(self, faces: list[Face]) -> Face | None:
        if not faces:
            return None
        if self.previous is None:
            best = max(faces, key=lambda f: f.area * f.score)
        else:
            best = max(faces, key=lambda f: box_iou(f.box, self.previous))
            if box_iou(best.box, self.previous) < self.min_iou:
                return None  # only other people in shot: treat as the face missing
        self.previous = best.box
        return best


@dataclass(frozen=True)
class Gap:
    start: int  # first frame without the face
    stop: int  # one past the last

    @property
    def length(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        return (
            f"frames {self.start}-{self.stop - 1} "
            f"({self.start / FPS:.2f}-{self.stop / FPS:.2f} s, {self.length} frames)"
        )


def find_gaps(found: np.ndarray) -> list[Gap]:
    """Runs of False in a per-frame bool array."""
    found = np.asarray(found, dtype=bool)
    edges = np.diff(np.concatenate([[1], found.astype(np.int8), [1]]))
    starts, stops = np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)
    return [Gap(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def fill_gaps(values: np.ndarray, found: np.ndarray, max_gap: int) -> np.ndarray:
    """Interpolate per-frame `values` [N, ...] over frames where `found` is False.

    Gaps of up to `max_gap` frames are filled linearly between the frames on
    either side (or held from the nearest frame at the video's start and
    end). Longer gaps raise FaceGapError listing every long gap.
    """
    found = np.asarray(found, dtype=bool)
    if not found.any():
        raise FaceGapError(f"no face found in any of the {len(found)} frames")
    long_gaps = [g for g in find_gaps(found) if g.length > max_gap]
    if long_gaps:
        listed = "; ".join(g.describe() for g in long_gaps)
        raise FaceGapError(
            f"the face is missing for longer than {max_gap} frames in {listed}. "
            "Trim those parts from the video, or raise landmarks.max_gap_frames."
        )
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1).copy()
    frames = np.arange(len(found))
    for column in range(flat.shape[1]):
        flat[~found, column] = np.interp(frames[~found], frames[found], flat[found, column])
    return flat.reshape(values.shape)
