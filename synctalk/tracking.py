"""MLflow helpers: one run per stage, logged the same way everywhere.

The tracking store defaults to `sqlite:///mlflow.db` in the working directory
(the repo root when DVC runs a stage); MLFLOW_TRACKING_URI overrides it, e.g.
to point a team at a shared server. Telemetry of MLflow, Prefect and DVC is
switched off here because the machines this runs on are often offline.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from synctalk.process import ProcessId, current_process

log = logging.getLogger(__name__)

OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def tracking_uri(root: Path = Path(".")) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


class TrackingStoreError(RuntimeError):
    """The MLflow tracking store cannot be reached or read."""


def check_tracking_store(uri: str, timeout_s: float = 5.0) -> None:
    """TrackingStoreError naming `uri` if a tracking server there does not answer.

    MLflow itself retries a dead server for minutes before it gives up; a
    connection attempt tells at once."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        shown = re.sub(r"//([^:/@]+):[^@/]+@", r"//\1:***@", uri)  # no password in logs
        raise TrackingStoreError(
            f"cannot reach the MLflow tracking server at {shown}: {exc.strerror or exc} "
            "(the runs and the model registry live there: start it, or set MLFLOW_TRACKING_URI)"
        ) from None


def flatten(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; dataclasses are expanded too."""
    if is_dataclass(params):
        params = asdict(params)
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if is_dataclass(value) or isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit(root: Path = Path(".")) -> str:
    return _git(root, "rev-parse", "HEAD") or "unknown"


def git_dirty(root: Path = Path(".")) -> str:
    """Whether tracked files differ from the commit: "true", "false" or "unknown"."""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return "unknown" if status is None else str(bool(status)).lower()


# Tags every run of this process gets (the stage's lineage: see stages/lineage.py).
RUN_TAGS: dict[str, str] = {}
# The tag of runs (and registered versions) trained for an experiment, its value the
# experiment's name: such a version is compared, never given an alias by the pipeline.
EXPERIMENT_TAG = "experiment"


@contextmanager
def stage_run(stage: str, avatar: str, params: Any, root: Path = Path(".")) -> Iterator[Any]:
    """An MLflow run for `stage` of `avatar`, in the experiment `avatar-<name>`.

    The run is tagged with the process running it, so that a later run of the
    same stage can tell a run left RUNNING by a killed process (marked KILLED,
    with a link to the run that continues it) from one still going.
    """
    apply_offline_env()
    import mlflow

    uri = tracking_uri(root)
    check_tracking_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(f"avatar-{avatar}")
    tags = {
        "stage": stage,
        "avatar": avatar,
        "git_commit": git_commit(root),
        "git_dirty": git_dirty(root),
        PROCESS_TAG: str(current_process()),
        **RUN_TAGS,
    }
    with mlflow.start_run(run_name=f"{stage}@{avatar}", tags=tags) as run:
        close_abandoned_runs(mlflow.MlflowClient(), experiment.experiment_id, stage, run)
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        yield run


PROCESS_TAG = "synctalk.process"  # host:pid:start of the process that ran the stage


def close_abandoned_runs(client: Any, experiment_id: str, stage: str, successor: Any) -> list[str]:
    """Mark KILLED the runs of `stage` still RUNNING whose process has ended (killed before
    it could close them), pointing them at `successor`, the run that continues their work."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'",
    )
    closed = []
    for run in found:
        if run.info.run_id == successor.info.run_id:
            continue
        owner = ProcessId.parse(run.data.tags.get(PROCESS_TAG, ""))
        if owner is None or owner.is_running() is not False:
            continue  # still running, or on another machine: not ours to judge
        link = f"#/experiments/{experiment_id}/runs/{successor.info.run_id}"
        client.set_tag(run.info.run_id, "synctalk.continued_by", successor.info.run_id)
        client.set_tag(
            run.info.run_id,
            "mlflow.note.content",
            f"The process running this stage was killed; [the next run]({link}) "
            "continues its work.",
        )
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(successor.info.run_id, "synctalk.continues", run.info.run_id)
        log.warning(
            "MLflow run %s of %s was left RUNNING by a killed process (pid %d): "
            "marked KILLED, continued by %s",
            run.info.run_id,
            stage,
            owner.pid,
            successor.info.run_id,
        )
        closed.append(run.info.run_id)
    return closed


def log_history_plot(history: Any, path: Path, title: str) -> Path:
    """Loss curves (train per epoch, validation from step 0) as a PNG artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history.val for k in row})
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3))
    train_loss = [row.get("train_loss") for row in history.train]
    axes[0].plot(range(1, len(train_loss) + 1), train_loss, marker="o")
    axes[0].set(title="train loss", xlabel="epoch")
    for ax, key in zip(axes[1:], keys, strict=True):
        ax.plot(range(len(history.val)), [row.get(key) for row in history.val], marker="o")
        ax.set(title=key, xlabel="epoch (0: before training)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def log_offset_curve_plot(
    score: Any, path: Path, title: str, reference: Any = None, reference_label: str = ""
) -> Path:
    """A SyncScore's mean face/audio distance per offset, the best offset marked, as a PNG.

    `reference` (another SyncScore, e.g. of the real footage) is drawn beside it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    label = "rendered" if reference is not None else None
    ax.plot(score.offsets, score.distances, marker="o", label=label)
    if reference is not None:
        label = f"{reference_label}, LSE-C {reference.confidence:.3f}"
        ax.plot(reference.offsets, reference.distances, marker=".", color="tab:grey", label=label)
    label = f"best {score.best_offset:+d}, LSE-C {score.confidence:.3f}"
    ax.axvline(score.best_offset, color="tab:red", linestyle="--", label=label)
    ax.set(title=title, xlabel="offset (audio frame - face frame)", ylabel="mean distance")
    ax.legend()
    return _save_figure(fig, path)


def write_series_plot(x: Any, y: Any, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """One curve (e.g. PSNR per held-out frame) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(x, y, linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    from synctalk.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def inputs_fingerprint(paths: list[Path]) -> str:
    """md5 over the inputs' md5s, as DVC computes them for dvc.lock (files only)."""
    import hashlib

    digest = hashlib.md5()
    for path in sorted(paths):
        file_md5 = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                file_md5.update(block)
        digest.update(f"{path}:{file_md5.hexdigest()}\n".encode())
    return digest.hexdigest()
