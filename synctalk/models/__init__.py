"""Models of SyncTalk_2D, checkpoint-compatible with the original code."""

from synctalk.models.audio_encoder import AudioEncoder
from synctalk.models.syncnet import SyncNet, build_syncnet
from synctalk.models.unet import UNet, UNetSpec, build_unet
from synctalk.models.vgg import VGG19Features, load_vgg19_features

__all__ = [
    "AudioEncoder",
    "SyncNet",
    "UNet",
    "UNetSpec",
    "VGG19Features",
    "build_syncnet",
    "build_unet",
    "load_vgg19_features",
]
