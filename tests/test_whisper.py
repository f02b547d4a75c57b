"""The whisper audio mode: our PyTorch encoder, its features, the avatar front-end file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synctalk.config import SAMPLE_RATE
from synctalk.features import whisper
from synctalk.features.frontend import load_front_end, save_whisper_encoder
from synctalk.media.audio import load_audio
from synctalk.models.whisper_encoder import DEPTH, FEATURE_DIM, LAYERS
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def encoder():
    return whisper.load_packaged_encoder()


@pytest.fixture(scope="module")
def speech():
    return load_audio(shared_path("data", "audio", "commentary_en_60s.wav"))


def test_last_layer_equals_ctranslate2(encoder, speech):
    """Our encoder is Whisper's: its last layer is what CTranslate2 itself computes."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = whisper.log_mel(speech[: 20 * SAMPLE_RATE])
    reference = ctranslate2.models.Whisper(
        str(whisper.packaged_model_file().parent), device="cpu", compute_type="float32"
    )
    expected = np.asarray(
        reference.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True)
    )[0]
    with torch.inference_mode():
        ours = encoder(torch.from_numpy(mel)[None], layers=(DEPTH + 1,))[0, 0].numpy()
    assert ours.shape == expected.shape == (1500, 384)
    assert np.abs(ours - expected).max() < 1e-3


def test_weights_that_are_not_the_expected_file_are_refused(tmp_path):
    fake = tmp_path / "model.bin"
    fake.write_bytes(b"not whisper")
    with pytest.raises(whisper.WhisperError, match="sha256"):
        whisper.load_packaged_encoder(fake)
    with pytest.raises(whisper.WhisperError, match="not found"):
        whisper.load_packaged_encoder(tmp_path / "missing.bin")


def test_one_feature_row_per_video_frame(encoder):
    wav = np.random.default_rng(0).normal(0, 0.1, int(2.02 * SAMPLE_RATE)).astype(np.float32)
    features = whisper.encode_frames(wav, encoder)
    assert features.shape == (round(2.02 * 25), FEATURE_DIM)
    assert features.dtype == np.float32 and np.isfinite(features).all()


def test_long_audio_is_encoded_in_overlapping_windows(encoder, speech):
    """60 s of speech takes three 30 s windows; each keeps its middle. A frame deep
    inside the first window's kept part is what that window alone gives, and so
    is one in the second window's, whatever the file's length around them."""
    features = whisper.encode_frames(speech, encoder)
    assert len(features) == round(len(speech) * 25 / SAMPLE_RATE)
    first = whisper.encode_frames(speech[: 30 * SAMPLE_RATE], encoder)
    np.testing.assert_allclose(features[:600], first[:600], atol=1e-5)
    # the second window starts at 20 s and keeps 25..45 s: frames 625..1125
    second = whisper.encode_frames(speech[20 * SAMPLE_RATE : 50 * SAMPLE_RATE], encoder)
    np.testing.assert_allclose(features[700:1100], second[200:600], atol=1e-4)
    # the seam at 25 s changes the features little: neighbours stay alike
    jump = np.linalg.norm(features[625] - features[624])
    typical = np.median(np.linalg.norm(np.diff(features[400:900], axis=0), axis=1))
    assert jump < 3 * typical


def test_front_end_file_round_trips(tmp_path, encoder, speech):
    out = tmp_path / "audio_encoder.pth"
    save_whisper_encoder(out)
    front_end = load_front_end(out)
    assert front_end.audio_mode == "whisper"
    clip = speech[: 3 * SAMPLE_RATE]
    # the package ships float16 weights: the float16 copy loses nothing
    np.testing.assert_array_equal(front_end.features(clip), whisper.encode_frames(clip, encoder))


def test_layers_fed_to_the_models_are_below_the_last():
    assert all(0 < layer <= DEPTH for layer in LAYERS)
