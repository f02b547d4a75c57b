"""`dvc repro` of the whole tiny pipeline on a real clip, in a scratch copy of the repo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synctalk.config import load_config
from synctalk.face.crop import crop_jitter
from synctalk.face.landmarks import ANCHOR_NAMES
from synctalk.manifest import (
    FEATURES_SCHEMA,
    FRAMES_SCHEMA,
    LANDMARKS_SCHEMA,
    fixed_list_to_numpy,
    read_manifest,
)
from tests.conftest import shared_path
from tests.project import commit, make_project, run, set_params, stages_run, wait_for_url

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project with avatar `lieu` prepared and trained by `dvc repro` (tiny preset), its
    inputs committed to git first, as a user would (version 1's lineage names that commit).

    For debugging, SYNCTALK_REUSE_PROJECT=<a copy of a project a previous run made,
    outside pytest's tmp folder, which pytest prunes> skips the 10-minute repro.
    """
    reuse = os.environ.get("SYNCTALK_REUSE_PROJECT")
    if reuse:
        return Path(reuse), None
    video = shared_path("data", "videos", "lieu_address_45s.mp4")
    root = make_project(tmp_path_factory.mktemp("dvc"))
    run(
        root,
        sys.executable,
        "-m",
        "synctalk.cli",
        "avatar",
        "add",
        "lieu",
        str(video),
        "--preset",
        "tiny",
    )
    commit(root, "avatar lieu")
    first = run(root, "dvc", "repro")
    return root, first


def test_repro_runs_every_preparation_stage(prepared):
    root, first = prepared
    if first is None:
        pytest.skip("reusing a project")
    ran = stages_run(first.stdout)
    assert ran[:6] == [
        "extract@lieu",
        "landmarks@lieu",
        "audio_encoder@lieu",
        "features@lieu",
        "syncnet@lieu",
        "unet@lieu",
    ]
    assert set(ran[6:]) == {"evaluate@lieu", "render@lieu"} and len(ran) == 8
    assert "no audio in data/inbox/lieu" in first.stderr  # render@: an empty inbox
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

    # the tiny preset's front-end: Whisper tiny, two 384-vectors per video frame
    features = np.load(work / "features.npy")
    rows, features_meta = read_manifest(work / "features.parquet", FEATURES_SCHEMA)
    assert features.shape[1] == 768 and rows.num_rows == len(features)
    assert abs(len(features) - frames.num_rows) <= 4
    encoder = root / "data" / "models" / "lieu" / "audio_encoder.pth"
    from synctalk.hashing import file_sha256

    assert features_meta["audio_mode"] == "whisper"
    assert features_meta["encoder_sha256"] == file_sha256(encoder)


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


