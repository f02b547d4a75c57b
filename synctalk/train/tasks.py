"""What the trainer trains: the SyncNet and the U-Net, each as a Task."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from synctalk.config import ModelPreset, SyncNetTraining, Training, UNetTraining
from synctalk.evaluate.sync import SyncScore, sync_score
from synctalk.models.checkpoint import load_unet
from synctalk.models.syncnet import SYNCNET_AUDIO_SHAPES, SyncNet, build_syncnet, sync_probability
from synctalk.models.unet import UNet, UNetSpec, fit_audio_centre
from synctalk.train.data import AvatarFrames, SyncSamples, UNetSamples
from synctalk.train.losses import PerceptualLoss, SyncLoss, sync_pair_labels, sync_pair_metrics
from synctalk.train.trainer import TrainSettings, seed_everything

log = logging.getLogger(__name__)

VALIDATION_NEGATIVES = 8  # off-sync windows per held-out face


def train_settings(training: Training, num_workers: int = 0) -> TrainSettings:
    """The trainer's share of a preset's training section, plus the loader's processes
    (a speed setting, kept out of the presets so that changing it retrains nothing)."""
    names = {f.name for f in fields(TrainSettings)}
    return TrainSettings(
        **{f.name: getattr(training, f.name) for f in fields(training) if f.name in names},
        num_workers=num_workers,
    )


class SyncNetTask:
    name = "syncnet"
    monitor = "loss"
    cpu_channels_last = False  # slower on the CPU: tiny train step 0.63 -> 0.73 s

    def __init__(self, data: AvatarFrames, preset: ModelPreset, training: SyncNetTraining):
        seed_everything(training.seed)  # the initial weights too are seeded
        self.model = build_syncnet(
            preset.resolution, preset.audio_mode, preset.mobile, training.luminance_only
        )
        shape = SYNCNET_AUDIO_SHAPES[preset.audio_mode]
        train, val = data.split()
        seed = training.seed
        self.train_set = SyncSamples(
            data, train, seed, shape, training.min_offset_frames, training.colour_jitter
        )
        self.val_set = SyncSamples(
            data, val, seed + 1, shape, training.min_offset_frames, negatives=VALIDATION_NEGATIVES
        )

    def _pairs(self, batch):
        """In-sync probabilities of every (face, audio) pair, their labels and BCE weights."""
        face, in_sync, off_sync = batch  # off_sync: [n, negatives, *audio shape]
        n, k = off_sync.shape[:2]
        audio = self.model.audio_encoder(torch.cat([in_sync, off_sync.flatten(0, 1)])).flatten(1)
        f = self.model.embed_face(face)
        p = sync_probability(
            F.normalize(audio, dim=1).float(), torch.cat([f, f.repeat_interleave(k, dim=0)]).float()
        )
        return (p, *sync_pair_labels(n, k, face.device))

    def loss(self, batch):
        p, label, weight = self._pairs(batch)
        return _weighted_bce(p, label, weight), {}

    def validate(self, batch):
        p, label, weight = self._pairs(batch)
        return {
            "loss": float(_weighted_bce(p, label, weight)),
            **sync_pair_metrics(p, label, weight),
        }

    def offset_curve(self, device: torch.device) -> SyncScore:
        """The held-out frames' sync offset search (LSE-D/LSE-C, best offset; see
        synctalk.evaluate.sync): a SyncNet that learnt the mouth has its clear
        minimum at offset 0 on footage it never saw."""
        frames = self.val_set.frames
        data, shape = self.val_set.data, self.val_set.audio_shape
        faces = np.stack([data.crop(int(i)) for i in frames])
        windows = np.stack([data.audio(int(i), shape) for i in frames])
        return sync_score(self.model, faces, windows, device=device)


def _weighted_bce(p: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # BCE is not autocast-safe: computed in float32 whatever the surrounding precision.
    with torch.autocast(label.device.type, enabled=False):
        return (F.binary_cross_entropy(p, label, reduction="none") * weight).sum()


class UNetTask:
    name = "unet"
    monitor = "l1"
    # Measured faster so on the CPU too: a tiny train step (batch 8) takes
    # 1.05 s instead of 1.40 s on 2 AVX-512 cores.
    cpu_channels_last = True

    def __init__(
        self,
        data: AvatarFrames,
        preset: ModelPreset,
        training: UNetTraining,
        syncnet: SyncNet | None,
    ):
        spec = UNetSpec(preset.resolution, preset.audio_mode, preset.mobile, preset.input_mask)
        seed_everything(training.seed)  # the initial weights too are seeded
        if training.init_checkpoint:
            self.model = load_unet(training.init_checkpoint, audio_mode=preset.audio_mode)
            if self.model.spec != spec:
                raise ValueError(
                    f"{training.init_checkpoint} is a {self.model.spec} U-Net, "
                    f"the preset wants {spec}"
                )
            log.info("fine-tuning from %s", training.init_checkpoint)
        else:
            self.model = UNet(spec)
        self.data = data
        train, val = data.split()
        self.train_set = UNetSamples(data, train, training.seed, spec, training.colour_jitter)
        self.val_set = UNetSamples(data, val, training.seed + 1, spec)
        self.weights = training
        self.perceptual = PerceptualLoss(training.vgg19) if training.perceptual_weight > 0 else None
        self.sync = None
        if training.sync_weight > 0:
            if syncnet is None:
                raise ValueError("unet.sync_weight > 0 needs the avatar's SyncNet")
            if SYNCNET_AUDIO_SHAPES[preset.audio_mode] != spec.audio_shape:
                raise ValueError(f"the sync loss does not support audio mode {preset.audio_mode}")
            self.sync = SyncLoss(syncnet)

    def to(self, device: torch.device) -> UNetTask:
        for loss in (self.perceptual, self.sync):
            if loss is not None:
                loss.to(device)
        return self

    def loss(self, batch):
        image, audio, target = batch
        prediction = self.model(image, audio)
        l1 = F.l1_loss(prediction, target)
        total = self.weights.l1_weight * l1
        parts = {"l1": float(l1.detach())}
        if self.perceptual is not None:
            perceptual = self.perceptual(prediction, target)
            total = total + self.weights.perceptual_weight * perceptual
            parts["perceptual"] = float(perceptual.detach())
        if self.sync is not None:
            sync = self.sync(prediction, audio)
            total = total + self.weights.sync_weight * sync
            parts["sync"] = float(sync.detach())
        return total, parts

    def validate(self, batch):
        image, audio, target = batch
        prediction = self.model(image, audio).float()
        mse = F.mse_loss(prediction, target).clamp_min(1e-10)
        return {"l1": float(F.l1_loss(prediction, target)), "psnr": float(-10 * torch.log10(mse))}

    def fit_audio_centre(self, model: UNet) -> None:
        """Record the mean audio vector over the training frames (see `articulate`)."""
        device = next(model.parameters()).device
        shape = model.spec.audio_shape
        train, _ = self.data.split()
        windows = np.stack([self.data.audio(int(i), shape) for i in train])
        fit_audio_centre(model, torch.from_numpy(windows).to(device))

    @torch.inference_mode()
    def sample_grid(self, device: torch.device, n: int = 4) -> np.ndarray:
        """BGR uint8 image: rows of reference | masked input | prediction | ground truth."""
        was_training = self.model.training
        self.model.eval()
        self.val_set.set_epoch(0)
        picks = np.linspace(0, len(self.val_set) - 1, num=min(n, len(self.val_set))).astype(int)
        rows = []
        for i in picks:
            image, audio, target = self.val_set[int(i)]
            prediction = self.model(image[None].to(device), audio[None].to(device))[0].float().cpu()
            tiles = [image[:3], image[3:], prediction, target]
            rows.append(np.concatenate([t.numpy().transpose(1, 2, 0) for t in tiles], axis=1))
        self.model.train(was_training)
        return (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path
