"""`dvc repro` of the whole tiny pipeline on a real clip, in a scratch copy of the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synctalk.config import load_config
from synctalk.face.crop import crop_jitter
from synctalk.face.landmarks import ANCHOR_NAMES
from synctalk.manifest import (
    AVE_SCHEMA,
    FRAMES_SCHEMA,
    LANDMARKS_SCHEMA,
    fixed_list_to_numpy,
    read_manifest,
)
from tests.conftest import shared_path
from tests.project import make_project, run, set_params, stages_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project with avatar `lieu` prepared and trained by `dvc repro` (tiny preset).

    For debugging, SYNCTALK_REUSE_PROJECT=<a copy of a project a previous run made,
    outside pytest's tmp folder, which pytest prunes> skips the 10-minute repro.
    """
    reuse = os.environ.get("SYNCTALK_REUSE_PROJECT")
    if reuse:
        return Path(reuse), None
    video = shared_path("data", "videos", "lieu_address_45s.mp4")
    root = make_project(tmp_path_factory.mktemp("dvc"))
    run(root, sys.executable, "-m", "synctalk.cli", "avatar", "add", "lieu", str(video),
        "--preset", "tiny")  # fmt: skip
    first = run(root, "dvc", "repro")
    return root, first


def test_repro_runs_every_preparation_stage(prepared):
    root, first = prepared
    if first is None:
        pytest.skip("reusing a project")
    assert stages_run(first.stdout) == [
        "extract@lieu", "landmarks@lieu", "ave_encoder@lieu", "ave@lieu", "syncnet@lieu",
        "unet@lieu", "evaluate@lieu",
    ]  # fmt: skip
    work = root / "data" / "work" / "lieu"
    frames, meta = read_manifest(work / "frames.parquet", FRAMES_SCHEMA)
    assert abs(frames.num_rows - 45.18 * 25) <= 2
    assert meta["fps"] == 25 and meta["source_fps"] == 25
    assert frames.column("hash").to_pylist()[0] != frames.column("hash").to_pylist()[1]

    landmarks, lm_meta = read_manifest(work / "landmarks.parquet", LANDMARKS_SCHEMA)
    assert landmarks.num_rows == frames.num_rows
    assert lm_meta["backend"] == "mediapipe" and lm_meta["anchor_names"] == list(ANCHOR_NAMES)
    assert landmarks.column("detected").to_numpy().mean() >= 0.98
    boxes = fixed_list_to_numpy(landmarks.column("crop_box"), 3)
    assert crop_jitter(boxes).max() < 0.02  # a still talker: the crop does not jitter

    crops = np.load(work / "crops.npy", mmap_mode="r")
    assert crops.shape == (frames.num_rows, 168, 168, 3) and crops.dtype == np.uint8

    features = np.load(work / "ave.npy")
    ave, ave_meta = read_manifest(work / "ave.parquet", AVE_SCHEMA)
    assert features.shape[1] == 512 and ave.num_rows == len(features)
    assert abs(len(features) - frames.num_rows) <= 4
    encoder = root / "data" / "models" / "lieu" / "ave_encoder.pth"
    from synctalk.models.checkpoint import file_sha256

    assert ave_meta["encoder_sha256"] == file_sha256(encoder)


