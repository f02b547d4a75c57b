"""An avatar's audio front-end: audio in, one feature vector per 25 fps video frame out.

Every avatar has one file, `audio_encoder.pth`, that turns audio into the
features its models were trained on, and a registered model version carries
it, so new audio is always encoded the way the training audio was:

* audio mode `ave`: SyncTalk_2D's AVE AudioEncoder in the official file
  layout (the user's `audio_visual_encoder.pth`, or one trained on the avatar);
* audio mode `whisper`: the Whisper tiny.en encoder, copied out of its
  package (float16, as it ships), so the version does not depend on what
  package is installed where it renders.

Which one a file holds is read off its tensor names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synctalk.device import resolve_device
from synctalk.features import ave, whisper
from synctalk.hashing import file_sha256
from synctalk.manifest import FEATURES_SCHEMA, content_hash, write_manifest
from synctalk.media.audio import load_audio
from synctalk.models.checkpoint import atomic_save_npy, atomic_torch_save, read_state_dict
from synctalk.models.whisper_encoder import WhisperEncoder

log = logging.getLogger(__name__)


@dataclass
class AudioFrontEnd:
    audio_mode: str  # "ave" or "whisper"
    model: nn.Module

    @property
    def dim(self) -> int:
        """The length of one frame's feature vector."""
        return whisper.FEATURE_DIM if self.audio_mode == "whisper" else ave.EMBEDDING_DIM

    def features(self, wav: np.ndarray) -> np.ndarray:
        """float32 [N, D]: one feature vector per 25 fps frame of 16 kHz mono `wav`."""
        if self.audio_mode == "whisper":
            return whisper.encode_frames(wav, self.model)
        return ave.encode_frames(wav, self.model)

    def stream(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`features` of the concatenated `chunks`, in consecutive blocks of rows, as the
        audio arrives: memory stays flat however long the audio."""
        if self.audio_mode == "whisper":
            return whisper.encode_stream(chunks, self.model)
        return ave.encode_stream(chunks, self.model)


def save_whisper_encoder(out: Path) -> str:
    """Copy the packaged Whisper encoder (sha256-checked) to `out`; returns the file's sha256."""
    encoder = whisper.load_packaged_encoder()
    atomic_torch_save({k: v.half() for k, v in encoder.state_dict().items()}, out)
    return file_sha256(out)


def load_front_end(path: str | Path, device: str | torch.device = "cpu") -> AudioFrontEnd:
    """The front-end in `path` (either kind, see the module docstring), in eval mode."""
    path = Path(path)
    state = read_state_dict(path)
    if "blocks.0.qkv.weight" in state:
        encoder = WhisperEncoder()
        try:
            encoder.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a Whisper encoder checkpoint: {exc}") from None
        return AudioFrontEnd("whisper", encoder.to(resolve_device(device)).eval())
    return AudioFrontEnd("ave", ave.load_encoder(path, device=device))


def write_avatar_features(
    audio: Path, encoder_path: Path, features_out: Path, manifest_out: Path, device="cpu"
) -> np.ndarray:
    """Per-frame features of an avatar's audio: features.npy plus its manifest.

    The manifest's metadata records the encoder file's sha256 and the audio
    mode, so features are traceable to the exact weights that made them.
    """
    front_end = load_front_end(encoder_path, device=device)
    features = front_end.features(load_audio(audio))
    write_manifest(
        manifest_out,
        {
            "frame": np.arange(len(features), dtype=np.int32),
            "hash": [content_hash(row) for row in features],
        },
        FEATURES_SCHEMA,
        meta={
            "audio_mode": front_end.audio_mode,
            "encoder": str(encoder_path),
            "encoder_sha256": file_sha256(encoder_path),
            "audio": str(audio),
            "shape": list(features.shape),
        },
    )
    atomic_save_npy(features, features_out)
    log.info("%s: %d x %d %s features", audio, *features.shape, front_end.audio_mode)
    return features
