"""Training an avatar's SyncNet and U-Net end to end, tracked in MLflow.

These are what the `syncnet` and `unet` stages call: load the avatar's
prepared frames, train with the shared trainer (resuming an interrupted run),
save the best weights in the original checkpoint layout, and log the run:
the whole resolved preset as params, per-epoch metrics, loss curves, a grid
of validation crops, the checkpoint, and tags for the code (git commit) and
the inputs (md5 over the input files, as in dvc.lock).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.evaluate.sync import SyncScore
from synctalk.models.checkpoint import load_syncnet, save_model
from synctalk.paths import AvatarPaths, render_cache
from synctalk.registry import register_avatar_model
from synctalk.tracking import (
    inputs_fingerprint,
    log_history_plot,
    log_offset_curve_plot,
    stage_run,
)
from synctalk.train.data import AvatarFrames
from synctalk.train.tasks import SyncNetTask, UNetTask, train_settings, write_image
from synctalk.train.trainer import History, Trainer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: History
    metrics: dict[str, float]  # validation metrics of the kept (best) model
    version: str | None = None  # registry version (U-Net only)
    sync: SyncScore | None = None  # offset curve on the held-out frames (SyncNet only)


def _metrics_logger(mlflow):
    def log_metrics(metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    return log_metrics


def _params(config: Config, name: str) -> dict[str, Any]:
    preset = config.preset_of(name)
    return {
        "avatar": name,
        "preset_name": config.avatars[name].preset,
        "device": config.device,
        "preset": asdict(preset),
    }


@contextmanager
def _tracked_training(
    stage: str,
    title: str,
    name: str,
    config: Config,
    paths: AvatarPaths,
    task,
    settings,
    inputs: list[Path],
    checkpoint: Path,
    finish_model=None,
):
    """One training stage in its MLflow run: fit (resuming an interrupted run), save the
    best weights to `checkpoint`, log the loss curves and the best metrics.

    `finish_model`, if given, is called with the best model before it is saved.
    Yields (history, metrics, inputs fingerprint, scratch dir) for the stage's own
    artifacts; the resumable training state is removed once the body has finished
    without error.
    """
    import mlflow

    fingerprint = inputs_fingerprint(inputs)
    device = resolve_device(config.device)
    with stage_run(stage, name, _params(config, name)), tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tag("inputs_md5", fingerprint)
        trainer = Trainer(
            task,
            settings,
            device,
            paths.training_state(stage),
            fingerprint=fingerprint,
            on_metrics=_metrics_logger(mlflow),
        )
        history = trainer.fit()
        if finish_model is not None:
            finish_model(trainer.model)
        metrics = trainer.validate()
        save_model(
            trainer.model,
            checkpoint,
            avatar=name,
            inputs_md5=fingerprint,
            best_epoch=history.best_epoch,
            **metrics,
        )
        curves = log_history_plot(history, Path(tmp) / f"{stage}_curves.png", f"{title} {name}")
        mlflow.log_artifact(str(curves))
        mlflow.log_metrics({f"best_{k}": v for k, v in metrics.items()})
        yield history, metrics, fingerprint, Path(tmp)
        trainer.finish()


def train_syncnet(name: str, config: Config, paths: AvatarPaths) -> TrainResult:
    import mlflow

    preset = config.preset_of(name)
    data = AvatarFrames.load(paths.crops, paths.features, preset.geometry)
    task = SyncNetTask(data, preset, preset.syncnet)
    settings = train_settings(preset.syncnet, config.num_workers)
    inputs = [paths.crops, paths.features]
    with _tracked_training(
        "syncnet", "SyncNet", name, config, paths, task, settings, inputs, paths.syncnet
    ) as (history, metrics, _, tmp):
        mlflow.log_artifact(str(paths.syncnet), "checkpoint")
        sync = task.offset_curve(resolve_device(config.device))
        mlflow.log_metrics({f"val_{k}": v for k, v in sync.as_metrics().items()})
        mlflow.log_artifact(
            str(
                log_offset_curve_plot(
                    sync, tmp / "syncnet_offsets.png", f"SyncNet {name}: held-out frames"
                )
            )
        )
        log.info(
            "%s: held-out offset curve: best offset %+d, LSE-C %.4f, LSE-D %.4f",
            name,
            sync.best_offset,
            sync.confidence,
            sync.min_distance,
        )
    return TrainResult(history, metrics, sync=sync)


def train_unet(name: str, config: Config, paths: AvatarPaths) -> TrainResult:
    import mlflow

    preset = config.preset_of(name)
    device = resolve_device(config.device)
    data = AvatarFrames.load(paths.crops, paths.features, preset.geometry)
    syncnet = load_syncnet(paths.syncnet, audio_mode=preset.audio_mode, device=device)
    task = UNetTask(data, preset, preset.unet, syncnet).to(device)
    inputs = [paths.crops, paths.features, paths.syncnet, paths.audio_encoder]
    settings = train_settings(preset.unet, config.num_workers)
    training = _tracked_training(
        "unet",
        "U-Net",
        name,
        config,
        paths,
        task,
        settings,
        inputs,
        paths.unet,
        finish_model=task.fit_audio_centre,
    )
    with training as (history, metrics, fingerprint, tmp):
        mlflow.log_artifact(str(write_image(tmp / "validation_grid.png", task.sample_grid(device))))
        # the render settings too: the served model renders as `synctalk render` did then
        recorded = {**_params(config, name), "render": asdict(config.render)}
        recorded.update(inputs_md5=fingerprint, metrics=metrics)
        version = register_avatar_model(paths, recorded, tmp / "model", render_cache(paths.root))
    return TrainResult(history, metrics, version)
