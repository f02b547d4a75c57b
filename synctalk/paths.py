"""Where an avatar's files live. Stable paths, so tools and people can find things."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AvatarPaths:
    name: str
    root: Path = Path(".")

    @property
    def avatar_dir(self) -> Path:
        return self.root / "data" / "avatars" / self.name

    @property
    def work(self) -> Path:
        return self.root / "data" / "work" / self.name

    @property
    def models(self) -> Path:
        return self.root / "data" / "models" / self.name

    # extract
    @property
    def video(self) -> Path:
        """The 25 fps constant-frame-rate mezzanine."""
        return self.work / "video.mp4"

    @property
    def audio(self) -> Path:
        """16 kHz mono 16-bit WAV of the source's audio."""
        return self.work / "audio.wav"

    @property
    def frames(self) -> Path:
        return self.work / "frames.parquet"

    # landmarks
    @property
    def landmarks(self) -> Path:
        return self.work / "landmarks.parquet"

    @property
    def crops(self) -> Path:
        """uint8 [N, crop_size, crop_size, 3] BGR training crops, memory-mappable."""
        return self.work / "crops.npy"

    # audio features
    @property
    def audio_encoder(self) -> Path:
        """The avatar's audio front-end (synctalk.features.frontend)."""
        return self.models / "audio_encoder.pth"

    @property
    def features(self) -> Path:
        """float32 [N, D]: one audio feature vector per video frame."""
        return self.work / "features.npy"

    @property
    def features_manifest(self) -> Path:
        return self.work / "features.parquet"

    # training
    @property
    def syncnet(self) -> Path:
        return self.models / "syncnet.pth"

    @property
    def unet(self) -> Path:
        return self.models / "unet.pth"

    # evaluation (metrics and plot data for `dvc metrics show` / `dvc plots show`)
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval" / self.name

    @property
    def metrics(self) -> Path:
        """The evaluate stage's held-out metrics."""
        return self.eval_dir / "metrics.json"

    @property
    def syncnet_metrics(self) -> Path:
        return self.eval_dir / "syncnet.json"

    @property
    def plots(self) -> Path:
        return self.eval_dir / "plots"

    # rendering
    @property
    def inbox(self) -> Path:
        """Audio waiting to be rendered by the nightly batch (and the render@ stage)."""
        return self.root / "data" / "inbox" / self.name

    @property
    def renders(self) -> Path:
        """Rendered videos, data/renders/<name>/<audio stem>.mp4."""
        return renders_root(self.root) / self.name

    @property
    def training_states(self) -> Path:
        return self.root / "data" / "checkpoints" / self.name

    def training_state(self, stage: str) -> Path:
        """Resumable trainer state of a stage: kept outside DVC's outputs, which
        DVC deletes before re-running a stage."""
        return self.training_states / stage


def renders_root(root: Path = Path(".")) -> Path:
    return root / "data" / "renders"


def renders_ledger(root: Path = Path(".")) -> Path:
    """Every render attempt of every avatar (a Parquet dataset folder, see render.ledger)."""
    return renders_root(root) / "renders.parquet"


def render_cache(root: Path = Path(".")) -> Path:
    """Prepared render inputs and ONNX exports (synctalk.render.avatar), re-derivable."""
    return root / "data" / "cache"
