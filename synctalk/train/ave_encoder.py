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

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synctalk.config import AveEncoderParams, Resolution
from synctalk.features.ave import load_encoder, mel_windows, save_encoder
from synctalk.hashing import file_sha256
from synctalk.media.audio import load_audio, melspectrogram
from synctalk.models.audio_encoder import EMBEDDING_DIM, AudioEncoder
from synctalk.train.data import VALIDATION_FRACTION, SyncPairs
from synctalk.train.losses import sync_pair_labels, sync_pair_metrics
from synctalk.train.trainer import Trainer, TrainSettings, seed_everything

log = logging.getLogger(__name__)

MOUTH_INPUT = (48, 96)  # height, width of the face tower's lower-face input
VALIDATION_NEGATIVES = 8  # off-sync mel windows per held-out face
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

    def forward(self, face: torch.Tensor, in_sync: torch.Tensor, off_sync: torch.Tensor):
        """Sync logits of n faces [n,3,48,96] with their own mel windows [n,1,80,16], then
        with their off-sync ones [n,k,1,80,16] (face-major), laid out as by sync_pair_labels."""
        k = off_sync.shape[1]
        a = F.normalize(self.audio(torch.cat([in_sync, off_sync.flatten(0, 1)])), dim=1)
        f = F.normalize(self.face(face), dim=1)
        f = torch.cat([f, f.repeat_interleave(k, dim=0)])
        return self.scale * (a * f).sum(dim=1) + self.bias


@dataclass
class EncoderReport:
    steps: int
    best_step: int  # the step whose audio tower is kept
    train_loss: list[float]  # mean loss per EVAL_EVERY steps
    val_loss_start: float
    val_loss: float
    val_accuracy_start: float
    val_accuracy: float  # balanced: in-sync and off-sync pairs weigh half each
    val_pair_accuracy: float  # a held-out face scores its own audio above a nearby frame's


@dataclass
class LowerFaces:
    faces: np.ndarray  # uint8 [N, 3, 48, 96]
    mels: np.ndarray  # float32 [N, 1, 80, 16]


class MelSyncSamples(SyncPairs):
    """The mel SyncNet's pairs: lower faces and mel windows."""

    def face(self, frame: int, rng: np.random.Generator) -> np.ndarray:
        return self.data.faces[frame].astype(np.float32) / 255.0

    def audio(self, frame: int) -> np.ndarray:
        return self.data.mels[frame]


class AudioEncoderTask:
    name = "ave_encoder"
    monitor = "loss"
    cpu_channels_last = False

    def __init__(self, data: LowerFaces, params: AveEncoderParams):
        n = min(len(data.faces), len(data.mels))
        n_val = max(2 * params.min_offset_frames + 2, int(n * VALIDATION_FRACTION))
        if n - n_val < 4 * params.min_offset_frames:
            raise ValueError(f"{n} frames are too few to train an audio encoder")
        seed_everything(params.seed)  # the initial weights too are seeded
        self.model = MelSyncNet()
        seed, offset = params.seed, params.min_offset_frames
        self.train_set = MelSyncSamples(data, np.arange(n - n_val), seed, offset)
        # Several negatives per held-out face: the best step is picked on this
        # loss, and one pair per face of a ~100-frame split is too noisy for that.
        self.val_set = MelSyncSamples(
            data, np.arange(n - n_val, n), seed + 1, offset, negatives=VALIDATION_NEGATIVES
        )

    def _pairs(self, batch):
        face, in_sync, off_sync = batch
        logits = self.model(face, in_sync, off_sync)
        return (logits, *sync_pair_labels(len(face), off_sync.shape[1], face.device))

    def loss(self, batch):
        logits, label, weight = self._pairs(batch)
        return _weighted_bce_with_logits(logits, label, weight), {}

    def validate(self, batch):
        logits, label, weight = self._pairs(batch)
        logits = logits.float()
        return {
            "loss": float(_weighted_bce_with_logits(logits, label, weight)),
            **sync_pair_metrics(torch.sigmoid(logits), label, weight),
        }


def _weighted_bce_with_logits(logits, label, weight) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits.float(), label, reduction="none")
    return (bce * weight).sum()


def train_audio_encoder(
    faces: np.ndarray,
    mel_windows: np.ndarray,
    params: AveEncoderParams,
    device: torch.device,
    state_dir: Path | None = None,
    fingerprint: str = "",
) -> tuple[AudioEncoder, EncoderReport]:
    """Learn an AudioEncoder from lower faces [N,3,48,96] uint8 and mel windows [N,1,80,16].

    Validation runs every EVAL_EVERY steps (one trainer "epoch"); with a few
    minutes of footage the pair overfits after a few hundred steps, so the
    audio tower is kept from the step with the best validation loss.
    """
    task = AudioEncoderTask(LowerFaces(faces, mel_windows), params)
    per_epoch = min(EVAL_EVERY, math.ceil(len(task.train_set) / params.batch_size))
    settings = TrainSettings(
        epochs=max(1, math.ceil(params.steps / per_epoch)),
        steps_per_epoch=per_epoch,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        checkpoint_every=EVAL_EVERY,
        seed=params.seed,
    )
    if state_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(task, settings, device, Path(tmp), fingerprint)
            history = trainer.fit()
    else:
        trainer = Trainer(task, settings, device, state_dir, fingerprint)
        history = trainer.fit()
        trainer.finish()
    start, best = history.val[0], history.val[history.best_epoch]
    report = EncoderReport(
        steps=trainer.global_step,
        best_step=history.best_epoch * trainer.steps_per_epoch,
        train_loss=[row["train_loss"] for row in history.train],
        val_loss_start=start["val_loss"],
        val_loss=best["val_loss"],
        val_accuracy_start=start["val_accuracy"],
        val_accuracy=best["val_accuracy"],
        val_pair_accuracy=best["val_pair_accuracy"],
    )
    log.info(
        "audio encoder: validation accuracy %.3f -> %.3f (pair accuracy %.3f), "
        "loss %.3f -> %.3f (best at step %d)",
        report.val_accuracy_start,
        report.val_accuracy,
        report.val_pair_accuracy,
        report.val_loss_start,
        report.val_loss,
        report.best_step,
    )
    return task.model.audio.cpu().eval(), report


@dataclass
class EncoderSource:
    kind: str  # "official" (the user's audio_visual_encoder.pth) or "trained"
    sha256: str  # of the file written
    report: EncoderReport | None = None


def prepare_audio_encoder(
    official: Path,
    crops: Path,
    audio: Path,
    geometry: Resolution,
    params: AveEncoderParams,
    out: Path,
    device: torch.device,
    state_dir: Path | None = None,
    fingerprint: str = "",
) -> EncoderSource:
    """Put an AVE encoder at `out`: the official weights when present, else train one."""
    if official.is_file():
        encoder = load_encoder(official)  # validates the layout
        save_encoder(encoder, out)
        log.info("using the official AVE weights %s", official)
        return EncoderSource("official", file_sha256(out))
    log.info("%s not found: training an audio encoder on this avatar", official)
    faces = lower_face(np.load(crops, mmap_mode="r"), geometry)
    windows = mel_windows(melspectrogram(load_audio(audio)))
    encoder, report = train_audio_encoder(faces, windows, params, device, state_dir, fingerprint)
    save_encoder(encoder, out)
    return EncoderSource("trained", file_sha256(out), report)
