"""The render engine: an audio file in, a lip-synced H.264/AAC mp4 of the avatar out.

Steps: decode the audio (16 kHz mono) -> audio features with the avatar's
encoder, both streamed and the features spooled to a temporary file, so
memory does not grow with the audio's length -> per output frame, the
background frame (ping-pong schedule), its cached crop and the frame's audio
window -> the U-Net -> paste the predicted crop back (feathered) -> raw BGR
frames to ffmpeg's stdin, which encodes them and muxes the original audio
file's sound as AAC.

Length. The output has round(audio_seconds x 25) frames, so the video lasts
as long as the audio to within half a frame (20 ms). The original derives
its frame count from the mel spectrogram (`video_frame_count`), which gives
about 3 frames fewer than that; the frames past the last audio feature reuse
the last feature's window. That is what `feature_window` already gives the
last 8 frames (16 copies of the last vector), so the padded frames see the
same window as the frames just before them: the mouth holds its last shape
for ~0.1 s of trailing audio, typically silence at the end of a file.

Threads. Three workers joined by two bounded queues (together at most
`params.queue_frames` frames queued, fewer for large frames, plus the batch
each worker holds), so memory does not grow with the audio's length:

* prepare: takes the next background frames from the footage's decoder (an
  ffmpeg process, see synctalk.render.background), cuts their crops and
  builds the U-Net's inputs (the 6-channel image, the audio windows), in
  batches;
* infer: runs the model (onnxruntime and torch release the GIL);
* composite: pastes each prediction into its background frame and writes it
  to ffmpeg's stdin; ffmpeg (a separate process) encodes meanwhile.

The first exception in any worker stops the others and is re-raised as is
by `render_video`; ffmpeg is killed and the partial file removed (the mp4 is
written under a temporary name and renamed when complete).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
import hashlib
import logging
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from synctalk.atomic import atomic_path
from synctalk.config import FPS, SAMPLE_RATE, RenderParams
from synctalk.device import resolve_device
from synctalk.features.frontend import AudioFrontEnd, load_front_end
from synctalk.features.spool import FeatureSpool
from synctalk.features.windows import feature_window, smooth_stream
from synctalk.hashing import file_sha256
from synctalk.media.audio import stream_audio
from synctalk.media.ffmpeg import ffmpeg_exe, ffmpeg_input, widen_pipe
from synctalk.models.checkpoint import load_unet
from synctalk.models.unet import UNet, UNetSpec, articulate, make_unet_input
from synctalk.paths import AvatarPaths
from synctalk.progress import progress
from synctalk.render.avatar import (
    RenderAvatar,
    RenderError,
    background_schedule,
    prepare_render_avatar,
)
from synctalk.render.compositor import Compositor
from synctalk.render.onnx import OPSET, OnnxUNet, export_unet, unet_image
from synctalk.render.quantize import CalibrationSet, avatar_calibration, int8_or_fp32

log = logging.getLogger(__name__)

__all__ = [
    "EncodeError",
    "LoadedModel",
    "Mp4Encoder",
    "RenderError",
    "RenderResult",
    "load_for_rendering",
    "load_runtime",
    "render_video",
]

MIN_AUDIO_S = 0.2  # one mel window: less cannot be encoded
SILENCE_DBFS = -60.0  # RMS below this (re full scale 1.0) is silence, not speech
AUDIO_BITRATE = "192k"
_POLL_S = 0.1  # how often blocked queue operations look for a stop request


class EncodeError(RenderError):
    """ffmpeg failed to write the video (a full disk, say): not the input's fault."""


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    seconds: float  # wall time of the whole call
    frames_per_s: float
    duration: float  # video seconds (frames / 25)
    audio_duration: float  # seconds of audio
    runtime: str  # "onnxruntime", "onnxruntime:int8" or "torch:<device>"
    # Wall seconds: audio (decoding and audio features, before the frame loop), then what
    # each worker spent working, not waiting on a queue: decode (waiting on the footage's
    # decoder), prepare, infer, composite (paste-back), write (handing frames to ffmpeg,
    # which blocks while it is busy).
    stage_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------
# runtimes


@dataclass
class LoadedModel:
    """What `render_video` needs of an avatar and a model version, loaded once per batch."""

    avatar: RenderAvatar
    runtime: UNet | OnnxUNet
    front_end: AudioFrontEnd


