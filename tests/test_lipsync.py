import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synctalk.evaluate.lipsync import (
    EYE_LEFT,
    EYE_RIGHT,
    LIP_BOTTOM,
    LIP_TOP,
    MESH_POINTS,
    best_lag_correlation,
    follow_and_replay,
    lip_gap,
    video_face_points,
)
from tests.conftest import shared_path


def _mesh(gaps: np.ndarray, eye_distance: float) -> np.ndarray:
    points = np.zeros((len(gaps), MESH_POINTS, 2))
    points[:, EYE_LEFT] = (100, 100)
    points[:, EYE_RIGHT] = (100 + eye_distance, 100)
    points[:, LIP_TOP] = (150, 200)
    points[:, LIP_BOTTOM, 0] = 150
    points[:, LIP_BOTTOM, 1] = 200 + gaps * eye_distance
    return points


@given(st.floats(20, 400))
def test_lip_gap_does_not_depend_on_face_size(eye_distance):
    gaps = np.array([0.0, 0.1, 0.25])
    np.testing.assert_allclose(lip_gap(_mesh(gaps, eye_distance)), gaps, atol=1e-9)


@pytest.mark.parametrize("lag", [-2, -1, 0, 1, 2])
def test_a_delayed_copy_correlates_fully_within_two_frames(lag):
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(200)
    delayed = np.roll(signal, lag)
    assert best_lag_correlation(delayed, signal) == pytest.approx(1.0)
    assert best_lag_correlation(np.roll(signal, 5), signal) < 0.3  # 200 ms: not forgiven


def test_a_render_that_copies_its_background_replays_and_does_not_follow():
    rng = np.random.default_rng(1)
    driver, background = rng.standard_normal(1000), rng.standard_normal(1000)
    follow, replay = follow_and_replay(background + 0.1 * driver, driver, background)
    assert replay > 0.9 and follow < 0.3


def test_a_real_talker_opens_and_closes_the_mouth():
    points = video_face_points(shared_path("data", "videos", "may_5s.mp4"))
    assert points.shape[1:] == (MESH_POINTS, 2) and len(points) == 125
    gaps = lip_gap(points)
    assert np.isfinite(gaps).mean() > 0.95
    assert np.nanmax(gaps) > 3 * max(np.nanmin(gaps), 0.01)  # she talks
