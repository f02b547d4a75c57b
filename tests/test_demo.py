"""`make demo` (`python -m flows.demo`) twice in a fresh project: the second run trains
nothing and renders nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.project import few_steps, make_project, run

pytestmark = pytest.mark.slow


def _training_runs(root: Path) -> dict[str, int]:
    """MLflow runs of avatar-demo per stage."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("avatar-demo")
    counts: dict[str, int] = {}
    for r in client.search_runs([experiment.experiment_id]):
        counts[r.data.tags["stage"]] = counts.get(r.data.tags["stage"], 0) + 1
    return counts


def _videos(root: Path) -> dict[str, int]:
    """Every video the demo renders (its inbox's and the untrained comparison), by mtime."""
    videos = [*root.glob("data/renders/demo/*.mp4"), *root.glob("data/cache/demo/*.mp4")]
    return {str(v.relative_to(root)): v.stat().st_mtime_ns for v in videos}


def test_a_second_demo_run_trains_nothing_and_renders_nothing(tmp_path):
    """What a second `make demo` used to redo: the inbox's sentences were spoken again
    (eSpeak's output depends on what the process said before: 4.42 s, then 4.41 s, so
    another hash, so another render), and the untrained comparison was exported and
    rendered every time."""
    root = make_project(tmp_path)
    few_steps(root)  # the demo's own tiny training takes minutes; what runs twice is the point
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}  # its own ephemeral Prefect
    first = run(root, sys.executable, "-m", "flows.demo", env=env)
    assert "Render batch: {'done': 2, 'skipped': 0, 'failed': 0}" in first.stdout
    trained, videos = _training_runs(root), _videos(root)
    assert trained["unet"] == 1 and len(videos) == 3  # two sentences, one comparison
    inbox = {p: p.read_bytes() for p in root.glob("data/inbox/demo/*.wav")}

    second = run(root, sys.executable, "-m", "flows.demo", env=env)
    assert "ran nothing: everything was up to date" in second.stdout + second.stderr
    assert "Render batch: {'done': 0, 'skipped': 2, 'failed': 0}" in second.stdout
    assert _training_runs(root) == trained  # no stage ran: no new MLflow run
    assert _videos(root) == videos  # no video written again
    assert {p: p.read_bytes() for p in root.glob("data/inbox/demo/*.wav")} == inbox
