"""render.precision int8: the U-Net quantized on the avatar's frames, checked against fp32 first."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from synctalk.config import ExtractParams, LandmarkParams, RenderParams, load_config
from synctalk.face.prepare import prepare_landmarks
from synctalk.features.frontend import load_front_end, save_whisper_encoder
from synctalk.media.audio import load_audio
from synctalk.media.extract import extract_avatar
from synctalk.models.checkpoint import save_model
from synctalk.paths import AvatarPaths
from synctalk.render.engine import load_for_rendering, render_video
from synctalk.render.onnx import OnnxUNet
from synctalk.render.quantize import PSNR_KEY, int8_path
from synctalk.train.data import AvatarFrames
from synctalk.train.tasks import UNetTask, train_settings
from synctalk.train.trainer import Trainer
from tests.conftest import REPO, shared_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """may_5s prepared with the tiny preset (Whisper features, 160, mobile, jaw mask) and its
    U-Net trained for a few steps on it: batch norm statistics and weights of real crops."""
    video = shared_path("data", "videos", "may_5s.mp4")
    preset = load_config(REPO / "params.yaml").presets["tiny"]
    root = tmp_path_factory.mktemp("int8")
    paths = AvatarPaths("may", root)
    extracted = extract_avatar(video, paths, ExtractParams())
    prepare_landmarks(
        paths.video,
        extracted.frames,
        paths.landmarks,
        paths.crops,
        preset.geometry.crop_size,
        LandmarkParams(),
    )
    paths.models.mkdir(parents=True)
    save_whisper_encoder(paths.audio_encoder)
    features = load_front_end(paths.audio_encoder).features(load_audio(paths.audio))
    data = AvatarFrames(np.load(paths.crops, mmap_mode="r"), features, preset.geometry)
    # 10 steps of 4 (~15 s): enough to leave the initial weights, as a test can afford
    training = replace(
        preset.unet,
        epochs=1,
        steps_per_epoch=10,
        batch_size=4,
        sync_weight=0.0,
        checkpoint_every=100,
    )
    trainer = Trainer(
        UNetTask(data, preset, training, syncnet=None),
        train_settings(training),
        torch.device("cpu"),
        root / "run",
    )
    trainer.fit()
    save_model(trainer.model, paths.unet)
    return root, paths


def _load(trained, params: RenderParams):
    root, paths = trained
    return load_for_rendering(
        paths, paths.unet, paths.audio_encoder, params, "cpu", root / "data" / "cache"
    )


def test_int8_of_a_trained_model_reaches_the_bar_and_renders(trained, tmp_path, caplog):
    root, paths = trained
    params = RenderParams(precision="int8")
    with caplog.at_level(logging.INFO, logger="synctalk.render.quantize"):
        loaded = _load(trained, params)
    model = loaded.runtime
    assert isinstance(model, OnnxUNet) and model.precision == "int8"
    psnr = float(model.metadata[PSNR_KEY])
    assert psnr >= params.int8_min_psnr, psnr
    assert "quantized the U-Net to int8" in caplog.text
    # cached next to the fp32 export, per model version
    onnx_dir = root / "data" / "cache" / "onnx"
    (fp32,) = [p for p in onnx_dir.glob("*.onnx") if p != model.path]
    assert model.path == int8_path(fp32)

    result = render_video(
        loaded.avatar, model, loaded.front_end, paths.audio, tmp_path / "int8.mp4", params, "cpu"
    )
    assert result.runtime == "onnxruntime:int8" and result.frames == 125

    # A second load uses the cached file: no calibration, no new quantization.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="synctalk.render.quantize"):
        again = _load(trained, params)
    assert again.runtime.precision == "int8" and "quantized" not in caplog.text


def test_int8_below_the_bar_renders_in_fp32_with_a_warning_naming_the_figure(
    trained, tmp_path, caplog
):
    _, paths = trained
    params = RenderParams(precision="int8", int8_min_psnr=200.0)
    with caplog.at_level(logging.WARNING):
        loaded = _load(trained, params)
    assert isinstance(loaded.runtime, OnnxUNet) and loaded.runtime.precision == "fp32"
    stored = OnnxUNet(int8_path(loaded.runtime.path)).metadata[PSNR_KEY]
    assert f"PSNR {float(stored):.1f} dB" in caplog.text and "200.0 dB" in caplog.text
    assert "rendering in fp32" in caplog.text
    result = render_video(
        loaded.avatar,
        loaded.runtime,
        loaded.front_end,
        paths.audio,
        tmp_path / "fp32.mp4",
        params,
        "cpu",
    )
    assert result.runtime == "onnxruntime"


def test_int8_without_the_avatars_audio_falls_back_to_fp32(trained, tmp_path, caplog):
    """A registered version made before its footage carried audio.wav cannot calibrate."""
    _, paths = trained
    missing = AvatarPaths("may", tmp_path / "footage")
    missing.work.mkdir(parents=True)
    for name in ("video", "landmarks"):
        getattr(missing, name).symlink_to(getattr(paths, name))
    with caplog.at_level(logging.WARNING):
        params = RenderParams(precision="int8")
        loaded = load_for_rendering(
            missing, paths.unet, paths.audio_encoder, params, "cpu", tmp_path / "cache"
        )
    assert loaded.runtime.precision == "fp32"
    assert "int8 quantization failed" in caplog.text and "audio.wav" in caplog.text
    assert not int8_path(loaded.runtime.path).exists()


def _uint8_error(x: np.ndarray, lo: float, hi: float) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / 255
    zero = np.round(-lo / step)
    return float(np.mean(((np.clip(np.round(x / step) + zero, 0, 255) - zero) * step - x) ** 2))


def test_activation_ranges_beat_min_max_and_percentiles():
    from synctalk.render.activation_ranges import mse_range

    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(0, 1, 200_000), 0)  # half zeros, a light tail
    relu[:20] = rng.uniform(6, 12, 20)  # a few stray large values
    lo, hi = mse_range(relu, 0.0, float(relu.max()))
    assert lo == 0.0 and hi < relu.max()
    chosen = _uint8_error(relu, lo, hi)
    assert chosen < _uint8_error(relu, 0.0, float(relu.max()))
    for q in (99.9, 99.99, 99.999):
        assert chosen <= _uint8_error(relu, 0.0, float(np.percentile(relu, q)))
    even = rng.uniform(-1, 2, 200_000)  # nothing to gain by clipping an even spread
    lo, hi = mse_range(even, float(even.min()), float(even.max()))
    assert lo == pytest.approx(-1, abs=0.01) and hi == pytest.approx(2, abs=0.01)
