"""`dvc repro` of the preparation stages on a real clip, in a scratch copy of the repo."""

from __future__ import annotations

import json
import sys

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
    """A project with avatar `lieu` prepared by `dvc repro` (tiny settings)."""
    video = shared_path("data", "videos", "lieu_address_45s.mp4")
    root = make_project(tmp_path_factory.mktemp("dvc"))
    run(root, sys.executable, "-m", "synctalk.cli", "avatar", "add", "lieu", str(video),
        "--preset", "tiny")  # fmt: skip
    set_params(root, ave_encoder={"steps": 40})
    first = run(root, "dvc", "repro")
    return root, first


def test_repro_runs_every_preparation_stage(prepared):
    root, first = prepared
    assert stages_run(first.stdout) == [
        "extract@lieu", "landmarks@lieu", "ave_encoder@lieu", "ave@lieu",
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


def test_changing_landmark_params_reruns_only_landmarks_and_after(prepared):
    root, _ = prepared
    set_params(root, landmarks={"smoothing_sigma": 2.5})
    rerun = run(root, "dvc", "repro")
    ran = stages_run(rerun.stdout)
    assert "extract@lieu" not in ran
    assert ran[0] == "landmarks@lieu"
    assert set(ran) <= {"landmarks@lieu", "ave_encoder@lieu", "ave@lieu"}
    status = run(root, "dvc", "status", "--json")
    assert json.loads(status.stdout or "{}") == {}


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
