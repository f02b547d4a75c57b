"""The face backends on the real clips: detection rate, jitter, agreement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from synctalk.config import LandmarkParams
from synctalk.face.prepare import open_backend, track_faces
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
