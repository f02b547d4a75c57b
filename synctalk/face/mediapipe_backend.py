"""Faces and landmarks from mediapipe's embedded face mesh (the default backend).

mediapipe==0.10.21 is the last release whose wheel ships the face detector and
the 478-point mesh model, so it runs offline with commercially usable
(Apache-2.0) weights. In video mode the mesh tracks the face from frame to
frame and only re-detects when it loses it, which keeps it fast. The mesh
gives no confidence, so `score` is 1.0 for every face it returns.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from synctalk.face.landmarks import Face

log = logging.getLogger(__name__)

# Mesh indices of the named anchors (see synctalk.face.landmarks.ANCHOR_NAMES).
MEDIAPIPE_ANCHORS: dict[str, tuple[int, ...]] = {
    "cheek_left": (234,),  # face oval at cheek height, image left
    "cheek_right": (454,),
    "nose_bridge": (6,),  # between the eyes, at eye-corner height
    "mouth_left": (61,),
    "mouth_right": (291,),
    "lip_top": (13,),  # inner lip midpoints
    "lip_bottom": (14,),
}


class MediapipeFaceBackend:
    name = "mediapipe"
    anchors = MEDIAPIPE_ANCHORS

    def __init__(
        self,
        max_faces: int = 4,
        min_detection_confidence: float = 0.5,
        video_mode: bool = True,
    ):
        # mediapipe's C++ side logs per-process chatter to stderr; keep warnings and up.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video_mode,
            max_num_faces=max_faces,
            refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=0.5,
        )

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        h, w = frame_bgr.shape[:2]
        rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
        result = self._mesh.process(rgb)
        faces = []
        for landmarks in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h) for p in landmarks.landmark], dtype=np.float32)
            box = np.array([*pts.min(axis=0), *pts.max(axis=0)], dtype=np.float32)
            faces.append(Face(box=box, score=1.0, points=pts))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> MediapipeFaceBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