def test_models_show_prints_the_lineage_of_a_version(prepared):
    """Version 1 traces back to its code, source video, inputs (what dvc.lock recorded for
    unet@lieu) and params; `models show` prints that and the commands to reproduce it."""
    import hashlib

    import yaml

    from synctalk.hashing import file_sha256

    root, _ = prepared
    client, runs = _runs(root)
    version = client.get_model_version("avatar-lieu", "1")
    tags = version.tags
    source = root / "data" / "avatars" / "lieu" / "source.mp4"
    assert tags["source_md5"] == hashlib.md5(source.read_bytes()).hexdigest()
    assert tags["git_dirty"] in ("true", "false", "unknown") and tags["git_commit"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["unet@lieu"]
    recorded = json.loads(tags["dvc_deps_md5"])
    assert {d["path"]: d["md5"] for d in lock["deps"]} == recorded  # the stage's dvc.lock deps
    assert "synctalk/models/blocks.py" in recorded and "data/work/lieu/crops.npy" in recorded
    params = json.loads(tags["dvc_params"])
    assert params["avatars.lieu.preset"] == "tiny" and params["presets.tiny"]["resolution"] == "160"
    for run_ in runs:  # every stage's run carries its own lineage
        assert {"git_dirty", "source_md5", "dvc_deps_md5", "dvc_params"} <= run_.data.tags.keys()

    shown = _cli(root, "models", "show", "lieu", "1").stdout
    assert tags["source_md5"] in shown and "synctalk/models/blocks.py" in shown
    assert "presets.tiny" in shown and "dvc repro --force --single-item unet@lieu" in shown
    assert f"git checkout {tags['git_commit']}" in shown and tags["git_dirty"] == "false"
    assert f"expect {file_sha256(root / 'data' / 'models' / 'lieu' / 'unet.pth')}" in shown
    print("\n" + shown)


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


def _durations(video: Path) -> tuple[float, float]:
    """(seconds of picture: frames / 25, seconds of its sound track) of an mp4."""
    from synctalk.media.audio import load_audio
    from synctalk.media.video import iter_frames

    frames = sum(1 for _ in iter_frames(video))
    return frames / 25, len(load_audio(video)) / 16000


def test_evaluation_is_watchable_on_the_versions_run(prepared, tmp_path):
    """The reviewer's material on the registered version: two videos whose picture lasts as
    long as their sound, a contact sheet, offline plots; the metrics on the version's model."""
    import cv2
    import mlflow

    from synctalk.config import load_config
    from synctalk.demo_avatar import speak
    from synctalk.registry import evaluation_metrics

    root, _ = prepared
    metrics = json.loads((root / "eval" / "lieu" / "metrics.json").read_text())
    version = str(metrics["model_version"])
    client, _ = _runs(root)
    run_id = client.get_model_version("avatar-lieu", version).run_id
    assert client.get_run(run_id).data.tags["stage"] == "unet"  # the version's own run
    review = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "review")}
    assert review == {
        "heldout_side_by_side.mp4",
        "review_sentence.mp4",
        "mouth_contact_sheet.png",
        "sync_offsets.png",
        "frame_psnr.png",
    }
    local = Path(client.download_artifacts(run_id, "review", str(tmp_path)))

    side = local / "heldout_side_by_side.mp4"
    picture, sound = _durations(side)
    assert picture == pytest.approx(metrics["frames"] / 25)  # every held-out frame
    assert abs(picture - sound) <= 0.04
    from synctalk.media.video import probe_video

    assert probe_video(side).width == 2 * 512  # real | rendered
    review_config = load_config(root / "params.yaml").review
    samples, rate = speak(review_config.sentence, review_config.voice)
    said = len(samples) / rate
    sentence_picture, sentence_sound = _durations(local / "review_sentence.mp4")
    assert abs(sentence_picture - said) <= 0.04 and abs(sentence_sound - said) <= 0.04
    sheet = cv2.imread(str(local / "mouth_contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] == 2 * 80 * 2  # two rows of 2x-scaled mouths
    print(
        f"\nreview videos: held-out {picture:.3f} s picture / {sound:.3f} s sound; "
        f"sentence {sentence_picture:.3f} s / {sentence_sound:.3f} s, speech {said:.3f} s"
    )

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    on_model = evaluation_metrics("lieu", version)
    expected = {k: v for k, v in metrics.items() if k != "model_version" and v == v}
    assert on_model == pytest.approx(expected, rel=1e-6)


def test_dvc_plots_page_needs_no_network(prepared, tmp_path):
    """The plots are PNGs: DVC's page embeds them and loads no chart library from a CDN."""
    root, _ = prepared
    run(root, "dvc", "plots", "show", "--out", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "<script" not in page and "http" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    names = sorted(src.rsplit("_plots_", 1)[-1] for src in images)
    assert names == ["frame_psnr.png", "sync_offsets.png", "syncnet_offsets.png"]
    assert all((tmp_path / "plots" / src).stat().st_size > 1000 for src in images)


def test_render_with_the_trained_avatar(prepared, tmp_path):
    from synctalk.media.video import iter_frames, probe_video

    root, _ = prepared
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    speech = shared_path("data", "audio", "macron_fr_12s.wav")  # 48 kHz stereo
    (audio_dir / "macron.wav").write_bytes(speech.read_bytes())
    (audio_dir / "broken.wav").write_text("not audio")
    out = root / "data" / "renders" / "lieu"
    proc = run(
        root,
        sys.executable,
        "-m",
        "synctalk.cli",
        "render",
        "--avatar",
        "lieu",
        "--audio",
        str(audio_dir),
        check=False,
    )
    assert proc.returncode == 1  # one file failed...
    assert "1 rendered, 1 failed" in proc.stdout and "broken.wav" in proc.stdout
    video = out / "macron.mp4"  # ...the other was rendered
    info = probe_video(video)
    assert info.has_audio and info.fps == 25 and info.width == 512
    frames = sum(1 for _ in iter_frames(video))
    assert abs(frames / 25 - 11.8613) <= 0.04
    assert not (out / "broken.mp4").exists()

    missing = run(
        root,
        sys.executable,
        "-m",
        "synctalk.cli",
        "render",
        "--avatar",
        "lieu",
        "--audio",
        str(speech),
        "--model-alias",
        "7",
        check=False,
    )
    assert missing.returncode == 2 and "avatar-lieu has no version 7" in missing.stderr


def test_int8_of_the_trained_tiny_avatar_reaches_the_bar(prepared, tmp_path):
    """render.precision int8 on the U-Net `dvc repro` trained (the tiny preset, 45 s clip):
    the int8 model's output is within the bar of fp32's on held-out frames, so it is used."""
    from synctalk.config import RenderParams
    from synctalk.paths import AvatarPaths
    from synctalk.render.engine import load_for_rendering
    from synctalk.render.onnx import OnnxUNet
    from synctalk.render.quantize import PSNR_KEY

    root, _ = prepared
    paths = AvatarPaths("lieu", root)
    params = RenderParams(precision="int8")
    loaded = load_for_rendering(
        paths, paths.unet, paths.audio_encoder, params, "cpu", tmp_path / "cache"
    )
    (int8,) = (tmp_path / "cache" / "onnx").glob("*-int8-*.onnx")
    psnr = float(OnnxUNet(int8).metadata[PSNR_KEY])
    assert psnr >= params.int8_min_psnr, f"int8 vs fp32: {psnr:.1f} dB"
    assert loaded.runtime.precision == "int8"


def test_cli_render_skips_what_is_up_to_date_unless_forced(prepared, tmp_path):
    """`synctalk render` goes through the renders ledger as render@ does."""
    root, _ = prepared
    speech, out = tmp_path / "short.wav", tmp_path / "out"
    _inbox_speech(speech, 0.0)
    args = ["render", "--avatar", "lieu", "--audio", str(speech), "--out", str(out)]
    video = out / "short.mp4"
    assert "1 rendered, 0 failed, 0 skipped" in _cli(root, *args).stdout
    written = video.stat().st_mtime_ns
    assert "0 rendered, 0 failed, 1 skipped" in _cli(root, *args).stdout
    assert video.stat().st_mtime_ns == written
    assert "1 rendered, 0 failed, 0 skipped" in _cli(root, *args, "--force").stdout
    assert video.stat().st_mtime_ns != written


def test_second_repro_does_nothing(prepared):
    """Nothing but render@, which always runs (the ledger decides), and renders nothing."""
    root, _ = prepared
    again = run(root, "dvc", "repro")
    assert stages_run(again.stdout) == ["render@lieu"]
    assert "nothing to render" in again.stderr


def _stale(root: Path) -> set[str]:
    """Stages `dvc status` finds out of date, but for the always-changed render@ (in a
    fresh clone its uncached renders are missing too: the ledger's business)."""
    from stages.contract import STAGES

    always = {f"{s.name}@lieu" for s in STAGES if s.always_changed}
    return set(json.loads(run(root, "dvc", "status", "--json").stdout)) - always


def test_only_code_a_stage_imports_and_settings_that_change_results_make_it_stale(prepared):
    """The stage contracts (stages/contract.py) at work on a trained avatar: editing the
    U-Net's building blocks makes the stages that import them stale and leaves the
    preparation alone; an unimported module or a speed setting makes nothing stale."""
    from stages.contract import STAGES, code_deps

    root, _ = prepared
    assert _stale(root) == set()
    blocks = root / "synctalk" / "models" / "blocks.py"
    original = blocks.read_bytes()
    blocks.write_bytes(original + b"\n# an edit\n")
    try:
        stale = _stale(root)
    finally:
        blocks.write_bytes(original)
    edited = "synctalk/models/blocks.py"
    importers = {f"{s.name}@lieu" for s in STAGES if edited in code_deps(s.name)}
    # render@ imports them too; it runs on every repro anyway, so _stale leaves it out
    assert "render@lieu" in importers
    always = {f"{s.name}@lieu" for s in STAGES if s.always_changed}
    assert stale == importers - always
    assert {"syncnet@lieu", "unet@lieu", "evaluate@lieu"} <= stale
    assert not stale & {"extract@lieu", "landmarks@lieu"}

    cli = root / "synctalk" / "cli.py"  # no stage imports the CLI
    original = cli.read_bytes()
    cli.write_bytes(original + b"\n# an edit\n")
    params = (root / "params.yaml").read_text()
    faster = params.replace("\ndevice: auto", "\ndevice: cpu").replace(
        "\nnum_workers: 0", "\nnum_workers: 2"
    )
    assert faster.count("cpu") > params.count("cpu") and "num_workers: 2" in faster
    (root / "params.yaml").write_text(faster)
    try:
        assert _stale(root) == set()
    finally:
        cli.write_bytes(original)
        (root / "params.yaml").write_text(params)


def test_a_second_clone_pulls_everything_from_the_dvc_remote(prepared, tmp_path):
    """Clone A (the prepared project) pushes the source video (`avatar add` put it under
    DVC) and every cached stage output, crops.npy included, to a DVC remote (a local
    folder) and commits; clone B, a `git clone` of that commit sharing A's MLflow store,
    pulls them: there DVC finds everything up to date, `dvc repro` runs nothing, and
    `synctalk render` renders what A renders, pixel for pixel."""
    from synctalk.media.video import iter_frames

    root, _ = prepared
    assert (root / "data" / "avatars" / "lieu" / "source.mp4.dvc").is_file()
    remote = tmp_path / "remote"
    run(root, "dvc", "remote", "add", "-f", "-d", "--local", "store", str(remote))
    run(root, "dvc", "push")
    commit(root, "avatar lieu trained", "dvc.lock", "data", "eval")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(root), str(clone))
    # git has DVC's pointers (.dvc files, dvc.lock) and the .gitignore files it wrote
    # beside each output: no data yet
    data = [p.relative_to(clone) for p in (clone / "data").rglob("*") if p.is_file()]
    assert data and all(p.name == ".gitignore" or p.suffix == ".dvc" for p in data), data
    assert (clone / "dvc.lock").is_file() and not (clone / "data/work/lieu/crops.npy").exists()
    run(clone, "dvc", "remote", "add", "-d", "--local", "store", str(remote))
    run(clone, "dvc", "pull")
    crops = "data/work/lieu/crops.npy"
    assert (clone / crops).read_bytes() == (root / crops).read_bytes()
    assert _stale(clone) == set()
    assert stages_run(run(clone, "dvc", "repro").stdout) == ["render@lieu"]  # nothing to render

    speech = tmp_path / "speech.wav"
    _inbox_speech(speech, 3.0)
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}  # one registry
    frames = {}
    for project in (root, clone):
        out = tmp_path / f"render-{project.name}"
        run(
            project,
            sys.executable,
            "-m",
            "synctalk.cli",
            "render",
            "--avatar",
            "lieu",
            "--audio",
            str(speech),
            "--model-alias",
            "1",
            "--out",
            str(out),
            env=store,
        )
        frames[project] = list(iter_frames(out / "speech.mp4"))
    assert len(frames[root]) == len(frames[clone]) == 50
    difference = max(
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
        for a, b in zip(frames[root], frames[clone], strict=True)
    )
    print(f"\nA's and B's renders: {len(frames[root])} frames, max abs difference {difference}")
    assert difference == 0


def test_mlflow_has_a_run_per_stage(prepared):
    root, _ = prepared
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("avatar-lieu")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) >= {"extract", "landmarks", "audio_encoder", "features"}
    lm = by_stage["landmarks"].data.metrics
    assert lm["detection_rate"] >= 0.98 and lm["crop_jitter_max"] < 0.02 and lm["frames_per_s"] > 0
    assert by_stage["audio_encoder"].data.tags["encoder_source"] == "whisper"


