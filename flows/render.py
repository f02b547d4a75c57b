"""Rendering flows: `nightly` (every avatar's inbox), `render` (one batch), `render-file`.

- `nightly` (deployment `nightly/nightly`, on `nightly.cron` in
  `nightly.timezone`): for every avatar in params.yaml whose inbox
  data/inbox/<avatar>/ holds audio not rendered yet with its current model,
  one child `render` run. An avatar with an empty inbox, without any
  registered model, or with nothing new is reported and skipped, not failed.
- `render` (deployment `render/batch`): every audio file of a folder (by
  default the avatar's inbox). Where the files render: in this run,
  `nightly.max_parallel` at a time (`synctalk serve`, the demo), or, when
  `file_deployment` names the `render-file` deployment (what `synctalk deploy
  --pool` sets), as one `render-file` run per file that any worker of the
  pool picks up.
- A file whose render key is done, its video unchanged since, is skipped.
  A file that fails is a Failed task (or child run) once its ledger row with
  the error is written; the batch ends Failed, naming those files; the rest
  still render. Transient failures (disk full, a worker lost) are retried,
  bad input is not.
- For the operator: a table artifact (file, status, model version, frames,
  seconds, error, output), a progress artifact updated as files finish, and
  the library's log records (`synctalk.*`) in the run's logs.
- Only a reviewed model renders unattended: unless a model_alias is given,
  an avatar renders its `@champion` (`nightly.require_champion`), and one
  without is reported and skipped. When the registry cannot be read the flow
  fails naming the store, before anything is rendered.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow

# The registry's database layer is slow to import (about 1.5 s): load it with
# the flow, once per worker process, not inside every run.
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import ship_library_logs
from synctalk.config import load_config
from synctalk.paths import AvatarPaths, renders_ledger
from synctalk.registry import CHAMPION, ModelNotFoundError, champion_version
from synctalk.render.batch import (
    AUDIO_SUFFIXES,
    AvatarRenderer,
    audio_files,
    check_writable,
    default_worker,
    output_paths,
)
from synctalk.render.ledger import RenderLedger, RenderRecord
from synctalk.tracking import OFFLINE_ENV, apply_offline_env, tracking_uri

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = load_config(ROOT / "params.yaml").nightly
LEDGER = renders_ledger(ROOT)
FILE_DEPLOYMENT = "render-file/file"  # what `synctalk deploy --pool` registers
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class FileFailed(Exception):
    """A file that did not render; its ledger row holds the error."""

    def __init__(self, record: RenderRecord):
        super().__init__(record.error)
        self.record = record


def _start() -> None:
    apply_offline_env()
    mlflow.set_tracking_uri(tracking_uri(ROOT))
    ship_library_logs()


def _worker() -> str:
    # set by a Prefect worker in the processes it starts
    return os.environ.get("PREFECT__WORKER_NAME") or default_worker()


def _path(value: str | None, default: Path) -> Path:
    if not value:
        return default
    return Path(value) if Path(value).is_absolute() else ROOT / value


def _transient_only(task, task_run, state) -> bool:
    """Retry a file only when it failed for a reason other than its input."""
    try:
        state.result()
    except FileFailed as exc:
        return exc.record.transient
    except Exception:  # a timeout, an error outside the renderer: worth another try
        return True
    return False


@task(
    cache_policy=NO_CACHE,
    task_run_name="render {audio.name}",
    retries=DEFAULTS.retries,
    retry_delay_seconds=DEFAULTS.retry_delay_s,
    retry_condition_fn=_transient_only,
)
def render_file(renderer: AvatarRenderer, audio: Path, output: Path) -> RenderRecord:
    record = renderer.render_if_changed(audio, output, RenderLedger(LEDGER))
    if record.status == "failed":
        raise FileFailed(record)  # after its ledger row: a Failed task run, for alerts
    return record


# The time limit is the flow's: a run's main thread can be interrupted, a task's
# worker thread cannot.
@flow(name="render-file", timeout_seconds=DEFAULTS.file_timeout_s)
def render_one(
    avatar: str, audio: str, output: str, model_version: str, batch_id: str = ""
) -> dict:
    """Render one audio file (a work pool's unit of work): the `render` flow starts one
    such run per file when given `file_deployment`."""
    _start()
    config = load_config(ROOT / "params.yaml")
    renderer = AvatarRenderer(config, avatar, model_version, ROOT, batch_id, _worker())
    try:
        return render_file(renderer, Path(audio), Path(output)).row()
    finally:
        renderer.close()


@flow(name="render", task_runner=ThreadPoolTaskRunner(max_workers=max(1, DEFAULTS.max_parallel)))
def render(
    avatar: str,
    audio_dir: str | None = None,
    model_alias: str | None = None,
    output_dir: str | None = None,
    glob: str = DEFAULTS.glob,
    file_deployment: str | None = None,
) -> dict[str, int]:
    """Render `avatar` saying each audio file in `audio_dir` (default: its inbox),
    skipping what is already done."""
    logger = get_run_logger()
    _start()
    config = load_config(ROOT / "params.yaml")
    paths = AvatarPaths(avatar, ROOT)
    files = [f.absolute() for f in audio_files(_path(audio_dir, paths.inbox), glob)]
    out = _path(output_dir, paths.renders).absolute()
    outputs = output_paths(files, out)
    if model_alias is None and config.nightly.require_champion:
        # only a reviewed model renders unattended (nightly.require_champion)
        if champion_version(avatar) is None:
            promote = f"synctalk models promote {avatar} VERSION"
            logger.error("avatar-%s has no @%s: nothing rendered (%s)", avatar, CHAMPION, promote)
            return {"done": 0, "skipped": 0, "failed": 0, "no_champion": 1}
        model_alias = CHAMPION
    batch_id = flow_run.id or ""
    # the model first: with a registry that cannot be read, nothing is created
    renderer = AvatarRenderer(config, avatar, model_alias, ROOT, batch_id, _worker())
    try:
        check_writable(out)
        ledger = RenderLedger(LEDGER)
        ledger.check()
        renderer.sweep(out)
    except BaseException:
        renderer.close()
        raise
    logger.info(
        "%d audio files, avatar-%s version %s%s",
        len(files),
        avatar,
        renderer.model.version,
        f", one {file_deployment} run each" if file_deployment else "",
    )
    tracker = _Progress(len(files), f"{avatar}: files rendered or skipped")
    try:
        if file_deployment:
            records = _render_on_workers(
                renderer, files, outputs, ledger, file_deployment, batch_id, tracker
            )
        else:
            futures = [render_file.submit(renderer, f, outputs[f]) for f in files]
            records = []
            for future in as_completed(futures):
                records.append(_record_of(future.result(raise_on_failure=False)))
                tracker.advance()
    finally:
        renderer.close()
    return _report(avatar, files, records, logger)


def _record_of(result: object) -> RenderRecord:
    if isinstance(result, FileFailed):
        return result.record
    if isinstance(result, RenderRecord):
        return result
    raise result if isinstance(result, BaseException) else TypeError(result)


def _render_on_workers(
    renderer: AvatarRenderer,
    files: list[Path],
    outputs: dict[Path, Path],
    ledger: RenderLedger,
    deployment: str,
    batch_id: str,
    tracker: _Progress,
) -> list[RenderRecord]:
    """One `deployment` run per file not up to date; what is up to date is recorded as
    skipped here. A run whose process died (Crashed) is started again, up to
    nightly.retries times; the records come from the ledger."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    records = []
    pending: dict[str, tuple[Path, int]] = {}

    def submit(audio: Path, attempt: int) -> None:
        run = run_deployment(
            deployment,
            timeout=0,
            flow_run_name=f"{renderer.paths.name}: {audio.name}",
            parameters={
                "avatar": renderer.paths.name,
                "audio": str(audio),
                "output": str(outputs[audio]),
                "model_version": renderer.model.version,
                "batch_id": batch_id,
            },
        )
        pending[str(run.id)] = (audio, attempt)

    for audio in files:
        if renderer.up_to_date(audio, outputs[audio], ledger):
            records.append(renderer.render_if_changed(audio, outputs[audio], ledger))
            tracker.advance()
        else:
            submit(audio, 0)
    crashed: dict[Path, str] = {}
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(2)
            for run_id, (audio, attempt) in list(pending.items()):
                state = client.read_flow_run(run_id).state
                if state is None or state.type.value not in FINAL:
                    continue
                del pending[run_id]
                if state.type.value == "CRASHED" and attempt < DEFAULTS.retries:
                    logger.warning(
                        "%s: its run crashed (%s); starting it again", audio.name, state.message
                    )
                    submit(audio, attempt + 1)
                    continue
                if state.type.value != "COMPLETED":
                    crashed[audio] = f"{state.type.value.lower()}: {state.message}"
                tracker.advance()
    latest = {}  # the last record of each file in this batch (the ledger is oldest first)
    for row in ledger.read().to_pylist():
        if row["batch_id"] == batch_id:
            latest[row["audio_path"]] = RenderRecord.from_row(row)
    skipped = {r.audio_path for r in records}
    for audio in files:
        if str(audio) in skipped:
            continue
        record = latest.get(str(audio))
        if record is None:  # its run died before writing a record
            record = RenderRecord(
                avatar=renderer.paths.name,
                audio_path=str(audio),
                audio_sha256="",
                model_name=renderer.model_name,
                model_version=renderer.model.version,
                key="",
                output_path=str(outputs[audio]),
                status="failed",
                batch_id=batch_id,
                error=f"{audio}: {crashed.get(audio, 'no record')}",
                transient=True,
            )
        records.append(record)
    return records


class _Progress:
    """A Prefect progress artifact, updated as files finish."""

    def __init__(self, total: int, description: str):
        self.total, self.done = max(1, total), 0
        self.id = create_progress_artifact(0.0, key=None, description=description)

    def advance(self) -> None:
        self.done += 1
        update_progress_artifact(self.id, 100.0 * self.done / self.total)


def _report(avatar: str, files: list[Path], records: list[RenderRecord], logger):
    """Table artifact and log of the batch; Failed (naming the files) if any failed."""
    order = {str(f): i for i, f in enumerate(files)}
    records = sorted(records, key=lambda r: order.get(r.audio_path, len(order)))
    create_table_artifact(
        [
            {
                "file": Path(r.audio_path).name,
                "status": r.status,
                "model version": r.model_version,
                "frames": r.frames,
                "seconds": round(r.seconds, 1),
                "error": r.error,
                "output": r.output_path,
            }
            for r in records
        ],
        key=f"renders-{_artifact_key(avatar)}",
        description=f"Render batch of avatar {avatar}: every file and what became of it.",
    )
    counts = {s: sum(r.status == s for r in records) for s in ("done", "skipped", "failed")}
    logger.info("rendered %(done)d, skipped %(skipped)d, failed %(failed)d", counts)
    failed = [r for r in records if r.status == "failed"]
    if failed:
        names = "; ".join(f"{Path(r.audio_path).name} ({r.error})" for r in failed)
        return Failed(message=f"{len(failed)} of {len(records)} files failed: {names}"[:4000])
    return counts


def _artifact_key(name: str) -> str:
    # artifact keys: lower-case letters, digits and dashes
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def inbox_files(inbox: Path, pattern: str) -> list[Path]:
    """The audio files waiting in an inbox; none when it is missing or empty."""
    if not inbox.is_dir():
        return []
    return sorted(
        p for p in inbox.glob(pattern) if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )


@flow(name="nightly")
def nightly(glob: str = DEFAULTS.glob, file_deployment: str | None = None) -> dict:
    """Render every avatar's new or changed inbox files: one child `render` run per avatar."""
    logger = get_run_logger()
    _start()
    config = load_config(ROOT / "params.yaml")
    ledger = RenderLedger(LEDGER)
    ledger.check()
    report, failed = [], []
    for avatar in sorted(config.avatars):
        paths = AvatarPaths(avatar, ROOT)
        files = inbox_files(paths.inbox, glob)
        row = {"avatar": avatar, "inbox": str(paths.inbox), "files": len(files), "new": 0}
        report.append(row)
        if not files:
            row["outcome"] = "skipped: empty inbox"
            continue
        alias = CHAMPION if config.nightly.require_champion else None
        try:
            renderer = AvatarRenderer(config, avatar, alias, ROOT)
        except ModelNotFoundError as exc:
            row["outcome"] = f"skipped: no registered model to render ({exc})"
            continue
        try:
            outputs = output_paths(files, paths.renders)
            new = [f for f in files if not renderer.up_to_date(f, outputs[f], ledger)]
        except ValueError as exc:  # two inbox files would share a video
            row["outcome"] = f"failed: {exc}"
            failed.append(avatar)
            continue
        finally:
            renderer.close()
        row["new"] = len(new)
        if not new:
            row["outcome"] = "skipped: nothing new"
            continue
        state = render(
            avatar=avatar,
            model_alias=renderer.model.version,
            glob=glob,
            file_deployment=file_deployment,
            return_state=True,
        )
        if state.is_failed() or state.is_crashed():
            row["outcome"] = f"failed: {state.message}"
            failed.append(avatar)
        else:
            row["outcome"] = "rendered {done}, skipped {skipped}".format(**state.result())
    for row in report:
        logger.info("%s: %s", row["avatar"], row["outcome"])
    create_table_artifact(
        report, key="nightly", description="Nightly renders: each avatar's inbox and what was done."
    )
    if failed:
        return Failed(message=f"rendering failed for {', '.join(failed)} (see their runs)")
    return {row["avatar"]: row["outcome"] for row in report}


def job_environment() -> dict[str, str]:
    """What a work pool's flow runs need in their environment: the offline settings and
    the tracking store (the same for every worker)."""
    return {**OFFLINE_ENV, "MLFLOW_TRACKING_URI": tracking_uri(ROOT)}
