"""The footage decoded in a render's order: seeks, backward segments, the ping-pong schedule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synctalk.media.ffmpeg import ffmpeg_input, run_ffmpeg
from synctalk.media.video import iter_frames
from synctalk.render.avatar import background_schedule
from synctalk.render.background import (
    BackgroundError,
    _runs,
    background_frames,
    segment_frames,
)


@pytest.fixture(scope="module", params=["keyframe every second", "keyframe every 10 s"])
def footage(request, tmp_path_factory):
    """3 s of a real clip at 25 fps, with the mezzanine's GOP or x264's default (250)."""
    from tests.conftest import shared_path

    src = shared_path("data", "videos", "may_5s.mp4")
    out = tmp_path_factory.mktemp("footage") / "video.mp4"
    gop = "25" if request.param == "keyframe every second" else "250"
    encode = ["-vf", "fps=25", "-t", "3", "-c:v", "libx264", "-crf", "20", "-g", gop, "-an"]
    run_ffmpeg(["-y", "-i", ffmpeg_input(src), *encode, str(out)], source=out)
    return out, list(iter_frames(out))


@pytest.mark.parametrize("same_start_end", [False, True])
@pytest.mark.parametrize("segment", [1, 7, 25])
def test_frames_come_in_the_schedules_order(footage, same_start_end, segment):
    video, decoded = footage
    assert len(decoded) == 75
    schedule = background_schedule(len(decoded), 200, same_start_end)
    frames = list(background_frames(video, schedule, segment))
    assert len(frames) == len(schedule)
    for frame, j in zip(frames, schedule, strict=True):
        np.testing.assert_array_equal(frame, decoded[j])


def test_any_order_of_frames_is_served(footage):
    video, decoded = footage
    schedule = np.array([40, 3, 4, 5, 5, 74, 73, 0, 60, 61])
    for frame, j in zip(background_frames(video, schedule, 25), schedule, strict=True):
        np.testing.assert_array_equal(frame, decoded[j])


def test_frames_past_the_end_are_an_error(footage):
    video, _ = footage
    with pytest.raises(BackgroundError, match=r"frames 75\.\.76 are past its end"):
        list(background_frames(video, np.array([73, 74, 75, 76]), 25))


@given(st.lists(st.integers(0, 20), min_size=1, max_size=40))
def test_runs_cover_the_schedule_in_order(schedule):
    expanded = []
    for first, last in _runs(np.array(schedule)):
        step = 1 if last >= first else -1
        expanded += list(range(first, last + step, step))
    assert expanded == schedule


def test_segments_hold_about_a_second_of_frames_and_less_at_4k():
    assert segment_frames((1080, 1920)) == 25
    assert segment_frames((2160, 3840)) == 6


def test_frames_can_be_decoded_into_a_buffer(footage):
    video, decoded = footage
    into = np.zeros((10, *decoded[0].shape), np.uint8)
    frames = list(iter_frames(video, start=30, count=10, into=into))
    assert len(frames) == 10 and all(np.shares_memory(f, into) for f in frames)
    np.testing.assert_array_equal(into, np.stack(decoded[30:40]))
    with pytest.raises(ValueError, match="holds 10 frames"):
        next(iter_frames(video, start=30, into=into))
