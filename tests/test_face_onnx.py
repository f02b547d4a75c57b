"""The SCRFD + PFLD face backend on real frames (models and clips from ../shared).

The pure helpers (NMS, the padded square crop) are tested everywhere; everything
that runs the models skips when ../shared is absent.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from synctalk.face.landmarks import ANCHOR_NAMES, anchor_points
from synctalk.face.onnx_backend import OnnxFaceBackend, nms, square_crop
from tests.conftest import SHARED, shared_path

CLIPS = sorted((SHARED / "data" / "videos").glob("*.mp4"))


def read_frame(path, index: int = 0) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    try:
        if index:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok, f"could not decode frame {index} of {path}"
    return frame


@pytest.fixture(scope="module")
def backend():
    detector = shared_path("models", "scrfd_2.5g_kps.onnx")
    landmarks = shared_path("models", "pfld_ghostone_98pt_112.onnx")
    with OnnxFaceBackend(detector, landmarks) as face_backend:
        yield face_backend


@pytest.fixture(scope="module")
def may_frame():
    return read_frame(shared_path("data", "videos", "may_5s.mp4"))


def check_face(face, frame):
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert 0.15 * w <= x1 - x0 <= 0.9 * w
    assert 0.5 <= face.score <= 1
    assert face.points.shape == (98, 2) and face.points.dtype == np.float32
    assert np.isfinite(face.points).all()
    # most points inside the box grown by 15% (the contour runs a little past its sides)
    mx, my = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    px, py = face.points.T
    inside = (px >= x0 - mx) & (px <= x1 + mx) & (py >= y0 - my) & (py <= y1 + my)
    assert inside.mean() >= 0.9


def check_anchors(face, anchors):
    a = dict(zip(ANCHOR_NAMES, anchor_points(face.points, anchors), strict=True))
    assert a["cheek_left"][0] < a["mouth_left"][0] < a["mouth_right"][0] < a["cheek_right"][0]
    assert a["nose_bridge"][1] < a["lip_top"][1] <= a["lip_bottom"][1]
    # the cheek points sit between the nose bridge (eye level) and the mouth
    for side in ("cheek_left", "cheek_right"):
        assert a["nose_bridge"][1] - 0.1 * (face.box[3] - face.box[1]) < a[side][1]
        assert a[side][1] < a["lip_top"][1]


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32
    )
    scores = np.array([0.6, 0.9, 0.7, 0.5], dtype=np.float32)
    assert nms(boxes, scores, 0.4) == [1, 2]
    assert nms(boxes, scores, 0.95) == [1, 2, 0, 3]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4) == []


def test_square_crop_pads_outside_the_image():
    image = np.arange(10 * 8 * 3, dtype=np.uint8).reshape(10, 8, 3) + 1
    crop, left, top = square_crop(image, 4.0, 5.0, 6)  # inside
    assert (left, top) == (1, 2)
    np.testing.assert_array_equal(crop, image[2:8, 1:7])
    crop, left, top = square_crop(image, 0.0, 0.0, 6)  # over the top-left corner
    assert (left, top, crop.shape) == (-3, -3, (6, 6, 3))
    assert not crop[:3].any() and not crop[:, :3].any()
    np.testing.assert_array_equal(crop[3:, 3:], image[:3, :3])
    crop, _, _ = square_crop(image, 100.0, 100.0, 4)  # entirely outside
    assert crop.shape == (4, 4, 3) and not crop.any()


def test_missing_model_raises(tmp_path):
    present = tmp_path / "present.onnx"  # only checked for existence before anything loads
    present.write_bytes(b"")
    missing = tmp_path / "nope.onnx"
    for paths in ((missing, present), (present, missing)):
        with pytest.raises(FileNotFoundError, match="nope.onnx"):
            OnnxFaceBackend(*paths)


def test_backend_interface(backend):
    assert backend.name == "onnx"
    assert set(backend.anchors) == set(ANCHOR_NAMES)
    assert all(0 <= i < 98 for indices in backend.anchors.values() for i in indices)


@pytest.mark.parametrize("clip", CLIPS or [None], ids=[c.stem for c in CLIPS] or ["no-clips"])
def test_one_main_face_on_every_clip(backend, clip):
    if clip is None:
        shared_path("data", "videos")
        pytest.skip("no clips in ../shared/data/videos")
    frame = read_frame(clip)
    faces = backend.detect(frame)
    assert len(faces) >= 1, f"no face on frame 0 of {clip.name}"
    main = faces[0]
    # any other detection is far smaller than the speaker's face
    assert all(other.score * other.area < 0.25 * main.score * main.area for other in faces[1:])
    check_face(main, frame)
    check_anchors(main, backend.anchors)


def test_middle_frame_of_a_1080p_clip(backend):
    path = shared_path("data", "videos", "presenter_1080p_7s.mp4")
    frame = read_frame(path, 100)
    assert frame.shape[:2] == (1080, 1920)
    faces = backend.detect(frame)
    assert len(faces) == 1
    check_face(faces[0], frame)
    check_anchors(faces[0], backend.anchors)


def test_blank_frame_has_no_face(backend):
    assert backend.detect(np.full((480, 640, 3), 128, np.uint8)) == []


def test_best_face_first(backend, may_frame):
    """Two copies of one face: the full-size one comes first; points follow each copy."""
    h, w = may_frame.shape[:2]
    canvas = np.full((h, w + w // 2, 3), 128, np.uint8)
    canvas[:, :w] = may_frame
    canvas[: h // 2, w:] = cv2.resize(may_frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    faces = backend.detect(canvas)
    assert len(faces) == 2
    big, small = faces
    assert big.area > 3 * small.area
    assert big.box[2] <= w < small.box[0]
    np.testing.assert_allclose(small.points, (big.points + [2 * w, 0]) / 2, atol=0.03 * w)


def test_face_cut_by_the_frame_edge(backend, may_frame):
    """A face running off the left edge: the box is clipped, the points still follow the face."""
    full = backend.detect(may_frame)[0]
    cut = int(full.box[0] + 0.2 * (full.box[2] - full.box[0]))  # a fifth of the face off-frame
    faces = backend.detect(np.ascontiguousarray(may_frame[:, cut:]))
    assert faces
    face = faces[0]
    assert face.box[0] == 0
    moved = full.points - [cut, 0]
    # the inner face (eyes, nose, mouth: points 51-95) stays where it was
    error = np.linalg.norm(face.points[51:96] - moved[51:96], axis=1).mean()
    assert error < 0.03 * (full.box[2] - full.box[0])
