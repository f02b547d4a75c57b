"""The face backends on the real clips: detection rate, jitter, agreement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from synctalk.config import LandmarkParams
from synctalk.face.landmarks import Face
from synctalk.face.prepare import ScaledBackend, open_backend, prepare_landmarks, track_faces
from synctalk.media.video import iter_frames
from tests.conftest import SHARED, shared_path

pytestmark = pytest.mark.slow

CLIPS = sorted(p.name for p in (SHARED / "data" / "videos").glob("*.mp4")) or ["(no clips)"]


def _track(clip: str, params: LandmarkParams, limit: int | None = None):
    frames = iter_frames(shared_path("data", "videos", clip))
    backend = open_backend(params)
    try:
        return track_faces(itertools.islice(frames, limit), backend, params)
    finally:
        backend.close()


@pytest.mark.parametrize("clip", CLIPS)
def test_mediapipe_finds_the_face_on_98_percent_of_frames(clip):
    # iter_frames decodes the source as it is (22.13 fps, 1080p): both work
    track = _track(clip, LandmarkParams())
    assert track.detection_rate >= 0.98
    assert track.points.shape[1:] == (468, 2)
    assert (track.crop_boxes[:, 2] > 50).all()


@pytest.mark.parametrize("clip", ["lieu_address_45s.mp4", "may_5s.mp4"])
def test_crop_box_does_not_jitter_on_a_still_talker(clip):
    track = _track(clip, LandmarkParams())
    assert track.jitter().max() < 0.02


def test_onnx_backend_agrees_with_mediapipe_within_a_tenth_of_the_side():
    onnx = LandmarkParams(
        backend="onnx",
        onnx_detector=str(shared_path("models", "scrfd_2.5g_kps.onnx")),
        onnx_landmarks=str(shared_path("models", "pfld_ghostone_98pt_112.onnx")),
    )
    mp_boxes = _track("may_5s.mp4", LandmarkParams()).crop_boxes.astype(float)
    onnx_track = _track("may_5s.mp4", onnx)
    assert onnx_track.detection_rate >= 0.98
    difference = np.abs(onnx_track.crop_boxes - mp_boxes) / mp_boxes[:, 2:3]
    assert difference.max() < 0.10


def test_onnx_backend_missing_models_is_a_clear_error(tmp_path):
    params = LandmarkParams(backend="onnx", onnx_detector=str(tmp_path / "scrfd.onnx"))
    with pytest.raises(FileNotFoundError, match="scrfd.onnx"):
        open_backend(params)


class _FixedFace:
    """A backend that finds one face at fixed fractions of whatever frame it is given."""

    name, anchors = "fixed", {}

    def detect(self, frame):
        h, w = frame.shape[:2]
        points = np.array([[0.25 * w, 0.5 * h], [0.75 * w, 0.6 * h]], dtype=np.float32)
        box = np.array([0.2 * w, 0.4 * h, 0.8 * w, 0.7 * h], np.float32)
        return [Face(box=box, score=0.9, points=points)]

    def close(self):
        pass


def test_a_scaled_down_search_answers_in_full_frame_pixels():
    backend = ScaledBackend(_FixedFace(), width=3840, height=2160, scaled_height=1080)
    (face,) = backend.detect(np.zeros((1080, 1920, 3), np.uint8))
    np.testing.assert_allclose(face.points, [[960, 1080], [2880, 1296]], rtol=1e-6)
    np.testing.assert_allclose(face.box, [768, 864, 3072, 1512], rtol=1e-6)
    assert face.score == 0.9


def test_frames_taller_than_the_detection_height_give_the_same_crop_boxes(tmp_path):
    """may_5s (512 rows) searched at 256 rows: crop boxes within 2% of the side."""
    video = shared_path("data", "videos", "may_5s.mp4")
    boxes = {}
    for height in (1080, 256):
        out = tmp_path / str(height)
        out.mkdir()
        params = LandmarkParams(detection_height=height)
        track = prepare_landmarks(
            video, 0, out / "landmarks.parquet", out / "crops.npy", 64, params
        )
        assert np.load(out / "crops.npy").shape[1:] == (64, 64, 3)  # cut from the full frame
        boxes[height] = track.crop_boxes.astype(float)
    difference = np.abs(boxes[256] - boxes[1080]) / boxes[1080][:, 2:3]
    assert 0 < difference.max() < 0.02
