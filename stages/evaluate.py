"""DVC stage `evaluate@<avatar>`: quality of the trained avatar on its held-out footage.

Writes eval/<avatar>/metrics.json (`dvc metrics show`) and plot data
(`dvc plots show`), logs an MLflow run, records the metrics on the registry
version that was evaluated and gives it the alias `candidate` for review.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages._common import run_stage, write_json
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.evaluate.run import evaluate_avatar
from synctalk.models.checkpoint import load_syncnet, load_unet
from synctalk.paths import AvatarPaths
from synctalk.registry import CANDIDATE, set_alias, set_version_metrics, version_of_checkpoint
from synctalk.tracking import stage_run

log = logging.getLogger("stages.evaluate")


def evaluate(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    preset = config.preset_of(name)
    device = resolve_device(config.device)
    out = Path("eval") / name
    with stage_run("evaluate", name, {"landmarks": config.landmarks, "device": config.device}):
        version = version_of_checkpoint(name, paths.unet)
        mlflow.set_tag("model_version", version)
        result = evaluate_avatar(
            paths, preset, load_unet(paths.unet, device=device),
            load_syncnet(paths.syncnet, audio_mode=preset.audio_mode, device=device),
            config.landmarks, config.render, device,
        )  # fmt: skip
        metrics = {k: round(float(v), 6) for k, v in result.metrics.items()}
        write_json(out / "metrics.json", {**metrics, "model_version": int(version)})
        write_json(out / "plots" / "sync_offsets.json", [
            {"offset": int(o), "rendered": float(d), "real": float(r)}
            for o, d, r in zip(result.sync.offsets, result.sync.distances,
                               result.sync_real.distances, strict=True)
        ])  # fmt: skip
        write_json(out / "plots" / "frame_psnr.json", [
            {"frame": int(f), "psnr": float(p)} for f, p in zip(result.frames, result.frame_psnr,
                                                                  strict=True)
        ])  # fmt: skip
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free
        mlflow.log_artifacts(str(out), "eval")
        set_version_metrics(name, version, {f"eval_{k}": v for k, v in metrics.items()})
        set_alias(name, version, CANDIDATE)
    log.info("%s: version %s is @%s: %s", name, version, CANDIDATE, metrics)


if __name__ == "__main__":
    run_stage("evaluate", __doc__, evaluate)
