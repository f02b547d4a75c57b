"""DVC stage `evaluate@<avatar>`: quality of the trained avatar on its held-out footage.

Writes eval/<avatar>/metrics.json (`dvc metrics show`), the plot data
(eval/<avatar>/plots/*.json) and the plots as PNGs (`dvc plots show`, which
then needs no network). The registered version that was evaluated gets the
metrics on its model (eval_<name>), and its run gets what a reviewer watches
(synctalk.evaluate.review) and the plots in review/; then it is given the
alias `candidate` (not in a `dvc exp run` experiment: an experiment's version
is only compared). The stage's own MLflow run records its settings and which
version it evaluated.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from stages._common import dvc_experiment, run_stage, write_json
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.evaluate.review import (
    CONTACT_SHEET,
    REVIEW_SENTENCE,
    SIDE_BY_SIDE,
    contact_sheet,
    review_sentence_video,
    side_by_side_video,
)
from synctalk.evaluate.run import evaluate_avatar
from synctalk.models.checkpoint import load_syncnet, load_unet
from synctalk.paths import AvatarPaths
from synctalk.registry import CANDIDATE, attach_evaluation, set_alias, version_of_checkpoint
from synctalk.tracking import log_offset_curve_plot, stage_run, write_series_plot

log = logging.getLogger("stages.evaluate")


def evaluate(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    preset = config.preset_of(name)
    device = resolve_device(config.device)
    experiment = dvc_experiment()
    settings = {"landmarks": config.landmarks, "device": config.device, "review": config.review}
    with stage_run("evaluate", name, settings), tempfile.TemporaryDirectory() as tmp:
        version = version_of_checkpoint(name, paths.unet)
        mlflow.set_tag("model_version", version)
        result = evaluate_avatar(
            paths,
            preset,
            load_unet(paths.unet, device=device),
            load_syncnet(paths.syncnet, audio_mode=preset.audio_mode, device=device),
            config.landmarks,
            config.render,
            device,
        )
        metrics = {k: round(float(v), 6) for k, v in result.metrics.items()}
        write_json(paths.metrics, {**metrics, "model_version": int(version)})
        write_json(
            paths.plots / "sync_offsets.json",
            [
                {"offset": int(o), "rendered": float(d), "real": float(r)}
                for o, d, r in zip(
                    result.sync.offsets,
                    result.sync.distances,
                    result.sync_real.distances,
                    strict=True,
                )
            ],
        )
        write_json(
            paths.plots / "frame_psnr.json",
            [
                {"frame": int(f), "psnr": float(p)}
                for f, p in zip(result.frames, result.frame_psnr, strict=True)
            ],
        )
        title = f"{name} version {version}, held-out frames"
        offsets_png, psnr_png = paths.plots / "sync_offsets.png", paths.plots / "frame_psnr.png"
        log_offset_curve_plot(result.sync, offsets_png, title, result.sync_real, "real footage")
        write_series_plot(result.frames, result.frame_psnr, psnr_png, title, "frame", "PSNR (dB)")

        media = Path(tmp)
        real, rendered = result.real_frames, result.rendered_frames
        first = int(result.frames[0])
        side_by_side_video(real, rendered, paths.audio, first, media / SIDE_BY_SIDE, config)
        sheet = media / CONTACT_SHEET
        contact_sheet(result.real_crops, result.rendered_crops, result.frames, sheet)
        review_sentence_video(config, paths, version, media / REVIEW_SENTENCE)
        for plot in (offsets_png, psnr_png):
            shutil.copy2(plot, media / plot.name)
        attach_evaluation(name, version, metrics, media)
        if experiment is None:
            set_alias(name, version, CANDIDATE)
    if experiment is None:
        log.info("%s: version %s is @%s: %s", name, version, CANDIDATE, metrics)
    else:  # aliases move only on the workspace pipeline (`dvc repro`)
        log.info(
            "%s: version %s of experiment %s, evaluated (no alias moved): %s",
            name,
            version,
            experiment,
            metrics,
        )


if __name__ == "__main__":
    run_stage("evaluate", __doc__, evaluate)
