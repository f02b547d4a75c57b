"""Audio in: any common file to 16 kHz mono, the mel spectrogram, mel windows.

`load_audio` decodes through ffmpeg (wav, mp3, flac, m4a, the audio track of
a video...) at the file's own rate and channels, averages the channels and
resamples with soxr, which is what `librosa.load(path, sr=16000)` does in the
original pipeline, so features match it.

`melspectrogram` is Wav2Lip's, as SyncTalk_2D uses it; its numbers are part of
the method (changing one makes trained checkpoints useless), so they live in
`MelSpec` rather than params.yaml.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soxr
from scipy import signal

from synctalk.config import FPS, SAMPLE_RATE
from synctalk.media.ffmpeg import FfmpegStream, MediaError, check_file, ffmpeg_input


class AudioError(MediaError):
    """A file that should hold audio is missing, empty, or not decodable."""


@dataclass(frozen=True)
class MelSpec:
    sample_rate: int = SAMPLE_RATE
    preemphasis: float = 0.97
    n_fft: int = 800
    hop_length: int = 200  # 12.5 ms: 80 mel frames per second
    win_length: int = 800
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_abs_value: float = 4.0  # symmetric normalisation to [-4, 4]

    @property
    def frames_per_second(self) -> int:
        return self.sample_rate // self.hop_length


MEL = MelSpec()
MEL_WINDOW = 16  # mel frames (0.2 s) per video frame's window


# --------------------------------------------------------------------------
# decoding


def load_audio(path: str | Path) -> np.ndarray:
    """Decode `path` to float32 [n] samples at 16 kHz, mono.

    Raises AudioError naming the file when it is missing, empty, has no audio
    stream, or cannot be decoded.
    """
    return np.concatenate(list(stream_audio(path)))


def stream_audio(path: str | Path) -> Iterator[np.ndarray]:
    """`load_audio`'s samples in consecutive chunks of a few seconds, float32, 16 kHz mono.

    Memory stays at one chunk however long the file: an hour of 48 kHz stereo
    would be 1.4 GB decoded at once. The samples are exactly `load_audio`'s
    (soxr's streamed resampler gives what its one-shot call does). The checks
    of a truncated file need the whole file, so they raise at the end.
    """
    path = Path(path)
    decoder = FfmpegStream(
        ["-i", ffmpeg_input(path), "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le", "-f", "wav", "-"],
        source=path,
        loglevel="info",  # the declared duration and corruption warnings are needed
    )
    wav = _FloatWav(path)
    resampler: soxr.ResampleStream | None = None
    decoded = 0  # samples at the file's own rate
    try:
        check_file(path)
        for block in decoder:
            samples = wav.feed(block)
            if samples is None or not len(samples):
                continue
            decoded += len(samples)
            mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
            if wav.rate == SAMPLE_RATE:
                yield np.ascontiguousarray(mono, dtype=np.float32)
                continue
            if resampler is None:
                resampler = soxr.ResampleStream(
                    wav.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
                )
            if len(out := resampler.resample_chunk(mono)):
                yield out
    except MediaError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        if "matches no streams" in detail:
            detail = "no audio stream"
        raise AudioError(f"{path}: cannot decode audio ({detail})") from None
    if wav.rate is None:
        raise AudioError(f"{path}: decoder produced no audio")
    if decoded == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if resampler is not None and len(
        out := resampler.resample_chunk(np.zeros(0, np.float32), last=True)
    ):
        yield out
    _check_complete(path, decoder.stderr, decoded / wav.rate)


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_CORRUPT = ("corrupt input packet", "Packet corrupt", "Invalid data found when processing")


def _check_complete(path: Path, log: str, decoded_s: float) -> None:
    """Refuse a truncated file rather than render half a sentence.

    ffmpeg decodes what it can of a cut-off file and exits 0; a truncated file
    shows either as corrupt packets or as far less audio than the header declares.
    """
    for line in log.splitlines():
        if any(marker in line for marker in _CORRUPT):
            raise AudioError(f"{path}: truncated or corrupt audio ({line.split('] ')[-1]})")
    match = _DURATION.search(log)
    # A container's duration covers all its streams; only an audio-only
    # file's is the audio's.
    if match and ": Video:" not in log:
        h, m, s = match.groups()
        declared = int(h) * 3600 + int(m) * 60 + float(s)
        if decoded_s < declared - max(0.1, 0.02 * declared):
            raise AudioError(
                f"{path}: truncated: the header declares {declared:.2f} s "
                f"but only {decoded_s:.2f} s could be decoded"
            )


class _FloatWav:
    """ffmpeg's pcm_f32le WAV on a pipe, parsed as it arrives.

    ffmpeg cannot seek back on a pipe to fill in the data chunk's size, so the
    data chunk is taken to run to the end of the stream.
    """

    def __init__(self, source: Path):
        self.source = source
        self.rate: int | None = None
        self.channels: int | None = None
        self._pending = b""  # the header until the data chunk starts, then a partial sample
        self._in_data = False

    def feed(self, block: bytes) -> np.ndarray | None:
        """The whole samples `block` completes, float32 [frames, channels]; None in the header."""
        data = self._pending + block
        if not self._in_data:
            start = self._data_start(data)
            if start is None:
                self._pending = data
                return None
            data, self._in_data = data[start:], True
        size = 4 * self.channels
        usable = len(data) - len(data) % size
        self._pending = data[usable:]
        return np.frombuffer(data[:usable], dtype="<f4").reshape(-1, self.channels)

    def _data_start(self, data: bytes) -> int | None:
        """Where the samples start in `data`, None while the header is incomplete."""
        if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
            raise AudioError(f"{self.source}: decoder produced no audio")
        pos = 12
        while pos + 8 <= len(data):
            chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
            body = pos + 8
            if chunk_id == b"fmt ":
                if len(data) < body + 8:
                    return None
                self.channels, self.rate = struct.unpack("<HI", data[body + 2 : body + 8])
            elif chunk_id == b"data":
                if self.rate is None or not self.channels:
                    raise AudioError(f"{self.source}: decoder produced no audio")
                return body
            pos = body + size + (size & 1)
        return None


# --------------------------------------------------------------------------
# mel spectrogram


@functools.cache
def _mel_basis(spec: MelSpec) -> np.ndarray:
    return librosa.filters.mel(
        sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax
    )


def melspectrogram(wav: np.ndarray, spec: MelSpec = MEL) -> np.ndarray:
    """Normalised log-mel spectrogram, float32 [T, 80], time-major, 80 frames/s."""
    wav = np.asarray(wav, dtype=np.float32)
    emphasised = signal.lfilter([1.0, -spec.preemphasis], [1.0], wav)
    stft = librosa.stft(
        y=emphasised, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length
    )
    mel = np.dot(_mel_basis(spec), np.abs(stft))
    min_level = np.exp(spec.min_level_db / 20 * np.log(10))
    db = 20 * np.log10(np.maximum(min_level, mel)) - spec.ref_level_db
    m = spec.max_abs_value
    norm = np.clip(2 * m * ((db - spec.min_level_db) / -spec.min_level_db) - m, -m, m)
    return norm.T.astype(np.float32)


def mel_window_start(frame: int, n_mel_frames: int, spec: MelSpec = MEL) -> int:
    """First mel row of video frame `frame`'s 16-row window.

    The window starts at int(80 * frame / 25); one that would run past the
    end is shifted back to end at the last row (the original's rule).
    """
    start = spec.frames_per_second * frame // FPS
    return max(0, min(start, n_mel_frames - MEL_WINDOW))


def mel_window(mel: np.ndarray, frame: int, spec: MelSpec = MEL) -> np.ndarray:
    """The [16, 80] mel rows that video frame `frame` is encoded from."""
    if mel.shape[0] < MEL_WINDOW:
        raise ValueError(f"mel spectrogram has {mel.shape[0]} rows, fewer than {MEL_WINDOW}")
    start = mel_window_start(frame, mel.shape[0], spec)
    return mel[start : start + MEL_WINDOW]


def video_frame_count(n_mel_frames: int, spec: MelSpec = MEL) -> int:
    """How many 25 fps frames the original pipeline derives from a mel of this length."""
    if n_mel_frames < MEL_WINDOW:
        raise ValueError(
            f"audio too short: {n_mel_frames} mel frames, at least {MEL_WINDOW} (0.2 s) needed"
        )
    return int((n_mel_frames - MEL_WINDOW) / spec.frames_per_second * FPS) + 2
