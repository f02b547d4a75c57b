"""Extract and landmarks on good and bad inputs, through the library and the stage CLI."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from synctalk.config import ExtractParams, LandmarkParams, resolution
from synctalk.face.prepare import prepare_landmarks
from synctalk.face.track import FaceGapError
from synctalk.manifest import FRAMES_SCHEMA, read_manifest
from synctalk.media.extract import extract_avatar
from synctalk.media.ffmpeg import MediaError, ffmpeg_input, run_ffmpeg
from synctalk.paths import AvatarPaths
from tests.conftest import shared_path
from tests.project import make_project, run

pytestmark = pytest.mark.slow


def _ffmpeg(*args: str) -> None:
    run_ffmpeg(["-y", *args], source="test fixture")


def _bad_input(kind: str, folder) -> object:
    clip = shared_path("data", "videos", "may_5s.mp4")
    path = folder / f"{kind}.mp4"
    if kind == "text":
        path.write_text("not a video at all\n" * 50)
    elif kind == "truncated":
        path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    elif kind == "no-video":
        path = folder / "no-video.wav"
        path.write_bytes(shared_path("data", "audio", "macron_fr_12s.wav").read_bytes())
    elif kind == "no-audio":
        _ffmpeg("-i", str(clip), "-an", "-c:v", "copy", str(path))
    elif kind == "two-seconds":
        _ffmpeg("-i", str(clip), "-t", "2", "-c:v", "libx264", "-c:a", "aac", str(path))
    elif kind == "no-face":
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=256x256:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:sample_rate=16000",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(path),
        )
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "not a media file|Invalid data"),
        ("truncated", "truncated|moov atom"),
        ("no-video", "no video stream"),
        ("no-audio", "no audio stream"),
        ("two-seconds", "at least 3 s"),
    ],
)
def test_extract_refuses_bad_inputs_and_leaves_nothing(tmp_path, kind, message):
    source = _bad_input(kind, tmp_path)
    paths = AvatarPaths("bad", tmp_path / "project")
    with pytest.raises(MediaError, match=message) as info:
        extract_avatar(source, paths, ExtractParams())
    assert str(source) in str(info.value)
    leftovers = list(paths.work.rglob("*")) if paths.work.exists() else []
    assert leftovers == []


def test_a_video_without_a_face_fails_landmarks_and_leaves_nothing(tmp_path):
    source = _bad_input("no-face", tmp_path)
    paths = AvatarPaths("faceless", tmp_path / "project")
    extract_avatar(source, paths, ExtractParams())
    frames, _ = read_manifest(paths.frames, FRAMES_SCHEMA)
    with pytest.raises(FaceGapError, match="no face"):
        prepare_landmarks(
            paths.video, frames.num_rows, paths.landmarks, paths.crops, 168, LandmarkParams()
        )
    assert not paths.landmarks.exists() and not paths.crops.exists()
    assert sorted(p.name for p in paths.work.iterdir()) == [
        "audio.wav",
        "frames.parquet",
        "video.mp4",
    ]


@pytest.mark.parametrize("clip", ["retalking_face1_man_6s.mp4", "presenter_1080p_7s.mp4"])
def test_odd_frame_rates_and_1080p_prepare(tmp_path, clip):
    paths = AvatarPaths("a", tmp_path)
    result = extract_avatar(shared_path("data", "videos", clip), paths, ExtractParams())
    assert abs(result.frames - result.source.duration * 25) <= 1.5
    geometry = resolution("160")
    track = prepare_landmarks(
        paths.video,
        result.frames,
        paths.landmarks,
        paths.crops,
        geometry.crop_size,
        LandmarkParams(),
    )
    assert track.detection_rate >= 0.98
    crops = np.load(paths.crops, mmap_mode="r")
    assert crops.shape == (result.frames, 168, 168, 3)
    # the crop holds a face: not a flat patch of background
    assert crops[len(crops) // 2].std() > 20
    # a keyframe every second exactly, so renders can start decoding at any second
    only_keyframes = ["-skip_frame", "nokey", "-i", ffmpeg_input(paths.video)]
    keyframes, _ = run_ffmpeg(
        [*only_keyframes, "-fps_mode", "passthrough", "-f", "framemd5", "-"], source=paths.video
    )
    pts = [int(ln.split(b",")[2]) for ln in keyframes.splitlines() if not ln.startswith(b"#")]
    assert len(pts) == -(-result.frames // 25) and len(set(np.diff(pts))) == 1


def test_stage_cli_gives_one_clear_error_line(tmp_path):
    root = make_project(tmp_path)
    source = _bad_input("no-audio", tmp_path)
    params = (
        (root / "params.yaml")
        .read_text()
        .replace("avatars: {}", f"avatars:\n  mute:\n    video: {source}\n    preset: tiny")
    )
    (root / "params.yaml").write_text(params)
    proc = run(root, sys.executable, "-m", "stages.extract", "mute", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "no audio stream" in errors[0] and str(source) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (root / "data" / "work" / "mute").exists() or not any(
        (root / "data" / "work" / "mute").iterdir()
    )
