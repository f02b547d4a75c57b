import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from synctalk.face.crop import (
    crop_jitter,
    cut_crop,
    raw_crop_boxes,
    round_crop_boxes,
    smooth_crop_boxes,
)
from synctalk.face.landmarks import ANCHOR_NAMES, Face, anchor_points
from synctalk.face.track import FaceGapError, MainFaceTracker, fill_gaps, find_gaps

A = {n: i for i, n in enumerate(ANCHOR_NAMES)}


def _anchors(x0, top, side):
    a = np.zeros((len(ANCHOR_NAMES), 2), np.float32)
    a[A["cheek_left"]] = (x0, top + side * 0.2)
    a[A["cheek_right"]] = (x0 + side, top + side * 0.25)
    a[A["nose_bridge"]] = (x0 + side / 2, top)
    return a


@given(
    x0=st.floats(-50, 500),
    top=st.floats(-50, 500),
    side=st.floats(4, 400),
)
def test_crop_box_is_cheek_to_cheek_from_the_nose_bridge(x0, top, side):
    box = raw_crop_boxes(_anchors(x0, top, side)[None])[0]
    np.testing.assert_allclose(box, [x0, top, side], rtol=1e-5, atol=1e-3)


def test_crossed_cheeks_are_an_error():
    a = _anchors(100, 50, 80)
    a[[A["cheek_left"], A["cheek_right"]]] = a[[A["cheek_right"], A["cheek_left"]]]
    with pytest.raises(ValueError, match="frame 0"):
        raw_crop_boxes(a[None])


@given(
    boxes=arrays(
        np.float64, st.tuples(st.integers(2, 60), st.just(3)), elements=st.floats(10, 400)
    ),
    sigma=st.floats(0.5, 5),
)
def test_smoothing_keeps_boxes_within_the_raw_range_and_never_adds_jitter(boxes, sigma):
    smooth = smooth_crop_boxes(boxes, sigma)
    assert smooth.shape == boxes.shape
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    s_centre = smooth[:, :2] + smooth[:, 2:] / 2
    assert (s_centre >= centre.min(axis=0) - 1e-6).all()
    assert (s_centre <= centre.max(axis=0) + 1e-6).all()
    # a Gaussian never increases the largest step of the centre
    steps = np.abs(np.diff(centre, axis=0)).max()
    assert np.abs(np.diff(s_centre, axis=0)).max() <= steps + 1e-6


def test_smoothing_reduces_jitter_of_a_noisy_still_face():
    rng = np.random.default_rng(0)
    still = np.tile([100.0, 80.0, 200.0], (250, 1)) + rng.normal(0, 3, (250, 3))
    assert crop_jitter(smooth_crop_boxes(still, 3)).max() < crop_jitter(still).max() / 3


def test_a_constant_track_is_unchanged_and_rounds_to_pixels():
    boxes = np.tile([10.4, 20.6, 99.5], (5, 1))
    np.testing.assert_allclose(smooth_crop_boxes(boxes, 3), boxes)
    rounded = round_crop_boxes(boxes)
    assert rounded.dtype == np.int32 and (rounded == [10, 21, 100]).all()


@given(
    x0=st.integers(-60, 100),
    y0=st.integers(-60, 100),
    side=st.integers(4, 160),
    size=st.sampled_from([168, 328]),
)
def test_cut_crop_always_gives_the_full_size(x0, y0, side, size):
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    if x0 + side <= 0 or y0 + side <= 0 or x0 >= 160 or y0 >= 120:
        with pytest.raises(ValueError, match="outside"):
            cut_crop(frame, np.array([x0, y0, side]), size)
        return
    crop = cut_crop(frame, np.array([x0, y0, side]), size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8


def test_cut_crop_inside_the_frame_is_a_plain_resize():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[20:60, 30:70] = 200
    crop = cut_crop(frame, np.array([30, 20, 40]), 40)
    assert (crop == 200).all()


def test_anchor_points_average_the_listed_landmarks():
    pts = np.arange(20, dtype=np.float32).reshape(10, 2)
    anchors = {n: (i,) for i, n in enumerate(ANCHOR_NAMES)}
    anchors["lip_top"] = (8, 9)
    out = anchor_points(pts, anchors)
    assert out.shape == (len(ANCHOR_NAMES), 2)
    np.testing.assert_allclose(out[A["lip_top"]], pts[8:10].mean(axis=0))


def _face(x0, y0, w, score=1.0):
    box = np.array([x0, y0, x0 + w, y0 + w], np.float32)
    return Face(box=box, score=score, points=np.zeros((5, 2), np.float32))


def test_tracker_follows_the_main_face_not_a_bigger_newcomer():
    tracker = MainFaceTracker()
    main = _face(100, 100, 80)
    assert tracker.choose([main, _face(400, 100, 40)]) is main  # largest first
    moved, newcomer = _face(110, 104, 80), _face(300, 50, 200)
    assert tracker.choose([newcomer, moved]) is moved
    assert tracker.choose([]) is None
    assert tracker.choose([_face(600, 400, 90)]) is None  # only someone else in shot


def test_gaps_are_found_and_short_ones_filled():
    found = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0], bool)
    gaps = find_gaps(found)
    assert [(g.start, g.stop) for g in gaps] == [(0, 1), (3, 5), (8, 9)]
    values = np.array([0, 10, 20, 0, 0, 50, 60, 70, 0], float)[:, None]
    filled = fill_gaps(values, found, max_gap=2)[:, 0]
    np.testing.assert_allclose(filled, [10, 10, 20, 30, 40, 50, 60, 70, 70])


def test_long_gaps_fail_listing_every_range():
    found = np.ones(200, bool)
    found[20:60] = False
    found[100:103] = False
    found[150:190] = False
    with pytest.raises(FaceGapError) as info:
        fill_gaps(np.zeros((200, 2)), found, max_gap=12)
    message = str(info.value)
    assert "frames 20-59" in message and "frames 150-189" in message
    assert "100-102" not in message  # short enough to interpolate
    with pytest.raises(FaceGapError, match="no face"):
        fill_gaps(np.zeros((5, 2)), np.zeros(5, bool), max_gap=12)
