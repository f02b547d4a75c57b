"""Does the avatar say the new audio? Lip follow and replay.

Drive an avatar with the audio track of a real talking-head video (the
driver) and compare mouths frame by frame, each measured as the inner-lip gap
of the face mesh (landmarks 13 and 14) divided by the distance
between the outer eye corners (33 and 263), so face size and distance to the
camera drop out:

* follow: the correlation of the rendered gap with the driver's own gap
  (what the audio says the mouth should do);
* replay: the correlation of the rendered gap with the gap of the avatar's
  footage at the frames the render was drawn on (what the background did).

Each is the best Pearson correlation over lags of -2..+2 frames, so a
constant delay of up to 80 ms between sound and picture is not held against
a model. A model that ignores the audio copies its background: high replay,
low follow. Loudness against mouth opening is a weak stand-in (0.0-0.44 on
real footage), which is why the yardstick is another person's real mouth.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from synctalk.evaluate.metrics import pearson

LIP_TOP, LIP_BOTTOM = 13, 14  # inner-lip midpoints of the face mesh
EYE_LEFT, EYE_RIGHT = 33, 263  # outer eye corners
MAX_LAG = 2  # frames
MESH_POINTS = 468  # the face mesh without iris refinement (MediapipeFaceBackend)


def lip_gap(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap over eye distance, float64 [N], from face-mesh points [N, 468, 2]."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    gap = np.linalg.norm(pts[:, LIP_TOP] - pts[:, LIP_BOTTOM], axis=-1)
    eyes = np.linalg.norm(pts[:, EYE_LEFT] - pts[:, EYE_RIGHT], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(eyes > 0, gap / np.where(eyes > 0, eyes, 1.0), np.nan)


def best_lag_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = MAX_LAG) -> float:
    """The highest Pearson correlation of a[t + lag] with b[t] over |lag| <= max_lag.

    The series are cut to their common length first; NaNs (frames without a
    face) drop out pairwise. NaN when no lag leaves enough frames to correlate.
    """
    n = min(len(a), len(b))
    a = np.asarray(a, dtype=np.float64)[:n]
    b = np.asarray(b, dtype=np.float64)[:n]
    best = math.nan
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[: n - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        r = pearson(x, y) if len(x) > 2 else math.nan
        if not math.isnan(r) and (math.isnan(best) or r > best):
            best = r
    return best


def face_mesh_points(frames: Iterable[np.ndarray]) -> np.ndarray:
    """float32 [N, 468, 2]: the face mesh of the largest face of each BGR frame (NaN if none)."""
    from synctalk.face.mediapipe_backend import MediapipeFaceBackend

    points = []
    with MediapipeFaceBackend(max_faces=1) as backend:
        for frame in frames:
            faces = backend.detect(frame)
            points.append(faces[0].points if faces else np.full((MESH_POINTS, 2), np.nan))
    return np.asarray(points, dtype=np.float32).reshape(-1, MESH_POINTS, 2)


def video_face_points(path: str | Path) -> np.ndarray:
    """`face_mesh_points` of a video at 25 fps (another rate is converted first)."""
    from synctalk.media.video import iter_frames, probe_video, transcode_to_cfr

    path = Path(path)
    if abs(probe_video(path).fps - 25) < 1e-3:
        return face_mesh_points(iter_frames(path))
    with tempfile.TemporaryDirectory() as tmp:
        mezzanine = Path(tmp) / "25fps.mp4"
        transcode_to_cfr(path, mezzanine)
        return face_mesh_points(iter_frames(mezzanine))


def follow_and_replay(
    rendered: np.ndarray, driver: np.ndarray, background: np.ndarray
) -> tuple[float, float]:
    """(follow, replay) of a render's lip gaps, see the module docstring."""
    return best_lag_correlation(rendered, driver), best_lag_correlation(rendered, background)
