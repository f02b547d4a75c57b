import os
import re
import subprocess

import numpy as np
import pytest
from scipy.io import wavfile

from synctalk.media import video
from synctalk.media.audio import AudioError, load_audio
from synctalk.media.ffmpeg import MediaError, run_ffmpeg
from synctalk.media.video import iter_frames, probe_video, transcode_to_cfr, write_wav16k
from tests.conftest import shared_path


def _clip(name: str):
    return shared_path("data", "videos", name)


def _make(dst, *args):
    """Write a synthetic file with ffmpeg; `args` go between -y and the output."""
    run_ffmpeg(["-y", *args, str(dst)], source=dst)
    return dst


def _testsrc(dst, size="64x32", seconds=1, *extra):
    return _make(
        dst, "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25", "-t", str(seconds), *extra
    )


def _sine(dst, seconds=1, *extra):
    return _make(dst, "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", *extra)


def _only_file(folder):
    """The folder's single file: a temporary file left behind would show here."""
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 1, files
    return folder / files[0]


# --------------------------------------------------------------------------
# probing the real clips


@pytest.mark.parametrize(
    "name, width, height, fps, duration, audio_rate",
    [
        ("lieu_address_45s.mp4", 512, 512, 25.0, 45.16, 44100),
        ("retalking_face1_man_6s.mp4", 700, 700, 22.13, 6.13, 44100),
        ("presenter_1080p_7s.mp4", 1920, 1080, 30.0, 7.43, 44100),
        ("may_5s.mp4", 512, 512, 25.0, 5.0, 48000),
    ],
)
def test_probe_real_clips(name, width, height, fps, duration, audio_rate):
    info = probe_video(_clip(name))
    assert (info.width, info.height) == (width, height)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.duration == pytest.approx(duration, abs=0.05)
    assert info.rotation == 0 and info.video_codec == "h264" and info.pixel_aspect == 1.0
    assert info.has_audio and info.audio_rate == audio_rate and info.audio_channels == 2
    assert info.n_frames_at(25) == round(duration * 25)


def test_video_without_audio_is_not_an_error(tmp_path):
    info = probe_video(_testsrc(tmp_path / "silent.mp4"))
    assert not info.has_audio and info.audio_rate is None and info.audio_channels is None
    assert (info.width, info.height, info.fps, info.duration) == (64, 32, 25.0, 1.0)


def test_webm_without_declared_duration_is_measured(tmp_path):
    # A live WebM, as a browser's MediaRecorder writes, has "Duration: N/A".
    src = _testsrc(tmp_path / "live.webm", "64x32", 2, "-c:v", "libvpx", "-f", "webm", "-live", "1")
    assert probe_video(src).duration == pytest.approx(2.0, abs=0.05)


def test_file_names_with_a_colon_are_files_not_urls(tmp_path):
    src = _testsrc(tmp_path / "src.mp4")
    odd = src.rename(tmp_path / "take 2:30.mp4")
    assert probe_video(odd).width == 64
    assert transcode_to_cfr(odd, tmp_path / "out" / "a:b.mp4").n_frames_at(25) == 25


# --------------------------------------------------------------------------
# inputs that must be refused


def _text_as_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are meeting notes, not a video\n" * 20)
    return path


def _cut_mp4(tmp_path):
    # The real clips keep their index (moov atom) at the end, so a cut-off
    # upload cannot even be opened.
    data = _clip("retalking_face1_man_6s.mp4").read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 3 // 10])
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def _cover_art_mp3(tmp_path):
    cover = _testsrc(tmp_path / "cover.png", "64x64", 1, "-frames:v", "1")
    return _sine(
        tmp_path / "song.mp3",
        1,
        "-i",
        str(cover),
        "-map",
        "0",
        "-map",
        "1",
        "-c:v",
        "png",
        "-disposition:v",
        "attached_pic",
    )


