"""From a stream of frames to a landmark track, crop boxes and training crops."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.atomic import atomic_path, staging_dir
from synctalk.config import LandmarkParams
from synctalk.face.crop import (
    crop_jitter,
    cut_crop,
    raw_crop_boxes,
    round_crop_boxes,
    smooth_crop_boxes,
)
from synctalk.face.landmarks import ANCHOR_NAMES, Face, FaceBackend, anchor_points
from synctalk.face.track import FaceGapError, MainFaceTracker, fill_gaps
from synctalk.manifest import LANDMARKS_SCHEMA, write_manifest
from synctalk.media.video import iter_frames, probe_video
from synctalk.progress import progress

log = logging.getLogger(__name__)


def open_backend(params: LandmarkParams) -> FaceBackend:
    """The face backend params.yaml asks for."""
    if params.backend == "mediapipe":
        from synctalk.face.mediapipe_backend import MediapipeFaceBackend

        return MediapipeFaceBackend()
    from synctalk.face.onnx_backend import OnnxFaceBackend

    return OnnxFaceBackend(params.onnx_detector, params.onnx_landmarks)


class ScaledBackend:
    """A backend searching frames scaled down to `height` rows, answering in full-frame pixels.

    Decoding and searching a 4K frame costs several times a 1080p one and
    finds the same face: the face models resize their input to a few hundred
    pixels anyway. Coordinates scale by the frame's size ratio on each axis
    (the backends' landmarks are fractions of the frame's width and height).
    """

    def __init__(self, backend: FaceBackend, width: int, height: int, scaled_height: int):
        scaled_width = max(1, round(scaled_height * width / height))  # as iter_frames scales
        self.backend = backend
        self.name, self.anchors = backend.name, backend.anchors
        self.scale = np.array([width / scaled_width, height / scaled_height], dtype=np.float32)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        box_scale = np.tile(self.scale, 2)
        return [
            Face(box=face.box * box_scale, score=face.score, points=face.points * self.scale)
            for face in self.backend.detect(frame_bgr)
        ]

    def close(self) -> None:
        self.backend.close()


@dataclass
class LandmarkTrack:
    backend: str
    detected: np.ndarray  # bool [N]: the face was found (else interpolated)
    score: np.ndarray  # float32 [N]; 0 where interpolated
    box: np.ndarray  # float32 [N, 4]
    points: np.ndarray  # float32 [N, K, 2]
    anchors: np.ndarray  # float32 [N, len(ANCHOR_NAMES), 2]
    crop_boxes: np.ndarray  # int32 [N, 3]: smoothed (x0, y0, side)

    def __len__(self) -> int:
        return len(self.detected)

    @property
    def detection_rate(self) -> float:
        return float(self.detected.mean())

    def jitter(self) -> np.ndarray:
        return crop_jitter(self.crop_boxes)


def track_faces(
    frames: Iterable[np.ndarray],
    backend: FaceBackend,
    params: LandmarkParams,
    n_frames: int | None = None,
) -> LandmarkTrack:
    """Follow the main face through `frames`, fill short gaps, smooth the crop box."""
    tracker = MainFaceTracker()
    detected, scores, boxes, points = [], [], [], []
    n_points = None
    for frame in progress(frames, "landmarks", total=n_frames):
        face = tracker.choose(backend.detect(frame))
        detected.append(face is not None)
        if face is None:
            scores.append(0.0)
            boxes.append(None)
            points.append(None)
            continue
        n_points = len(face.points)
        scores.append(face.score)
        boxes.append(face.box)
        points.append(face.points)
    found = np.array(detected, dtype=bool)
    if n_points is None:
        raise FaceGapError(f"no face found in any of the {len(found)} frames")

    def stacked(items: list, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([x if x is not None else np.zeros(shape, np.float32) for x in items])

    box = fill_gaps(stacked(boxes, (4,)), found, params.max_gap_frames).astype(np.float32)
    pts = fill_gaps(stacked(points, (n_points, 2)), found, params.max_gap_frames)
    pts = pts.astype(np.float32)
    anchors = np.stack([anchor_points(p, backend.anchors) for p in pts])
    crops = smooth_crop_boxes(raw_crop_boxes(anchors), params.smoothing_sigma)
    return LandmarkTrack(
        backend=backend.name,
        detected=found,
        score=np.array(scores, dtype=np.float32),
        box=box,
        points=pts,
        anchors=anchors,
        crop_boxes=round_crop_boxes(crops),
    )


def write_crops(
    frames: Iterable[np.ndarray], crop_boxes: np.ndarray, size: int, path: str | Path
) -> Path:
    """Cut every frame's crop to a uint8 [N, size, size, 3] .npy (BGR), atomically.

    The file is memory-mapped when read back, so training reads random crops
    without decoding video or holding the whole avatar in memory.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(crop_boxes), size, size, 3)
        )
        n = 0
        for i, frame in enumerate(progress(frames, "crops", total=len(crop_boxes))):
            if i >= len(crop_boxes):
                raise ValueError(f"video has more frames than the {len(crop_boxes)} crop boxes")
            out[i] = cut_crop(frame, crop_boxes[i], size)
            n += 1
        if n != len(crop_boxes):
            raise ValueError(f"video has {n} frames but there are {len(crop_boxes)} crop boxes")
        out.flush()
        del out
    return path


def write_landmarks(track: LandmarkTrack, path: str | Path) -> Path:
    """landmarks.parquet: one row per frame (see synctalk.manifest.LANDMARKS_SCHEMA)."""
    return write_manifest(
        path,
        {
            "frame": np.arange(len(track), dtype=np.int32),
            "detected": track.detected,
            "score": track.score,
            "box": track.box,
            "crop_box": track.crop_boxes,
            "anchors": track.anchors,
            "landmarks": track.points,
        },
        LANDMARKS_SCHEMA,
        meta={
            "backend": track.backend,
            "anchor_names": list(ANCHOR_NAMES),
            "n_points": int(track.points.shape[1]),
            "crop_box": "x0, y0, side (pixels of the 25 fps mezzanine)",
        },
    )


def prepare_landmarks(
    video: Path,
    n_frames: int,
    landmarks_out: Path,
    crops_out: Path,
    crop_size: int,
    params: LandmarkParams,
) -> LandmarkTrack:
    """Track the face in `video`, write landmarks.parquet and the crops array.

    Both files appear together or not at all.
    """
    backend = open_backend(params)
    frames = iter_frames(video)
    info = probe_video(video)
    if info.height > params.detection_height:
        frames = iter_frames(video, height=params.detection_height)
        backend = ScaledBackend(backend, info.width, info.height, params.detection_height)
    try:
        track = track_faces(frames, backend, params, n_frames=n_frames)
    except FaceGapError as exc:
        raise FaceGapError(f"{video}: {exc}") from None
    finally:
        backend.close()
    staging = staging_dir(landmarks_out.parent, "landmarks")
    try:
        staged = staging / landmarks_out.name
        write_landmarks(track, staged)
        write_crops(iter_frames(video), track.crop_boxes, crop_size, crops_out)
        staged.replace(landmarks_out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return track