def load_for_rendering(
    footage: AvatarPaths,
    unet: Path,
    audio_encoder: Path,
    params: RenderParams,
    device: str | torch.device,
    cache_root: Path,
) -> LoadedModel:
    """Load a U-Net and its audio front-end and prepare the avatar's render cache.

    `footage` locates the extract and landmarks stages' outputs (a project's,
    or the copy a registered model carries); the render cache and the ONNX
    export go under `cache_root`.
    """
    model = load_unet(unet)
    avatar = prepare_render_avatar(footage, model.spec.geometry, cache_root)
    front_end = load_front_end(audio_encoder, device=resolve_device(device))

    def calibration() -> CalibrationSet:
        return avatar_calibration(avatar, footage.audio, front_end, model.spec)

    runtime = load_runtime(
        model, params, device, cache_root / "onnx", file_sha256(unet), calibration
    )
    return LoadedModel(avatar, runtime, front_end)


def load_runtime(
    unet: UNet,
    params: RenderParams,
    device: str | torch.device,
    onnx_cache_dir: str | Path,
    checkpoint_sha256: str | None = None,
    calibration: Callable[[], CalibrationSet] | None = None,
) -> UNet | OnnxUNet:
    """The model object `render_video` should be given for `unet` on `device`,
    articulated as `params.articulation` asks (synctalk.models.unet.articulate).

    runtime `auto` is onnxruntime on the CPU (about 4x faster than eager
    PyTorch there) and torch on a GPU; `onnx` asks for onnxruntime (CPU) on
    any device; `torch` for torch. The ONNX file is exported once into
    `onnx_cache_dir`, named by the weights' sha256 (`checkpoint_sha256`, the
    checkpoint file's, when the caller knows it; else a sha256 of the state
    dict), checked against torch on a random input when first made, and
    re-used afterwards. If export or onnxruntime fails, a warning is logged
    and torch is used.

    With `params.precision` int8 the ONNX model is quantized to int8 next to
    the fp32 file (synctalk.render.quantize): `calibration` makes the
    avatar's frames it is calibrated and checked on (called only when the
    int8 file is not cached yet). Below `params.int8_min_psnr`, or without
    calibration frames, fp32 is used with a warning.
    """
    dev = resolve_device(device)
    articulated = articulate(unet, params.articulation)
    if articulated is not unet:
        # the export holds the articulated weights: it is named by their sha256
        unet, checkpoint_sha256 = articulated, None
    wants_onnx = params.runtime == "onnx" or (params.runtime == "auto" and dev.type == "cpu")
    if not wants_onnx:
        if params.precision == "int8":
            log.info("render.precision int8 applies to onnxruntime on the CPU; using torch")
        return unet.to(dev).eval()
    if dev.type != "cpu":
        log.info("render.runtime is onnx: running the U-Net on the CPU with onnxruntime")
    try:
        fp32, path = _onnx_runtime(unet, Path(onnx_cache_dir), checkpoint_sha256)
    except Exception as exc:  # any failure here has the torch fallback
        log.warning(
            "onnxruntime unavailable (%s: %s); rendering with torch", type(exc).__name__, exc
        )
        return unet.to(dev).eval()
    if params.precision != "int8":
        return fp32
    try:
        return int8_or_fp32(fp32, path, calibration, params.int8_min_psnr, _open_onnx)
    finally:
        _release_heap()  # quantizing the 328 U-Net peaks ~1 GB above rendering


def _open_onnx(path: Path) -> OnnxUNet:
    return OnnxUNet(path, threads=onnx_threads(), spinning=onnx_spinning())


def _onnx_runtime(unet: UNet, cache_dir: Path, sha256: str | None) -> tuple[OnnxUNet, Path]:
    """The fp32 ONNX model of `unet` (exported now unless cached) and its file."""
    spec = unet.spec
    digest = sha256 or state_dict_sha256(unet)
    width = "mobile" if spec.mobile else "full"
    path = (
        cache_dir / f"unet-{spec.resolution}-{spec.audio_mode}-{width}-{digest[:16]}-op{OPSET}.onnx"
    )
    if path.is_file():
        try:
            model = _open_onnx(path)
            log.info("using the exported U-Net %s", path)
            return model, path
        except Exception as exc:  # a damaged file: export it again rather than fall back
            log.warning("%s: cannot be loaded (%s); exporting it again", path, exc)
            path.unlink(missing_ok=True)
    log.info("exporting the U-Net to ONNX: %s", path)
    device = next(unet.parameters()).device
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            export_unet(unet.eval(), tmp)
            runner = _open_onnx(tmp)
            _check_export(unet, runner)
    finally:
        unet.to(device)  # export_unet and the check run it on the CPU
        _release_heap()
    runner.path = path  # renamed into place
    return runner, path


