"""DVC stage `audio_encoder@<avatar>`: the avatar's audio front-end.

Audio mode `whisper`: the Whisper tiny.en encoder, copied from its package.
Audio mode `ave`: the official AVE weights when provided, else an AVE encoder
trained on the avatar's own frames and audio.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages._common import run_stage
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.features.frontend import save_whisper_encoder
from synctalk.paths import AvatarPaths
from synctalk.tracking import inputs_fingerprint, stage_run
from synctalk.train.ave_encoder import prepare_audio_encoder

log = logging.getLogger("stages.audio_encoder")


def audio_encoder(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    mode = config.preset_of(name).audio_mode
    params = config.ave_encoder
    with stage_run("audio_encoder", name, {"audio_mode": mode, "ave_encoder": params}):
        if mode == "whisper":
            kind, sha256 = "whisper", save_whisper_encoder(paths.audio_encoder)
            mlflow.set_tags({"encoder_source": kind, "encoder_sha256": sha256})
            log.info("%s: Whisper tiny.en encoder -> %s", name, paths.audio_encoder)
            return
        if mode != "ave":
            raise ValueError(f"audio mode {mode!r} has no front-end here (ave or whisper)")
        source = prepare_audio_encoder(
            Path(params.official_weights),
            paths.crops,
            paths.audio,
            config.preset_of(name).geometry,
            params,
            paths.audio_encoder,
            resolve_device(config.device),
            paths.training_state("audio_encoder"),
            inputs_fingerprint([paths.crops, paths.audio]),
        )
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
    log.info(
        "%s: %s AVE encoder -> %s (sha256 %s)",
        name,
        source.kind,
        paths.audio_encoder,
        source.sha256[:12],
    )


if __name__ == "__main__":
    run_stage("audio_encoder", __doc__, audio_encoder)
