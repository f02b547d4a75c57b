"""Typed configuration, loaded from params.yaml.

Two kinds of settings live here:

* Resolution presets ("160" and "328") are facts of SyncTalk_2D's method, not
  knobs: every crop size, inner crop, mouth mask and U-Net depth is derived
  from the preset's model side S so that no number is written twice.
* `Config` mirrors params.yaml. Loading is strict: an unknown key or a value
  of the wrong type raises `ConfigError` naming the key's full path
  (e.g. ``presets.tiny.mobile``), because a silently ignored typo in a
  training config costs a night of GPU time.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or of the wrong type."""


# --------------------------------------------------------------------------
# Facts of the method: all video runs at 25 fps, all audio at 16 kHz mono.

FPS = 25
SAMPLE_RATE = 16_000

# --------------------------------------------------------------------------
# Resolution presets


@dataclass(frozen=True)
class Resolution:
    """Crop geometry and U-Net shape of one resolution preset.

    The face crop is resized to ``crop_size`` (S + 2*margin) and its centre
    S x S is what the models see; the mouth_mask rectangle of that S x S crop
    is blacked out in the U-Net's input.
    """

    name: str
    size: int  # S: side of the model's input/output crop
    unet_depth: int  # down/up stages of the U-Net
    unet_head_width: int  # channels of the last up stage (full-width model)
    margin: int = 4

    @property
    def crop_size(self) -> int:
        """Side the face crop is resized to before taking the centre S."""
        return self.size + 2 * self.margin

    @property
    def inner_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the model crop inside the resized crop."""
        return (self.margin, self.margin, self.margin + self.size, self.margin + self.size)

    @property
    def mouth_mask(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end-exclusive: SyncTalk_2D's rectangle blacked out in the input."""
        return (5, 5, self.size - 5, self.size - 10)

    def input_mask(self, kind: str) -> tuple[int, int, int, int]:
        """The rectangle blacked out in the U-Net's input, per `InputMask` kind."""
        if kind == "mouth":
            return self.mouth_mask
        if kind == "jaw":
            return (5, 5, self.size - 5, self.size)
        raise ConfigError(f"unknown input mask {kind!r}; expected one of {INPUT_MASKS}")


RESOLUTIONS: dict[str, Resolution] = {
    "160": Resolution(name="160", size=160, unet_depth=4, unet_head_width=32),
    "328": Resolution(name="328", size=320, unet_depth=5, unet_head_width=16),
}

# ave, hubert, wenet: SyncTalk_2D's front-ends (its checkpoints load); whisper: ours, the
# Whisper tiny.en encoder, which carries over to voices the avatar never heard.
AudioMode = Literal["ave", "hubert", "wenet", "whisper"]
AUDIO_MODES: tuple[str, ...] = typing.get_args(AudioMode)

# What of the current frame the U-Net is not shown. "mouth": SyncTalk_2D's
# rectangle, which leaves a strip of chin and neck visible along the bottom
# edge; the jaw's position there tells the model how open the mouth is, so
# it learns to copy the footage's mouth instead of following the audio (at
# render time that strip comes from the background frame). "jaw": down to the
# bottom edge, so only the audio can say how open the mouth is.
InputMask = Literal["mouth", "jaw"]
INPUT_MASKS: tuple[str, ...] = typing.get_args(InputMask)


def resolution(name: str | int) -> Resolution:
    """The preset called `name` ("160" or "328"; an int is accepted too)."""
    try:
        return RESOLUTIONS[str(name)]
    except KeyError:
        raise ConfigError(
            f"unknown resolution preset {name!r}; expected one of {sorted(RESOLUTIONS)}"
        ) from None


# --------------------------------------------------------------------------
# params.yaml


@dataclass(frozen=True)
class Training:
    """Settings every training run shares (see synctalk.train.trainer)."""

    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    steps_per_epoch: int = 0  # 0: a full pass over the training frames
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    colour_jitter: float = 0.0  # strength of brightness/contrast/gain augmentation
    checkpoint_every: int = 100  # steps between resumable checkpoints
    seed: int = 0


@dataclass(frozen=True)
class SyncNetTraining(Training):
    epochs: int = 40
    min_offset_frames: int = 6  # off-sync pairs are this many frames apart or more
    # Grey faces in the face tower: the U-Net's sync term then cannot push colours
    # (SyncTalk_2D's SyncNet, false, sees colour; its checkpoints load either way).
    luminance_only: bool = True


