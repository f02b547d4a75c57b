import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synctalk.features.windows import WINDOW, feature_window, window_indices


@given(n=st.integers(1, 400), data=st.data())
def test_window_rules(n, data):
    i = data.draw(st.integers(0, n - 1))
    idx = window_indices(i, n)
    assert idx.shape == (WINDOW,)
    assert idx.min() >= 0 and idx.max() <= n - 1
    if i + 8 > n:
        # past the end: 16 copies of the last vector
        assert (idx == n - 1).all()
    else:
        # frames i-8..i+7, the ones before the start replaced by the first
        np.testing.assert_array_equal(idx, np.maximum(np.arange(i - 8, i + 8), 0))
        assert idx[8] == i


@given(n=st.integers(20, 100))
def test_window_reshapes_to_the_unet_audio_input(n):
    features = np.arange(n * 512, dtype=np.float32).reshape(n, 512)
    w = feature_window(features, 10, (32, 16, 16))
    assert w.shape == (32, 16, 16)
    np.testing.assert_array_equal(w.reshape(16, 512), features[2:18])


def test_out_of_range_frames_are_errors():
    with pytest.raises(IndexError):
        window_indices(5, 5)
    with pytest.raises(ValueError):
        window_indices(0, 0)


def test_smoothing_blurs_features_along_time_only():
    from synctalk.features.windows import smooth_features

    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 6)).astype(np.float32)
    assert smooth_features(features, 0) is features
    smoothed = smooth_features(features, 1.0)
    assert smoothed.shape == features.shape and smoothed.dtype == np.float32
    # the frame-to-frame change shrinks; a constant stays constant
    assert np.abs(np.diff(smoothed, axis=0)).mean() < 0.6 * np.abs(np.diff(features, axis=0)).mean()
    constant = np.ones((10, 3), np.float32)
    assert np.allclose(smooth_features(constant, 2.0), 1)
    # columns do not mix
    one_column = features.copy()
    one_column[:, 1:] = 0
    assert np.all(smooth_features(one_column, 1.0)[:, 1:] == 0)
