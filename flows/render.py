"""Flow `render` (deployment `batch`): render an avatar saying every audio file of a folder.

One task per audio file, run concurrently up to `max_parallel`. A file whose
render key (model version + weights, audio bytes, render settings, renderer
version) already has a finished output is skipped; every attempt, rendered,
failed or skipped, is a row in data/renders/renders.parquet. A bad file is a
`failed` row with its error and the others go on; the flow's result counts
them.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

# The registry's database layer is slow to import (about 1.5 s): load it with
# the flow, once per worker process, not inside every run.
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from synctalk.config import load_config
from synctalk.paths import renders_ledger
from synctalk.render.batch import AvatarRenderer, audio_files, check_writable, output_paths
from synctalk.render.ledger import RenderLedger, RenderRecord
from synctalk.tracking import apply_offline_env, tracking_uri

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = load_config(ROOT / "params.yaml").nightly
LEDGER = renders_ledger(ROOT)


@task(cache_policy=NO_CACHE, task_run_name="render {audio.name}")
def render_file(renderer: AvatarRenderer, audio: Path, output: Path) -> RenderRecord:
    return renderer.render_if_changed(audio, output, RenderLedger(LEDGER))


@flow(name="render", task_runner=ThreadPoolTaskRunner(max_workers=max(1, DEFAULTS.max_parallel)))
def render(
    avatar: str = DEFAULTS.avatar,
    audio_dir: str = DEFAULTS.audio_dir,
    model_alias: str | None = None,
    output_dir: str | None = None,
    glob: str = DEFAULTS.glob,
) -> dict[str, int]:
    """Render `avatar` saying each audio file in `audio_dir` (unless already done)."""
    logger = get_run_logger()
    apply_offline_env()
    mlflow.set_tracking_uri(tracking_uri(ROOT))
    config = load_config(ROOT / "params.yaml")
    source = Path(audio_dir) if Path(audio_dir).is_absolute() else ROOT / audio_dir
    out = Path(output_dir) if output_dir else ROOT / "data" / "renders" / avatar
    files = [f.absolute() for f in audio_files(source, glob)]
    outputs = output_paths(files, out)
    check_writable(out)
    RenderLedger(LEDGER).check()
    renderer = AvatarRenderer(config, avatar, model_alias, ROOT)
    renderer.sweep(out)
    logger.info("%d audio files, avatar-%s version %s", len(files), avatar,
                renderer.model.version)  # fmt: skip
    try:
        futures = [render_file.submit(renderer, f, outputs[f]) for f in files]
        records = [future.result() for future in futures]
    finally:
        renderer.close()
    counts = {status: sum(r.status == status for r in records)
              for status in ("done", "skipped", "failed")}  # fmt: skip
    for r in records:
        if r.status == "failed":
            logger.error("%s failed: %s", r.audio_path, r.error)
    logger.info("rendered %(done)d, skipped %(skipped)d, failed %(failed)d", counts)
    return counts
