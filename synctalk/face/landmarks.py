"""What every face backend returns, and the named anchors the crop is built from.

A backend (mediapipe's face mesh, or an ONNX detector + landmark model) finds
faces in a BGR frame and returns `Face`s: a box, a score and all its
landmarks in pixels. Each backend also maps its own landmark layout to the
named anchors below, so crop geometry, lip metrics and the stages never need
to know a layout's indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Anchor names shared by all backends.
#   cheek_left / cheek_right: face contour at cheek height (the crop's sides;
#       PFLD-110 points 1 and 31 in SyncTalk_2D), "left" = smaller image x
#   nose_bridge: top of the nose between the eyes (the crop's top edge; PFLD-110 point 52)
#   mouth_left / mouth_right: mouth corners
#   lip_top / lip_bottom: inner lip midpoints (their distance is the mouth opening)
ANCHOR_NAMES = (
    "cheek_left",
    "cheek_right",
    "nose_bridge",
    "mouth_left",
    "mouth_right",
    "lip_top",
    "lip_bottom",
)


@dataclass
class Face:
    box: np.ndarray  # float32 [4]: x0, y0, x1, y1 in pixels
    score: float  # detection confidence in [0, 1]
    points: np.ndarray  # float32 [K, 2]: every landmark (x, y) in pixels

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceBackend(Protocol):
    name: str
    # anchor name -> landmark indices whose mean is the anchor
    anchors: dict[str, tuple[int, ...]]

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """All faces in one BGR uint8 frame [H, W, 3], best first."""
        ...

    def close(self) -> None: ...


def anchor_points(points: np.ndarray, anchors: dict[str, tuple[int, ...]]) -> np.ndarray:
    """float32 [len(ANCHOR_NAMES), 2]: the named anchors of one landmark set."""
    return np.stack([points[list(anchors[name])].mean(axis=0) for name in ANCHOR_NAMES]).astype(
        np.float32
    )
