"""DVC stage `syncnet@<avatar>`: train the avatar's SyncNet (in-sync vs off-sync pairs)."""

from __future__ import annotations

import logging

from stages._common import run_stage
from synctalk.config import Config
from synctalk.paths import AvatarPaths
from synctalk.train.run import train_syncnet

log = logging.getLogger("stages.syncnet")


def syncnet(name: str, config: Config, paths: AvatarPaths) -> None:
    result = train_syncnet(name, config, paths)
    log.info(
        "%s: SyncNet validation accuracy %.3f (loss %.3f -> %.3f), best epoch %d -> %s",
        name, result.metrics["val_accuracy"], result.history.val[0]["val_loss"],
        result.metrics["val_loss"], result.history.best_epoch, paths.syncnet,
    )  # fmt: skip


if __name__ == "__main__":
    run_stage("syncnet", __doc__, syncnet)
