"""Does the MLflow UI show a reviewer the evaluation video? A real headless browser says.

    .venv/bin/python scripts/review_screenshot.py --avatar demo --out /tmp/review.png
    .venv/bin/python scripts/review_screenshot.py --project /path/to/project --avatar bob \\
        --version 3 --artifact review/heldout_side_by_side.mp4 --out /tmp/review.png

Starts `mlflow ui` on a free loopback port for the project's tracking store
(./mlflow.db, or $MLFLOW_TRACKING_URI), opens the run page of the version's
review video (the version @candidate unless --version says otherwise) in
headless Chromium (Debian: `apt-get install chromium`), saves a screenshot,
and checks the rendered page for a <video> element under the artifact's path.
Exit status 0 when it is there. Not part of the tests: CI has no browser.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=30000",
        "--autoplay-policy=no-user-gesture-required",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".", help="project folder (default: .)")
    parser.add_argument("--avatar", required=True)
    parser.add_argument("--version", help="registered version (default: the @candidate)")
    default = "review/review_sentence.mp4"
    parser.add_argument("--artifact", default=default, help=f"run artifact (default: {default})")
    parser.add_argument("--out", required=True, help="screenshot PNG to write")
    args = parser.parse_args()

    import mlflow

    root = Path(args.project).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    name = f"avatar-{args.avatar}"
    if args.version:
        version = client.get_model_version(name, args.version)
    else:
        version = client.get_model_version_by_alias(name, "candidate")
    run = client.get_run(version.run_id)
    port = _free_port()
    ui = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    page = (
        f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        f"/artifacts/{args.artifact}"
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline or ui.poll() is not None:
                    sys.exit(f"mlflow ui did not start on {base}")
                time.sleep(1)
        with tempfile.TemporaryDirectory() as profile:
            shot = _chromium(
                f"--screenshot={Path(args.out).resolve()}", page, profile=Path(profile)
            )
            dom = _chromium("--dump-dom", page, profile=Path(profile)).stdout
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)

    # The UI fetches the artifact and plays it from a blob: URL, under its path as a title.
    videos = re.findall(r"<video[^>]*>", dom)
    playing = [v for v in videos if 'src="' in v] if args.artifact in dom else []
    print(f"{name} version {version.version}, run {run.info.run_id}: {page}")
    print(f"screenshot: {args.out} ({'written' if Path(args.out).is_file() else shot.stderr})")
    print(f"<video> elements: {len(videos)}; showing {args.artifact}: {len(playing)}")
    for tag in videos:
        print(f"  {tag[:300]}")
    return 0 if playing else 1


if __name__ == "__main__":
    sys.exit(main())
