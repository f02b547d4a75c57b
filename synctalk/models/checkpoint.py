"""Checkpoint files: the original SyncTalk_2D layout plus a metadata sidecar.

A checkpoint is a bare `state_dict` saved with torch.save, exactly what the
original code writes and reads, so files move both ways. Beside it,
`<file>.json` records what the weights are (kind, resolution preset, audio
mode, width, code version, sha256) so they can be loaded without guessing.
An original checkpoint has no sidecar: its preset and width are read off the
tensor shapes; the audio mode too where the shapes tell (wenet), otherwise it
must be given (ave and hubert differ only in a stride).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import synctalk
from synctalk.atomic import atomic_path
from synctalk.device import resolve_device
from synctalk.hashing import file_sha256
from synctalk.models.syncnet import SyncNet, build_syncnet
from synctalk.models.unet import UNet, UNetSpec

SIDECAR_SUFFIX = ".json"


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically and reproducibly: the same tensors give the same bytes.

    torch.save given a file name names the folder inside its zip after that file, and
    the temporary's name is random; given an open file it always writes `archive/`.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def atomic_save_npy(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return state


def save_model(model: UNet | SyncNet, path: str | Path, **extra: Any) -> dict[str, Any]:
    """Save `model`'s state dict in the original layout plus the sidecar; returns the metadata.

    The tensors are written as CPU tensors (loadable anywhere); the model stays where it is.
    """
    path = Path(path)
    atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    if isinstance(model, UNet):
        meta = {"kind": "unet", **_spec_dict(model.spec)}
    elif isinstance(model, SyncNet):
        meta = {
            "kind": "syncnet",
            "resolution": model.preset,
            "audio_mode": model.audio_mode,
            "mobile": model.mobile,
            "luminance_only": model.luminance_only,
        }
    else:
        raise TypeError(f"cannot save a {type(model).__name__}")
    # No timestamp: the sidecar is a DVC output, and the same training must give the
    # same bytes (when a model was trained is on its MLflow run).
    meta.update(
        code_version=synctalk.__version__,
        sha256=file_sha256(path),
        **extra,
    )
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return meta


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.is_file() else None


def _spec_dict(spec: UNetSpec) -> dict[str, Any]:
    return {
        "resolution": spec.resolution,
        "audio_mode": spec.audio_mode,
        "mobile": spec.mobile,
        "input_mask": spec.input_mask,
    }


def infer_unet_spec(state: dict[str, torch.Tensor], audio_mode: str | None = None) -> UNetSpec:
    """Preset, width and (where visible) audio mode of a U-Net state dict."""
    if "inc.inconv.0.conv.6.weight" not in state or "outc.conv.weight" not in state:
        raise ValueError("not a SyncTalk_2D U-Net state dict")
    res = "328" if any(k.startswith("up5.") for k in state) else "160"
    mobile = state["inc.inconv.0.conv.6.weight"].shape[0] == 16
    if "audio_model.conv1.conv.0.weight" not in state:
        raise ValueError("a U-Net of our own audio modes, whose metadata sidecar is missing")
    wenet = state["audio_model.conv1.conv.0.weight"].shape[1] == 256
    if audio_mode is not None and (audio_mode == "wenet") != wenet:
        raise ValueError(f"checkpoint is not a {audio_mode} U-Net")
    mode = "wenet" if wenet else (audio_mode or "ave")
    return UNetSpec(resolution=res, audio_mode=mode, mobile=mobile)


def _strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: does not fit {type(model).__name__}: {exc}") from None


def load_unet(
    path: str | Path, audio_mode: str | None = None, device: str | torch.device = "cpu"
) -> UNet:
    """A U-Net from our checkpoint (sidecar) or an original one (shapes + `audio_mode`)."""
    path = Path(path)
    state = read_state_dict(path)
    meta = read_metadata(path)
    if meta is not None:
        # files written before input masks existed used SyncTalk_2D's
        spec = UNetSpec(
            meta["resolution"], meta["audio_mode"], meta["mobile"], meta.get("input_mask", "mouth")
        )
    else:
        spec = infer_unet_spec(state, audio_mode)
    model = UNet(spec)
    if spec.audio_mode == "whisper" and "audio_model.centre" not in state:
        # saved before the audio centre was recorded: it loads, but cannot be articulated
        state = {**state, "audio_model.centre": model.audio_model.centre}
    _strict_load(model, state, path)
    return model.to(resolve_device(device)).eval()


def load_syncnet(
    path: str | Path, audio_mode: str | None = None, device: str | torch.device = "cpu"
) -> SyncNet:
    """A SyncNet from our checkpoint (sidecar) or an original one (shapes + `audio_mode`)."""
    path = Path(path)
    state = read_state_dict(path)
    meta = read_metadata(path)
    luminance_only = False  # SyncTalk_2D's SyncNets see colour
    if meta is not None:
        res, mode, mobile = meta["resolution"], meta["audio_mode"], meta.get("mobile", False)
        luminance_only = meta.get("luminance_only", False)
    else:
        if "face_encoder.0.conv_block.0.weight" not in state:
            raise ValueError(f"{path}: not a SyncTalk_2D SyncNet state dict")
        res = "328" if "face_encoder.17.conv_block.0.weight" in state else "160"
        wenet = state["audio_encoder.0.conv_block.0.weight"].shape[1] == 128
        mode = "wenet" if wenet else (audio_mode or "ave")
        mobile = state["face_encoder.0.conv_block.0.weight"].shape[0] == 16
    model = build_syncnet(res, mode, mobile, luminance_only)
    _strict_load(model, state, path)
    return model.to(resolve_device(device)).eval()
