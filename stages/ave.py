"""DVC stage `ave@<avatar>`: per-frame 512-d AVE features of the avatar's audio."""

from __future__ import annotations

import logging
import time

from stages._common import run_stage
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.features.ave import write_avatar_features
from synctalk.models.checkpoint import file_sha256
from synctalk.paths import AvatarPaths
from synctalk.tracking import stage_run

log = logging.getLogger("stages.ave")


def ave(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    with stage_run("ave", name, {"ave": config.ave}):
        mlflow.set_tag("encoder_sha256", file_sha256(paths.ave_encoder))
        started = time.perf_counter()
        features = write_avatar_features(
            paths.audio, paths.ave_encoder, paths.ave, paths.ave_manifest,
            config.ave.batch_size, resolve_device(config.device),
        )  # fmt: skip
        mlflow.log_metrics({"frames": len(features), "seconds": time.perf_counter() - started})
    log.info("%s: %d x %d AVE features -> %s", name, *features.shape, paths.ave)


if __name__ == "__main__":
    run_stage("ave", __doc__, ave)
