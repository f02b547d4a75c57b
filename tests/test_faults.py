"""The fault matrix: what a hostile user does, driven through the real CLI and stages.

Every case makes one fault (a bad input, a kill -9, a full disk, two runs at
once, a damaged file...) and reports what happened; one test checks them all
the same way:

- the exit code is the one expected;
- one line names the file and the problem, and no traceback is shown;
- no partial output sits at any final path;
- the ledger has no `done` record for a broken output;
- once the fault is gone, a re-run succeeds (and leaves no temporaries).

The project is made once: avatar `may` (a 5 s clip) trained for a few steps
by `dvc repro unet@may`. The CLI runs in this process where nothing is killed
(its `main`, as the `synctalk` script calls it, without paying for imports
each time), and as a separate process where the case kills it, runs two at
once, or needs its own mount namespace.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from synctalk.media.ffmpeg import run_ffmpeg
from synctalk.media.video import probe_video
from tests.conftest import shared_path
from tests.project import free_port, make_avatar_project

pytestmark = pytest.mark.slow

AVATAR = "may"


@dataclass
class Run:
    code: int
    text: str  # stdout and stderr (log lines) together

    @property
    def errors(self) -> list[str]:
        """Error lines: ours (logging) and DVC's."""
        return [ln for ln in self.text.splitlines() if " ERROR " in ln or ln.startswith("ERROR")]


