"""DVC stage `landmarks@<avatar>`: face track, smoothed crop boxes, training crops."""

from __future__ import annotations

import logging
import time

import pyarrow.parquet as pq

from stages._common import run_stage
from synctalk.config import Config
from synctalk.face.prepare import prepare_landmarks
from synctalk.paths import AvatarPaths
from synctalk.tracking import stage_run

log = logging.getLogger("stages.landmarks")


def landmarks(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    geometry = config.preset_of(name).geometry
    n_frames = pq.read_metadata(paths.frames).num_rows
    params = {"landmarks": config.landmarks, "crop_size": geometry.crop_size}
    with stage_run("landmarks", name, params):
        started = time.perf_counter()
        track = prepare_landmarks(
            paths.video,
            n_frames,
            paths.landmarks,
            paths.crops,
            geometry.crop_size,
            config.landmarks,
        )
        seconds = time.perf_counter() - started
        jitter = track.jitter()
        metrics = {
            "frames": len(track),
            "detection_rate": track.detection_rate,
            "interpolated_frames": int((~track.detected).sum()),
            "crop_jitter_max": float(jitter.max()) if len(jitter) else 0.0,
            "crop_jitter_mean": float(jitter.mean()) if len(jitter) else 0.0,
            "crop_side_mean_px": float(track.crop_boxes[:, 2].mean()),
            "seconds": seconds,
            "frames_per_s": len(track) / seconds,
        }
        mlflow.log_metrics(metrics)
    log.info(
        "%s: face on %.1f%% of %d frames (%s), crop jitter max %.2f%% of side, %.0f frames/s",
        name,
        100 * metrics["detection_rate"],
        len(track),
        track.backend,
        100 * metrics["crop_jitter_max"],
        metrics["frames_per_s"],
    )


if __name__ == "__main__":
    run_stage("landmarks", __doc__, landmarks)
