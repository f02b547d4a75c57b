"""DVC stage `ave_encoder@<avatar>`: the AVE audio encoder, official or trained here."""

from __future__ import annotations

import logging
from pathlib import Path

from stages._common import run_stage
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.paths import AvatarPaths
from synctalk.tracking import inputs_fingerprint, stage_run
from synctalk.train.ave_encoder import prepare_audio_encoder

log = logging.getLogger("stages.ave_encoder")


def ave_encoder(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    params = config.ave_encoder
    with stage_run("ave_encoder", name, {"ave_encoder": params, "device": config.device}):
        source = prepare_audio_encoder(
            Path(params.official_weights), paths.crops, paths.audio,
            config.preset_of(name).geometry, params, paths.ave_encoder,
            resolve_device(config.device), paths.training_state("ave_encoder"),
            inputs_fingerprint([paths.crops, paths.audio]),
        )  # fmt: skip
        mlflow.set_tags({"encoder_source": source.kind, "encoder_sha256": source.sha256})
        if source.report is not None:
            r = source.report
            for i, loss in enumerate(r.train_loss):
                mlflow.log_metric("train_loss", loss, step=i)
            mlflow.log_metrics(
                {
                    "val_accuracy_start": r.val_accuracy_start,
                    "val_accuracy": r.val_accuracy,
                    "val_pair_accuracy": r.val_pair_accuracy,
                    "val_loss_start": r.val_loss_start,
                    "val_loss": r.val_loss,
                    "best_step": r.best_step,
                }
            )
    log.info("%s: %s AVE encoder -> %s (sha256 %s)", name, source.kind, paths.ave_encoder,
             source.sha256[:12])  # fmt: skip


if __name__ == "__main__":
    run_stage("ave_encoder", __doc__, ave_encoder)
