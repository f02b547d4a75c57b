"""Review before release, against a real MLflow registry (sqlite, and dead or failing servers):
the promotion gate, `models compare` and `models list`, and registry reads that fail closed.

The versions here are registry entries with metrics only (no weights): what is under
test is what the registry says, not what a model renders (tests/test_pipeline.py does that).
"""

from __future__ import annotations

import http.server
import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from synctalk.cli import main
from synctalk.config import ReviewParams
from synctalk.registry import (
    CANDIDATE,
    CHAMPION,
    aliases,
    attach_evaluation,
    check_promotion,
)
from tests.conftest import REPO, shared_path
from tests.project import free_port

REVIEW = ReviewParams(minimum={"psnr": 20.0, "lse_c_ratio": 0.2}, maximum={"lmd": 0.5})
GOOD = {"psnr": 24.5, "ssim": 0.86, "lmd": 0.12, "lse_c": 0.21, "lse_c_ratio": 0.45}
BAD_LMD = {"psnr": 23.0, "ssim": 0.80, "lmd": 0.71, "lse_c": 0.18, "lse_c_ratio": 0.35}


def test_gate_names_the_first_failing_metric():
    assert check_promotion(GOOD, REVIEW) is None
    assert "no evaluation" in check_promotion({}, REVIEW)
    assert check_promotion(BAD_LMD, REVIEW).startswith("lmd 0.71 is beyond review.maximum.lmd")
    assert "psnr 15" in check_promotion({**GOOD, "psnr": 15.0}, REVIEW)
    assert "has no lse_c_ratio" in check_promotion({"psnr": 25.0, "lmd": 0.1}, REVIEW)
    assert "has no lmd" in check_promotion({**GOOD, "lmd": math.nan}, REVIEW)
    assert check_promotion({**GOOD, "psnr": 20.0}, REVIEW) is None  # the limit itself passes


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """sqlite:///…/mlflow.db with avatar-test versions 1 (good evaluation), 2 (lmd too
    high), 3 (not evaluated) and avatar-nochamp version 1 (good, never promoted)."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    for avatar, evaluations in (("test", [GOOD, BAD_LMD, None]), ("nochamp", [GOOD])):
        name = f"avatar-{avatar}"
        mlflow.set_experiment(name)
        client.create_registered_model(name)
        for evaluation in evaluations:
            with mlflow.start_run() as run:
                model = mlflow.create_external_model(name="model")
            version = client.create_model_version(
                name, f"models:/{model.model_id}", run.info.run_id, model_id=model.model_id
            ).version
            if evaluation is not None:
                attach_evaluation(avatar, str(version), evaluation)
    return uri


@pytest.fixture(scope="module")
def review_params(tmp_path_factory) -> Path:
    """A params.yaml whose review: section is REVIEW (not the repo's, which may change)."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(json.dumps({"review": {"minimum": REVIEW.minimum, "maximum": REVIEW.maximum}}))
    return path


@pytest.fixture
def store(registry, review_params, monkeypatch) -> Path:
    """The registry in use; returns the params.yaml to promote with."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    mlflow.set_tracking_uri(registry)
    return review_params


def _promote(params: Path, *args: str) -> int:
    return main(["models", "promote", "test", *args, "--params", str(params)])


def test_promote_refuses_an_unevaluated_version(store, caplog):
    before = aliases("test")
    assert _promote(store, "3") != 0
    assert "version 3 not promoted to @champion: it has no evaluation" in caplog.text
    assert aliases("test") == before


def test_promote_refuses_a_version_below_a_threshold_naming_the_metric(store, caplog):
    before = aliases("test")
    assert _promote(store, "2") != 0
    assert "lmd 0.71 is beyond review.maximum.lmd 0.5" in caplog.text
    assert aliases("test") == before


def test_forced_promotion_needs_and_records_a_reason(store, caplog, capsys):
    import mlflow

    assert _promote(store, "2", "--force") != 0
    assert "--force needs --reason" in caplog.text
    assert _promote(store, "2", "--force", "--reason", "the client approved this take") == 0
    assert aliases("test")[CHAMPION] == "2"
    tags = mlflow.MlflowClient().get_model_version("avatar-test", "2").tags
    assert tags["forced_champion_reason"] == "the client approved this take"
    assert tags["forced_champion_by"] and tags["forced_champion_over"].startswith("lmd 0.71")
    assert "forced: lmd 0.71" in capsys.readouterr().out


def test_a_version_that_passes_is_promoted(store):
    assert _promote(store, "1") == 0
    assert aliases("test")[CHAMPION] == "1"


def test_models_compare_prints_one_column_per_version(store, capsys):
    assert main(["models", "compare", "test", "1", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "v1", "v2"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["psnr"] == ["24.5", "23"] and rows["lmd"] == ["0.12", "0.71"]
    assert set(rows) == set(GOOD)


def test_models_list_shows_every_versions_aliases(store, capsys):
    from synctalk.registry import set_alias

    set_alias("test", "3", CANDIDATE)
    assert main(["models", "list", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    by_version = {ln.split()[0]: dict(zip(header, ln.split(), strict=True)) for ln in lines[1:]}
    assert by_version["3"]["aliases"] == CANDIDATE
    assert by_version["2"]["lmd"] == "0.71"


def test_renders_without_a_champion_never_fall_back_to_an_experiments_version(
    tmp_path, monkeypatch
):
    """With no @champion, rendering takes the newest version the pipeline trained; a
    version trained for a `dvc exp run` experiment (tagged `experiment`) is never picked."""
    import mlflow

    from synctalk.registry import ModelNotFoundError, resolve_version
    from synctalk.tracking import EXPERIMENT_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model("avatar-exp")
    mlflow.set_experiment("avatar-exp")
    for tags in ({}, {EXPERIMENT_TAG: "lr-high"}):
        with mlflow.start_run() as run:
            model = mlflow.create_external_model(name="model")
        client.create_model_version(
            "avatar-exp",
            f"models:/{model.model_id}",
            run.info.run_id,
            tags=tags,
            model_id=model.model_id,
        )
    assert str(resolve_version("exp").version) == "1"
    assert str(resolve_version("exp", "2").version) == "2"  # asked for by number: fine
    client.set_model_version_tag("avatar-exp", "1", EXPERIMENT_TAG, "lr-low")
    with pytest.raises(ModelNotFoundError, match="only experiment versions"):
        resolve_version("exp")


# --------------------------------------------------------------------------
# an unreadable registry: never a guess


class _Failing(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"Service Unavailable")

    do_GET = do_POST = _fail

    def log_message(self, *args):
        pass


@pytest.fixture
def unavailable_store(request, registry, tmp_path, monkeypatch):
    """(tracking URI, what the error must name) of a registry that cannot be read."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow retries 7 times
    kind = request.param
    if kind == "missing":
        uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
        yield uri, uri
        assert not (tmp_path / "nowhere" / "mlflow.db").exists()  # nothing was created
    elif kind == "locked":
        lock = sqlite3.connect(registry.removeprefix("sqlite:///"))
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield registry, registry
        finally:
            lock.rollback()
            lock.close()
    elif kind == "dead server":
        uri = f"http://127.0.0.1:{free_port()}"
        yield uri, uri
    else:  # HTTP 503 for every request
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            uri = f"http://127.0.0.1:{server.server_address[1]}"
            yield uri, uri
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    "unavailable_store", ["missing", "locked", "dead server", "http 503"], indirect=True
)
def test_render_fails_closed_naming_the_store(unavailable_store, tmp_path, monkeypatch, caplog):
    import mlflow

    uri, named = unavailable_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    params = tmp_path / "params.yaml"
    avatars = {"test": {"video": "x.mp4", "preset": "tiny"}}
    params.write_text(json.dumps({"avatars": avatars, "presets": {"tiny": {}}}))
    audio = shared_path("data", "audio", "macron_fr_12s.wav")
    out = tmp_path / "renders"
    args = ["render", "--avatar", "test", "--audio", str(audio), "--out", str(out)]
    assert main([*args, "--params", str(params)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.name == "synctalk"]
    assert len(errors) == 1 and named in errors[0] and "registry" in errors[0], errors
    assert not out.exists()


def test_render_flow_fails_closed_and_skips_an_avatar_without_champion(registry, tmp_path):
    """The Prefect flow itself (ephemeral API): a dead store fails the run naming it; with a
    readable store, an avatar nobody promoted is reported and nothing is rendered."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.wav").write_bytes(shared_path("data", "audio", "macron_fr_12s.wav").read_bytes())
    dead = f"http://127.0.0.1:{free_port()}"
    script = f"""
import os
from flows.render import render
os.environ["MLFLOW_TRACKING_URI"] = {dead!r}
try:
    render(avatar="test", audio_dir={str(inbox)!r}, output_dir={str(tmp_path / "out")!r})
except Exception as exc:
    print("FAILED:", exc)
os.environ["MLFLOW_TRACKING_URI"] = {registry!r}
print("RESULT:", render(avatar="nochamp", audio_dir={str(inbox)!r},
                        output_dir={str(tmp_path / "out")!r}))
"""
    # Prefect counts only its own sleeps against this; on a busy 2-core CI box the
    # ephemeral server can take longer than the default 20.
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"
    # Output to files, not pipes: a server Prefect failed to stop would hold a pipe open.
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        command = [sys.executable, "-c", script]
        subprocess.run(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
    lines = out.read_text().splitlines()
    failed = [ln for ln in lines if ln.startswith("FAILED:")]
    assert failed and dead in failed[0] and "registry" in failed[0], lines + [err.read_text()]
    assert "RESULT: {'done': 0, 'skipped': 0, 'failed': 0, 'no_champion': 1}" in lines
    assert "avatar-nochamp has no @champion" in err.read_text()
    assert not (tmp_path / "out").exists()
