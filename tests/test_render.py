"""The render engine: background schedule, compositor, render cache, end-to-end renders."""

from __future__ import annotations

import logging
import re
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from synctalk.config import ExtractParams, LandmarkParams, RenderParams, resolution
from synctalk.face.crop import cut_crop
from synctalk.manifest import LANDMARKS_SCHEMA, read_manifest, write_manifest
from synctalk.media.audio import AudioError
from synctalk.media.ffmpeg import ffmpeg_exe, ffmpeg_input
from synctalk.media.video import iter_frames, probe_video
from synctalk.models import AudioEncoder, build_unet
from synctalk.paths import AvatarPaths
from synctalk.render import engine
from synctalk.render.avatar import RenderError, background_schedule, prepare_render_avatar
from synctalk.render.compositor import Compositor, feather_alpha
from synctalk.render.engine import load_runtime, render_video
from synctalk.render.onnx import OnnxUNet
from tests.conftest import shared_path

GEOMETRY = resolution("160")
AUDIO_S = 11.8613125  # macron_fr_12s.wav

# --------------------------------------------------------------------------
# background schedule


@given(n=st.integers(1, 60), m=st.integers(0, 400), same=st.booleans())
def test_schedule_properties(n, m, same):
    idx = background_schedule(n, m, same)
    assert idx.shape == (m,) and idx.dtype == np.int64
    if m == 0:
        return
    assert idx[0] == 0
    assert idx.min() >= 0 and idx.max() <= n - 1
    assert (np.abs(np.diff(idx)) <= 1).all()  # never a jump
    if same:
        assert idx[-1] == 0
        assert (np.diff(idx) == 0).sum() <= (1 if n > 1 else m)  # at most one held frame
    elif n > 1:
        assert (np.abs(np.diff(idx)) == 1).all()  # plain ping-pong: always moving


def test_schedule_examples():
    np.testing.assert_array_equal(background_schedule(4, 10), [0, 1, 2, 3, 2, 1, 0, 1, 2, 3])
    # 9 steps: a full cycle (6 steps), then 3 left: turn at 1, held once, back to 0
    np.testing.assert_array_equal(
        background_schedule(4, 10, same_start_end=True), [0, 1, 2, 3, 2, 1, 0, 1, 1, 0]
    )
    np.testing.assert_array_equal(background_schedule(4, 5, True), [0, 1, 2, 1, 0])
    np.testing.assert_array_equal(background_schedule(1, 3, True), [0, 0, 0])
    with pytest.raises(ValueError):
        background_schedule(0, 3)


# --------------------------------------------------------------------------
# compositor