def _runs(root):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("avatar-lieu")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def test_tiny_training_learns_and_registers_version_1(prepared):
    root, _ = prepared
    client, runs = _runs(root)
    by_stage = {r.data.tags["stage"]: r for r in runs}
    # The SyncNet tells in-sync from nearby off-sync audio on the ~113 held-out
    # frames (8 off-sync windows each; chance is 0.5), and its offset curve there
    # has its minimum at 0.
    syncnet = by_stage["syncnet"].data.metrics
    assert syncnet["best_val_pair_accuracy"] > 0.6
    held_out = json.loads((root / "eval" / "lieu" / "syncnet.json").read_text())
    assert held_out["val_pair_accuracy"] == pytest.approx(
        syncnet["best_val_pair_accuracy"], abs=1e-5
    )
    assert abs(held_out["val_sync_offset"]) <= 1 and held_out["val_lse_c"] > 0.05
    curve = json.loads((root / "eval" / "lieu" / "plots" / "syncnet_offsets.json").read_text())
    assert [row["offset"] for row in curve] == list(range(-15, 16))
    assert "syncnet_offsets.png" in {
        a.path for a in client.list_artifacts(by_stage["syncnet"].info.run_id)
    }
    unet_run = by_stage["unet"]
    l1 = [m.value for m in client.get_metric_history(unet_run.info.run_id, "val_l1")]
    assert l1[0] > 0 and min(l1) < 0.7 * l1[0]  # clearly better than at step 0
    artifacts = {a.path for a in client.list_artifacts(unet_run.info.run_id)}
    assert {"validation_grid.png", "unet_curves.png"} <= artifacts
    assert unet_run.data.params["preset.unet.sync_weight"] == "0.01"
    assert unet_run.data.tags["git_commit"] and unet_run.data.tags["inputs_md5"]
    versions = client.search_model_versions("name='avatar-lieu'")
    assert [str(v.version) for v in versions] == ["1"]

    import mlflow

    from synctalk.registry import fetch_model

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    files = fetch_model("lieu", None, root / "cache")
    assert files.version == "1" and files.config["preset"]["resolution"] == "160"
    from synctalk.models.checkpoint import load_unet

    assert load_unet(files.unet).spec.mobile is True


def test_evaluate_writes_the_four_metrics_and_marks_the_candidate(prepared):
    root, _ = prepared
    metrics = json.loads((root / "eval" / "lieu" / "metrics.json").read_text())
    for key in ("psnr", "ssim", "lmd", "lse_d", "lse_c", "sync_offset"):
        assert isinstance(metrics[key], float | int), key
    assert metrics["psnr"] > 15 and 0 < metrics["ssim"] <= 1 and metrics["lmd"] < 1
    shown = run(root, "dvc", "metrics", "show").stdout
    for key in ("psnr", "ssim", "lmd", "lse_d", "lse_c", "val_pair_accuracy"):
        assert key in shown
    offsets = json.loads((root / "eval" / "lieu" / "plots" / "sync_offsets.json").read_text())
    assert [row["offset"] for row in offsets] == list(range(-15, 16))
    client, _ = _runs(root)
    version = client.get_model_version_by_alias("avatar-lieu", "candidate")
    assert str(version.version) == "1"
    assert float(version.tags["eval_psnr"]) == pytest.approx(metrics["psnr"], rel=1e-5)


def test_render_with_the_trained_avatar(prepared, tmp_path):
    from synctalk.media.video import iter_frames, probe_video

    root, _ = prepared
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    speech = shared_path("data", "audio", "macron_fr_12s.wav")  # 48 kHz stereo
    (audio_dir / "macron.wav").write_bytes(speech.read_bytes())
    (audio_dir / "broken.wav").write_text("not audio")
    out = root / "data" / "renders" / "lieu"
    proc = run(root, sys.executable, "-m", "synctalk.cli", "render", "--avatar", "lieu",
               "--audio", str(audio_dir), check=False)  # fmt: skip
    assert proc.returncode == 1  # one file failed...
    assert "1 rendered, 1 failed" in proc.stdout and "broken.wav" in proc.stdout
    video = out / "macron.mp4"  # ...the other was rendered
    info = probe_video(video)
    assert info.has_audio and info.fps == 25 and info.width == 512
    frames = sum(1 for _ in iter_frames(video))
    assert abs(frames / 25 - 11.8613) <= 0.04
    assert not (out / "broken.mp4").exists()

    missing = run(root, sys.executable, "-m", "synctalk.cli", "render", "--avatar", "lieu",
                  "--audio", str(speech), "--model-alias", "7", check=False)  # fmt: skip
    assert missing.returncode == 2 and "avatar-lieu has no version 7" in missing.stderr