@pytest.mark.parametrize(
    "make, reason",
    [
        (_text_as_mp4, "not a media file"),
        (_cut_mp4, "truncated"),
        (_empty, "empty file"),
        (lambda tmp: tmp / "missing.mp4", "no such file"),
        (lambda tmp: _sine(tmp / "speech.wav"), "no video stream"),
        (lambda tmp: _sine(tmp / "speech.mp4", 1, "-c:a", "aac"), "no video stream"),
        (_cover_art_mp3, "no video stream"),
    ],
    ids=["text-as-mp4", "cut-mp4", "empty", "missing", "wav", "audio-only-mp4", "cover-art"],
)
def test_bad_inputs_are_refused_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(MediaError, match=reason) as caught:
        probe_video(path)
    assert str(caught.value).startswith(f"{path}: ")
    with pytest.raises(MediaError, match=reason):
        transcode_to_cfr(path, tmp_path / "out" / "mezz.mp4")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cut_mp4_with_index_first_is_caught_when_decoding(tmp_path):
    # With the index at the front (-movflags +faststart) a cut-off file opens
    # and declares its full length; the loss only shows when decoding.
    whole = _make(
        tmp_path / "whole.mp4",
        "-i",
        str(_clip("retalking_face1_man_6s.mp4")),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
    )
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 10])
    assert probe_video(cut).duration == pytest.approx(6.13, abs=0.05)

    out = tmp_path / "out"
    with pytest.raises(MediaError, match="truncated") as caught:
        transcode_to_cfr(cut, out / "mezz.mp4")
    assert str(caught.value).startswith(f"{cut}: ")
    assert not any(out.iterdir())  # no partial mezzanine, no temporary file

    frames = 0
    with pytest.raises(MediaError, match="truncated"):
        for _ in iter_frames(cut):
            frames += 1
    assert 0 < frames < 0.5 * 6.13 * 22.13


def test_video_track_much_shorter_than_the_file_is_refused(tmp_path):
    src = _make(
        tmp_path / "short.mp4",
        "-f",
        "lavfi",
        "-t",
        "1",
        "-i",
        "testsrc=size=64x32:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=4",
    )
    assert probe_video(src).duration == pytest.approx(4.0, abs=0.05)
    with pytest.raises(MediaError, match="only 1.00 s of video"):
        transcode_to_cfr(src, tmp_path / "out" / "mezz.mp4")


# --------------------------------------------------------------------------
# the 25 fps mezzanine


def test_variable_rate_clip_becomes_25_fps(tmp_path):
    src = _clip("retalking_face1_man_6s.mp4")
    seen = []
    info = transcode_to_cfr(src, tmp_path / "out" / "mezz.mp4", progress=seen.append)
    assert info.path == tmp_path / "out" / "mezz.mp4" == _only_file(tmp_path / "out")
    assert info.fps == 25.0 and (info.width, info.height) == (700, 700) and info.rotation == 0
    assert not info.has_audio and info.video_codec == "h264"
    expected = round(probe_video(src).duration * 25)
    assert abs(info.n_frames_at(25) - expected) <= 1

    frames = list(iter_frames(info.path))
    assert abs(len(frames) - expected) <= 1
    assert all(f.shape == (700, 700, 3) and f.dtype == np.uint8 for f in frames)
    assert frames[0].flags.writeable  # cv2 drawing on a frame must work
    assert seen and seen == sorted(seen) and seen[-1] == pytest.approx(info.duration, abs=0.1)


def test_1080p_clip(tmp_path):
    info = transcode_to_cfr(_clip("presenter_1080p_7s.mp4"), tmp_path / "mezz.mp4")
    assert (info.width, info.height, info.fps) == (1920, 1080, 25.0)
    assert abs(info.n_frames_at(25) - round(7.43 * 25)) <= 1
    frames = list(iter_frames(info.path, width=480))
    assert abs(len(frames) - info.n_frames_at(25)) <= 1
    assert frames[0].shape == (270, 480, 3)


def test_duration_limit(tmp_path):
    info = transcode_to_cfr(_clip("lieu_address_45s.mp4"), tmp_path / "m.mp4", duration=1.0)
    assert info.n_frames_at(25) == 25 == sum(1 for _ in iter_frames(info.path))


