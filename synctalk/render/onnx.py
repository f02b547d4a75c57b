"""U-Net to ONNX, and running it with onnxruntime.

On this kind of CPU onnxruntime runs the 328 U-Net about 4x faster than eager
PyTorch with the same outputs, so CPU rendering uses it. The export has a
dynamic batch axis; input names are `image` [B,6,S,S] and `audio` (the
mode's window shape), output `crop` [B,3,S,S]. The U-Net's spec (preset,
audio mode, width, input mask) is stored in the file's metadata, so whoever
runs it prepares the inputs the way the model was trained; `unet_image` is
that preparation for onnxruntime's float32 inputs. An int8 copy
(synctalk.render.quantize) keeps the same inputs, outputs and metadata.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from synctalk.atomic import atomic_path
from synctalk.models.unet import UNet, UNetSpec

INPUT_NAMES = ("image", "audio")
OUTPUT_NAME = "crop"
OPSET = 17
SPEC_KEY = "synctalk_unet_spec"
PRECISION_KEY = "synctalk_precision"  # absent: fp32 (files exported before int8 existed)


def example_inputs(model: UNet, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.spec.geometry.size
    return torch.rand(batch, 6, size, size), torch.rand(batch, *model.spec.audio_shape)


def export_unet(model: UNet, path: str | Path) -> Path:
    """Export `model` (eval mode, on CPU) to `path`, atomically."""
    path = Path(path)
    model = model.cpu().eval()
    dynamic = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about constant shapes
            torch.onnx.export(
                model,
                example_inputs(model),
                tmp,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter needs no onnxscript
            )
        exported = onnx.load(str(tmp))
        onnx.helper.set_model_props(exported, {SPEC_KEY: json.dumps(asdict(model.spec))})
        onnx.save(exported, str(tmp))
    return path


def unet_image(crops: np.ndarray, masked_box: tuple[int, int, int, int]) -> np.ndarray:
    """float32 [B,6,S,S] U-Net input from uint8 crops [B,3,S,S] that are both reference and
    current frame (as in rendering): the crop, then the crop with `masked_box` blacked out."""
    b, _, s, _ = crops.shape
    image = np.empty((b, 6, s, s), dtype=np.float32)
    np.multiply(crops, np.float32(1 / 255), out=image[:, :3])
    image[:, 3:] = image[:, :3]
    x0, y0, x1, y1 = masked_box
    image[:, 3:, y0:y1, x0:x1] = 0
    return image


class OnnxUNet:
    """Callable like the U-Net, on numpy arrays, through onnxruntime."""

    precision = "fp32"  # or what the file's metadata says (PRECISION_KEY)

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            # Idle pool threads sleep rather than busy-wait: much faster when other
            # threads or processes need the same cores (see synctalk.render.engine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.path = Path(path)
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in self.metadata:
            raise ValueError(f"{path}: not a U-Net exported by synctalk (no {SPEC_KEY})")
        self.spec = UNetSpec(**json.loads(self.metadata[SPEC_KEY]))
        self.precision = self.metadata.get(PRECISION_KEY, self.precision)

    def __call__(self, image: np.ndarray, audio: np.ndarray) -> np.ndarray:
        feeds = {
            INPUT_NAMES[0]: np.ascontiguousarray(image, dtype=np.float32),
            INPUT_NAMES[1]: np.ascontiguousarray(audio, dtype=np.float32),
        }
        return self.session.run([OUTPUT_NAME], feeds)[0]
