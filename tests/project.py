"""Scratch copies of the project for tests that run DVC stages the way users do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from tests.conftest import REPO

# What a project checkout needs for `dvc repro` (the rest is tests and docs).
PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    "stages",
    "synctalk",
    "flows",
    "models",
    ".dvc",
]


def make_project(tmp: Path) -> Path:
    """A fresh project: the checkout's code and settings, none of its avatars or DVC cache
    (a developer's own `make demo` leaves both behind)."""
    root = tmp / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            skip = ["__pycache__"] + (["tmp", "cache"] if name == ".dvc" else [])
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(src, root / name)
    yaml = YAML()
    params = yaml.load((root / "params.yaml").read_text())
    params["avatars"] = {}
    with open(root / "params.yaml", "w") as f:
        yaml.dump(params, f)
    git_init(root)
    return root


def git_init(root: Path) -> None:
    """A git repository with its own identity (commits work on a machine without one)."""
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for key, value in (("user.name", "synctalk tests"), ("user.email", "tests@example.invalid")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)


def commit(root: Path, message: str, *paths: str) -> str:
    """Commit `paths` (by default everything git does not ignore); the new commit's sha."""
    run(root, "git", "add", *(paths or ["-A"]))
    run(root, "git", "commit", "-q", "-m", message)
    return run(root, "git", "rev-parse", "HEAD").stdout.strip()


def set_params(root: Path, **sections) -> None:
    yaml = YAML()
    data = yaml.load((root / "params.yaml").read_text())
    for section, values in sections.items():
        for key, value in values.items():
            data[section][key] = value
    with open(root / "params.yaml", "w") as f:
        yaml.dump(data, f)


def run(
    root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`args` run in `root` with this environment's tools and `root`'s MLflow store
    (`env` adds or overrides variables)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_url(
    url: str, timeout: float, poll: float = 1.0, process: subprocess.Popen | None = None
) -> bool:
    """True once `url` answers 200; False after `timeout` s or once `process` has exited."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(poll)
    return False


class PrefectServer:
    """A throwaway local Prefect server (127.0.0.1 only) with its own home folder."""

    def __init__(self, home: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = dict(
            os.environ,
            PREFECT_HOME=str(home),
            PREFECT_API_URL=self.url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="true",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        if not wait_for_url(f"{self.url}/health", timeout):
            raise TimeoutError("the Prefect server did not start")

    def last_flow_run_seconds(self) -> float:
        """Run time (start to end, as the server recorded it) of the newest finished flow run.

        Finished only: serving a cron deployment also schedules future runs."""
        import json
        import urllib.request

        finished = {"state": {"type": {"any_": ["COMPLETED", "FAILED"]}}}
        body = json.dumps({"flow_runs": finished, "sort": "START_TIME_DESC", "limit": 1}).encode()
        request = urllib.request.Request(
            f"{self.url}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            (flow_run,) = json.loads(response.read())
        return float(flow_run["total_run_time"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# Training cut to a few steps: models that render (badly) and register, in about a minute.
FEW_STEPS = {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "checkpoint_every": 2}


def few_steps(root: Path) -> None:
    """Cut the tiny preset's SyncNet and U-Net training to FEW_STEPS."""
    yaml = YAML()
    data = yaml.load((root / "params.yaml").read_text())
    for model in ("syncnet", "unet"):
        data["presets"]["tiny"][model].update(FEW_STEPS)
    with open(root / "params.yaml", "w") as f:
        yaml.dump(data, f)


def make_avatar_project(tmp: Path, video: Path, name: str = "may") -> Path:
    """A project whose avatar `name` went through `dvc repro unet@<name>` with the tiny
    preset cut to a few training steps, and a random AVE encoder standing in for the
    official weights (copied, not trained): version 1 of avatar-<name> is registered
    and is its @champion."""
    reuse = os.environ.get("SYNCTALK_REUSE_AVATAR_PROJECT")  # debugging: a copy of one made before
    if reuse:
        root = tmp / "project"
        shutil.copytree(reuse, root, symlinks=True)
        for code in ("synctalk", "flows", "stages"):  # with today's code
            shutil.rmtree(root / code)
            shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        _train_few_steps(make_project(tmp), video, name)
        root = tmp / "project"
    # @champion without a review: what renders use unattended
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").set_registered_model_alias(
        f"avatar-{name}", "champion", "1"
    )
    return root


def _train_few_steps(root: Path, video: Path, name: str) -> None:
    import torch

    from synctalk.features.ave import save_encoder
    from synctalk.models import AudioEncoder

    torch.manual_seed(0)
    save_encoder(AudioEncoder(), root / "models" / "ave" / "audio_visual_encoder.pth")
    few_steps(root)
    add = ["avatar", "add", name, str(video), "--preset", "tiny"]
    run(root, sys.executable, "-m", "synctalk.cli", *add)
    run(root, "dvc", "repro", f"unet@{name}")