def test_second_repro_does_nothing(prepared):
    root, _ = prepared
    again = run(root, "dvc", "repro")
    assert stages_run(again.stdout) == []


def test_mlflow_has_a_run_per_stage(prepared):
    root, _ = prepared
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("avatar-lieu")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) >= {"extract", "landmarks", "ave_encoder", "ave"}
    lm = by_stage["landmarks"].data.metrics
    assert lm["detection_rate"] >= 0.98 and lm["crop_jitter_max"] < 0.02 and lm["frames_per_s"] > 0
    assert by_stage["ave_encoder"].data.tags["encoder_source"] == "trained"


def test_killed_unet_stage_resumes_from_its_last_checkpoint(prepared):
    import signal
    import time

    import torch

    root, _ = prepared
    state = root / "data" / "checkpoints" / "lieu" / "unet" / "last.pt"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "stages.unet", "lieu"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            saved = torch.load(state, weights_only=False)
            if saved["epoch"] >= 1 and saved["step_in_epoch"] > 0:
                proc.send_signal(signal.SIGKILL)  # no chance to clean up
                proc.wait()
                killed_at = saved
                break
        time.sleep(0.5)
    assert killed_at is not None, "the stage finished or stalled before it could be killed"
    first_epoch_loss = killed_at["history"]["train"][0]["train_loss"]
    initial_l1 = killed_at["history"]["val"][0]["val_l1"]

    rerun = run(root, sys.executable, "-m", "stages.unet", "lieu")
    assert f"resuming unet at epoch {killed_at['epoch'] + 1}, step {killed_at['step_in_epoch']}" \
        in rerun.stderr  # fmt: skip
    client, runs = _runs(root)
    resumed = [r for r in runs if r.data.tags["stage"] == "unet"][-1]
    losses = client.get_metric_history(resumed.info.run_id, "train_loss")
    assert min(m.step for m in losses) == killed_at["epoch"] + 1  # the epoch counter continues
    assert losses[0].value < 1.2 * first_epoch_loss
    # Its L1 part (the loss also holds the sync term) is far below the untrained model's.
    resumed_l1 = client.get_metric_history(resumed.info.run_id, "train_l1")[0].value
    assert resumed_l1 < 0.8 * initial_l1
    assert not state.exists()  # finished: nothing left to resume


def test_changing_landmark_params_reruns_only_landmarks_and_after(prepared):
    root, _ = prepared
    set_params(root, landmarks={"smoothing_sigma": 2.5})
    # DVC's dry run lists the stages whose own inputs changed, not yet their
    # downstream ones (those change only once landmarks has run)
    dry = stages_run(run(root, "dvc", "repro", "--dry").stdout)
    assert "landmarks@lieu" in dry and "extract@lieu" not in dry
    ran = stages_run(run(root, "dvc", "repro", "--single-item", "landmarks@lieu").stdout)
    assert ran == ["landmarks@lieu"]
    # now every stage that reads the new crops is stale, and nothing upstream is
    stale = set(json.loads(run(root, "dvc", "status", "--json").stdout))
    assert {"ave_encoder@lieu", "syncnet@lieu", "unet@lieu", "evaluate@lieu"} <= stale
    assert not stale & {"extract@lieu", "landmarks@lieu"}


def test_avatar_add_refuses_bad_names_and_duplicates(prepared):
    root, _ = prepared
    video = shared_path("data", "videos", "may_5s.mp4")
    dup = run(root, sys.executable, "-m", "synctalk.cli", "avatar", "add", "lieu", str(video),
              check=False)  # fmt: skip
    assert dup.returncode != 0 and "already exists" in dup.stderr
    bad = run(root, sys.executable, "-m", "synctalk.cli", "avatar", "add", "Bad Name", str(video),
              check=False)  # fmt: skip
    assert bad.returncode != 0 and "avatar name" in bad.stderr
    assert "Bad Name" not in (root / "params.yaml").read_text()
    assert load_config(root / "params.yaml").avatars.keys() == {"lieu"}