def _textured_frame(h: int = 240, w: int = 320) -> np.ndarray:
    """A smooth gradient with mild texture: seams show, natural edges are small."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 0.6, y * 0.8, (x + y) * 0.35], axis=-1) + 20
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def _paste(frame, box, prediction=None, feather=0.08):
    comp = Compositor(GEOMETRY, frame.shape[:2], feather)
    crop = cut_crop(frame, np.array(box), GEOMETRY.crop_size)
    m, s = GEOMETRY.margin, GEOMETRY.size
    if prediction is None:
        prediction = crop[m : m + s, m : m + s].copy()
    return comp.paste(frame.copy(), crop, prediction, box)


def _outside(shape, box):
    x0, y0, side = box
    mask = np.ones(shape[:2], dtype=bool)
    mask[max(0, y0) : max(0, y0 + side), max(0, x0) : max(0, x0 + side)] = False
    return mask


@pytest.mark.parametrize("box", [(80, 50, 120), (250, -30, 110), (-20, 170, 100)])
def test_pixels_outside_the_box_are_the_source_frames(box):
    frame = _textured_frame()
    black = np.zeros((GEOMETRY.size,) * 2 + (3,), dtype=np.uint8)
    out = _paste(frame, box, black)
    outside = _outside(frame.shape, box)
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert (out[~outside] != frame[~outside]).any()  # something was pasted


def test_feathered_border_has_no_seam():
    frame = _textured_frame()
    x0, y0, side = box = (100, 60, 120)
    out = _paste(frame, box).astype(np.float32)
    src = frame.astype(np.float32)
    # Across each edge of the box: the step between the last pixel outside and the
    # first inside is no larger than the source's own step there.
    pairs = [
        (np.s_[y0 - 1, x0 : x0 + side], np.s_[y0, x0 : x0 + side]),
        (np.s_[y0 + side, x0 : x0 + side], np.s_[y0 + side - 1, x0 : x0 + side]),
        (np.s_[y0 : y0 + side, x0 - 1], np.s_[y0 : y0 + side, x0]),
        (np.s_[y0 : y0 + side, x0 + side], np.s_[y0 : y0 + side, x0 + side - 1]),
    ]
    for outer, inner in pairs:
        seam = np.abs(out[outer] - out[inner]).mean()
        natural = np.abs(src[outer] - src[inner]).mean()
        assert seam < natural + 1.0, (seam, natural)
    # The round trip through the crop (resize down and up) only blurs the texture.
    assert np.abs(out - src).mean() < 3


def test_feather_ramps_from_the_frame_to_the_prediction():
    frame = _textured_frame()
    x0, y0, side = box = (100, 60, 120)
    black = np.zeros((GEOMETRY.size,) * 2 + (3,), dtype=np.uint8)
    out = _paste(frame, box, black).astype(np.int16)
    ring = np.abs(out[y0, x0 : x0 + side] - frame[y0, x0 : x0 + side]).max()
    assert ring <= 2  # the box's outermost pixels are (almost) the source's
    centre = out[y0 + side // 2 - 5 : y0 + side // 2 + 5, x0 + side // 2 - 5 : x0 + side // 2 + 5]
    assert centre.max() == 0  # the middle is the prediction
    hard = _paste(frame, box, black, feather=0.0)
    assert hard[y0 + side // 2, x0 + 10].max() == 0  # feather 0: pasted as is


def test_alpha_masks():
    alpha, inverse = feather_alpha(100, 0.1)
    assert alpha.shape == (100, 100) and alpha.dtype == np.float32
    np.testing.assert_allclose(alpha + inverse, 1, atol=1e-6)
    np.testing.assert_allclose(alpha, alpha.T)
    assert alpha[50, 50] == 1 and alpha[0, 0] < 1e-3
    assert not alpha.flags.writeable
    assert feather_alpha(100, 0.1)[0] is alpha  # made once per side


def test_the_lower_face_region_pastes_mouth_and_chin_and_keeps_the_corners():
    alpha, _ = feather_alpha(100, 0.08, "lower_face")
    np.testing.assert_allclose(alpha, alpha[:, ::-1])  # left-right symmetric
    assert alpha[75, 50] == 1 and alpha[85, 50] == 1  # mouth and chin: the prediction
    assert alpha[2, 2] == 0 and alpha[98, 2] == 0  # the box's corners: the source's
    with pytest.raises(ValueError, match="paste region"):
        feather_alpha(100, 0.08, "face")


# --------------------------------------------------------------------------
# a prepared avatar (may_5s, 512x512, 125 frames) and an untrained tiny model


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from synctalk.face.prepare import prepare_landmarks
    from synctalk.features.ave import save_encoder
    from synctalk.features.frontend import load_front_end
    from synctalk.media.extract import extract_avatar

    video = shared_path("data", "videos", "may_5s.mp4")
    root = tmp_path_factory.mktemp("render")
    paths = AvatarPaths("may", root)
    extracted = extract_avatar(video, paths, ExtractParams())
    prepare_landmarks(
        paths.video,
        extracted.frames,
        paths.landmarks,
        paths.crops,
        GEOMETRY.crop_size,
        LandmarkParams(),
    )
    torch.manual_seed(0)
    save_encoder(AudioEncoder(), paths.audio_encoder)
    torch.manual_seed(0)
    unet = build_unet("160", mobile=True).eval()
    return root, paths, load_front_end(paths.audio_encoder), unet


@pytest.fixture(scope="module")
def avatar(prepared):
    root, paths, _, _ = prepared
    return prepare_render_avatar(paths, GEOMETRY, root / "data" / "cache")


@pytest.fixture(scope="module")
def onnx_model(prepared):
    root, _, _, unet = prepared
    model = load_runtime(unet, RenderParams(runtime="auto"), "cpu", root / "onnx")
    assert isinstance(model, OnnxUNet)
    return model


@pytest.fixture(scope="module")
def short_audio(prepared):
    """The first 2 s of the French speech, as 44.1 kHz mono (another rate, another layout)."""
    root = prepared[0]
    out = root / "short.wav"
    src = shared_path("data", "audio", "macron_fr_12s.wav")
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-i", ffmpeg_input(src), "-t", "2", "-ac", "1"]
        + ["-ar", "44100", ffmpeg_input(out)],
        check=True,
    )
    return out


def test_render_avatar_gives_the_training_crops_of_the_decoded_footage(prepared, avatar):
    _, paths, _, _ = prepared
    table, _ = read_manifest(paths.landmarks, LANDMARKS_SCHEMA)
    assert len(avatar) == table.num_rows == 125
    assert avatar.frame_size == (512, 512)
    decoded = list(iter_frames(paths.video))
    schedule = background_schedule(len(avatar), 300)  # forward, backward, forward again
    for k, frame in enumerate(avatar.backgrounds(schedule)):
        np.testing.assert_array_equal(frame, decoded[schedule[k]])
    crops = np.load(paths.crops, mmap_mode="r")
    np.testing.assert_array_equal(avatar.crop(decoded[9], 9), crops[9])
    m, s = GEOMETRY.margin, GEOMETRY.size
    np.testing.assert_array_equal(
        avatar.model_input(crops[9]), crops[9, m : m + s, m : m + s].transpose(2, 0, 1)
    )
    picks = np.array([70, 3, 9])
    np.testing.assert_array_equal(
        avatar.model_inputs(picks), [avatar.model_input(crops[j]) for j in picks]
    )


def test_the_render_cache_is_small_reused_and_rebuilt_when_inputs_change(prepared, avatar):
    root, paths, _, _ = prepared
    cache_root = root / "data" / "cache"
    assert sorted(p.name for p in avatar.cache_dir.iterdir()) == ["boxes.npy", "meta.json"]
    assert sum(p.stat().st_size for p in avatar.cache_dir.iterdir()) < 10_000
    meta_file = avatar.cache_dir / "meta.json"
    stamp = meta_file.stat().st_mtime_ns
    again = prepare_render_avatar(paths, GEOMETRY, cache_root)
    assert again.cache_dir == avatar.cache_dir and meta_file.stat().st_mtime_ns == stamp

    # Landmarks re-run (boxes moved by a pixel): a new key; the old cache goes.
    other = AvatarPaths("may2", root)
    other.work.mkdir(parents=True)
    (other.work / "video.mp4").symlink_to(paths.video)
    table, meta = read_manifest(paths.landmarks, LANDMARKS_SCHEMA)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    write_manifest(other.landmarks, columns, LANDMARKS_SCHEMA, meta)
    old = prepare_render_avatar(other, GEOMETRY, cache_root)
    np.testing.assert_array_equal(old.crop_boxes, avatar.crop_boxes)
    columns["crop_box"] = [[x + 1, y, side] for x, y, side in columns["crop_box"]]
    write_manifest(other.landmarks, columns, LANDMARKS_SCHEMA, meta)
    new = prepare_render_avatar(other, GEOMETRY, cache_root)
    assert new.key != old.key and new.crop_boxes[0, 0] == old.crop_boxes[0, 0] + 1
    assert not old.cache_dir.exists()
    assert [p.name for p in (cache_root / "may2").iterdir()] == [new.cache_dir.name]

    # A damaged cache (no meta.json) is rebuilt.
    (new.cache_dir / "meta.json").unlink()
    rebuilt = prepare_render_avatar(other, GEOMETRY, cache_root)
    assert (rebuilt.cache_dir / "meta.json").is_file() and rebuilt.key == new.key

    # Landmarks of another length than the footage: re-run them, says the error.
    short = {name: values[:100] for name, values in columns.items()}
    write_manifest(other.landmarks, short, LANDMARKS_SCHEMA, meta)
    with pytest.raises(RenderError, match="125 frames but .* has 100 rows; re-run the landmarks"):
        prepare_render_avatar(other, GEOMETRY, cache_root)


# --------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def rendered(prepared, avatar, onnx_model):
    root, _, encoder, _ = prepared
    audio = shared_path("data", "audio", "macron_fr_12s.wav")
    params = RenderParams()
    out = root / "renders" / "macron.mp4"
    result = render_video(avatar, onnx_model, encoder, audio, out, params, "cpu")
    return out, result, params


def _stream_lines(path) -> str:
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", ffmpeg_input(path)], capture_output=True, text=True
    )
    return "\n".join(ln for ln in proc.stderr.splitlines() if "Stream #" in ln)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_render_is_h264_aac_at_25_fps_as_long_as_the_audio(rendered):
    out, result, _ = rendered
    assert result.frames == round(AUDIO_S * 25) == 297
    assert result.runtime == "onnxruntime" and result.frames_per_s > 0
    info = probe_video(out)
    assert info.video_codec == "h264" and info.fps == 25 and info.has_audio
    assert (info.width, info.height) == (512, 512)
    streams = _stream_lines(out)
    assert re.search(r"Video: h264 .*yuv420p", streams), streams
    assert re.search(r"Audio: aac .*48000 Hz, stereo", streams), streams
    assert abs(info.duration - AUDIO_S) < 0.05
    assert not list(out.parent.glob(".*.tmp"))


def test_encoder_refuses_an_odd_frame_size(tmp_path):
    """4:2:0 video halves the chroma planes: an odd size cannot be encoded as given."""
    with pytest.raises(ValueError, match="even frame size, got 512x301"):
        engine.Mp4Encoder(tmp_path / "o.mp4", (301, 512), tmp_path / "a.wav", RenderParams())


def test_render_keeps_the_background_outside_the_crop_boxes(rendered, avatar):
    out, result, params = rendered
    schedule = background_schedule(len(avatar), result.frames, params.same_start_end)
    count, squared, pixels, worst = 0, 0.0, 0, np.inf
    footage = list(iter_frames(avatar.video))
    for k, frame in enumerate(iter_frames(out)):
        j = schedule[k]
        outside = _outside(frame.shape, tuple(int(v) for v in avatar.crop_boxes[j]))
        got, want = frame[outside], footage[j][outside]
        squared += np.sum((got.astype(np.float64) - want) ** 2)
        pixels += got.size
        worst = min(worst, _psnr(got, want))
        count += 1
    assert abs(count / 25 - AUDIO_S) <= 0.04
    # Over the whole video, and per frame with x264's usual frame-to-frame variation
    # (the background is re-encoded at crf 18 from a crf 12 mezzanine).
    assert 10 * np.log10(255**2 * pixels / squared) > 40
    assert worst > 38, worst


@pytest.fixture(scope="module")
def short_onnx_frames(prepared, avatar, onnx_model, short_audio):
    """The short audio rendered with onnxruntime, decoded."""
    root, _, encoder, _ = prepared
    result = render_video(
        avatar, onnx_model, encoder, short_audio, root / "o.mp4", RenderParams(), "cpu"
    )
    assert result.frames == 50 and result.runtime == "onnxruntime"
    return list(iter_frames(root / "o.mp4"))


def test_torch_and_onnx_runtimes_render_the_same_video(
    prepared, avatar, short_audio, short_onnx_frames
):
    root, _, encoder, unet = prepared
    params = RenderParams(runtime="torch")
    model = load_runtime(unet, params, "cpu", root / "onnx")
    assert isinstance(model, torch.nn.Module)
    result = render_video(avatar, model, encoder, short_audio, root / "t.mp4", params, "cpu")
    assert result.runtime == "torch:cpu" and result.frames == 50
    frames = list(iter_frames(root / "t.mp4"))
    assert len(frames) == len(short_onnx_frames) == 50
    assert min(_psnr(x, y) for x, y in zip(frames, short_onnx_frames, strict=True)) > 40


def test_batched_rendering_gives_the_same_frames(
    prepared, avatar, short_audio, short_onnx_frames, monkeypatch
):
    """Batches of 3 (as on a GPU, here with torch on the CPU): 50 frames, a short last batch."""
    root, _, encoder, unet = prepared
    make_runner = engine._make_runner

    def batched(model, params, device):
        runner = make_runner(model, params, device)
        runner.batch_size = 3
        return runner

    monkeypatch.setattr(engine, "_make_runner", batched)
    params = RenderParams(runtime="torch", queue_frames=6)
    result = render_video(avatar, unet, encoder, short_audio, root / "b.mp4", params, "cpu")
    assert result.frames == 50
    frames = list(iter_frames(root / "b.mp4"))
    assert min(_psnr(x, y) for x, y in zip(frames, short_onnx_frames, strict=True)) > 40


def test_onnx_export_is_cached_and_falls_back_to_torch(prepared, onnx_model, monkeypatch, caplog):
    root, _, _, unet = prepared
    exported = list((root / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    again = load_runtime(unet, RenderParams(runtime="onnx"), "cpu", root / "onnx")
    assert isinstance(again, OnnxUNet) and exported[0].stat().st_mtime_ns == stamp

    # A damaged file in the cache is exported again, not a reason to fall back.
    exported[0].write_bytes(b"not an onnx model")
    repaired = load_runtime(unet, RenderParams(runtime="onnx"), "cpu", root / "onnx")
    assert isinstance(repaired, OnnxUNet) and exported[0].stat().st_size > 1000

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(engine, "export_unet", broken)
    with caplog.at_level(logging.WARNING):
        model = load_runtime(unet, RenderParams(), "cpu", root / "onnx-other")
    assert isinstance(model, torch.nn.Module)
    assert "exporter exploded" in caplog.text
    assert not list((root / "onnx-other").glob("*"))


def _silent_wav(path, seconds):
    from scipy.io import wavfile

    wavfile.write(path, 16000, np.zeros(int(16000 * seconds), dtype=np.int16))
    return path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p.write_bytes(b""), AudioError, "empty file"),
        (lambda p: p.write_text("hello, not audio\n" * 50), AudioError, "cannot decode"),
        (lambda p: _silent_wav(p, 2.0), RenderError, "the audio is silent"),
        (lambda p: _silent_wav(p, 0.1), RenderError, "too short"),
    ],
    ids=["empty", "text", "silent", "short"],
)
def test_bad_audio_is_one_clear_error_and_leaves_no_file(
    prepared, avatar, onnx_model, tmp_path, make, error, message
):
    _, _, encoder, _ = prepared
    audio = tmp_path / "input.wav"
    make(audio)
    out = tmp_path / "out" / "render.mp4"
    with pytest.raises(error, match=message) as caught:
        render_video(avatar, onnx_model, encoder, audio, out, RenderParams(), "cpu")
    assert str(audio) in str(caught.value)
    assert not out.exists() and not list(tmp_path.glob("out/*"))


class _FailingModel(OnnxUNet):
    """Fails on its 10th frame, as a model might run out of memory mid-render."""

    def __init__(self, inner: OnnxUNet):
        self.session, self.spec, self.calls = inner.session, inner.spec, 0

    def __call__(self, image, audio):
        self.calls += 1
        if self.calls == 10:
            raise RuntimeError("model exploded on frame 10")
        return super().__call__(image, audio)


def test_worker_errors_propagate_and_leave_no_partial_file(
    prepared, avatar, onnx_model, short_audio, tmp_path
):
    _, _, encoder, _ = prepared
    out = tmp_path / "render.mp4"
    with pytest.raises(RuntimeError, match="model exploded on frame 10"):
        render_video(
            avatar, _FailingModel(onnx_model), encoder, short_audio, out, RenderParams(), "cpu"
        )
    assert not list(tmp_path.iterdir())


def test_model_of_another_size_is_refused(prepared, avatar, short_audio, tmp_path):
    _, _, encoder, _ = prepared
    big = build_unet("328", mobile=True)
    with pytest.raises(RenderError, match="preset 160"):
        render_video(avatar, big, encoder, short_audio, tmp_path / "x.mp4", RenderParams(), "cpu")
    assert not list(tmp_path.iterdir())
