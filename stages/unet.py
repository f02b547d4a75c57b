"""DVC stage `unet@<avatar>`: train the lip-sync U-Net and register it in MLflow."""

from __future__ import annotations

import logging

from stages._common import run_stage
from synctalk.config import Config
from synctalk.paths import AvatarPaths
from synctalk.train.run import train_unet

log = logging.getLogger("stages.unet")


def unet(name: str, config: Config, paths: AvatarPaths) -> None:
    result = train_unet(name, config, paths)
    log.info(
        "%s: U-Net validation L1 %.4f -> %.4f, registered as avatar-%s version %s",
        name,
        result.history.val[0]["val_l1"],
        result.metrics["val_l1"],
        name,
        result.version,
    )


if __name__ == "__main__":
    run_stage("unet", __doc__, unet)
