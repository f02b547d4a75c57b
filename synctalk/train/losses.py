"""The U-Net's losses: L1, perceptual (VGG19 up to conv3_3) and sync (a frozen SyncNet)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synctalk.models.syncnet import SyncNet, sync_probability
from synctalk.models.vgg import load_vgg19_features

# ImageNet statistics, RGB; crops here are BGR in [0, 1].
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class MissingWeightsError(FileNotFoundError):
    pass


class PerceptualLoss(nn.Module):
    """MSE between VGG19 conv3_3 features of prediction and target."""

    def __init__(self, vgg_path: str | Path):
        super().__init__()
        path = Path(vgg_path)
        if not path.is_file():
            raise MissingWeightsError(
                f"the perceptual loss needs VGG19 weights at {path}, which is missing. Either put "
                "torchvision's ImageNet VGG19 state dict there (on a machine with torchvision: "
                "torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), "
                f"'{path}')), or set the preset's unet.perceptual_weight to 0 in params.yaml."
            )
        self.features = load_vgg19_features(path, until="conv3_3")
        self.register_buffer("mean", _MEAN.clone(), persistent=False)
        self.register_buffer("std", _STD.clone(), persistent=False)

    def _normalise(self, bgr: torch.Tensor) -> torch.Tensor:
        return (bgr.flip(1) - self.mean) / self.std

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.features(self._normalise(target))
        return F.mse_loss(self.features(self._normalise(prediction)), want)


class SyncLoss(nn.Module):
    """BCE pushing a frozen SyncNet to call (predicted crop, its audio) in sync."""

    def __init__(self, syncnet: SyncNet):
        super().__init__()
        self.syncnet = syncnet.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> SyncLoss:  # the SyncNet stays in eval mode
        super().train(mode)
        self.syncnet.eval()
        return self

    def forward(self, prediction: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        audio_embedding, face_embedding = self.syncnet(prediction, audio)
        return sync_bce(
            audio_embedding, face_embedding, torch.ones(len(prediction), device=prediction.device)
        )


def sync_bce(audio_embedding: torch.Tensor, face_embedding: torch.Tensor, label: torch.Tensor):
    """SyncTalk_2D's SyncNet loss: BCE of the cosine similarity against in-sync labels."""
    # BCE is not autocast-safe: compute it in float32 whatever the surrounding precision.
    with torch.autocast(label.device.type, enabled=False):
        p = sync_probability(audio_embedding.float(), face_embedding.float())
        return F.binary_cross_entropy(p, label.float())


def sync_pair_labels(n: int, negatives: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Labels and BCE weights of n in-sync pairs followed by n x `negatives` off-sync ones.

    The in-sync and the off-sync pairs weigh half each, however many negatives
    a face has, so a model cannot lower the loss by calling everything off-sync.
    """
    label = torch.cat([torch.ones(n), torch.zeros(n * negatives)])
    weight = torch.cat(
        [torch.full((n,), 0.5 / n), torch.full((n * negatives,), 0.5 / (n * negatives))]
    )
    return label.to(device), weight.to(device)


def sync_pair_metrics(p: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> dict:
    """Validation figures of in-sync probabilities laid out as by `sync_pair_labels`.

    accuracy: balanced, is each pair called in sync (p > 0.5) correctly?
    pair_accuracy: ranked, does a face score its own audio above each off-sync one?
    """
    n = int(label.sum())
    own = p[:n].repeat_interleave((len(p) - n) // n)  # each face's in-sync p, per negative
    return {
        "accuracy": float((((p > 0.5).float() == label).float() * weight).sum()),
        "pair_accuracy": float((own > p[n:]).float().mean()),
    }
