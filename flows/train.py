"""Flow `train` (deployment `train/avatar`): bring one avatar up to date, stage by stage.

The avatar's DVC stages up to `evaluate@<avatar>` run in pipeline order, each
as its own task (`dvc repro --single-item <stage>`: DVC still decides
whether it is stale), with the stage's output streamed line by line into the
run's log, so the UI shows which stage is running and which failed.

Two trainings of one avatar never run at once: the flow holds the Prefect
concurrency limit `train-<avatar>` (one slot, created on first use), and a
second run waits for it. A stage that meets DVC's lock held by some other
`dvc` process (a terminal's) is tried again after a pause.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import ship_library_logs
from synctalk.paths import AvatarPaths

ROOT = Path(__file__).resolve().parents[1]
# DVC's words when another dvc process holds the repository or one of the stage's files
DVC_LOCKED = ("Unable to acquire lock", "is busy, it is being blocked by")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, tail: list[str]):
        errors = [ln for ln in tail if "ERROR" in ln] or tail[-3:]
        super().__init__(f"{stage} failed (dvc exit status {code}): {' | '.join(errors)}")
        self.locked = any(words in ln for ln in tail for words in DVC_LOCKED)


def pipeline_stages(avatar: str, root: Path = ROOT, last: str = "evaluate") -> list[str]:
    """The avatar's stages that `last@<avatar>` depends on, upstream first (from dvc.yaml)."""
    import networkx as nx
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        stages = repo.stage.collect(f"{last}@{avatar}", with_deps=True)
        # DVC's graph points from a stage to the stages it depends on
        graph = repo.index.graph.subgraph(stages)
        order = nx.lexicographical_topological_sort(graph, key=lambda s: s.addressing)
        return [stage.addressing for stage in reversed(list(order))]


def _locked_only(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return exc.locked
    except Exception:
        return False
    return False


@task(
    cache_policy=NO_CACHE,
    task_run_name="{stage}",
    retries=3,
    retry_delay_seconds=30,
    retry_condition_fn=_locked_only,
)
def run_stage(stage: str, root: Path = ROOT) -> bool:
    """`dvc repro --single-item STAGE`, its output streamed into the run log; True if it ran."""
    logger = get_run_logger()
    bin_dir = Path(sys.executable).parent  # the stages run with this environment's python
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [str(bin_dir / "dvc"), "repro", "--single-item", stage],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    tail: collections.deque[str] = collections.deque(maxlen=50)
    ran = False
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        tail.append(line)
        ran = ran or line.startswith("Running stage")
        logger.info("%s", line)
    code = proc.wait()
    if code != 0:
        raise StageFailed(stage, code, list(tail))
    return ran


def _ensure_limit(name: str) -> None:
    """A global concurrency limit of one slot called `name` (Prefect wants it to exist)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@flow(name="train", log_prints=False)
def train(avatar: str) -> dict:
    """Train (or bring up to date) `avatar` and return its evaluation metrics."""
    from prefect.concurrency.sync import concurrency

    logger = get_run_logger()
    ship_library_logs()
    limit = f"train-{avatar}"
    _ensure_limit(limit)
    logger.info("waiting for %s (one training of an avatar at a time)", limit)
    with concurrency(limit, occupy=1, strict=True):
        stages = pipeline_stages(avatar)
        logger.info("stages of %s, in order: %s", avatar, ", ".join(stages))
        ran = [stage for stage in stages if run_stage(stage)]
    logger.info("ran %s", ", ".join(ran) if ran else "nothing: everything was up to date")
    metrics = AvatarPaths(avatar, ROOT).metrics
    return json.loads(metrics.read_text()) if metrics.is_file() else {}
