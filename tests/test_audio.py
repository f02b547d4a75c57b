import numpy as np
import pytest
from scipy.io import wavfile

from synctalk.features.ave import encode_frames, load_encoder, mel_windows, save_encoder
from synctalk.media.audio import (
    MEL_WINDOW,
    AudioError,
    load_audio,
    mel_window,
    mel_window_start,
    melspectrogram,
    video_frame_count,
)
from synctalk.media.ffmpeg import run_ffmpeg
from synctalk.models import AudioEncoder


def _convert(src, dst, *args):
    run_ffmpeg(["-y", "-i", str(src), *args, str(dst)], source=src)
    return dst


def test_mel_matches_the_original(shared):
    wav = load_audio(shared("data", "audio", "talk_hb_45s.wav"))
    mel = melspectrogram(wav)
    golden = np.load(shared("reference", "mel_talk_hb_45s.npy"))
    assert mel.dtype == np.float32 and mel.shape == golden.shape == (3591, 80)
    assert np.abs(mel - golden).max() < 1e-3


def test_ave_features_match_the_original(shared):
    wav = load_audio(shared("data", "audio", "talk_hb_45s.wav"))
    encoder = load_encoder(shared("reference", "ave_random_seed0.pth"))
    features = encode_frames(wav, encoder)
    golden = np.load(shared("reference", "ave_features_talk_hb_45s_seed0.npy"))
    assert features.shape == golden.shape == (1119, 512)
    assert np.abs(features - golden).max() < 1e-4


def test_encoder_file_round_trip_keeps_the_official_layout(tmp_path, shared):
    import torch

    original = torch.load(shared("reference", "ave_random_seed0.pth"), weights_only=True)
    encoder = load_encoder(shared("reference", "ave_random_seed0.pth"))
    save_encoder(encoder, tmp_path / "ave.pth")
    saved = torch.load(tmp_path / "ave.pth", weights_only=True)
    assert list(saved) == list(original)  # no "audio_encoder." prefix
    assert all(torch.equal(saved[k], original[k]) for k in original)
    with pytest.raises(ValueError, match="not an AVE"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
        load_encoder(tmp_path / "bad.pth")


def test_48k_stereo_loads_to_16k_mono(shared):
    src = shared("data", "audio", "macron_fr_12s.wav")
    rate, data = wavfile.read(src)
    assert rate == 48_000 and data.ndim == 2
    wav = load_audio(src)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - round(len(data) / 3)) <= 1
    # the mono mix is the channel mean, like librosa.load
    assert np.abs(wav).max() <= 1.0


def test_mp3_loads_to_the_right_length(tmp_path, shared):
    src = shared("data", "audio", "macron_fr_12s.wav")
    mp3 = _convert(src, tmp_path / "speech.mp3", "-c:a", "libmp3lame", "-b:a", "96k")
    n_src = len(wavfile.read(src)[1]) / 48_000
    wav = load_audio(mp3)
    assert abs(len(wav) / 16_000 - n_src) < 0.03  # within one mp3 frame


def test_m4a_and_flac_load(tmp_path, shared):
    src = shared("data", "audio", "macron_fr_12s.wav")
    reference = load_audio(src)
    flac = load_audio(_convert(src, tmp_path / "speech.flac"))
    assert np.abs(flac - reference).max() < 1e-4  # lossless
    m4a = load_audio(_convert(src, tmp_path / "speech.m4a", "-c:a", "aac"))
    assert abs(len(m4a) - len(reference)) < 0.03 * 16_000


def test_8k_mono_is_upsampled(tmp_path):
    t = np.arange(8000 * 2) / 8000
    wavfile.write(
        tmp_path / "tone.wav", 8000, (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    )
    wav = load_audio(tmp_path / "tone.wav")
    assert len(wav) == 32_000
    # still a 440 Hz tone
    spectrum = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spectrum) * 16_000 / len(wav) - 440) < 2


def test_odd_file_names_are_not_taken_for_urls(tmp_path, shared):
    odd = tmp_path / "take 2:30.wav"
    odd.write_bytes(shared("data", "audio", "macron_fr_12s.wav").read_bytes())
    assert len(load_audio(odd)) > 16_000


def test_audio_track_of_a_video_loads(shared):
    wav = load_audio(shared("data", "videos", "may_5s.mp4"))
    assert abs(len(wav) / 16_000 - 5.0) < 0.05


@pytest.mark.parametrize(
    "case", ["missing", "empty", "text", "header-cut", "truncated-wav", "truncated-mp3", "no-audio"]
)
def test_bad_files_raise_a_clear_error_naming_the_file(tmp_path, shared, case):
    src = shared("data", "audio", "macron_fr_12s.wav")
    path = tmp_path / f"bad_{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not audio\n" * 100)
    elif case == "header-cut":
        path.write_bytes(src.read_bytes()[:40])
    elif case == "truncated-wav":
        path.write_bytes(src.read_bytes()[:200_001])
    elif case == "truncated-mp3":
        mp3 = _convert(src, tmp_path / "full.mp3", "-c:a", "libmp3lame")
        path = tmp_path / "bad_truncated.mp3"
        path.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 3])
    elif case == "no-audio":
        path = tmp_path / "bad_silent_video.mp4"
        run_ffmpeg(
            [
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=64x64:rate=25",
                "-t",
                "1",
                "-c:v",
                "libx264",
                str(path),
            ],
            source="test",
        )
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    if case == "no-audio":
        assert "no audio stream" in str(info.value)


def test_mel_window_boundaries():
    mel = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    assert mel_window_start(0, 100) == 0
    assert mel_window_start(5, 100) == 16  # int(80 * 5 / 25)
    assert mel_window_start(7, 100) == 22  # int(22.4)
    # a window that would run past the end is shifted back to end at the last row
    assert mel_window_start(29, 100) == 100 - MEL_WINDOW
    np.testing.assert_array_equal(mel_window(mel, 29), mel[84:100])
    assert mel_window(mel, 3).shape == (16, 80)
    with pytest.raises(ValueError, match="fewer than 16"):
        mel_window(mel[:10], 0)


def test_video_frame_count_is_the_originals():
    assert video_frame_count(3591) == 1119
    assert video_frame_count(16) == 2
    with pytest.raises(ValueError, match="too short"):
        video_frame_count(15)


def test_mel_windows_are_transposed_for_the_encoder():
    mel = np.random.default_rng(0).standard_normal((200, 80)).astype(np.float32)
    windows = mel_windows(mel)
    assert windows.shape == (video_frame_count(200), 1, 80, 16)
    np.testing.assert_array_equal(windows[3, 0], mel_window(mel, 3).T)


def test_encode_frames_batches_do_not_change_results():
    import torch

    torch.manual_seed(0)
    encoder = AudioEncoder().eval()
    wav = np.random.default_rng(1).standard_normal(16_000).astype(np.float32) * 0.1
    a = encode_frames(wav, encoder, batch_size=7)
    b = encode_frames(wav, encoder, batch_size=1000)
    assert a.shape == (video_frame_count(len(melspectrogram(wav))), 512)
    np.testing.assert_allclose(a, b, atol=1e-5)