def _release_heap() -> None:
    """Give the exporter's (or quantizer's) freed memory back to the OS (glibc keeps it).

    Exporting the 328 U-Net peaks ~0.9 GB above the model itself; without
    this a long-lived render worker would carry that heap around all night.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _check_export(unet: UNet, runner: OnnxUNet) -> None:
    """Refuse an export whose outputs differ from torch's (a silent mismatch costs a batch)."""
    generator = torch.Generator().manual_seed(0)
    size = unet.spec.geometry.size
    image = torch.rand(1, 6, size, size, generator=generator)
    audio = torch.rand(1, *unet.spec.audio_shape, generator=generator)
    with torch.inference_mode():
        expected = unet.cpu()(image, audio).numpy()
    got = runner(image.numpy(), audio.numpy())
    err = float(np.abs(got - expected).max())
    if err > 1e-3:
        raise RenderError(f"the ONNX export differs from torch by {err:.2g} (max abs)")


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def onnx_threads() -> int:
    """onnxruntime intra-op threads for rendering: every core this process may use.

    ffmpeg's encoder and the prepare/composite threads need the CPU too, but
    measured on 2 cores (benchmarks/render.py) two onnxruntime threads still
    render faster than one (160: ~30 against 21.8 frames/s, 328: ~15 against
    10.5): inference is ~85% of the CPU time per frame and the other work
    fits in the gaps. $SYNCTALK_ORT_THREADS overrides.
    """
    override = os.environ.get("SYNCTALK_ORT_THREADS")
    if override:
        return max(1, int(override))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def onnx_spinning() -> bool:
    """Whether onnxruntime's idle pool threads busy-wait (its default) or sleep.

    Off by default: the render's own threads, ffmpeg, parallel renders of a
    batch and other jobs share the cores, and a pool thread spinning while
    its partner is descheduled stalls every parallel operator. Measured with
    benchmarks/render.py on the 2-core CPU: with other jobs running (load ~5)
    the 160 preset rendered at 21.7 frames/s with spinning off against 15.1
    with it on; on an otherwise idle machine spinning is ~10-15% faster (160:
    34.5 against ~30 frames/s, 328: 17.6 against ~15). On a dedicated render
    box running one render at a time, $SYNCTALK_ORT_SPINNING=1 turns it on.
    """
    return os.environ.get("SYNCTALK_ORT_SPINNING", "0") == "1"


class _Runner:
    """How the engine drives a model: three steps, each run by its own thread.

    prepare (producer thread): uint8 crops [B,3,S,S] + float32 audio -> inputs.
    infer (inference thread): inputs -> raw output.
    finish (composite thread): raw output -> uint8 [B,S,S,3] crops.
    """

    name: str
    batch_size: int
    size: int
    audio_shape: tuple[int, ...]
    masked_box: tuple[int, int, int, int]

    def prepare(self, crops: np.ndarray, audio: np.ndarray) -> Any:
        raise NotImplementedError

    def infer(self, inputs: Any) -> Any:
        raise NotImplementedError

    def finish(self, output: Any) -> np.ndarray:
        raise NotImplementedError