def test_killed_unet_stage_resumes_from_its_last_checkpoint(prepared):
    import signal
    import time

    import torch

    root, _ = prepared
    state = root / "data" / "checkpoints" / "lieu" / "unet" / "last.pt"
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.unet", "lieu"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    assert (
        f"resuming unet at epoch {killed_at['epoch'] + 1}, step {killed_at['step_in_epoch']}"
        in rerun.stderr
    )
    client, runs = _runs(root)
    resumed = [r for r in runs if r.data.tags["stage"] == "unet"][-1]
    losses = client.get_metric_history(resumed.info.run_id, "train_loss")
    assert min(m.step for m in losses) == killed_at["epoch"] + 1  # the epoch counter continues
    assert losses[0].value < 1.2 * first_epoch_loss
    # Its L1 part (the loss also holds the sync term) is far below the untrained model's.
    resumed_l1 = client.get_metric_history(resumed.info.run_id, "train_l1")[0].value
    assert resumed_l1 < 0.8 * initial_l1
    assert not state.exists()  # finished: nothing left to resume


def _second_version(root: Path) -> list[int]:
    """Versions of avatar-lieu, training a second one if there is only one."""
    versions = sorted(int(v) for v in _model_versions(root))
    if len(versions) < 2:  # run alone: train once more for a second version
        run(root, sys.executable, "-m", "stages.unet", "lieu")
        versions = sorted(int(v) for v in _model_versions(root))
    return versions


