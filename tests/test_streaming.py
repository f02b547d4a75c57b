"""Streamed audio: decoding, features, smoothing and the spool equal their whole-file forms.

A render streams its audio so that memory does not grow with the file's
length; what it renders from must still be exactly what the whole file gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from synctalk.config import FPS, SAMPLE_RATE
from synctalk.features import ave, whisper
from synctalk.features.frontend import AudioFrontEnd
from synctalk.features.spool import FeatureSpool
from synctalk.features.windows import feature_window, smooth_features, smooth_stream
from synctalk.media.audio import AudioError, _FloatWav, melspectrogram, stream_audio
from synctalk.media.ffmpeg import FfmpegStream, MediaError, ffmpeg_input, run_ffmpeg
from synctalk.render.engine import spool_features

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory, request):
    """77 s of 48 kHz stereo speech: three Whisper windows, three AVE blocks, ~28 decoded
    chunks."""
    from tests.conftest import shared_path

    a = shared_path("data", "audio", "commentary_en_60s.wav")
    b = shared_path("data", "audio", "talk_hb_45s.wav")
    out = tmp_path_factory.mktemp("speech") / "long.wav"
    graph = (
        "[0:a]aresample=48000[x];[1:a]aresample=48000[y];[x][y]concat=n=2:v=0:a=1,"
        "atrim=0:77.33,aformat=channel_layouts=stereo"
    )
    inputs = ["-i", str(a), "-i", str(b)]
    run_ffmpeg(["-y", *inputs, "-filter_complex", graph, "-c:a", "pcm_f32le", str(out)], out)
    return out


def _whole_file_samples(path) -> np.ndarray:
    """The file decoded at once and resampled in one call: what the original does."""
    data, _ = run_ffmpeg(
        ["-i", ffmpeg_input(path), "-map", "0:a:0", "-c:a", "pcm_f32le", "-f", "wav", "-"],
        source=path,
    )
    wav = _FloatWav(path)
    samples = wav.feed(data)
    mono = samples.mean(axis=1, dtype=np.float32)
    return soxr.resample(mono, wav.rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


@pytest.fixture(scope="module")
def chunks(long_speech):
    return list(stream_audio(long_speech))


def test_streamed_samples_are_the_whole_files(long_speech, chunks):
    whole = _whole_file_samples(long_speech)
    assert len(chunks) > 10
    # boundaries fall inside video frames, hence inside every window
    boundaries = np.cumsum([len(c) for c in chunks])[:-1]
    assert np.any(boundaries % SAMPLES_PER_FRAME)
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def _whisper_reference(wav: np.ndarray, encoder) -> np.ndarray:
    """The windowing rule of whisper.py's docstring, applied to the whole array."""
    import torch

    n_vectors = whisper.frame_count(len(wav)) * 2
    vectors = np.zeros((n_vectors, whisper.FEATURE_DIM // 2), dtype=np.float32)
    for start in range(0, n_vectors, whisper.STRIDE_VECTORS):
        mel = torch.from_numpy(whisper.log_mel(wav[start * whisper.SAMPLES_PER_VECTOR :]))
        with torch.inference_mode():
            states = encoder(mel[None])[0].transpose(0, 1).reshape(1500, -1).numpy()
        last = start + 1500 >= n_vectors
        keep_from = 0 if start == 0 else whisper.MARGIN_VECTORS
        keep_to = min(1500 if last else 1500 - whisper.MARGIN_VECTORS, n_vectors - start)
        vectors[start + keep_from : start + keep_to] = states[keep_from:keep_to]
        if last:
            break
    return vectors.reshape(-1, whisper.FEATURE_DIM)


def test_streamed_whisper_features_are_the_whole_files(chunks):
    encoder = whisper.load_packaged_encoder()
    wav = np.concatenate(chunks)
    expected = _whisper_reference(wav, encoder)
    blocks = list(AudioFrontEnd("whisper", encoder).stream(iter(chunks)))
    assert len(blocks) == 4  # one per 30 s window (every 20 s)
    streamed = np.concatenate(blocks)
    assert streamed.shape == expected.shape == (round(len(wav) / SAMPLES_PER_FRAME), 768)
    assert np.abs(streamed - expected).max() <= 1e-5


def test_streamed_ave_features_are_the_whole_files(shared, chunks):
    encoder = ave.load_encoder(shared("reference", "ave_random_seed0.pth"))
    wav = np.concatenate(chunks)
    windows = ave.mel_windows(melspectrogram(wav))
    expected = ave._encode_windows(windows, encoder, 256)
    blocks = list(AudioFrontEnd("ave", encoder).stream(iter(chunks)))
    assert len(blocks) == 3  # 30 s blocks
    streamed = np.concatenate(blocks)
    assert streamed.shape == expected.shape
    assert np.abs(streamed - expected).max() <= 1e-5


@pytest.mark.parametrize("n_samples", [0, 2999, 3000, 3201, 16_000 * 31 + 1937])
def test_short_and_block_edge_lengths_stream_like_the_whole(shared, n_samples):
    """Around one mel window (3200 samples) and just past a 30 s block."""
    encoder = ave.load_encoder(shared("reference", "ave_random_seed0.pth"))
    wav = np.random.default_rng(n_samples).normal(0, 0.1, n_samples).astype(np.float32)
    streamed = list(ave.encode_stream([wav[:1000], wav[1000:]], encoder))
    if 1 + n_samples // 200 < 16:  # fewer mel rows than one window
        assert streamed == []
        return
    expected = ave._encode_windows(ave.mel_windows(melspectrogram(wav)), encoder, 256)
    assert np.abs(np.concatenate(streamed) - expected).max() <= 1e-5


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    sigma=st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0]),
    cuts=st.lists(st.integers(1, 299), max_size=12),
)
def test_streamed_smoothing_is_the_whole_arrays(n, sigma, cuts):
    features = np.random.default_rng(n).normal(size=(n, 5)).astype(np.float32)
    edges = [0, *sorted({c for c in cuts if c < n}), n]
    blocks = [features[a:b] for a, b in zip(edges, edges[1:], strict=False)]
    streamed = np.concatenate(list(smooth_stream(iter(blocks), sigma)))
    np.testing.assert_array_equal(streamed, smooth_features(features, sigma))


