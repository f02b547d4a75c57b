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
from synctalk.models.checkpoint import load_unet
from synctalk.models.syncnet import SYNCNET_AUDIO_SHAPES, SyncNet, build_syncnet, sync_probability
from synctalk.models.unet import UNet, UNetSpec
from synctalk.train.data import AvatarFrames, SyncSamples, UNetSamples
from synctalk.train.losses import PerceptualLoss, SyncLoss, sync_bce
from synctalk.train.trainer import TrainSettings, seed_everything

log = logging.getLogger(__name__)


def train_settings(training: Training) -> TrainSettings:
    """The trainer's share of a preset's training section."""
    names = {f.name for f in fields(TrainSettings)}
    return TrainSettings(
        **{f.name: getattr(training, f.name) for f in fields(training) if f.name in names}
    )


class SyncNetTask:
    name = "syncnet"
    monitor = "loss"

    def __init__(self, data: AvatarFrames, preset: ModelPreset, training: SyncNetTraining):
        seed_everything(training.seed)  # the initial weights too are seeded
        self.model = build_syncnet(preset.resolution, preset.audio_mode, preset.mobile)
        shape = SYNCNET_AUDIO_SHAPES[preset.audio_mode]
        train, val = data.split()
        seed = training.seed
        self.train_set = SyncSamples(data, train, seed, shape, training.min_offset_frames,
                                     training.colour_jitter)  # fmt: skip
        self.val_set = SyncSamples(data, val, seed + 1, shape, training.min_offset_frames)

    def _pairs(self, batch):
        """Embeddings of (face, in-sync audio) and (face, off-sync audio), and the labels."""
        face, in_sync, off_sync = batch
        n = len(face)
        audio = self.model.audio_encoder(torch.cat([in_sync, off_sync])).flatten(1)
        face_embedding = self.model.face_encoder(face).flatten(1)
        a = F.normalize(audio, dim=1)
        f = F.normalize(face_embedding, dim=1).repeat(2, 1)
        label = torch.cat([torch.ones(n), torch.zeros(n)]).to(face.device)
        return a, f, label

    def loss(self, batch):
        a, f, label = self._pairs(batch)
        return sync_bce(a, f, label), {}

    def validate(self, batch):
        a, f, label = self._pairs(batch)
        p = sync_probability(a.float(), f.float())
        n = len(p) // 2
        return {
            "loss": float(sync_bce(a, f, label)),
            # thresholded: is each pair called in sync (p > 0.5) correctly?
            "accuracy": float(((p > 0.5).float() == label).float().mean()),
            # ranked: does the face prefer its own audio to the nearby frame's?
            "pair_accuracy": float((p[:n] > p[n:]).float().mean()),
        }


class UNetTask:
    name = "unet"
    monitor = "l1"

    def __init__(
        self,
        data: AvatarFrames,
        preset: ModelPreset,
        training: UNetTraining,
        syncnet: SyncNet | None,
    ):
        spec = UNetSpec(preset.resolution, preset.audio_mode, preset.mobile)
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
        train, val = data.split()
        self.train_set = UNetSamples(data, train, training.seed, spec.audio_shape,
                                     training.colour_jitter)  # fmt: skip
        self.val_set = UNetSamples(data, val, training.seed + 1, spec.audio_shape)
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