@dataclass(frozen=True)
class UNetTraining(Training):
    epochs: int = 100
    batch_size: int = 8
    l1_weight: float = 1.0
    perceptual_weight: float = 0.01  # VGG19 conv3_3 features; needs vgg19 weights
    sync_weight: float = 10.0  # the avatar's frozen SyncNet
    vgg19: str = "models/vgg/vgg19.pth"  # torchvision-format VGG19 state dict
    init_checkpoint: str = ""  # an original SyncTalk_2D U-Net to fine-tune from


@dataclass(frozen=True)
class ModelPreset:
    """What a named preset in params.yaml (e.g. `tiny`) fixes about the models."""

    resolution: Literal["160", "328"] = "328"
    audio_mode: AudioMode = "whisper"
    mobile: bool = False  # half channel widths: faster, slightly lower quality
    input_mask: InputMask = "jaw"
    syncnet: SyncNetTraining = field(default_factory=SyncNetTraining)
    unet: UNetTraining = field(default_factory=UNetTraining)

    @property
    def geometry(self) -> Resolution:
        return resolution(self.resolution)


# An avatar's name becomes folder names, DVC stage names and the MLflow model's name.
AVATAR_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
AVATAR_NAME_RULE = (
    "an avatar name is 1-64 lower-case letters, digits, '-' and '_', starting with a letter or "
    "digit (it names folders, DVC stages and the MLflow model)"
)


@dataclass(frozen=True)
class AvatarConfig:
    video: str
    preset: str = "default"


@dataclass(frozen=True)
class ExtractParams:
    min_duration_s: float = 3.0  # shorter clips cannot train a mouth model
    crf: int = 12  # x264 quality of the 25 fps mezzanine (lower is better)


@dataclass(frozen=True)
class LandmarkParams:
    backend: Literal["mediapipe", "onnx"] = "mediapipe"
    onnx_detector: str = "models/face/scrfd_2.5g_kps.onnx"
    onnx_landmarks: str = "models/face/pfld_98pt_112.onnx"
    max_gap_frames: int = 12  # frames without a face that are interpolated (0.48 s)
    smoothing_sigma: float = 3.0  # frames; Gaussian smoothing of the crop box over time
    # Taller frames are searched for the face scaled down to this height (the
    # face models work on a few hundred pixels anyway); landmarks are mapped
    # back to the full frame, which the crops are cut from.
    detection_height: int = 1080


@dataclass(frozen=True)
class AveEncoderParams:
    """Training the AVE AudioEncoder when the official weights are not provided."""

    official_weights: str = "models/ave/audio_visual_encoder.pth"
    steps: int = 400  # rounded up to whole validation rounds; the best one is kept
    batch_size: int = 32
    learning_rate: float = 5e-4
    min_offset_frames: int = 6  # negatives: audio at least this far from the frame
    seed: int = 0


@dataclass(frozen=True)
class RenderParams:
    crf: int = 18  # x264 quality of rendered videos (lower is better, 18 ~ visually lossless)
    x264_preset: str = "veryfast"
    same_start_end: bool = False  # end the background loop on the frame it started on
    feather: float = 0.08  # fraction of the crop side blended softly at the paste's edge
    # What of the prediction is pasted. "lower_face" keeps the cheeks' outline the
    # source's, and that outline moves with the source's jaw, not the new audio.
    paste_region: Literal["box", "lower_face"] = "box"
    # How the audio drives the mouth (Whisper U-Nets): the audio vector pushed this
    # many times as far from its training mean (synctalk.models.unet.articulate) and
    # the audio features blurred over time by a Gaussian of this many frames.
    articulation: float = 1.5
    audio_smoothing: float = 1.0
    batch_size: int = 16  # frames per model call on a GPU (the CPU runs one at a time)
    runtime: Literal["auto", "onnx", "torch"] = "auto"  # auto: torch on GPU, onnxruntime on CPU
    queue_frames: int = 32  # bound on frames in flight between decode, model and encode
    # fp32 | int8: the CPU (onnxruntime) U-Net statically quantized to int8, about twice as
    # fast; checked against fp32 on held-out frames first (synctalk.render.quantize)
    precision: Literal["fp32", "int8"] = "fp32"
    int8_min_psnr: float = 38.0  # dB, int8 vs fp32 U-Net output; below it renders in fp32