def test_the_spool_gives_the_arrays_windows():
    features = np.random.default_rng(0).normal(size=(500, 12)).astype(np.float32)
    with FeatureSpool(features[i : i + 37] for i in range(0, 500, 37)) as spool:
        assert len(spool) == 500 and spool.shape == (500, 12)
        for frame in (0, 3, 250, 492, 499):
            np.testing.assert_array_equal(
                feature_window(spool, frame, (16, 12)), feature_window(features, frame, (16, 12))
            )
        with pytest.raises(IndexError):
            spool[np.array([499, 500])]


def test_a_render_spools_the_whole_files_smoothed_features(long_speech):
    front_end = AudioFrontEnd("whisper", whisper.load_packaged_encoder())
    spool, seconds = spool_features(long_speech, front_end, smoothing=1.0)
    with spool:
        wav = _whole_file_samples(long_speech)
        expected = smooth_features(front_end.features(wav), 1.0)
        assert seconds == pytest.approx(77.33, abs=0.01)
        assert spool.shape == expected.shape
        assert np.abs(spool[np.arange(len(spool))] - expected).max() <= 1e-5


def test_ffmpeg_failures_while_streaming_name_the_file(tmp_path):
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF....WAVEnot audio at all" * 100)
    with pytest.raises(AudioError, match=r"speech\.wav: cannot decode audio"):
        list(stream_audio(bad))
    with pytest.raises(MediaError, match=r"^source name: "):
        list(FfmpegStream(["-i", ffmpeg_input(bad), "-f", "wav", "-"], source="source name"))


def test_a_consumer_that_stops_early_stops_ffmpeg(long_speech):
    stream = FfmpegStream(
        ["-i", ffmpeg_input(long_speech), "-f", "f32le", "-"], source=long_speech, block=4096
    )
    blocks = iter(stream)
    assert len(next(blocks)) == 4096
    blocks.close()  # what a consumer's garbage collection or an exception does
    # nothing is left running: the generator's cleanup killed and reaped ffmpeg
    assert not [pid for pid in _child_pids() if "ffmpeg" in _command_name(pid)]


def _child_pids() -> list[str]:
    tasks = Path(f"/proc/{os.getpid()}/task")
    return [pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()]


def _command_name(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except FileNotFoundError:  # exited meanwhile
        return ""
