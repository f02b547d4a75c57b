"""DVC stage `extract@<avatar>`: source video -> 25 fps mezzanine, 16 kHz wav, frames.parquet."""

from __future__ import annotations

import logging
from pathlib import Path

from stages._common import run_stage
from synctalk.config import Config
from synctalk.media.extract import extract_avatar
from synctalk.paths import AvatarPaths
from synctalk.tracking import stage_run

log = logging.getLogger("stages.extract")


def extract(name: str, config: Config, paths: AvatarPaths) -> None:
    import mlflow

    source = Path(config.avatars[name].video)
    with stage_run("extract", name, {"extract": config.extract, "video": str(source)}):
        result = extract_avatar(source, paths, config.extract)
        mlflow.log_metrics(
            {
                "source_fps": result.source.fps,
                "source_duration_s": result.source.duration,
                "frames": result.frames,
                "audio_s": result.audio_seconds,
                "seconds": result.seconds,
                "frames_per_s": result.frames / result.seconds,
            }
        )
    log.info(
        "%s: %d frames at 25 fps, %.2f s of audio (source %dx%d, %.2f fps) in %.1f s",
        name,
        result.frames,
        result.audio_seconds,
        result.source.width,
        result.source.height,
        result.source.fps,
        result.seconds,
    )


if __name__ == "__main__":
    run_stage("extract", __doc__, extract)
