"""Lip-sync scores LSE-D and LSE-C, computed with the avatar's own SyncNet.

The procedure is Chung & Zisserman's SyncNet offset search as Wav2Lip's
evaluation scripts run it (syncnet_python's ``calc_pdist`` / ``evaluate``):
embed every face and every audio window, and for each offset in -15..+15
frames take the mean over frames of the distance between face i and audio
i + offset. On that mean-per-offset curve

* LSE-D (``min_distance``) is its minimum: how close the best-aligned audio
  and mouth are (lower is better);
* LSE-C (``confidence``) is its median minus its minimum: how clearly one
  offset stands out (higher is better);
* ``best_offset`` is where the minimum is.

Differences from syncnet_python, each deliberate:

* Offset sign: ``best_offset = +k`` means face frame i matches audio frame
  i + k, i.e. the mouth moves k frames *ahead* of the sound (delay the video,
  or advance the audio, by k frames to fix it). syncnet_python prints the
  opposite sign (its ``offset = vshift - argmin``).
* Only pairs where both frames exist are averaged. syncnet_python pads the
  audio features with zero vectors and averages those pairs in too, which
  biases the edge offsets of short clips. Here offsets are limited to
  |k| <= N - 1 so every offset has at least one pair.
* Our SyncNet sees single S x S crops and the U-Net's audio window, not
  syncnet_v2's 5-frame stacks and MFCCs, and its embeddings are unit
  vectors, so distances lie in [0, 2]. The numbers rank our own renders;
  they are not comparable with published LSE values, which come from
  syncnet_v2 (see DESIGN.md: used only when its weights are provided).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

MAX_OFFSET = 15  # frames each way, syncnet_python's vshift


@dataclass(frozen=True)
class SyncScore:
    offsets: np.ndarray  # int64 [K]: candidate offsets, ascending (audio frame - face frame)
    distances: np.ndarray  # float64 [K]: mean face/audio embedding distance per offset
    min_distance: float  # LSE-D: distances at the best offset
    confidence: float  # LSE-C: median(distances) - min_distance
    best_offset: int  # frames; +k: face i matches audio i + k

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for metrics.json / MLflow."""
        return {
            "lse_d": self.min_distance,
            "lse_c": self.confidence,
            "sync_offset": float(self.best_offset),
        }


def offset_range(n_frames: int, max_offset: int = MAX_OFFSET) -> np.ndarray:
    """The offsets scored for a clip of `n_frames`: -m..m, m = min(max_offset, n_frames - 1).

    Clipping keeps at least one (face, audio) pair per offset for clips
    shorter than 2 * max_offset + 1 frames.
    """
    if n_frames < 1:
        raise ValueError("no frames to score")
    if max_offset < 0:
        raise ValueError("max_offset must be >= 0")
    m = min(max_offset, n_frames - 1)
    return np.arange(-m, m + 1, dtype=np.int64)


def score_embeddings(
    face_embeddings: torch.Tensor | np.ndarray,
    audio_embeddings: torch.Tensor | np.ndarray,
    max_offset: int = MAX_OFFSET,
) -> SyncScore:
    """LSE-D / LSE-C from per-frame embeddings [N, D] (row i = video frame i).

    Kept separate from the network so another evaluator (syncnet_v2) can
    reuse the scoring, and so the scoring is testable without a model.
    """
    f = torch.as_tensor(face_embeddings).detach().to("cpu", torch.float64)
    a = torch.as_tensor(audio_embeddings).detach().to("cpu", torch.float64)
    if f.ndim != 2 or f.shape != a.shape:
        raise ValueError(
            f"expected two [N, D] embeddings, got {tuple(f.shape)} and {tuple(a.shape)}"
        )
    n = len(f)
    offsets = offset_range(n, max_offset)
    distances = np.empty(len(offsets), dtype=np.float64)
    for k, off in enumerate(offsets.tolist()):
        start, stop = max(0, -off), min(n, n - off)
        pairs = f[start:stop] - a[start + off : stop + off]
        distances[k] = float(pairs.norm(dim=1).mean())
    best = int(np.argmin(distances))
    min_distance = float(distances[best])
    return SyncScore(
        offsets=offsets,
        distances=distances,
        min_distance=min_distance,
        confidence=float(np.median(distances)) - min_distance,
        best_offset=int(offsets[best]),
    )


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def embed(
    syncnet: nn.Module,
    faces: torch.Tensor | np.ndarray,
    audio_windows: torch.Tensor | np.ndarray,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(face_embeddings, audio_embeddings), float32 [N, D] on the CPU.

    `faces` [N, 3, S, S] float in [0, 1] (BGR, as SyncNet was trained on),
    `audio_windows` [N, *SYNCNET_AUDIO_SHAPES[mode]], row i = frame i's
    window. Runs in eval mode under inference_mode, `batch_size` frames at
    a time on `device` (default: where the model's weights are); the model's
    train/eval mode is restored afterwards, since a caller mid-training
    would not expect it flipped.
    """
    if len(faces) != len(audio_windows):
        raise ValueError(f"{len(faces)} faces but {len(audio_windows)} audio windows")
    if len(faces) == 0:
        raise ValueError("no frames to embed")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    faces = torch.as_tensor(faces)
    audio_windows = torch.as_tensor(audio_windows)
    if not faces.is_floating_point():
        # uint8 0..255 crops would silently score as saturated white.
        raise TypeError(f"faces must be float in [0, 1], got {faces.dtype}")
    device = torch.device(device) if device is not None else _model_device(syncnet)
    was_training = syncnet.training
    syncnet.eval()
    face_out, audio_out = [], []
    try:
        with torch.inference_mode():
            for start in range(0, len(faces), batch_size):
                face = faces[start : start + batch_size].to(device, torch.float32)
                audio = audio_windows[start : start + batch_size].to(device, torch.float32)
                audio_emb, face_emb = syncnet(face, audio)
                face_out.append(face_emb.float().cpu())
                audio_out.append(audio_emb.float().cpu())
    finally:
        syncnet.train(was_training)
    return torch.cat(face_out), torch.cat(audio_out)


def sync_score(
    syncnet: nn.Module,
    faces: torch.Tensor | np.ndarray,
    audio_windows: torch.Tensor | np.ndarray,
    max_offset: int = MAX_OFFSET,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> SyncScore:
    """LSE-D / LSE-C of rendered crops against their audio windows (see module doc)."""
    face_emb, audio_emb = embed(syncnet, faces, audio_windows, batch_size, device)
    score = score_embeddings(face_emb, audio_emb, max_offset)
    log.debug(
        "sync over %d frames: LSE-D %.4f, LSE-C %.4f, best offset %+d",
        len(face_emb),
        score.min_distance,
        score.confidence,
        score.best_offset,
    )
    return score