@dataclass(frozen=True)
class NightlyParams:
    """The scheduled renders: every avatar's inbox (data/inbox/<avatar>/), every night.

    Every parameter has a default, as a scheduled run needs."""

    glob: str = "*"
    cron: str = "0 2 * * *"  # every night at 02:00...
    timezone: str = "UTC"  # ...in this time zone (an IANA name: Europe/Paris)
    max_parallel: int = 1  # audio files rendered at once (a CPU render uses both cores)
    retries: int = 2  # a file that failed for a transient reason (disk full, worker lost)
    retry_delay_s: int = 60
    file_timeout_s: int = 3600  # one file's run on a work pool (retries included)
    # Render only a reviewed model: an avatar without @champion is reported and skipped
    # (an explicit model_alias still renders what it names).
    require_champion: bool = True


@dataclass(frozen=True)
class ReviewParams:
    """What a person reviews before promoting a version, and the gate `models promote` applies.

    `minimum` and `maximum` map evaluation metrics (the names of
    eval/<name>/metrics.json) to the worst value a promotable version may have.
    """

    minimum: dict[str, float] = field(default_factory=lambda: {"psnr": 20.0, "lse_c_ratio": 0.2})
    maximum: dict[str, float] = field(default_factory=lambda: {"lmd": 0.1})
    # A sentence the avatar never said, in a voice that is not the avatar's, rendered by
    # the evaluate stage with the version under review.
    sentence: str = "Please check that my lips follow these words, spoken in another voice."
    voice: str = "en+f3"  # eSpeak NG voice


@dataclass(frozen=True)
class Config:
    # Speed only (not DVC params: changing them retrains nothing)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    num_workers: int = 0  # training data loader processes
    extract: ExtractParams = field(default_factory=ExtractParams)
    landmarks: LandmarkParams = field(default_factory=LandmarkParams)
    ave_encoder: AveEncoderParams = field(default_factory=AveEncoderParams)
    render: RenderParams = field(default_factory=RenderParams)
    nightly: NightlyParams = field(default_factory=NightlyParams)
    review: ReviewParams = field(default_factory=ReviewParams)
    presets: dict[str, ModelPreset] = field(default_factory=lambda: {"default": ModelPreset()})
    avatars: dict[str, AvatarConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, avatar in self.avatars.items():
            if not AVATAR_NAME.fullmatch(name):
                raise ConfigError(f"avatars.{name!r}: {AVATAR_NAME_RULE}")
            if avatar.preset not in self.presets:
                raise ConfigError(
                    f"avatars.{name}.preset: unknown preset {avatar.preset!r}; "
                    f"params.yaml defines {sorted(self.presets)}"
                )

    def preset_of(self, avatar: str) -> ModelPreset:
        try:
            return self.presets[self.avatars[avatar].preset]
        except KeyError:
            raise ConfigError(
                f"unknown avatar {avatar!r}; params.yaml lists {sorted(self.avatars)}"
            ) from None


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; a missing file gives the defaults."""
    path = Path(path)
    if not path.exists():
        return Config()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return config_from_dict(data, source=str(path))


def config_from_dict(data: Any, source: str = "params") -> Config:
    try:
        return _convert(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# --------------------------------------------------------------------------
# strict conversion of plain YAML data into the dataclasses above


def _convert(tp: Any, value: Any, key: str) -> Any:
    where = key or "<top level>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(
                f"{_join(key, unknown[0])}: unknown key (expected one of {sorted(names)})"
            )
        kwargs = {k: _convert(hints[k], v, _join(key, k)) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            missing = [
                f.name
                for f in dataclasses.fields(tp)
                if f.name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ]
            raise ConfigError(f"{_join(key, missing[0]) if missing else where}: {exc}") from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `resolution: 328` as an int; accept it for the string "328".
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in allowed:
            value = str(value)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _convert(key_tp, k, _join(key, str(k))): _convert(val_tp, v, _join(key, str(k)))
            for k, v in value.items()
        }
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected nothing (null), got {value!r}")
        return None
    if tp in (str, int, float, bool):
        # isinstance, not type(): round-trip YAML loaders hand out str/float subclasses.
        # bool is an int to Python but never a number in a config.
        ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise ConfigError(
                f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})"
            )
        return tp(value)
    raise TypeError(f"config type {tp!r} at {where} is not supported")  # a bug in this file


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
