"""A run of the model core on built-in data, for `synctalk demo` / `make demo`.

Nothing is downloaded and nothing is asked: a speech-like signal is
synthesised (48 kHz stereo, as a customer's file might be), decoded like any
user file, turned into mel and per-frame AVE features, and fed with a
synthetic face crop through the U-Net in PyTorch and in onnxruntime. The
report says what was produced, whether the two runtimes agree, and how fast.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile

from synctalk.config import FPS, SAMPLE_RATE
from synctalk.features.ave import encode_frames, load_encoder, save_encoder
from synctalk.features.windows import feature_window
from synctalk.media.audio import load_audio, melspectrogram
from synctalk.models import AudioEncoder, build_unet
from synctalk.models.checkpoint import load_unet, save_model
from synctalk.models.unet import make_unet_input
from synctalk.render.onnx import OnnxUNet, export_unet

log = logging.getLogger(__name__)


def synth_speech(seconds: float, rate: int = 48_000, seed: int = 0) -> np.ndarray:
    """Voiced 'syllables' at ~4 Hz with a wandering pitch; int16 [n, 2]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)), 0, None) ** 2
    mono = 0.3 * voice * envelope + 0.005 * rng.standard_normal(t.size)
    stereo = np.stack([mono, 0.9 * mono], axis=1)
    return (np.clip(stereo, -1, 1) * 32767).astype(np.int16)


def _face_crop(size: int) -> torch.Tensor:
    """A smooth synthetic 'face': skin-toned disc with a dark mouth, [3,S,S] in [0,1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.16).astype(np.float32)
    mouth = ((xx - 0.5) ** 2 / 0.04 + (yy - 0.7) ** 2 / 0.004 < 1).astype(np.float32)
    skin = np.array([0.55, 0.65, 0.85], dtype=np.float32)[:, None, None]  # BGR
    img = 0.2 + disc * (skin - 0.2) - 0.4 * mouth
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))


def run_model_demo(out: Path, preset: str = "160", seconds: float = 4.0) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    source = out / "speech_48k_stereo.wav"
    wavfile.write(source, 48_000, synth_speech(seconds))
    wav = load_audio(source)
    mel = melspectrogram(wav)

    # A seeded untrained encoder stands in for the AVE weights (not on PyPI);
    # it goes through the official file layout like the real one.
    save_encoder(AudioEncoder().eval(), out / "ave_encoder.pth")
    encoder = load_encoder(out / "ave_encoder.pth")
    started = time.perf_counter()
    features = encode_frames(wav, encoder)
    ave_s = time.perf_counter() - started
    np.save(out / "ave.npy", features)

    model = build_unet(preset).eval()
    save_model(model, out / "unet.pth", note="untrained demo weights")
    model = load_unet(out / "unet.pth")
    spec = model.spec
    crop = _face_crop(spec.geometry.size)
    n = len(features)
    audio = torch.from_numpy(
        np.stack([feature_window(features, i, spec.audio_shape) for i in range(n)])
    )
    image = make_unet_input(crop[None], crop[None], spec).expand(n, -1, -1, -1).contiguous()

    with torch.inference_mode():
        started = time.perf_counter()
        eager = torch.cat([model(image[i : i + 1], audio[i : i + 1]) for i in range(n)])
        eager_ms = (time.perf_counter() - started) / n * 1000

    onnx = OnnxUNet(export_unet(model, out / "unet.onnx"))
    started = time.perf_counter()
    ort = np.concatenate(
        [onnx(image[i : i + 1].numpy(), audio[i : i + 1].numpy()) for i in range(n)]
    )
    ort_ms = (time.perf_counter() - started) / n * 1000

    return {
        "audio decoded": f"{source.name} -> {wav.size} samples at 16 kHz "
        f"({wav.size / SAMPLE_RATE:.2f} s)",
        "mel spectrogram": f"{mel.shape[0]} x {mel.shape[1]}",
        "AVE features": f"{features.shape[0]} frames x {features.shape[1]} ({ave_s:.2f} s)",
        "video frames at 25 fps": f"{n} ({n / FPS:.2f} s)",
        "U-Net": f"preset {spec.resolution}, output {tuple(eager.shape)}, "
        f"range [{eager.min():.3f}, {eager.max():.3f}]",
        "PyTorch ms/frame": f"{eager_ms:.1f}",
        "onnxruntime ms/frame": f"{ort_ms:.1f}",
        "max |torch - onnxruntime|": f"{np.abs(eager.numpy() - ort).max():.2e}",
        "files": str(out),
    }
