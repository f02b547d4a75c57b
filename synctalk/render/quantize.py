"""The U-Net in int8 on the CPU: statically quantized, calibrated on the avatar, checked first.

Why: onnxruntime's int8 convolutions use AVX-512 VNNI, and the U-Net is
almost all convolutions. Measured on the 2-core CI CPU (328 U-Net, 2
threads, idle machine): fp32 62 ms per frame, int8 29 ms; 160: 39 against
15 ms.

How (`render.precision: int8`, opt-in):

* Format: QDQ with uint8 activations and int8 weights, symmetric, one scale
  per output channel. onnxruntime fuses each QDQ group into QLinearConv and
  friends. Measured on this CPU at 328: QDQ/uint8 29 ms, QOperator/uint8
  35 ms, QDQ/int8 activations 88 ms (x86 has no fast int8 x int8 kernel);
  per-tensor weights were no faster; keeping the depthwise convolutions in
  fp32 was slower (the extra (de)quantization of the widest tensors eats
  what their fp32 kernels save).
* The output tail stays fp32: the last block's projection and residual sum,
  the output convolution and the sigmoid (`_fp32_tail`). Their activations
  reach the output with nothing after them to average the rounding out: on
  the tiny preset trained 126 steps (min..max ranges), quantizing them too
  gave 33.6 dB, keeping them 39.0 dB, at ~1 ms per frame. The weights are not the problem (int8
  weights with fp32 activations: 53 dB); the activations' 8 bits are.
* Calibration: every activation's range is the one with the least expected
  error over frames of the avatar's own footage (synctalk.render.
  activation_ranges; min..max lost 3 dB at 328), fed as rendering feeds
  them: the crop as reference and masked current frame, with the avatar's
  own audio features at that frame. The avatar's pixels and voice are what
  the model will see.
* Check: on other frames of the same avatar (held out from calibration), the
  PSNR of the int8 output against the fp32 output. The figure is stored in
  the int8 file's metadata, so the check is made once per model version; the
  bar (`render.int8_min_psnr`) is applied at every load, so changing it needs
  no new quantization. Below the bar the render runs in fp32 and a warning
  names the figure.

The int8 file sits next to the fp32 export it was made from
(`<fp32 name>-int8-q<QUANT_VERSION>.onnx`), so it is cached per model
version exactly as the fp32 file is.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from synctalk.atomic import atomic_path
from synctalk.config import SAMPLE_RATE
from synctalk.features.windows import feature_window
from synctalk.media.audio import load_audio
from synctalk.models.unet import UNetSpec
from synctalk.render.activation_ranges import activation_ranges
from synctalk.render.onnx import INPUT_NAMES, PRECISION_KEY, OnnxUNet, unet_image

if TYPE_CHECKING:
    from synctalk.features.frontend import AudioFrontEnd
    from synctalk.render.avatar import RenderAvatar

log = logging.getLogger(__name__)

# Bump when the quantization recipe changes: cached int8 files are then made anew.
QUANT_VERSION = 1
PSNR_KEY = "synctalk_int8_psnr"  # dB, int8 against fp32 on held-out frames of the avatar
# Frames drawn evenly over the avatar: every other one calibrates, the rest are held out.
# On the trained tiny model (min..max ranges) 20, 40, 80 and 125 frames all gave
# 39.0-39.4 dB; 40 keep quantizing short (~25 s at 328 on 2 busy cores).
CALIBRATION_FRAMES = 40
# Audio features for calibration come from the avatar's first minute: enough
# speech to span the mouth's shapes, at a bounded cost for a long avatar.
CALIBRATION_SECONDS = 60


@dataclass(frozen=True)
class CalibrationSet:
    """U-Net inputs from the avatar's own frames: float32 images [N,6,S,S], audio [N,...]."""

    images: np.ndarray
    audio: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def split(self) -> tuple[CalibrationSet, CalibrationSet]:
        """(calibration, held out): alternate frames, so both span the whole clip."""
        return (
            CalibrationSet(self.images[0::2], self.audio[0::2]),
            CalibrationSet(self.images[1::2], self.audio[1::2]),
        )

    def frames(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image, audio) of each frame, as batches of one (how rendering runs the CPU model)."""
        for i in range(len(self)):
            yield self.images[i : i + 1], self.audio[i : i + 1]


def avatar_calibration(
    avatar: RenderAvatar,
    audio: Path,
    front_end: AudioFrontEnd,
    spec: UNetSpec,
    frames: int = CALIBRATION_FRAMES,
) -> CalibrationSet:
    """Inputs for `frames` frames spread over the avatar, each with its own audio window.

    `audio` is the avatar's own sound (AvatarPaths.audio), encoded by its
    front-end; only its first CALIBRATION_SECONDS are used.
    """
    wav = load_audio(audio)[: CALIBRATION_SECONDS * SAMPLE_RATE]
    features = front_end.features(wav)
    usable = min(len(avatar), len(features))
    if usable < 2:
        raise ValueError(f"calibration needs at least 2 frames with audio, the avatar has {usable}")
    picks = np.unique(np.linspace(0, usable - 1, min(frames, usable)).round().astype(int))
    crops = avatar.model_inputs(picks)
    audio = np.stack([feature_window(features, int(j), spec.audio_shape) for j in picks])
    return CalibrationSet(unet_image(crops, spec.masked_box), audio.astype(np.float32))


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}-int8-q{QUANT_VERSION}.onnx")


def output_psnr(reference: OnnxUNet, candidate: OnnxUNet, frames: CalibrationSet) -> float:
    """PSNR (dB) of `candidate`'s outputs against `reference`'s on `frames` (outputs in [0, 1])."""
    squared, count = 0.0, 0
    for image, audio in frames.frames():
        diff = candidate(image, audio) - reference(image, audio)
        squared += float(np.square(diff, dtype=np.float64).sum())
        count += diff.size
    mse = squared / count
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def quantize_unet(
    fp32: OnnxUNet, fp32_path: Path, out_path: Path, calibration: CalibrationSet
) -> float:
    """Write the int8 model of `fp32_path` to `out_path` (atomically); return its PSNR.

    `fp32` is the loaded fp32 model (the reference of the check).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fit, held_out = calibration.split()
    spec = fp32.spec

    feeds = [dict(zip(INPUT_NAMES, frame, strict=True)) for frame in fit.frames()]

    class OneFrame(CalibrationDataReader):
        # Every range is given (TensorQuantOverrides below); onnxruntime's own
        # calibration pass only needs to run, so one frame spares its time.
        def __init__(self) -> None:
            self.frames = iter(feeds[:1])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.frames, None)

    with tempfile.TemporaryDirectory(prefix="synctalk-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        with _quiet_quantizer():
            # Folds batch norms into the convolutions and infers shapes, so every
            # convolution is quantized with its final weights.
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared), load_external_data=False).graph
            ranges = activation_ranges(prepared, feeds)
            overrides = {
                name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                for name, (lo, hi) in ranges.items()
            }
            quantize_static(
                str(prepared),
                str(quantized),
                OneFrame(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=_fp32_tail(graph, spec),
                extra_options={"TensorQuantOverrides": overrides},
            )
        model = onnx.load(str(quantized))
        props = {
            p.key: p.value
            for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props
        }
        props[PRECISION_KEY] = "int8"
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(quantized))
        candidate = OnnxUNet(quantized, threads=_threads(fp32))
        psnr = output_psnr(fp32, candidate, held_out)
        del candidate
        props[PSNR_KEY] = f"{psnr:.3f}"
        onnx.helper.set_model_props(model, props)
        with atomic_path(out_path) as tmp_out:
            onnx.save(model, str(tmp_out))
    log.info(
        "quantized the U-Net to int8 (%d calibration frames): %.1f dB PSNR against fp32 on "
        "%d held-out frames; %s",
        len(fit),
        psnr,
        len(held_out),
        out_path,
    )
    return psnr