def test_models_compare_two_evaluated_versions(prepared):
    root, _ = prepared
    versions = _second_version(root)
    # evaluate the newest training (data/models/lieu/unet.pth), as `dvc repro` would
    run(root, sys.executable, "-m", "stages.evaluate", "lieu")
    first, newest = str(versions[0]), str(versions[-1])
    shown = _cli(root, "models", "compare", "lieu", first, newest).stdout
    lines = shown.splitlines()
    assert lines[0].split() == ["metric", f"v{first}", f"v{newest}"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    for metric in ("psnr", "ssim", "lmd", "lse_c", "lse_d", "sync_offset", "lse_c_ratio"):
        assert len(rows[metric]) == 2 and "-" not in rows[metric], shown
    print("\n" + shown)
    listed = _cli(root, "models", "list", "lieu").stdout
    row = next(line.split() for line in listed.splitlines()[1:] if line.split()[0] == newest)
    assert "candidate" in row[1].split(","), listed


def _cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(root, sys.executable, "-m", "synctalk.cli", *args, check=check)


def _promote_champion(root: Path, version: str) -> None:
    # forced: these tests are about rendering and serving, not whether a 2-minute
    # model passes review (tests/test_review.py tests the gate)
    _cli(root, "models", "promote", "lieu", version, "--force", "--reason", "pipeline test")


def test_render_with_a_locked_registry_renders_nothing(prepared, tmp_path):
    """A locked registry database (another writer holding it) never falls back to a version."""
    import sqlite3

    root, _ = prepared
    _promote_champion(root, str(min(int(v) for v in _model_versions(root))))
    speech = shared_path("data", "audio", "macron_fr_12s.wav")
    lock = sqlite3.connect(root / "mlflow.db")
    lock.execute("BEGIN EXCLUSIVE")
    try:
        out = str(tmp_path / "out")
        proc = _cli(
            root, "render", "--avatar", "lieu", "--audio", str(speech), "--out", out, check=False
        )
    finally:
        lock.rollback()
        lock.close()
    assert proc.returncode == 2
    assert f"the model registry sqlite:///{root / 'mlflow.db'} is unavailable" in proc.stderr
    assert "database is locked" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_champion_served_over_http_renders_what_the_cli_renders(prepared, tmp_path):
    """`mlflow models serve` of models:/avatar-lieu@champion (no network, no installs):
    a wav POSTed as base64 comes back as the mp4 `synctalk render` makes, pixel for pixel."""
    import base64
    import signal
    import urllib.error
    import urllib.request

    import numpy as np

    from synctalk.media.audio import load_audio
    from synctalk.media.video import iter_frames
    from tests.project import free_port

    root, _ = prepared
    version = str(min(int(v) for v in _model_versions(root)))
    _promote_champion(root, version)
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        SYNCTALK_CACHE_DIR=str(tmp_path / "serving-cache"),  # its own render cache
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    log_file = open(tmp_path / "serve.log", "w")  # closed in the finally below
    serve = "models serve -m models:/avatar-lieu@champion --env-manager local -h 127.0.0.1"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), *serve.split(), "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def post(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    try:
        wait_for_url(f"{url}/ping", 600, poll=2, process=server)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]

        speech = shared_path("data", "audio", "macron_fr_12s.wav")
        audio = base64.b64encode(speech.read_bytes()).decode()
        status, answer = post({"dataframe_records": [{"audio": audio}]})
        assert status == 200, answer
        served = tmp_path / "served.mp4"
        served.write_bytes(base64.b64decode(answer["predictions"][0]["video"]))
        picture, sound = _durations(served)
        audio_s = len(load_audio(speech)) / 16000
        assert abs(picture - audio_s) <= 0.04 and abs(sound - audio_s) <= 0.04
        print(f"\nserved mp4: {picture:.3f} s picture, {sound:.3f} s sound, audio {audio_s:.3f} s")

        status, answer = post({"dataframe_records": [{"audio": "not base64!"}]})
        assert status == 400 and "row 0: audio is not base64" in answer["message"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log_file.close()

    out = tmp_path / "cli"
    _cli(
        root,
        "render",
        "--avatar",
        "lieu",
        "--audio",
        str(speech),
        "--model-alias",
        version,
        "--out",
        str(out),
    )
    rendered = list(iter_frames(out / "macron_fr_12s.mp4"))
    served_frames = list(iter_frames(served))
    assert len(served_frames) == len(rendered)
    assert all(np.array_equal(a, b) for a, b in zip(served_frames, rendered, strict=True))


def _model_versions(root: Path) -> list[str]:
    client, _ = _runs(root)
    return [str(v.version) for v in client.search_model_versions("name='avatar-lieu'")]


def _inbox_speech(path: Path, start_s: float, seconds: float = 2.0) -> None:
    import wave

    from synctalk.media.audio import load_audio

    speech = load_audio(shared_path("data", "audio", "macron_fr_12s.wav"))
    clip = speech[int(start_s * 16000) : int((start_s + seconds) * 16000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes())


def _render_stage(root: Path) -> tuple[int, int]:
    """`dvc repro render@lieu` (its upstream left alone): (rendered, up to date)."""
    proc = run(root, "dvc", "repro", "--single-item", "render@lieu")
    assert stages_run(proc.stdout) == ["render@lieu"]
    counts = re.search(r"lieu: (\d+) rendered, (\d+) up to date, 0 failed", proc.stderr)
    assert counts, proc.stderr[-2000:]
    return int(counts[1]), int(counts[2])


def _written(root: Path) -> dict[str, tuple[int, str]]:
    """render@lieu's inbox videos: name -> (mtime_ns, sha256)."""
    from synctalk.hashing import file_sha256

    videos = (root / "data" / "renders" / "lieu").glob("take*.mp4")
    return {v.name: (v.stat().st_mtime_ns, file_sha256(v)) for v in videos}


def test_render_stage_renders_exactly_what_is_new(prepared):
    """render@lieu renders its inbox with @champion through the renders ledger: new and
    changed files only, and everything again under a newly promoted champion."""
    from synctalk.render.ledger import RenderLedger

    root, _ = prepared
    versions = _second_version(root)
    _promote_champion(root, str(versions[0]))
    inbox = root / "data" / "inbox" / "lieu"
    for i, start in enumerate((0.0, 3.0, 6.0)):
        _inbox_speech(inbox / f"take{i}.wav", start)
    assert _render_stage(root) == (3, 0)
    first = _written(root)
    assert sorted(first) == ["take0.mp4", "take1.mp4", "take2.mp4"]
    assert _render_stage(root) == (0, 3)
    assert _written(root) == first  # no video written again
    _inbox_speech(inbox / "take1.wav", 9.0)  # replaced
    assert _render_stage(root) == (1, 2)
    replaced = _written(root)
    assert sorted(v for v in first if replaced[v] == first[v]) == ["take0.mp4", "take2.mp4"]
    assert replaced["take1.mp4"][1] != first["take1.mp4"][1]  # the new audio's video
    _promote_champion(root, str(versions[-1]))
    assert _render_stage(root) == (3, 0)
    promoted = _written(root)
    assert sorted(promoted) == sorted(first)
    assert not [v for v in promoted if promoted[v] == replaced[v]]  # all three written again
    rows = RenderLedger(root / "data" / "renders" / "renders.parquet").read().to_pylist()
    done = [r["model_version"] for r in rows if r["status"] == "done" and "take" in r["audio_path"]]
    assert done.count(str(versions[0])) == 4 and done.count(str(versions[-1])) == 3


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
    assert {"syncnet@lieu", "unet@lieu", "evaluate@lieu"} <= stale
    assert not stale & {"extract@lieu", "landmarks@lieu"}


def _tree(root: Path) -> dict[str, int]:
    """Every file under data/ and the project's top level, with its size."""
    files = [*root.glob("data/**/*"), *root.glob("*")]
    return {str(f.relative_to(root)): f.stat().st_size for f in files if f.is_file()}


def test_avatar_add_refuses_bad_input_and_writes_nothing(prepared, tmp_path):
    root, _ = prepared
    video = shared_path("data", "videos", "may_5s.mp4")
    before, params = _tree(root), (root / "params.yaml").read_text()
    stale = _stale(root)
    tracked = run(root, "git", "status", "--porcelain").stdout
    cases = {  # name, video -> what the one error line says
        ("lieu", video): "avatar 'lieu' already exists",
        ("a/b", video): "avatar name 'a/b'",
        ("..", video): "avatar name '..'",
        ("../up", video): "avatar name '../up'",
        ("Bad Name", video): "avatar name 'Bad Name'",
        ("fresh", tmp_path / "missing.mp4"): f"{tmp_path / 'missing.mp4'}: no such file",
    }
    for (name, source), message in cases.items():
        proc = run(
            root,
            sys.executable,
            "-m",
            "synctalk.cli",
            "avatar",
            "add",
            name,
            str(source),
            "--preset",
            "tiny",
            check=False,
        )
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (name, lines)
    assert _tree(root) == before and (root / "params.yaml").read_text() == params
    assert not (root / "data" / "avatars" / "fresh").exists()
    assert _stale(root) == stale  # nothing new for DVC either
    assert run(root, "git", "status", "--porcelain").stdout == tracked  # nor git
    assert load_config(root / "params.yaml").avatars.keys() == {"lieu"}
