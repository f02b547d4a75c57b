"""The built-in demo avatar: real speech, a detectable face, a mouth that follows the sound."""

from __future__ import annotations

import numpy as np
import pytest

from synctalk.config import FPS, SAMPLE_RATE
from synctalk.demo_avatar import (
    DRIVING_SENTENCES,
    TRAINING_SENTENCES,
    SpeechError,
    lip_sync_check,
    make_demo_audio,
    make_demo_avatar,
    synthesise_speech,
)
from synctalk.face.mediapipe_backend import MediapipeFaceBackend
from synctalk.media.audio import load_audio
from synctalk.media.video import iter_frames, probe_video

SECONDS = 8.0


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    return make_demo_avatar(tmp_path_factory.mktemp("demo") / "avatar.mp4", SECONDS, verify=False)


@pytest.fixture(scope="module")
def measured(avatar):
    """Per-frame mouth opening (mediapipe, NaN where no face) and loudness in dB, computed here
    independently of the module's own check."""
    ratios = []
    with MediapipeFaceBackend(max_faces=1) as backend:
        for frame in iter_frames(avatar):
            faces = backend.detect(frame)
            if faces:
                p = faces[0].points
                ratios.append(np.linalg.norm(p[13] - p[14]) / np.linalg.norm(p[61] - p[291]))
            else:
                ratios.append(np.nan)
    wav = load_audio(avatar).astype(np.float64)
    hop = SAMPLE_RATE // FPS
    loudness = np.array(
        [
            20 * np.log10(max(np.sqrt(np.mean(wav[i * hop : (i + 1) * hop] ** 2)), 1e-3))
            for i in range(len(ratios))
        ]
    )
    return np.array(ratios), loudness


def test_speech_is_audible_and_about_as_long_as_the_sentence(tmp_path):
    text = "The quick brown fox jumps over the lazy dog."
    out = synthesise_speech(text, tmp_path / "fox.wav")
    assert out == tmp_path / "fox.wav"
    assert [p.name for p in tmp_path.iterdir()] == ["fox.wav"]  # no temporary left behind
    wav = load_audio(out)
    seconds = len(wav) / SAMPLE_RATE
    assert 1.5 < seconds < 6.0, seconds  # nine words at a speaking rate
    assert np.sqrt(np.mean(wav**2)) > 0.02
    voiced = np.abs(wav) > 0.05
    assert 0.2 < voiced.mean() < 0.95  # speech with gaps, not a tone or noise


def test_speech_errors_are_clear(tmp_path):
    with pytest.raises(SpeechError, match="no voice"):
        synthesise_speech("hello", tmp_path / "x.wav", voice="no-such-voice")
    with pytest.raises(SpeechError, match="empty"):
        synthesise_speech("   ", tmp_path / "x.wav")
    assert not list(tmp_path.iterdir())


def test_demo_avatar_is_a_25fps_talking_video(avatar):
    info = probe_video(avatar)
    assert info.has_audio
    assert info.fps == FPS
    assert (info.width, info.height) == (512, 512)
    assert info.video_codec == "h264"
    assert abs(info.duration - SECONDS) < 0.1
    assert not [p for p in avatar.parent.iterdir() if p.name != avatar.name]


def test_face_is_found_on_almost_every_frame(measured):
    ratios, _ = measured
    assert len(ratios) == round(SECONDS * FPS)
    assert np.isfinite(ratios).mean() >= 0.98


def test_mouth_opening_follows_loudness(measured):
    ratios, loudness = measured
    found = np.isfinite(ratios)
    r = np.corrcoef(ratios[found], loudness[found])[0, 1]
    assert r >= 0.7, r
    # The mouth really moves: loud frames are clearly more open than silent ones.
    quiet = ratios[found & (loudness < -45)]
    loud = ratios[found & (loudness > -20)]
    assert quiet.size and loud.size
    assert np.median(loud) > np.median(quiet) + 0.1


def test_module_check_agrees(avatar, measured):
    ratios, loudness = measured
    found = np.isfinite(ratios)
    check = lip_sync_check(avatar)
    assert check.n_frames == len(ratios)
    assert check.detection_rate == pytest.approx(found.mean())
    opening = np.where(found, ratios, 0.0)  # no face found: no open mouth
    assert check.correlation == pytest.approx(np.corrcoef(opening, loudness)[0, 1])


def test_check_of_a_faceless_render_scores_zero(tmp_path):
    """An untrained model paints a grey blob where the face was: mediapipe finds a face on a
    few frames at best, and those guesses must not produce a correlation."""
    from synctalk.demo_avatar import FRAME_SIZE, _encode

    wav = synthesise_speech("Nobody is here to move their lips.", tmp_path / "speech.wav")
    n = len(load_audio(wav)) * FPS // SAMPLE_RATE
    rng = np.random.default_rng(0)
    size = (FRAME_SIZE, FRAME_SIZE, 3)
    frames = (np.full(size, 100 + rng.integers(0, 40), np.uint8) for _ in range(n))
    video = tmp_path / "blank.mp4"
    _encode(frames, wav, video, tmp_path / "ffmpeg.log")
    check = lip_sync_check(video)
    assert check.n_frames == n and check.detection_rate == 0.0
    assert check.correlation == 0.0


def test_driving_audio_is_new_speech(tmp_path):
    assert not set(DRIVING_SENTENCES) & set(TRAINING_SENTENCES)
    paths = make_demo_audio(tmp_path)
    assert len(paths) == 2
    assert len({p.stem for p in paths}) == 2
    for path in paths:
        assert path.parent == tmp_path and path.suffix == ".wav"
        wav = load_audio(path)
        assert 2.0 < len(wav) / SAMPLE_RATE < 8.0
        assert np.sqrt(np.mean(wav**2)) > 0.02
    (custom,) = make_demo_audio(tmp_path / "custom", ["Just one line."])
    assert custom.name == "01_just_one_line.wav"


def test_driving_audio_already_there_is_kept(tmp_path):
    """A second demo run must not re-write its inbox: eSpeak's output depends on what the
    process spoke before, so the same sentence spoken again has other bytes (and would be
    rendered again)."""
    import hashlib

    first = make_demo_audio(tmp_path)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in first]
    stamps = [p.stat().st_mtime_ns for p in first]
    synthesise_speech(TRAINING_SENTENCES[0], tmp_path / "elsewhere" / "warm.wav")  # new state
    again = make_demo_audio(tmp_path)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in again] == digests
