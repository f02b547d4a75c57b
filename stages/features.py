"""DVC stage `features@<avatar>`: one audio feature vector per video frame of the avatar's audio."""

from __future__ import annotations

import logging
import time

from stages._common import run_stage
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.features.frontend import write_avatar_features
from synctalk.hashing import file_sha256
from synctalk.paths import AvatarPaths
from synctalk.tracking import stage_run

log = logging.getLogger("stages.features")


def features(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    with stage_run("features", name, {"audio_mode": config.preset_of(name).audio_mode}):
        mlflow.set_tag("encoder_sha256", file_sha256(paths.audio_encoder))
        started = time.perf_counter()
        result = write_avatar_features(
            paths.audio,
            paths.audio_encoder,
            paths.features,
            paths.features_manifest,
            resolve_device(config.device),
        )
        mlflow.log_metrics({"frames": len(result), "seconds": time.perf_counter() - started})
    log.info("%s: %d x %d audio features -> %s", name, *result.shape, paths.features)


if __name__ == "__main__":
    run_stage("features", __doc__, features)
