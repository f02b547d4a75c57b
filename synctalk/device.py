"""One place that turns `auto|cpu|cuda|mps` into a torch.device.

Every module takes its device from here (none hard-codes a GPU), so the
same code runs on a laptop, this CI's CPU and a GPU box.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(choice: str | torch.device = "auto") -> torch.device:
    """The torch.device for `choice`.

    `auto` prefers CUDA, then Apple's MPS, then the CPU. Asking for a device
    that is not there is an error rather than a silent CPU fallback: a
    training job that thinks it is on a GPU should not crawl for hours.
    """
    if isinstance(choice, torch.device):
        return choice
    name = choice.lower()
    if name.startswith("cuda:"):
        kind = "cuda"
    elif name in DEVICE_CHOICES:
        kind = name
    else:
        raise ValueError(f"unknown device {choice!r}; expected one of {DEVICE_CHOICES} or cuda:N")
    if kind == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        log.debug("device auto -> %s", device)
        return device
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {choice!r} requested but CUDA is not available here")
    if kind == "mps" and not _mps_available():
        raise RuntimeError("device 'mps' requested but MPS is not available here")
    return torch.device(name)