def test_rotation_metadata_is_applied_and_dropped(tmp_path):
    # Landscape 64x32, left half white; a player turns it 90 degrees
    # counter-clockwise, which puts the white half at the bottom of a 32x64 portrait.
    landscape = _make(
        tmp_path / "landscape.mp4",
        "-f",
        "lavfi",
        "-i",
        "color=black:size=64x32:rate=25",
        "-t",
        "1",
        "-vf",
        "drawbox=x=0:y=0:w=32:h=32:color=white:t=fill",
        "-c:v",
        "libx264",
    )
    rotated = _make(
        tmp_path / "rotated.mp4", "-display_rotation", "90", "-i", str(landscape), "-c", "copy"
    )
    info = probe_video(rotated)
    assert (info.rotation, info.width, info.height) == (90, 32, 64)

    def white_at_bottom(frame):
        assert frame.shape == (64, 32, 3)
        return frame[40:].mean() > 200 and frame[:24].mean() < 50

    assert all(white_at_bottom(f) for f in iter_frames(rotated))
    mezz = transcode_to_cfr(rotated, tmp_path / "mezz.mp4")
    assert (mezz.rotation, mezz.width, mezz.height) == (0, 32, 64)
    frames = list(iter_frames(mezz.path))
    assert len(frames) == 25 and all(white_at_bottom(f) for f in frames)


def test_odd_sizes_are_cropped_and_anamorphic_pixels_made_square(tmp_path):
    odd = _testsrc(tmp_path / "odd.mkv", "65x33", 1, "-c:v", "ffv1")
    assert (probe_video(odd).width, probe_video(odd).height) == (65, 33)
    info = transcode_to_cfr(odd, tmp_path / "odd.mp4")
    assert (info.width, info.height) == (64, 32)

    wide = _testsrc(tmp_path / "wide.mp4", "64x32", 1, "-vf", "setsar=2", "-c:v", "libx264")
    assert probe_video(wide).pixel_aspect == 2.0
    info = transcode_to_cfr(wide, tmp_path / "wide_square.mp4")
    assert (info.width, info.height, info.pixel_aspect) == (128, 32, 1.0)


# --------------------------------------------------------------------------
# frames


def test_iter_frames_yields_every_frame_once_at_the_source_rate():
    # ffmpeg's default for raw output would repeat frames up to 30 fps (184 frames).
    frames = sum(1 for _ in iter_frames(_clip("retalking_face1_man_6s.mp4"), 70, 70))
    assert frames == 135


def test_iter_frames_stopped_early_leaves_no_ffmpeg_behind(monkeypatch):
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(video.subprocess, "Popen", Recorded)
    frames = iter_frames(_clip("lieu_address_45s.mp4"))
    first = [next(frames) for _ in range(3)]
    assert first[0].shape == (512, 512, 3)
    decoder = next(p for p in started if "rawvideo" in p.args)
    assert decoder.poll() is None  # still running, blocked on the full pipe

    frames.close()
    assert decoder.returncode is not None and decoder.stdout.closed
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(decoder.pid, 0)

    for i, _ in enumerate(iter_frames(_clip("may_5s.mp4"))):  # a plain break
        if i == 2:
            break
    assert all(p.returncode is not None for p in started)


def test_iter_frames_refuses_non_video(tmp_path):
    path = _sine(tmp_path / "speech.wav")
    with pytest.raises(MediaError, match=f"^{re.escape(str(path))}: no video stream"):
        next(iter_frames(path))


# --------------------------------------------------------------------------
# the audio track


def test_write_wav16k_matches_load_audio(tmp_path):
    src = _clip("may_5s.mp4")
    n = write_wav16k(src, tmp_path / "a" / "speech.wav")
    assert _only_file(tmp_path / "a").name == "speech.wav"
    rate, pcm = wavfile.read(tmp_path / "a" / "speech.wav")
    assert rate == 16_000 and pcm.dtype == np.int16 and pcm.ndim == 1 and len(pcm) == n
    assert n == pytest.approx(5.0 * 16_000, rel=0.01)
    assert np.abs(pcm / 32767.0 - load_audio(src)).max() < 1e-4


def test_write_wav16k_of_a_silent_video_fails_cleanly(tmp_path):
    src = _testsrc(tmp_path / "silent.mp4")
    with pytest.raises(
        AudioError, match=f"^{re.escape(str(src))}: cannot decode audio \\(no audio stream\\)"
    ):
        write_wav16k(src, tmp_path / "out" / "speech.wav")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
