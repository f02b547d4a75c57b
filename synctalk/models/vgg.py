"""VGG19 convolutional features for the perceptual loss, without torchvision.

torchvision has no CPU build for this torch, so the layers are defined here
with torchvision's indices (`features.<i>.weight`) and loaded from a
torchvision-format state dict file (e.g. `models/vgg/vgg19.pth`). Only the layers
up to the requested one are built; the rest of the file is ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's VGG19 "E" configuration; "M" is a 2x2 max-pool.
_CFG = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
]


def _layer_names() -> list[str]:
    names, block, conv = [], 1, 1
    for v in _CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


LAYER_NAMES = _layer_names()


class VGG19Features(nn.Module):
    """torchvision's `vgg19().features[: index(until) + 1]`."""

    def __init__(self, until: str = "conv3_3"):
        super().__init__()
        if until not in LAYER_NAMES:
            raise ValueError(f"unknown VGG19 layer {until!r}; expected one of {LAYER_NAMES}")
        last = LAYER_NAMES.index(until)
        layers: list[nn.Module] = []
        cin = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers[: last + 1])
        self.until = until

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def load_vgg19_features(path: str | Path, until: str = "conv3_3") -> VGG19Features:
    """VGG19 features from a torchvision-format state dict, frozen, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = VGG19Features(until)
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{path}: not a torchvision VGG19 state dict (missing {missing[:3]})")
    model.load_state_dict({k: state[k] for k in wanted}, strict=True)
    model.eval().requires_grad_(False)
    return model
