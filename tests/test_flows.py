"""Unattended production on Prefect's own machinery: a real local server, the deployments
on a process work pool (`synctalk deploy --pool`) and two workers, all started here.

The project's avatar `may` (a 5 s clip) is trained for a few steps; a second
avatar, `amy`, has neither a model nor audio waiting. Runs are started as an
operator would (`prefect deployment run`) and judged by what the API and the
ledger say afterwards.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from synctalk.media.ffmpeg import run_ffmpeg
from synctalk.media.video import probe_video
from synctalk.render.ledger import RenderLedger
from tests.conftest import shared_path
from tests.project import PrefectServer, free_port, make_avatar_project

pytestmark = pytest.mark.slow

POOL = "renders"


class Production:
    """The project, the server, two workers of the pool; helpers to run and inspect."""

    def __init__(self, root: Path, server: PrefectServer):
        self.root, self.server = root, server
        self.env = dict(
            server.env,
            MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_LOGGING_LEVEL="INFO",
        )
        self.workers: list[subprocess.Popen] = []
        self.alerts: http.server.HTTPServer | None = None

    def start_workers(self, names: list[str]) -> None:
        prefect = str(Path(sys.executable).parent / "prefect")
        for name in names:
            log = open(self.root.parent / f"worker-{name}.log", "w")
            self.workers.append(
                subprocess.Popen(
                    [prefect, "worker", "start", "--pool", POOL, "--name", name, "--limit", "2"],
                    cwd=self.root,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop(self) -> None:
        for worker in self.workers:  # by PID: only the processes started here
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()

    def start(self, deployment: str, **params: str) -> str:
        """`prefect deployment run` as an operator types it; returns the flow run's id."""
        args = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", deployment]
        for key, value in params.items():
            args += ["--param", f"{key}={value}"]
        proc = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout)[1]

    def api(self, path: str, body: dict | None = None):
        request = urllib.request.Request(
            f"{self.server.url}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait(self, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api(f"/flow_runs/{run_id}")
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(2)
        raise TimeoutError(f"flow run {run_id} did not finish: {run['state']}")

    def table(self, run_id: str) -> list[dict]:
        (artifact,) = self.api(
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [run_id]}, "type": {"any_": ["table"]}}},
        )
        data = artifact["data"]
        return json.loads(data) if isinstance(data, str) else data

    def children(self, run_id: str) -> list[dict]:
        """Flow runs started by `run_id` (subflows and deployment runs alike)."""
        tasks = self.api("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        parents = [t["id"] for t in tasks]
        if not parents:
            return []
        return self.api(
            "/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"any_": parents}}}
        )

    def ledger(self, batch_id: str) -> list[dict]:
        table = RenderLedger(self.root / "data" / "renders" / "renders.parquet").read()
        return [r for r in table.to_pylist() if r["batch_id"] == batch_id]


def _speech(path: Path, start: float, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    talk = shared_path("data", "audio", "talk_hb_45s.wav")
    run_ffmpeg(
        ["-y", "-ss", str(start), "-t", str(seconds), "-i", str(talk), "-ac", "1", str(path)],
        source=talk,
    )
    return path


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    video = shared_path("data", "videos", "may_5s.mp4")
    root = make_avatar_project(tmp_path_factory.mktemp("flows"), video, "may")
    yaml = YAML()
    params = yaml.load((root / "params.yaml").read_text())
    params["nightly"].update(max_parallel=2, retries=1, retry_delay_s=1)
    # an avatar without a model or audio waiting (its video is never read here)
    params["avatars"]["amy"] = {"video": params["avatars"]["may"]["video"], "preset": "tiny"}
    params["avatars"]["ann"] = {"video": params["avatars"]["may"]["video"], "preset": "tiny"}
    with open(root / "params.yaml", "w") as f:
        yaml.dump(params, f)
    server = PrefectServer(root.parent / "prefect")
    prod = Production(root, server)
    try:
        server.wait_ready()
        deployed = subprocess.run(
            [sys.executable, "-m", "synctalk.cli", "deploy", "--pool", POOL],
            cwd=root,
            env=prod.env,
            capture_output=True,
            text=True,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        for name in ("nightly/nightly", "render/batch", "render-file/file", "train/avatar"):
            assert f"deployed {name} to work pool {POOL}" in deployed.stdout
        prod.start_workers(["w1", "w2"])
        prod.alerts = _alert_on_failures(prod)
        yield prod
    finally:
        prod.stop()
        server.stop()
        if prod.alerts is not None:
            prod.alerts.shutdown()


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.server.received.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _alert_on_failures(prod: Production) -> http.server.HTTPServer:
    """The README's automation (flows/alerts/failed-renders.yaml), notifying a webhook
    served here: what an operator's Slack would receive."""
    receiver = http.server.HTTPServer(("127.0.0.1", free_port()), _Receiver)
    receiver.received = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    save = (
        "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B\n"
        f"print(B(name='test', url='http://127.0.0.1:{receiver.server_port}/hook', "
        "json_data={'text': '{{body}}'}).save('ops-webhook'))"
    )
    saved = subprocess.run(
        [sys.executable, "-c", save],
        cwd=prod.root,
        env=prod.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    template = (prod.root / "flows" / "alerts" / "failed-renders.yaml").read_text()
    alert = prod.root.parent / "alert.yaml"
    alert.write_text(template.replace("BLOCK_ID", saved.split()[-1]))
    prefect = str(Path(sys.executable).parent / "prefect")
    created = subprocess.run(
        [prefect, "automation", "create", "--from-file", str(alert)],
        cwd=prod.root,
        env=prod.env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    return receiver


def test_two_workers_share_a_batch_and_a_second_run_renders_nothing(production, tmp_path):
    folder = tmp_path / "audio"
    for i in range(6):
        _speech(folder / f"take{i}.wav", start=2.0 + 2 * i)
    out = tmp_path / "videos"
    run_id = production.start(
        "render/batch", avatar="may", audio_dir=str(folder), output_dir=str(out)
    )
    run = production.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    rows = production.ledger(run_id)
    assert sorted(r["status"] for r in rows) == ["done"] * 6
    assert {r["worker"] for r in rows} == {"w1", "w2"}  # both workers rendered files
    files = [r for r in production.children(run_id) if r["name"].startswith("may: ")]
    assert len(files) == 6  # one render-file run per file
    for i in range(6):
        info = probe_video(out / f"take{i}.mp4")
        assert info.has_audio and info.fps == 25 and abs(info.duration - 1.0) < 0.05
    table = production.table(run_id)
    assert sorted(row["file"] for row in table) == [f"take{i}.wav" for i in range(6)]
    assert {row["status"] for row in table} == {"done"}

    again = production.start(
        "render/batch", avatar="may", audio_dir=str(folder), output_dir=str(out)
    )
    assert production.wait(again)["state"]["type"] == "COMPLETED"
    assert sorted(r["status"] for r in production.ledger(again)) == ["skipped"] * 6
    assert production.children(again) == []  # no worker was asked to render anything


def test_nightly_renders_the_avatars_with_new_audio_and_skips_the_others(production):
    inbox = production.root / "data" / "inbox"
    _speech(inbox / "may" / "monday.wav", start=20.0)
    _speech(inbox / "may" / "tuesday.mp3", start=24.0)
    (inbox / "amy").mkdir(parents=True)  # empty
    _speech(inbox / "ann" / "hello.wav", start=28.0)  # but ann has no model
    run_id = production.start("nightly/nightly")
    run = production.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    report = {row["avatar"]: row for row in production.table(run_id)}
    assert report["amy"]["outcome"] == "skipped: empty inbox"
    assert report["ann"]["outcome"].startswith("skipped: no registered model")
    assert report["may"]["new"] == 2 and report["may"]["outcome"].startswith("rendered 2")
    renders = production.root / "data" / "renders" / "may"
    assert probe_video(renders / "monday.mp4").has_audio
    assert probe_video(renders / "tuesday.mp4").has_audio
    (batch,) = [r for r in production.children(run_id) if r["name"] != run["name"]]
    assert batch["state"]["type"] == "COMPLETED"  # may's child `render` run


def test_a_corrupt_file_fails_the_batch_by_name_and_the_good_ones_render(production, tmp_path):
    folder = tmp_path / "audio"
    _speech(folder / "good1.wav", start=30.0)
    _speech(folder / "good2.wav", start=33.0)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    out = tmp_path / "videos"
    run_id = production.start(
        "render/batch", avatar="may", audio_dir=str(folder), output_dir=str(out)
    )
    run = production.wait(run_id)
    assert run["state"]["type"] == "FAILED"
    assert "corrupt.wav" in run["state"]["message"] and "good" not in run["state"]["message"]
    assert probe_video(out / "good1.mp4").has_audio and probe_video(out / "good2.mp4").has_audio
    assert not (out / "corrupt.mp4").exists()
    table = {row["file"]: row for row in production.table(run_id)}
    assert {f: row["status"] for f, row in table.items()} == {
        "good1.wav": "done",
        "good2.wav": "done",
        "corrupt.wav": "failed",
    }
    assert "corrupt.wav" in table["corrupt.wav"]["error"]
    assert table["good1.wav"]["frames"] == 25 and table["good1.wav"]["model version"] == "1"
    # the bad file's own run failed, and was not retried (bad input): one failed row
    (bad,) = [r for r in production.children(run_id) if r["name"] == "may: corrupt.wav"]
    assert bad["state"]["type"] == "FAILED"
    statuses = sorted(r["status"] for r in production.ledger(run_id))
    assert statuses == ["done", "done", "failed"]
    # the operator's view: progress to the end, the library's own log records in the runs
    (progress,) = production.api(
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [run_id]}, "type": {"any_": ["progress"]}}},
    )
    assert float(progress["data"]) == 100.0
    (good,) = [r for r in production.children(run_id) if r["name"] == "may: good1.wav"]
    logs = production.api("/logs/filter", {"logs": {"flow_run_id": {"any_": [good["id"]]}}})
    assert any(e["name"] == "synctalk.render.engine" and "good1.mp4" in e["message"] for e in logs)


def test_train_runs_each_stage_as_a_task_and_one_training_per_avatar(production):
    first = production.start("train/avatar", avatar="may")
    second = production.start("train/avatar", avatar="may")
    runs = [production.wait(first), production.wait(second)]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    stages = [
        "extract@may",
        "landmarks@may",
        "audio_encoder@may",
        "features@may",
        "syncnet@may",
        "unet@may",
        "evaluate@may",
    ]
    tasks = {}
    for run in runs:
        found = production.api(
            "/task_runs/filter",
            {"flow_runs": {"id": {"any_": [run["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
        )
        tasks[run["id"]] = [t for t in found if t["name"] in stages]
        assert [t["name"] for t in tasks[run["id"]]] == stages  # one task each, in order
        assert {t["state"]["type"] for t in tasks[run["id"]]} == {"COMPLETED"}
    # the two did not run alongside: one's stages all ended before the other's began
    a, b = sorted(tasks.values(), key=lambda ts: ts[0]["start_time"])
    assert max(t["end_time"] for t in a) <= min(t["start_time"] for t in b)
    # the stage's own output is in the run's log, as it went
    logs = production.api("/logs/filter", {"logs": {"flow_run_id": {"any_": [first]}}})
    text = "\n".join(entry["message"] for entry in logs)
    assert "evaluate@may" in text and ("Running stage" in text or "didn't change" in text)
    assert (production.root / "eval" / "may" / "metrics.json").is_file()


def test_renders_status_lists_the_last_batch(production, tmp_path):
    folder = tmp_path / "audio"
    _speech(folder / "status.wav", start=40.0)
    (folder / "broken.mp3").write_text("not audio")
    env = dict(os.environ, MLFLOW_TRACKING_URI=production.env["MLFLOW_TRACKING_URI"])
    cli = [sys.executable, "-m", "synctalk.cli"]
    subprocess.run(
        [
            *cli,
            "render",
            "--avatar",
            "may",
            "--audio",
            str(folder),
            "--out",
            str(tmp_path / "videos"),
        ],
        cwd=production.root,
        env=env,
        check=False,
    )
    status = subprocess.run(
        [*cli, "renders", "status", "--avatar", "may"],
        cwd=production.root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [ln for ln in status.splitlines() if "status.wav" in ln or "broken.mp3" in ln]
    assert len(lines) == 2 and len(status.splitlines()) == 4  # header, 2 files, summary
    assert " done " in next(ln for ln in lines if "status.wav" in ln)
    assert " failed " in next(ln for ln in lines if "broken.mp3" in ln)
    failed = subprocess.run(
        [*cli, "renders", "status", "--failed"],
        cwd=production.root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "broken.mp3" in failed and "status.wav" not in failed


def test_serve_and_pool_deployments(tmp_path):
    """What `synctalk serve` and `synctalk deploy` register (no server needed)."""
    from flows.deploy import deployments

    served = {f"{d.flow_name}/{d.name}": d for d in deployments(pool=False)}
    assert set(served) == {"nightly/nightly", "render/batch", "render-file/file", "train/avatar"}
    (schedule,) = served["nightly/nightly"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
    assert served["render/batch"].parameters == {}  # served: files render in the batch's run
    pooled = {f"{d.flow_name}/{d.name}": d for d in deployments(pool=True)}
    assert pooled["render/batch"].parameters == {"file_deployment": "render-file/file"}
    assert pooled["nightly/nightly"].parameters == {"file_deployment": "render-file/file"}
    assert pooled["render-file/file"].concurrency_limit == 1  # nightly.max_parallel
    assert all(d.job_variables["env"]["MLFLOW_TRACKING_URI"] for d in pooled.values())