class _OnnxRunner(_Runner):
    """onnxruntime on the CPU, one frame per call (batching was slower on this CPU)."""

    def __init__(self, model: OnnxUNet):
        self.model = model
        self.name = "onnxruntime" if model.precision == "fp32" else f"onnxruntime:{model.precision}"
        self.batch_size = 1
        image, audio = model.session.get_inputs()[:2]
        self.size = int(image.shape[-1])
        self.audio_shape = tuple(int(d) for d in audio.shape[1:])
        self.masked_box = model.spec.masked_box

    def prepare(self, crops: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return unet_image(crops, self.masked_box), audio

    def infer(self, inputs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return self.model(*inputs)

    def finish(self, output: np.ndarray) -> np.ndarray:
        # sigmoid output in [0, 1]; +0.5 rounds, and 1.0 maps to 255.5 -> 255
        return (output.transpose(0, 2, 3, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)


class _TorchRunner(_Runner):
    """PyTorch: batched, channels_last and fp16 autocast on CUDA; batch 1 on the CPU."""

    def __init__(self, model: UNet, device: torch.device, batch_size: int):
        self.spec: UNetSpec = model.spec
        self.device = device
        self.cuda = device.type == "cuda"
        self.model = model.to(device).eval()
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = f"torch:{device}"
        self.batch_size = max(1, batch_size) if device.type != "cpu" else 1
        self.size = self.spec.geometry.size
        self.audio_shape = self.spec.audio_shape
        self.masked_box = self.spec.masked_box

    def prepare(self, crops: np.ndarray, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        c, a = torch.from_numpy(crops), torch.from_numpy(audio)
        if self.cuda:
            c, a = c.pin_memory(), a.pin_memory()
        return c, a

    @torch.inference_mode()
    def infer(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        crops, audio = (t.to(self.device, non_blocking=True) for t in inputs)
        x = crops.float().div_(255)
        image = make_unet_input(x, x, self.spec)
        if self.cuda:
            image = image.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda)
        with autocast:
            out = self.model(image, audio)
        # uint8 on the device: 4x less to copy back than float32
        u8 = out.float().mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def finish(self, output: np.ndarray) -> np.ndarray:
        return output


def _make_runner(model: Any, params: RenderParams, device: str | torch.device) -> _Runner:
    if isinstance(model, OnnxUNet):
        return _OnnxRunner(model)
    if isinstance(model, UNet):
        return _TorchRunner(model, resolve_device(device), params.batch_size)
    raise TypeError(f"model must be a UNet or an OnnxUNet, got {type(model).__name__}")


# --------------------------------------------------------------------------
# audio


class AudioLevel:
    """Duration and loudness of audio that streams past: pass its chunks through `watch`."""

    def __init__(self) -> None:
        self.samples = 0
        self._square_sum = 0.0

    def watch(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for chunk in chunks:
            self.samples += len(chunk)
            self._square_sum += float(np.square(chunk, dtype=np.float64).sum())
            yield chunk

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def rms(self) -> float:
        return float(np.sqrt(self._square_sum / self.samples)) if self.samples else 0.0


def check_audio(level: AudioLevel, path: Path) -> float:
    """The audio's duration in seconds; RenderError if too short or silent."""
    seconds = level.seconds
    if seconds < MIN_AUDIO_S:
        raise RenderError(
            f"{path}: the audio is too short ({seconds:.3f} s; at least {MIN_AUDIO_S} s needed)"
        )
    if level.rms == 0 or 20 * np.log10(level.rms) < SILENCE_DBFS:
        raise RenderError(f"{path}: the audio is silent")
    return seconds


def spool_features(
    audio_path: Path, front_end: AudioFrontEnd, smoothing: float
) -> tuple[FeatureSpool, float]:
    """The audio's features, smoothed, in a FeatureSpool, and its duration in seconds.

    Audio and features stream through, so memory stays flat however long the
    file. Raises AudioError for a file that cannot be decoded, RenderError
    for one too short or silent.
    """
    level = AudioLevel()
    blocks = smooth_stream(front_end.stream(level.watch(stream_audio(audio_path))), smoothing)
    spool = FeatureSpool(blocks, dim=front_end.dim)
    try:
        return spool, check_audio(level, audio_path)
    except BaseException:
        spool.close()
        raise


# --------------------------------------------------------------------------
# the render


def render_video(
    avatar: RenderAvatar,
    model: UNet | OnnxUNet,
    front_end: AudioFrontEnd,
    audio_path: str | Path,
    out_path: str | Path,
    params: RenderParams,
    device: str | torch.device = "auto",
) -> RenderResult:
    """Render `avatar` saying `audio_path` into the mp4 `out_path` (written atomically).

    `model` is a torch UNet (run on `device`, batched on a GPU) or an
    OnnxUNet (see `load_runtime`). `front_end` is the avatar's audio front-end.
    Raises AudioError (naming the file) for a missing, empty or undecodable
    audio file, RenderError for a silent or too short one, for a model of
    another size than the avatar's cache, and when ffmpeg fails. Nothing is
    left at `out_path` when it raises.
    """
    started = time.perf_counter()
    audio_path, out_path = Path(audio_path), Path(out_path)
    runner = _make_runner(model, params, device)
    g = avatar.geometry
    if runner.size != g.size:
        raise RenderError(
            f"the model renders {runner.size}x{runner.size} crops but the avatar's render "
            f"cache is for preset {g.name} ({g.size}x{g.size})"
        )

    features, audio_s = spool_features(audio_path, front_end, params.audio_smoothing)
    audio_seconds = time.perf_counter() - started
    n_frames = round(audio_s * FPS)
    schedule = background_schedule(len(avatar), n_frames, params.same_start_end)
    log.info(
        "rendering %s: %.2f s of audio, %d frames, %d audio features, %s, avatar %s (%d frames)",
        *(audio_path, audio_s, n_frames, len(features), runner.name, avatar.name, len(avatar)),
    )
    compositor = Compositor(
        g, avatar.frame_size, params.feather, avatar.crop_boxes[:, 2], params.paste_region
    )

    def window(i: int) -> np.ndarray:
        # Past the last feature, the last frame's window (see the module docstring).
        return feature_window(features, min(i, len(features) - 1), runner.audio_shape)

    with (
        features,
        atomic_path(out_path) as tmp,
        Mp4Encoder(tmp, avatar.frame_size, audio_path, params, out_path) as sink,
    ):
        stages = _run_pipeline(
            avatar, runner, schedule, window, compositor, sink, params.queue_frames
        )
        sink.finish()

    seconds = time.perf_counter() - started
    result = RenderResult(
        path=out_path,
        frames=n_frames,
        seconds=seconds,
        frames_per_s=n_frames / seconds if seconds > 0 else float("inf"),
        duration=n_frames / FPS,
        audio_duration=audio_s,
        runtime=runner.name,
        stage_seconds={"audio": audio_seconds, **stages},
    )
    log.info(
        "wrote %s: %d frames (%.2f s) in %.1f s, %.1f frames/s",
        *(out_path, n_frames, result.duration, seconds, result.frames_per_s),
    )
    return result


class Mp4Encoder:
    """ffmpeg reading frames on stdin, muxing the audio file's sound, writing mp4.

    `write` takes BGR frames and hands ffmpeg 4:2:0 YUV, converted here:
    OpenCV's conversion rounds as exactly as swscale's accurate mode (whose
    default mode costs 5 dB of PSNR in the colour round trip alone), at a
    fraction of its CPU time, and halves the bytes through the pipe.

    stderr goes to a temporary file, not a pipe nobody reads (ffmpeg would
    block on a full one). Leaving the context without `finish` kills ffmpeg.
    """

    def __init__(
        self,
        out: Path,
        frame_size: tuple[int, int],
        audio: Path,
        params: RenderParams,
        name: Path | None = None,
    ):
        h, w = frame_size
        self.out = name or out  # what errors call the file: the final name, not a temporary one
        if h % 2 or w % 2:
            raise ValueError(f"{self.out}: 4:2:0 video needs an even frame size, got {w}x{h}")
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-nostats", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-framerate", str(FPS)]
        cmd += ["-i", "pipe:0", "-i", ffmpeg_input(audio), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-c:v", "libx264", "-preset", params.x264_preset, "-crf", str(params.crf)]
        cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", AUDIO_BITRATE]
        cmd += ["-movflags", "+faststart", "-f", "mp4", ffmpeg_input(out)]
        self.cmd = cmd
        self.stderr = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None
        self._yuv = np.empty((h * 3 // 2, w), np.uint8)

    def __enter__(self) -> Mp4Encoder:
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        assert self.proc.stdin is not None
        widen_pipe(self.proc.stdin.fileno())
        return self

    def write(self, frame: np.ndarray) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420, dst=self._yuv)
            self.proc.stdin.write(memoryview(self._yuv).cast("B"))
        except (BrokenPipeError, ValueError):
            raise EncodeError(f"ffmpeg stopped while encoding {self.out}: {self.error()}") from None

    def finish(self) -> None:
        """Close stdin, wait for ffmpeg, raise RenderError if it failed."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            raise EncodeError(f"ffmpeg could not encode {self.out}: {self.error()}")

    def error(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        rc = self.proc.returncode if self.proc is not None else None
        return lines[-1] if lines else f"ffmpeg exited with status {rc}"

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                    self.proc.stdin.close()
        self.stderr.close()


# --------------------------------------------------------------------------
# the threaded pipeline

_DONE = object()


_QUEUE_BYTES = 256 << 20  # decoded footage frames queued between the workers


@dataclass
class _Batch:
    start: int  # output index of the batch's first frame
    backgrounds: np.ndarray  # avatar frame of each output frame
    frames: list[np.ndarray]  # those footage frames, decoded; pasted into in place
    crops: list[np.ndarray]  # their crops at crop_size (the paste-back's margin ring)
    data: Any = None  # the runner's inputs, then its outputs


class _Stopped(Exception):
    """A worker gave up because another one failed (not itself an error)."""


class _Pipeline:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def worker(self, fn: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the caller's thread
                with self.lock:
                    self.errors.append(exc)
                self.stop.set()

        # In a copy of the caller's context: whatever it carries (a workflow run's
        # context, for its log handlers) holds in the workers too.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(run,), name=f"render-{name}", daemon=True
        )
        thread.start()
        return thread


def _run_pipeline(
    avatar: RenderAvatar,
    runner: _Runner,
    schedule: np.ndarray,
    window: Callable[[int], np.ndarray],
    compositor: Compositor,
    sink: Mp4Encoder,
    queue_frames: int,
) -> dict[str, float]:
    """Run the three workers to the end; returns their busy seconds (see RenderResult)."""
    n, b = len(schedule), runner.batch_size
    # Frames travel from prepare to composite with their batch: at most
    # `queue_frames` of them, fewer when they are large (4K: 25 MB each).
    h, w = avatar.frame_size
    in_flight = min(queue_frames, max(2 * b, _QUEUE_BYTES // (h * w * 3)))
    depth = max(1, in_flight // (2 * b))  # two queues, batches of b frames
    to_model: queue.Queue = queue.Queue(maxsize=depth)
    to_composite: queue.Queue = queue.Queue(maxsize=depth)
    p = _Pipeline()

    busy = {"decode": 0.0, "prepare": 0.0, "infer": 0.0, "composite": 0.0, "write": 0.0}
    clock = time.perf_counter

    def prepare() -> None:
        frames = avatar.backgrounds(schedule)
        try:
            for start in range(0, n, b):
                t = clock()
                backgrounds = schedule[start : start + b]
                batch_frames = [next(frames) for _ in backgrounds]
                t_cut = clock()
                busy["decode"] += t_cut - t
                crops = [
                    avatar.crop(f, int(j)) for f, j in zip(batch_frames, backgrounds, strict=True)
                ]
                inputs = np.stack([avatar.model_input(crop) for crop in crops])
                audio = np.stack([window(i) for i in range(start, start + len(backgrounds))])
                batch = _Batch(start, backgrounds, batch_frames, crops)
                batch.data = runner.prepare(inputs, audio)
                busy["prepare"] += clock() - t_cut
                p.put(to_model, batch)
        finally:
            frames.close()  # stops ffmpeg if the render stopped early
        p.put(to_model, _DONE)

    def infer() -> None:
        while (batch := p.get(to_model)) is not _DONE:
            t = clock()
            batch.data = runner.infer(batch.data)
            busy["infer"] += clock() - t
            p.put(to_composite, batch)
        p.put(to_composite, _DONE)

    def composite() -> None:
        with progress(None, "render", total=n) as bar:
            while (batch := p.get(to_composite)) is not _DONE:
                t = clock()
                predictions = runner.finish(batch.data)
                for k, j in enumerate(batch.backgrounds):
                    frame = batch.frames[k]
                    compositor.paste(frame, batch.crops[k], predictions[k], avatar.crop_boxes[j])
                    t_write = clock()
                    sink.write(frame)
                    busy["write"] += clock() - t_write
                busy["composite"] += clock() - t
                bar.update(len(batch.backgrounds))
        busy["composite"] -= busy["write"]

    threads = [p.worker(prepare, "prepare"), p.worker(infer, "infer")]
    threads.append(p.worker(composite, "composite"))
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=_POLL_S)
    except BaseException:  # KeyboardInterrupt in the caller's thread: stop the workers
        p.stop.set()
        for thread in threads:
            thread.join()
        raise
    if p.errors:
        raise p.errors[0]
    return busy
