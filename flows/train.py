"""Flow `train`: bring one avatar up to date by running its DVC stages.

DVC decides what is stale (`dvc repro evaluate@<avatar>` re-runs only the
stages whose inputs changed, up to evaluation). DVC refuses to run while
another repro holds its lock; the flow then waits and tries again instead of
failing the night.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from synctalk.config import load_config

ROOT = Path(__file__).resolve().parents[1]
LOCK_WAIT_S = 30


def dvc_repro(targets: list[str], root: Path = ROOT, wait_s: float = 1800) -> str:
    """`dvc repro TARGETS` in `root`; waits while another DVC process holds the lock."""
    bin_dir = Path(sys.executable).parent  # the stages run with this environment's python
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    deadline = time.monotonic() + wait_s
    while True:
        proc = subprocess.run(
            [str(bin_dir / "dvc"), "repro", *targets],
            cwd=root, capture_output=True, text=True, env=env,
        )  # fmt: skip
        if proc.returncode == 0:
            return proc.stdout
        # DVC exits 255 when another repro holds .dvc/tmp/lock
        locked = proc.returncode == 255 and "lock" in proc.stderr.lower()
        if not locked or time.monotonic() > deadline:
            raise RuntimeError(f"dvc repro {' '.join(targets)} failed:\n{proc.stderr[-4000:]}")
        time.sleep(LOCK_WAIT_S)


@task(retries=1, retry_delay_seconds=60)
def repro(avatar: str) -> str:
    logger = get_run_logger()
    logger.info("dvc repro evaluate@%s", avatar)
    output = dvc_repro([f"evaluate@{avatar}"])
    ran = [line for line in output.splitlines() if line.startswith("Running stage")]
    logger.info("%s", "\n".join(ran) or "everything was up to date")
    return output


@flow(name="train", log_prints=False)
def train(avatar: str = load_config(ROOT / "params.yaml").nightly.avatar) -> dict:
    """Train (or bring up to date) `avatar` and return its evaluation metrics."""
    repro(avatar)
    metrics = ROOT / "eval" / avatar / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else {}
