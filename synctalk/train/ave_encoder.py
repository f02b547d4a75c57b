"""Training an AVE AudioEncoder on the avatar's own footage.

SyncTalk's `audio_visual_encoder.pth` is non-commercial, so when the user has
not supplied it the encoder is learnt here: it becomes the audio tower of a
small mel-input SyncNet whose face tower sees the lower half of the training
crop, and the pair learns whether a 0.2 s mel window belongs with a frame
(in sync) or not (the audio of a frame at least `min_offset_frames` away).
What the audio tower learns to notice is exactly what moves the mouth.

The last 10% of the video is held out; the reported accuracy is on it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synctalk.config import AveEncoderParams, Resolution
from synctalk.features.ave import load_encoder, mel_windows, save_encoder
from synctalk.media.audio import load_audio, melspectrogram
from synctalk.models.audio_encoder import EMBEDDING_DIM, AudioEncoder
from synctalk.models.checkpoint import file_sha256
from synctalk.progress import progress

log = logging.getLogger(__name__)

MOUTH_INPUT = (48, 96)  # height, width of the face tower's lower-face input
VALIDATION_FRACTION = 0.1
EVAL_EVERY = 50  # steps


def lower_face(crops: np.ndarray, geometry: Resolution) -> np.ndarray:
    """uint8 [N, 3, 48, 96]: the lower half of each crop's inner S x S, RGB, downscaled."""
    x0, y0, x1, y1 = geometry.inner_box
    mid = y0 + geometry.size // 2
    out = np.empty((len(crops), 3, *MOUTH_INPUT), dtype=np.uint8)
    for i, crop in enumerate(crops):
        half = crop[mid:y1, x0:x1, ::-1]
        out[i] = cv2.resize(half, MOUTH_INPUT[::-1], interpolation=cv2.INTER_AREA).transpose(
            2, 0, 1
        )
    return out


class FaceTower(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.net = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 256))
        self.head = nn.Linear(256, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x).mean(dim=(2, 3)))


class MelSyncNet(nn.Module):
    """Sync logit of (lower face, mel window) = scale * cosine + bias."""

    def __init__(self):
        super().__init__()
        self.audio = AudioEncoder()
        self.face = FaceTower()
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(-2.5))

    def forward(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        a = F.normalize(self.audio(mel), dim=1)
        f = F.normalize(self.face(face), dim=1)
        return self.scale * (a * f).sum(dim=1) + self.bias


@dataclass
class EncoderReport:
    steps: int
    best_step: int  # the step whose audio tower is kept (0: none beat the initial one)
    train_loss: list[float]  # mean loss per EVAL_EVERY steps
    val_loss_start: float
    val_loss: float
    val_accuracy_start: float
    val_accuracy: float


def _pairs(rng: np.random.Generator, frames: np.ndarray, n: int, min_offset: int) -> tuple:
    """n in-sync and n off-sync (face frame, audio frame) pairs from `frames`.

    Off-sync audio comes from min_offset..3*min_offset frames away: close enough
    that head pose, lighting and the topic of speech are the same, so telling
    the pairs apart takes the mouth, not slow cues that differ across the video.
    """
    face = rng.choice(frames, size=2 * n)
    audio = face.copy()
    for k in range(n, 2 * n):
        distance = np.abs(frames - face[k])
        near = frames[(distance >= min_offset) & (distance <= 3 * min_offset)]
        audio[k] = rng.choice(near if len(near) else frames[distance >= min_offset])
    label = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
    return face, audio, label


def _batch(faces, mels, face_idx, audio_idx, label, device):
    f = torch.from_numpy(faces[face_idx]).to(device, non_blocking=True).float() / 255.0
    m = torch.from_numpy(mels[audio_idx]).to(device, non_blocking=True)
    return f, m, torch.from_numpy(label).to(device)


def train_audio_encoder(
    faces: np.ndarray,
    mel_windows: np.ndarray,
    params: AveEncoderParams,
    device: torch.device,
) -> tuple[AudioEncoder, EncoderReport]:
    """Learn an AudioEncoder from lower faces [N,3,48,96] uint8 and mel windows [N,1,80,16]."""
    n = min(len(faces), len(mel_windows))
    n_val = max(2 * params.min_offset_frames + 2, int(n * VALIDATION_FRACTION))
    if n - n_val < 4 * params.min_offset_frames:
        raise ValueError(f"{n} frames are too few to train an audio encoder")
    train_frames, val_frames = np.arange(n - n_val), np.arange(n - n_val, n)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    model = MelSyncNet().to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=params.learning_rate, total_steps=params.steps, pct_start=0.1
    )
    val = _batch(faces, mel_windows, *_pairs(np.random.default_rng(1), val_frames, 128,
                                             params.min_offset_frames), device)  # fmt: skip

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            logits = model(val[0], val[1])
            loss = F.binary_cross_entropy_with_logits(logits, val[2]).item()
            accuracy = ((logits > 0).float() == val[2]).float().mean().item()
        model.train()
        return loss, accuracy

    val_loss_start, val_acc_start = evaluate()
    # With a few minutes of footage the pair overfits after a few hundred steps,
    # so the audio tower is kept from the step with the best validation loss.
    best = (val_loss_start, val_acc_start, 0, copy.deepcopy(model.audio.state_dict()))
    half = params.batch_size // 2
    losses, window = [], []
    for step in progress(range(1, params.steps + 1), "ave_encoder", unit="step"):
        face, mel, label = _batch(
            faces, mel_windows, *_pairs(rng, train_frames, half, params.min_offset_frames), device
        )
        loss = F.binary_cross_entropy_with_logits(model(face, mel), label)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        window.append(loss.item())
        if len(window) == EVAL_EVERY or step == params.steps:
            losses.append(float(np.mean(window)))
            window = []
            val_loss, val_acc = evaluate()
            if val_loss < best[0]:
                best = (val_loss, val_acc, step, copy.deepcopy(model.audio.state_dict()))
    val_loss, val_acc, best_step, state = best
    model.audio.load_state_dict(state)
    log.info(
        "audio encoder: validation accuracy %.3f -> %.3f, loss %.3f -> %.3f (best at step %d)",
        val_acc_start, val_acc, val_loss_start, val_loss, best_step,
    )  # fmt: skip
    report = EncoderReport(
        params.steps, best_step, losses, val_loss_start, val_loss, val_acc_start, val_acc
    )
    return model.audio.cpu().eval(), report


@dataclass
class EncoderSource:
    kind: str  # "official" (the user's audio_visual_encoder.pth) or "trained"
    sha256: str  # of the file written
    report: EncoderReport | None = None


def prepare_audio_encoder(
    official: Path, crops: Path, audio: Path, geometry: Resolution, params: AveEncoderParams,
    out: Path, device: torch.device,
) -> EncoderSource:  # fmt: skip
    """Put an AVE encoder at `out`: the official weights when present, else train one."""
    if official.is_file():
        encoder = load_encoder(official)  # validates the layout
        save_encoder(encoder, out)
        log.info("using the official AVE weights %s", official)
        return EncoderSource("official", file_sha256(out))
    log.info("%s not found: training an audio encoder on this avatar", official)
    faces = lower_face(np.load(crops, mmap_mode="r"), geometry)
    windows = mel_windows(melspectrogram(load_audio(audio)))
    encoder, report = train_audio_encoder(faces, windows, params, device)
    save_encoder(encoder, out)
    return EncoderSource("trained", file_sha256(out), report)