def _fp32_tail(graph: onnx.GraphProto, spec: UNetSpec) -> list[str]:
    """Names of the nodes kept in fp32 (see the module docstring): found by the module
    paths the exporter names them after, so a renamed module fails loudly here."""
    last = f"/up{spec.geometry.unet_depth}/conv/double_conv/double_conv.1"
    wanted = {f"{last}/conv/conv.6/Conv", f"{last}/Add"}
    names = [node.name for node in graph.node]
    tail = [n for n in names if n in wanted or n.startswith("/outc/")]
    tail += [node.name for node in graph.node if node.op_type == "Sigmoid"]
    missing = wanted - set(tail)
    if missing or not any(n.startswith("/outc/") for n in tail):
        raise ValueError(f"the U-Net graph has no {sorted(missing) or '/outc'} node")
    return tail


def int8_or_fp32(
    fp32: OnnxUNet,
    fp32_path: Path,
    calibration: Callable[[], CalibrationSet] | None,
    min_psnr: float,
    open_model: Callable[[Path], OnnxUNet],
) -> OnnxUNet:
    """The int8 model of `fp32` if it is (or, made now, turns out) good enough, else `fp32`.

    `calibration` makes the avatar's calibration frames; it is called only when
    the int8 file is not cached yet. `open_model` loads an ONNX file with the
    render's session settings. Every way of not using int8 logs a warning.
    """
    path = int8_path(fp32_path)
    int8 = None
    if path.is_file():
        try:
            int8 = open_model(path)
            float(int8.metadata[PSNR_KEY])
        except Exception as exc:  # a damaged file: quantize again
            log.warning("%s: cannot be used (%s); quantizing again", path, exc)
            path.unlink(missing_ok=True)
            int8 = None
    if int8 is None:
        if calibration is None:
            log.warning("render.precision is int8 but no avatar frames to calibrate on; fp32")
            return fp32
        try:
            quantize_unet(fp32, fp32_path, path, calibration())
            int8 = open_model(path)
        except Exception as exc:  # fp32 still renders: never lose a night's batch to this
            log.warning(
                "int8 quantization failed (%s: %s); rendering in fp32", type(exc).__name__, exc
            )
            return fp32
    psnr = float(int8.metadata[PSNR_KEY])
    if psnr < min_psnr:
        log.warning(
            "int8 U-Net: PSNR %.1f dB against fp32 on held-out frames, below "
            "render.int8_min_psnr (%.1f dB); rendering in fp32",
            psnr,
            min_psnr,
        )
        return fp32
    log.info("using the int8 U-Net %s (PSNR %.1f dB against fp32)", path, psnr)
    return int8


def _threads(model: OnnxUNet) -> int:
    return model.session.get_session_options().intra_op_num_threads


class _DropQuantizerNoise(logging.Filter):
    """onnxruntime.quantization warns through the root logger about tensors it rightly
    leaves alone (shape arithmetic); the result is checked by PSNR instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, noise = logging.getLogger(), _DropQuantizerNoise()
    root.addFilter(noise)
    try:
        yield
    finally:
        root.removeFilter(noise)