@dataclass
class Outcome:
    run: Run
    code: int  # the exit code expected
    rerun: Callable[[], Run]  # once the fault is gone: must exit 0
    file: str = ""  # what the error line must name ("" when no error is expected)
    problem: str = ""  # regex the error line must match
    broken: list[Path] = field(default_factory=list)  # final paths that must hold nothing
    folders: list[Path] = field(default_factory=list)  # no temporaries there after the re-run
    after: Callable[[Run], None] | None = None  # more checks on the re-run


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.inputs = root.parent / "inputs"
        self.inputs.mkdir(exist_ok=True)
        self.env = dict(
            os.environ,
            MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        )

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """`synctalk ARGS` in this process, from the project folder."""
        from synctalk.cli import main

        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        loggers = [logging.getLogger(n) for n in ("synctalk", "stages")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
        saved = dict(os.environ)
        os.environ.update(env or {"MLFLOW_TRACKING_URI": self.env["MLFLOW_TRACKING_URI"]})
        try:
            with contextlib.chdir(self.root), contextlib.redirect_stdout(out):
                code = main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(saved)
            for lg, level in zip(loggers, levels, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(level)
        return Run(code, out.getvalue())

    def process(self, *args: str, env: dict[str, str] | None = None) -> Run:
        proc = subprocess.run(
            args, cwd=self.root, env=env or self.env, capture_output=True, text=True
        )
        return Run(proc.returncode, proc.stdout + proc.stderr)

    def synctalk(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "synctalk.cli", *args]

    def render(self, audio: Path, out: Path, *more: str) -> Run:
        return self.cli(
            "render", "--avatar", AVATAR, "--audio", str(audio), "--out", str(out), *more
        )

    def ledger_rows(self) -> list[dict]:
        from synctalk.render.ledger import RenderLedger

        return RenderLedger(self.root / "data" / "renders" / "renders.parquet").read().to_pylist()

    def speech(self, path: Path, seconds: float = 1.0, start: float = 5.0) -> Path:
        """`seconds` of real speech (another talker than the avatar) at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        talk = shared_path("data", "audio", "talk_hb_45s.wav")
        _ffmpeg("-ss", str(start), "-t", str(seconds), "-i", str(talk), "-ac", "1", str(path))
        return path

    def avatars(self) -> set[str]:
        from synctalk.config import load_config

        return set(load_config(self.root / "params.yaml").avatars)


def _ffmpeg(*args: str) -> None:
    run_ffmpeg(["-y", *args], source="fault matrix input")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    video = shared_path("data", "videos", "may_5s.mp4")
    root = make_avatar_project(tmp_path_factory.mktemp("faults"), video, AVATAR)
    # A SyncNet epoch long enough to be killed in the middle of.
    yaml = YAML()
    params = yaml.load((root / "params.yaml").read_text())
    params["presets"]["tiny"]["syncnet"].update(steps_per_epoch=10, checkpoint_every=5)
    with open(root / "params.yaml", "w") as f:
        yaml.dump(params, f)
    return Project(root)


# --------------------------------------------------------------------------
# the cases

CASES: dict[str, Callable[[Project, Path], Outcome]] = {}


def case(fn: Callable[[Project, Path], Outcome]) -> Callable[[Project, Path], Outcome]:
    CASES[fn.__name__.removeprefix("case_").replace("_", "-")] = fn
    return fn


# --- avatar add: the source video is checked before anything is copied ------


def _add_case(name: str, make: Callable[[Path], Path], problem: str, *more: str):
    def run_case(p: Project, tmp: Path) -> Outcome:
        video = make(tmp)
        before = (p.root / "params.yaml").read_text()
        result = p.cli("avatar", "add", name, str(video), "--preset", "tiny", *more)
        assert (p.root / "params.yaml").read_text() == before  # params.yaml untouched
        good = shared_path("data", "videos", "may_5s.mp4")
        clean = re.sub(r"[^a-z0-9_-]", "", name.lower()) or "renamed"
        return Outcome(
            result,
            2,
            file=str(video) if "name" not in problem else repr(name)[1:-1],
            problem=problem,
            broken=[p.root / "data" / "avatars" / name],
            rerun=lambda: p.cli("avatar", "add", clean, str(good), "--preset", "tiny", "--force"),
            after=lambda _: _assert(clean in p.avatars()),
        )

    return run_case


def _assert(condition: bool) -> None:
    assert condition


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _may(tmp: Path, *args: str, name: str = "clip.mp4") -> Path:
    out = tmp / name
    _ffmpeg("-i", str(shared_path("data", "videos", "may_5s.mp4")), *args, str(out))
    return out


def _truncated(tmp: Path) -> Path:
    data = shared_path("data", "videos", "may_5s.mp4").read_bytes()
    return _write(tmp / "truncated.mp4", data[: len(data) // 3])


CASES["add-empty-video"] = _add_case("empty", lambda t: _write(t / "empty.mp4", b""), "empty file")
CASES["add-truncated-video"] = _add_case("trunc", _truncated, "truncated|moov atom")
CASES["add-text-as-video"] = _add_case(
    "text", lambda t: _write(t / "notes.mp4", b"not a video\n" * 40), "not a media file|Invalid"
)
CASES["add-video-without-sound"] = _add_case(
    "mute", lambda t: _may(t, "-an", "-c:v", "copy"), "no audio stream"
)
CASES["add-audio-only-file"] = _add_case(
    "voice", lambda t: _may(t, "-vn", name="voice.m4a"), "no video stream"
)
CASES["add-too-short-video"] = _add_case(
    "short", lambda t: _may(t, "-t", "1", "-c:a", "aac"), "at least 3 s"
)
CASES["add-name-ending-in-newline"] = _add_case(
    "bob\n", lambda t: shared_path("data", "videos", "may_5s.mp4"), "avatar name"
)
CASES["add-name-with-a-space"] = _add_case(
    "Bad Name", lambda t: shared_path("data", "videos", "may_5s.mp4"), "avatar name"
)


@case
def case_add_unknown_preset(p: Project, tmp: Path) -> Outcome:
    good = shared_path("data", "videos", "may_5s.mp4")
    result = p.cli("avatar", "add", "huge", str(good), "--preset", "gigantic")
    return Outcome(
        result,
        2,
        file="gigantic",
        problem="unknown preset",
        broken=[p.root / "data" / "avatars" / "huge"],
        rerun=lambda: p.cli("avatar", "add", "huge", str(good), "--preset", "tiny", "--force"),
    )


@case
def case_add_an_existing_avatar(p: Project, tmp: Path) -> Outcome:
    good = shared_path("data", "videos", "may_5s.mp4")
    source = p.root / "data" / "avatars" / AVATAR / "source.mp4"
    before = source.stat().st_mtime_ns
    result = p.cli("avatar", "add", AVATAR, str(_may(tmp, "-c", "copy", name="other.mp4")))
    assert source.stat().st_mtime_ns == before  # the avatar's video was not replaced
    return Outcome(
        result,
        2,
        file=AVATAR,
        problem="already exists",
        rerun=lambda: p.cli("avatar", "add", "may-two", str(good), "--preset", "tiny"),
    )


# --- stages ------------------------------------------------------------------


@case
def case_stage_video_without_a_face(p: Project, tmp: Path) -> Outcome:
    video = tmp / "test pattern.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=256x256:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:sample_rate=16000",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(video),
    )
    assert p.cli("avatar", "add", "faceless", str(video), "--preset", "tiny").code == 0
    result = p.process("dvc", "repro", "landmarks@faceless")
    work = p.root / "data" / "work" / "faceless"
    good = shared_path("data", "videos", "may_5s.mp4")

    def rerun() -> Run:
        assert (
            p.cli("avatar", "add", "faceless", str(good), "--preset", "tiny", "--force").code == 0
        )
        return p.process("dvc", "repro", "landmarks@faceless")

    return Outcome(
        result,
        255,  # what dvc returns when a stage fails
        file="data/work/faceless/video.mp4",
        problem="no face found",
        broken=[work / "landmarks.parquet", work / "crops.npy"],
        folders=[work],
        rerun=rerun,
        after=lambda _: _assert((work / "crops.npy").is_file()),
    )


@case
def case_stage_rotated_phone_video(p: Project, tmp: Path) -> Outcome:
    """Handled: the rotation is applied, the mezzanine is upright and carries none."""
    landscape = _may(tmp, "-vf", "crop=512:384:0:64", "-c:a", "copy", name="landscape.mp4")
    rotated = tmp / "rotated.mp4"
    _ffmpeg("-display_rotation", "90", "-i", str(landscape), "-c", "copy", str(rotated))
    assert p.cli("avatar", "add", "turned", str(rotated), "--preset", "tiny").code == 0
    result = p.process("dvc", "repro", "extract@turned")
    info = probe_video(p.root / "data" / "work" / "turned" / "video.mp4")
    assert (info.width, info.height, info.rotation, info.fps) == (384, 512, 0, 25)
    return Outcome(
        result,
        0,
        rerun=lambda: p.process("dvc", "repro", "extract@turned"),
        after=lambda r: _assert("Running stage" not in r.text),
    )


@case
def case_stage_variable_frame_rate(p: Project, tmp: Path) -> Outcome:
    """Handled: a variable-rate clip becomes 25 fps, as long as the source."""
    clip = shared_path("data", "videos", "retalking_face1_man_6s.mp4")
    assert p.cli("avatar", "add", "vfr", str(clip), "--preset", "tiny").code == 0
    result = p.process("dvc", "repro", "extract@vfr")
    info = probe_video(p.root / "data" / "work" / "vfr" / "video.mp4")
    assert info.fps == 25 and abs(info.duration - probe_video(clip).duration) < 0.1
    return Outcome(result, 0, rerun=lambda: p.process("dvc", "repro", "extract@vfr"))


@case
def case_stage_unicode_file_name(p: Project, tmp: Path) -> Outcome:
    """Handled: a name with accents, a colon (ffmpeg's protocol separator) and a symbol."""
    video = tmp / "Zoë: prise 2 ✓.mp4"
    shutil.copyfile(shared_path("data", "videos", "may_5s.mp4"), video)
    result = p.cli("avatar", "add", "zoe", str(video), "--preset", "tiny")
    return Outcome(
        result,
        0,
        rerun=lambda: p.process("dvc", "repro", "extract@zoe"),
        after=lambda _: _assert((p.root / "data/work/zoe/video.mp4").is_file()),
    )


_KILLED_WRITER = """
import os, signal, sys
from synctalk.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@case
def case_stage_killed_mid_epoch(p: Project, tmp: Path) -> Outcome:
    import mlflow
    import torch

    state = p.root / "data" / "checkpoints" / AVATAR / "syncnet" / "last.pt"
    models = p.root / "data" / "models" / AVATAR
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.syncnet", AVATAR],
        cwd=p.root,
        env=p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, killed, seen = time.monotonic() + 600, None, None
    while time.monotonic() < deadline and proc.poll() is None:
        stamp = state.stat().st_mtime_ns if state.exists() else None
        if stamp is not None and stamp != seen:  # a new checkpoint: where is the training?
            seen = stamp
            with contextlib.suppress(Exception):  # last.pt may be mid-rename
                saved = torch.load(state, weights_only=False)
                if saved["step_in_epoch"] > 0:
                    proc.send_signal(signal.SIGKILL)
                    killed = saved
                    break
        time.sleep(0.1)
    code = proc.wait()
    assert killed is not None, "the stage ended before it could be killed mid-epoch"
    # What a kill during a save leaves: a temporary beside a model file.
    subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(models / "syncnet.pth")], cwd=p.root, env=p.env
    )
    assert list(models.glob(".*.tmp"))
    client = mlflow.MlflowClient(p.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(f"avatar-{AVATAR}").experiment_id
    running = client.search_runs(
        [experiment], "tags.stage = 'syncnet' and attributes.status = 'RUNNING'"
    )
    assert len(running) == 1

    def after(rerun: Run) -> None:
        assert "resuming syncnet" in rerun.text
        dead = client.get_run(running[0].info.run_id)
        assert dead.info.status == "KILLED"
        successor = client.get_run(dead.data.tags["synctalk.continued_by"])
        assert successor.info.status == "FINISHED"
        assert successor.data.tags["synctalk.continues"] == dead.info.run_id

    return Outcome(
        Run(code, ""),
        -signal.SIGKILL,
        folders=[models, state.parent],
        rerun=lambda: p.process(sys.executable, "-m", "stages.syncnet", AVATAR),
        after=after,
    )


@case
def case_two_dvc_repro_at_once(p: Project, tmp: Path) -> Outcome:
    args = ["dvc", "repro", "--force", f"extract@{AVATAR}"]
    procs = [
        subprocess.Popen(
            args, cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    runs = sorted((Run(pr.wait(), pr.stdout.read()) for pr in procs), key=lambda r: r.code)
    assert runs[0].code == 0  # one of them ran
    # DVC names the output the other run holds, or its own lock file
    return Outcome(
        runs[1],
        255,
        file="",
        problem="is busy, it is being blocked by|Unable to acquire lock",
        folders=[p.root / "data/work" / AVATAR],
        rerun=lambda: p.process(*args),
    )


def _params_case(text: str, problem: str) -> Callable[[Project, Path], Outcome]:
    def run_case(p: Project, tmp: Path) -> Outcome:
        params = _write(tmp / "params.yaml", text.encode())
        audio = p.speech(tmp / "in" / "hello.wav")
        result = p.render(audio, tmp / "out", "--params", str(params))
        return Outcome(
            result,
            2,
            file=str(params),
            problem=problem,
            broken=[tmp / "out" / "hello.mp4"],
            rerun=lambda: p.render(audio, tmp / "out"),
        )

    return run_case


CASES["params-unknown-key"] = _params_case("devcie: cpu\n", "devcie: unknown key")
CASES["params-not-yaml"] = _params_case("render: [crf: 18\n", "not valid YAML")


# --- render ------------------------------------------------------------------


def _bad_audio_case(name: str, make: Callable[[Project, Path], None], problem: str):
    """A bad file among good ones: it fails with its reason, the good one is rendered."""

    def run_case(p: Project, tmp: Path) -> Outcome:
        folder, out = tmp / "in", tmp / "out"
        good = p.speech(folder / "good.wav")
        bad = folder / name
        make(p, bad)
        result = p.render(folder, out)
        assert probe_video(out / "good.mp4").has_audio  # the batch went on

        def rerun() -> Run:
            bad.unlink()
            p.speech(bad.with_suffix(".wav"), start=9.0)
            return p.render(folder, out)

        return Outcome(
            result,
            1,
            file=str(bad),
            problem=problem,
            broken=[out / f"{bad.stem}.mp4"],
            folders=[out],
            rerun=rerun,
            after=lambda r: _assert("1 rendered, 0 failed, 1 skipped" in r.text and good.exists()),
        )

    return run_case


def _silent(p: Project, path: Path, seconds: float = 2.0) -> None:
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(seconds), str(path))


def _truncated_m4a(p: Project, path: Path) -> None:
    full = p.speech(path.with_name("full.m4a"), seconds=3.0)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone


CASES["render-empty-audio"] = _bad_audio_case(
    "empty.wav", lambda p, f: f.write_bytes(b""), "empty file"
)
CASES["render-truncated-audio"] = _bad_audio_case(
    "cut.m4a", _truncated_m4a, "moov atom|truncated|cannot decode|Invalid data"
)
CASES["render-text-as-audio"] = _bad_audio_case(
    "notes.mp3", lambda p, f: f.write_text("these are not sounds\n" * 30), "cannot decode"
)
CASES["render-silent-audio"] = _bad_audio_case("quiet.wav", _silent, "the audio is silent")
CASES["render-too-short-audio"] = _bad_audio_case(
    "blip.wav", lambda p, f: p.speech(f, seconds=0.1), "too short"
)
CASES["render-video-without-sound"] = _bad_audio_case(
    "mute.mp4",
    lambda p, f: _may(f.parent.parent, "-an", "-t", "1", name="m.mp4").replace(f),
    "no audio|does not contain any stream|matches no streams",
)


@case
def case_render_files_sharing_a_stem(p: Project, tmp: Path) -> Outcome:
    folder, out = tmp / "in", tmp / "out"
    p.speech(folder / "dup.wav", start=3.0)
    p.speech(folder / "dup.mp3", start=12.0)
    result = p.render(folder, out)
    assert "2 rendered, 0 failed" in result.text
    outputs = {path.name for path in out.iterdir()}
    assert outputs == {"dup.wav.mp4", "dup.mp3.mp4"}
    done = [r for r in p.ledger_rows() if r["output_path"].startswith(str(out))]
    assert sorted(Path(r["output_path"]).name for r in done) == sorted(outputs)
    assert len({r["output_sha256"] for r in done}) == 2  # two different videos
    return Outcome(
        result,
        0,
        rerun=lambda: p.render(folder, out),
        after=lambda r: _assert("0 rendered, 0 failed, 2 skipped" in r.text),
    )


def _registry_case(args: list[str], file: str, problem: str, env=None):
    def run_case(p: Project, tmp: Path) -> Outcome:
        audio = p.speech(tmp / "in" / "hello.wav")
        result = p.cli(
            "render",
            "--avatar",
            AVATAR,
            "--audio",
            str(audio),
            "--out",
            str(tmp / "out"),
            *args,
            env=env() if env else None,
        )
        return Outcome(
            result,
            2,
            file=file,
            problem=problem,
            broken=[tmp / "out" / "hello.mp4"],
            rerun=lambda: p.render(audio, tmp / "out"),
        )

    return run_case


CASES["render-unknown-alias"] = _registry_case(
    ["--model-alias", "nightly"],
    "avatar-may",
    "has no alias 'nightly' \\(aliases: @champion = version 1",
)
CASES["render-unknown-version"] = _registry_case(
    ["--model-alias", "7"], "avatar-may", "has no version 7 \\(versions: 1"
)
CASES["render-dead-tracking-server"] = _registry_case(
    [],
    "http://127.0.0.1:",
    "cannot reach the MLflow tracking server at http://127.0.0.1:\\d+: Connection refused",
    env=lambda: {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
)


@case
def case_render_unknown_avatar(p: Project, tmp: Path) -> Outcome:
    audio = p.speech(tmp / "in" / "hello.wav")
    result = p.cli("render", "--avatar", "nobody", "--audio", str(audio), "--out", str(tmp / "out"))
    return Outcome(
        result,
        2,
        file="nobody",
        problem="unknown avatar 'nobody'",
        broken=[tmp / "out" / "hello.mp4"],
        rerun=lambda: p.render(audio, tmp / "out"),
    )


@case
def case_render_missing_audio(p: Project, tmp: Path) -> Outcome:
    audio = tmp / "in" / "never-recorded.wav"
    result = p.render(audio, tmp / "out")

    def rerun() -> Run:
        p.speech(audio)
        return p.render(audio, tmp / "out")

    return Outcome(
        result,
        2,
        file=str(audio),
        problem="no such file",
        broken=[tmp / "out" / "never-recorded.mp4"],
        rerun=rerun,
    )


@case
def case_render_folder_without_audio(p: Project, tmp: Path) -> Outcome:
    folder = tmp / "in"
    folder.mkdir()
    (folder / "readme.txt").write_text("audio goes here")
    (folder / "speech.wav").mkdir()  # a folder named like an audio file is no audio file
    result = p.render(folder, tmp / "out")

    def rerun() -> Run:
        p.speech(folder / "late.flac")
        return p.render(folder, tmp / "out")

    return Outcome(
        result,
        2,
        file=str(folder),
        problem="no audio files",
        broken=[tmp / "out" / "speech.mp4"],
        rerun=rerun,
        after=lambda _: _assert((tmp / "out" / "late.mp4").is_file()),
    )


@case
def case_render_output_would_replace_input(p: Project, tmp: Path) -> Outcome:
    folder = tmp / "in"
    video = _may(p.speech(folder / "a.wav").parent, "-t", "1.5", name="talk.mp4")
    before = video.read_bytes()
    result = p.render(folder, folder)  # videos into the audio folder
    assert video.read_bytes() == before and not (folder / "a.mp4").exists()
    return Outcome(
        result,
        2,
        file=str(video),
        problem="which is one of the input files",
        broken=[folder / "a.mp4"],
        rerun=lambda: p.render(folder, tmp / "out"),
    )


@case
def case_render_output_overwritten_by_hand(p: Project, tmp: Path) -> Outcome:
    folder, out = tmp / "in", tmp / "out"
    p.speech(folder / "clip.wav")
    first = p.render(folder, out)
    assert "1 rendered" in first.text
    (out / "clip.mp4").write_bytes(b"someone else's video")  # or another model's render
    return Outcome(
        first,
        0,
        rerun=lambda: p.render(folder, out),
        after=lambda r: _assert(
            "1 rendered, 0 failed, 0 skipped" in r.text and probe_video(out / "clip.mp4").has_audio
        ),
    )


@case
def case_render_with_a_truncated_ledger(p: Project, tmp: Path) -> Outcome:
    import pyarrow.parquet as pq

    folder, out = tmp / "in", tmp / "out"
    p.speech(folder / "one.wav", start=2.0)
    p.speech(folder / "two.wav", start=4.0)
    assert p.render(folder, out).code == 0
    ledger = p.root / "data" / "renders" / "renders.parquet"
    mine = [
        f
        for f in ledger.glob("*.parquet")
        if str(out / "one.mp4") in pq.read_table(f).column("output_path").to_pylist()
    ]
    (damaged,) = mine
    lost = pq.read_table(damaged).num_rows
    before = len(p.ledger_rows())
    damaged.write_bytes(damaged.read_bytes()[:200])
    p.speech(folder / "three.wav", start=6.0)
    result = p.render(folder, out)
    assert "1 rendered, 0 failed, 2 skipped" in result.text  # one.wav: restored, skipped
    aside = list(ledger.parent.glob("renders.parquet.corrupt-*/" + damaged.name))
    assert len(aside) == 1
    # every readable record, the restored done record of one.wav, and this run's three
    assert len(p.ledger_rows()) == before - lost + 1 + 3
    return Outcome(
        result,
        0,
        file=damaged.name,
        problem="damaged ledger file.*set aside",
        rerun=lambda: p.render(folder, out),
        after=lambda r: _assert("0 rendered, 0 failed, 3 skipped" in r.text),
    )


@case
def case_render_killed_mid_way(p: Project, tmp: Path) -> Outcome:
    folder, out = tmp / "in", tmp / "out"
    p.speech(folder / "long.wav", seconds=8.0)
    proc = subprocess.Popen(
        p.synctalk("render", "--avatar", AVATAR, "--audio", str(folder), "--out", str(out)),
        cwd=p.root,
        env=p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, partial = time.monotonic() + 600, []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [f for f in out.glob(".long.mp4.*.tmp") if f.stat().st_size > 0]
        if partial:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    code = proc.wait()
    assert partial and partial[0].exists(), "the render finished before it could be killed"
    assert not [r for r in p.ledger_rows() if r["output_path"] == str(out / "long.mp4")]
    return Outcome(
        Run(code, ""),
        -signal.SIGKILL,
        broken=[out / "long.mp4"],
        folders=[out],
        rerun=lambda: p.render(folder, out),
        after=lambda r: _assert(probe_video(out / "long.mp4").duration > 7.9),
    )


@case
def case_two_renders_into_one_folder(p: Project, tmp: Path) -> Outcome:
    folder, out = tmp / "in", tmp / "out"
    for i in range(3):
        p.speech(folder / f"take{i}.wav", start=2.0 + 3 * i)
    args = p.synctalk("render", "--avatar", AVATAR, "--audio", str(folder), "--out", str(out))
    procs = [
        subprocess.Popen(
            args, cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    runs = [Run(pr.wait(), pr.stdout.read()) for pr in procs]
    assert [r.code for r in runs] == [0, 0], [r.text for r in runs]
    # Each output was rendered once: the second batch waited for it, then skipped it.
    texts = "\n".join(r.text for r in runs)
    assert (
        texts.count("0 failed") == 2
        and sum(int(m) for m in re.findall(r"(\d+) rendered", texts)) == 3
    )
    rows = [r for r in p.ledger_rows() if r["output_path"].startswith(str(out))]
    assert sorted(r["status"] for r in rows) == ["done"] * 3 + ["skipped"] * 3
    return Outcome(
        runs[0],
        0,
        folders=[out],
        rerun=lambda: p.render(folder, out),
        after=lambda r: _assert("0 rendered, 0 failed, 3 skipped" in r.text),
    )


@case
def case_render_unicode_file_name(p: Project, tmp: Path) -> Outcome:
    folder, out = tmp / "in", tmp / "sortie vidéo"
    audio = p.speech(folder / "Zoë: prise 2 ✓.wav")
    result = p.render(folder, out)
    assert probe_video(out / "Zoë: prise 2 ✓.mp4").has_audio
    return Outcome(
        result,
        0,
        rerun=lambda: p.render(audio, out),
        after=lambda r: _assert("1 skipped" in r.text),
    )


def _namespace(script: str) -> subprocess.CompletedProcess:
    """Run a shell script as root of its own mount namespace (mounts vanish with it)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private mount")
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
    )
    if "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr[:200]:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[:200]}")
    return proc


def _mounted_render_case(mount_fault: str, mount_fixed: str, code: int, problem: str):
    """Render into a folder mounted read-only or on a tiny disk; then, once the disk is
    freed, into a good one (each in its own mount namespace: the mounts vanish with it)."""

    def run_case(p: Project, tmp: Path) -> Outcome:
        folder, out = tmp / "in", tmp / "out"
        p.speech(folder / "hello.wav")
        out.mkdir()
        render = " ".join(
            f"'{a}'"
            for a in p.synctalk(
                "render", "--avatar", AVATAR, "--audio", str(folder), "--out", str(out)
            )
        )
        env = " ".join(
            f"{k}='{v}'" for k, v in p.env.items() if k in ("MLFLOW_TRACKING_URI", "PATH", "HOME")
        )

        def attempt(mount: str, tag: str) -> tuple[Run, str, str]:
            script = f"""
                cd '{p.root}'
                {mount.format(out=out)} || {{ echo "unshare failed: mount"; exit 97; }}
                env {env} {render} > '{tmp}/{tag}.log' 2>&1; echo $? > '{tmp}/{tag}.code'
                ls -A '{out}' > '{tmp}/{tag}.left'
                '{sys.executable}' -c "from synctalk.media.video import probe_video; \
print(probe_video('{out}/hello.mp4').has_audio)" > '{tmp}/{tag}.probe' 2>&1
            """
            proc = _namespace(script)
            assert (tmp / f"{tag}.code").exists(), proc.stdout + proc.stderr
            run_ = Run(int((tmp / f"{tag}.code").read_text()), (tmp / f"{tag}.log").read_text())
            return run_, (tmp / f"{tag}.left").read_text(), (tmp / f"{tag}.probe").read_text()

        first, left, _ = attempt(mount_fault, "fault")
        assert left == ""  # nothing at all in the folder: no partial video, no temporary

        def rerun() -> Run:
            second, left, probe = attempt(mount_fixed, "fixed")
            assert left.split() == ["hello.mp4"] and probe.strip() == "True", (left, probe)
            return second

        return Outcome(
            first, code, file=str(out), problem=problem, broken=[out / "hello.mp4"], rerun=rerun
        )

    return run_case


CASES["render-onto-a-full-disk"] = _mounted_render_case(
    "mount -t tmpfs -o size=64k tmpfs '{out}'",
    "mount -t tmpfs -o size=64m tmpfs '{out}'",
    1,
    "No space left on device",
)
CASES["render-into-a-read-only-folder"] = _mounted_render_case(
    "mount --bind '{out}' '{out}' && mount -o remount,bind,ro '{out}'",
    "true",
    2,
    "cannot write videos there \\(Read-only",
)


# --------------------------------------------------------------------------


def test_the_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_fault(project, name, tmp_path):
    outcome = CASES[name](project, tmp_path)
    first = outcome.run
    assert first.code == outcome.code, first.text
    assert "Traceback" not in first.text, first.text
    if outcome.problem:
        naming = [ln for ln in first.errors if outcome.file in ln]
        assert len(naming) == 1, first.text
        assert re.search(outcome.problem, naming[0]), naming[0]
    elif outcome.code == 0:
        assert first.errors == [], first.text
    for path in outcome.broken:
        assert not path.exists(), f"{path} holds a partial output"
    done = {r["output_path"] for r in project.ledger_rows() if r["status"] == "done"}
    assert not done & {str(path) for path in outcome.broken}

    again = outcome.rerun()
    assert again.code == 0, again.text
    assert "Traceback" not in again.text
    if outcome.after is not None:
        outcome.after(again)
    for folder in outcome.folders:
        assert not list(folder.glob(".*.tmp")), f"temporaries left in {folder}"
