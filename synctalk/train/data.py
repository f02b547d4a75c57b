"""Training samples read from the preparation stages' outputs.

Nothing here decodes video: crops come from the memory-mapped `crops.npy`
(uint8 BGR, like the original's cv2 images) and audio from the per-frame AVE
features, so a sample costs a slice and a few small copies.

The split is by time: the last 10% of the video is held out for validation,
so validation frames are never neighbours of training frames (consecutive
frames are nearly identical, and a random split would flatter every metric).

Randomness inside a sample (the reference frame, the off-sync offset, colour
jitter) comes from a generator seeded by (seed, epoch, index): the same run
replays the same samples, which is what makes resuming and two seeded runs
give identical losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from synctalk.config import Resolution
from synctalk.features.windows import feature_window
from synctalk.models.unet import UNetSpec

VALIDATION_FRACTION = 0.1


@dataclass
class AvatarFrames:
    """An avatar's crops and audio features, aligned frame by frame."""

    crops: np.ndarray  # uint8 [N, crop_size, crop_size, 3] (memory-mapped)
    features: np.ndarray  # float32 [M, D] per-frame audio features
    geometry: Resolution

    @classmethod
    def load(cls, crops: Path, features: Path, geometry: Resolution) -> AvatarFrames:
        data = cls(np.load(crops, mmap_mode="r"), np.load(features), geometry)
        if data.crops.shape[1] != geometry.crop_size:
            raise ValueError(
                f"{crops}: crops are {data.crops.shape[1]} px but preset {geometry.name} "
                f"needs {geometry.crop_size}; re-run the landmarks stage"
            )
        return data

    def __len__(self) -> int:
        # The audio may end a few frames before or after the video.
        return min(len(self.crops), len(self.features))

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train frames, validation frames): the last 10% of the video is validation."""
        n = len(self)
        n_val = max(1, int(round(n * VALIDATION_FRACTION)))
        if n - n_val < 2:
            raise ValueError(f"{n} frames are too few to train on")
        return np.arange(n - n_val), np.arange(n - n_val, n)

    def crop(self, i: int) -> np.ndarray:
        """float32 [3, S, S] in [0, 1]: the model-size centre of frame i's crop."""
        x0, y0, x1, y1 = self.geometry.inner_box
        return self.crops[i, y0:y1, x0:x1].transpose(2, 0, 1).astype(np.float32) / 255.0

    def audio(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        return feature_window(self.features, i, shape).astype(np.float32, copy=False)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def off_sync_frame(
    rng: np.random.Generator, frames: np.ndarray, frame: int, min_offset: int
) -> int:
    """A frame whose audio is out of sync with `frame`: min_offset..3*min_offset away.

    Close enough that head pose, lighting and what is being said are the same,
    so telling the pair apart takes the mouth, not slow cues that differ
    across the video (those do not carry over to the held-out part).
    """
    distance = np.abs(frames - frame)
    near = frames[(distance >= min_offset) & (distance <= 3 * min_offset)]
    if len(near):
        return int(rng.choice(near))
    far = frames[distance >= min_offset]
    if len(far):
        return int(rng.choice(far))
    if distance.max() == 0:
        raise ValueError(f"frame {frame} has no other frame to be out of sync with")
    return int(frames[np.argmax(distance)])  # a split shorter than 2 x min_offset


def colour_jitter(rng: np.random.Generator, strength: float, *images: np.ndarray) -> list:
    """The same random brightness/contrast/per-channel gain applied to every image."""
    if strength <= 0:
        return list(images)
    gain = 1 + rng.uniform(-strength, strength, size=(3, 1, 1)).astype(np.float32) / 2
    contrast = np.float32(1 + rng.uniform(-strength, strength))
    brightness = np.float32(rng.uniform(-strength, strength) / 2)
    out = []
    for img in images:
        mean = img.mean()
        out.append(np.clip((img - mean) * contrast + mean + brightness, 0, 1) * gain)
    return [np.clip(x, 0, 1).astype(np.float32) for x in out]


class EpochDataset(Dataset):
    """A dataset over some frames whose random choices depend on (seed, epoch, index)."""

    def __init__(self, data: AvatarFrames, frames: np.ndarray, seed: int):
        self.data, self.frames, self.seed, self.epoch = data, frames, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def rng(self, index: int) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, index)


class UNetSamples(EpochDataset):
    """(6-channel input, audio window, target crop) as SyncTalk_2D trains its U-Net.

    The reference is the crop of another random frame of the same split; the
    input's second half is the current crop with the mouth rectangle blacked
    out, and the target is the current crop itself.
    """

    def __init__(self, data, frames, seed, spec: UNetSpec, jitter: float = 0.0):
        super().__init__(data, frames, seed)
        self.audio_shape, self.masked_box, self.jitter = spec.audio_shape, spec.masked_box, jitter

    def __getitem__(self, index: int):
        rng = self.rng(index)
        frame = int(self.frames[index])
        reference = int(rng.choice(self.frames))
        target, ref = colour_jitter(
            rng, self.jitter, self.data.crop(frame), self.data.crop(reference)
        )
        x0, y0, x1, y1 = self.masked_box
        masked = target.copy()
        masked[:, y0:y1, x0:x1] = 0
        image = np.concatenate([ref, masked])
        return (
            torch.from_numpy(image),
            torch.from_numpy(self.data.audio(frame, self.audio_shape)),
            torch.from_numpy(target),
        )


class SyncPairs(EpochDataset):
    """(face, its own audio, the audio of `negatives` nearby frames [negatives, ...]).

    What a sync model (the SyncNet, the AVE encoder's mel SyncNet) learns from:
    each face comes with its in-sync audio and off-sync audio from a few frames
    away, so telling them apart takes the mouth (and the face tower, by far the
    costlier one, runs once for all of a face's pairs). Validation uses several
    negatives per face: a held-out split of a short clip has only ~100 faces,
    and one pair each would make the accuracy swing by +-0.05 from the draw
    alone. Subclasses say what a face and an audio window are.
    """

    def __init__(self, data, frames, seed, min_offset: int, negatives: int = 1):
        super().__init__(data, frames, seed)
        if negatives < 1:
            raise ValueError("a sync sample needs at least one off-sync window")
        self.min_offset, self.negatives = min_offset, negatives

    def face(self, frame: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def audio(self, frame: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int):
        rng = self.rng(index)
        frame = int(self.frames[index])
        others = [
            off_sync_frame(rng, self.frames, frame, self.min_offset) for _ in range(self.negatives)
        ]
        return (
            torch.from_numpy(self.face(frame, rng)),
            torch.from_numpy(self.audio(frame)),
            torch.from_numpy(np.stack([self.audio(o) for o in others])),
        )


class SyncSamples(SyncPairs):
    """The SyncNet's pairs: the model-size crop (colour-jittered) and AVE feature windows."""

    def __init__(
        self,
        data,
        frames,
        seed,
        audio_shape,
        min_offset: int,
        jitter: float = 0.0,
        negatives: int = 1,
    ):
        super().__init__(data, frames, seed, min_offset, negatives)
        self.audio_shape, self.jitter = audio_shape, jitter

    def face(self, frame: int, rng: np.random.Generator) -> np.ndarray:
        return colour_jitter(rng, self.jitter, self.data.crop(frame))[0]

    def audio(self, frame: int) -> np.ndarray:
        return self.data.audio(frame, self.audio_shape)


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch that can start part-way through it.

    Resuming after a kill mid-epoch skips the batches already trained on, so
    the resumed run sees exactly the samples the uninterrupted run would have.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self):
        return iter(self.order()[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start
