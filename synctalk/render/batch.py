"""Rendering an avatar saying a batch of audio files: what the CLI and flows call.

The model comes from the MLflow registry (`@champion` when set, else the
newest version, or the alias/version asked for), downloaded once into
data/cache/models. Everything that depends only on the avatar is prepared
once (see synctalk.render.avatar) and shared by every file of the batch.
A file whose render key is done, with its output unchanged on disk, is
skipped (see synctalk.render.ledger). One file failing (unreadable,
silent...) is recorded with its error and the others go on.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from synctalk.atomic import sweep_stale_temps
from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.hashing import file_sha256
from synctalk.media.ffmpeg import MediaError
from synctalk.paths import AvatarPaths, render_cache, renders_ledger
from synctalk.registry import ModelFiles, fetch_model, model_name
from synctalk.render.avatar import RenderError
from synctalk.render.engine import EncodeError, LoadedModel, load_for_rendering, render_video
from synctalk.render.ledger import RenderLedger, RenderRecord, render_key

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus", ".mp4", ".mov")


@dataclass
class FileOutcome:
    audio: Path
    output: Path
    status: str  # "done", "failed" or "skipped"
    error: str = ""
    frames: int = 0
    duration: float = 0.0
    seconds: float = 0.0
    transient: bool = False  # failed for a reason other than the input: worth retrying


def audio_files(source: Path, pattern: str = "*") -> list[Path]:
    """`source` itself, or the audio files in the folder `source` matching `pattern`."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such file or folder")
    files = sorted(
        p for p in source.glob(pattern) if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )
    if not files:
        raise FileNotFoundError(f"{source}: no audio files matching {pattern!r}")
    return files


def output_paths(files: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Where each audio file's video goes: out_dir/<stem>.mp4.

    Files that share a stem (`dup.wav`, `dup.mp3`) would overwrite each other's
    video, so they keep their extension: `dup.wav.mp4`, `dup.mp3.mp4`. Stems
    are compared ignoring case, as some file systems do. An output that would
    replace one of the input files is refused (ValueError naming both) before
    anything renders.
    """
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem.casefold(), []).append(f)
    outputs = {}
    for f in files:
        shared = len(by_stem[f.stem.casefold()]) > 1
        outputs[f] = out_dir / (f"{f.name}.mp4" if shared else f"{f.stem}.mp4")
    seen: dict[str, Path] = {}
    for f, out in outputs.items():
        other = seen.setdefault(str(out).casefold(), f)
        if other != f:
            raise ValueError(f"{other} and {f} would both render to {out}; rename one of them")
    inputs = {os.path.abspath(f): f for f in files}
    for f, out in outputs.items():
        clash = inputs.get(os.path.abspath(out))
        if clash is not None:
            raise ValueError(
                f"{f} would render to {out}, which is one of the input files; "
                "render into another folder (--out)"
            )
    return outputs


def check_writable(folder: Path) -> None:
    """OSError naming `folder` if videos cannot be written there (read-only, not ours):
    better said once before a batch than once per file after each render."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OSError(f"{folder}: cannot write videos there ({exc.strerror})") from None


def is_bad_input(exc: BaseException) -> bool:
    """Is `exc` the input file's fault (retrying cannot help)?"""
    if isinstance(exc, EncodeError):  # writing the video failed: disk, ffmpeg killed...
        return False
    return isinstance(exc, MediaError | RenderError | FileNotFoundError | IsADirectoryError)


def default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class AvatarRenderer:
    """An avatar and one model version, rendering any number of files.

    The model version is resolved at once (rendering keys need it); the avatar
    cache and the runtime load only when a file actually has to be rendered,
    so a batch where everything is up to date costs a registry query and
    hashing the audio.
    """

    def __init__(
        self,
        config: Config,
        avatar: str,
        model_alias: str | None = None,
        root: Path = Path("."),
        batch_id: str = "",
        worker: str = "",
    ):
        if avatar not in config.avatars:
            raise LookupError(
                f"unknown avatar {avatar!r}; params.yaml lists {sorted(config.avatars)}"
            )
        self.config = config
        self.params = config.render
        self.device = resolve_device(config.device)
        self.paths = AvatarPaths(avatar, root)
        self.cache = render_cache(root)
        self.model: ModelFiles = fetch_model(avatar, model_alias, self.cache / "models")
        self.weights_sha256 = file_sha256(self.model.unet)
        self.batch_id = batch_id or uuid.uuid4().hex
        self.worker = worker or default_worker()
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def _load(self) -> LoadedModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_for_rendering(
                    self.paths,
                    self.model.unet,
                    self.model.audio_encoder,
                    self.params,
                    self.device,
                    self.cache,
                )
                log.info(
                    "rendering %s with %s version %s",
                    self.paths.name,
                    model_name(self.paths.name),
                    self.model.version,
                )
            return self._loaded

    def sweep(self, *folders: Path) -> None:
        """Remove what killed renders left behind in `folders` and the render caches."""
        sweep_stale_temps([*folders, self.cache / self.paths.name, self.cache / "onnx"])

    @property
    def model_name(self) -> str:
        return model_name(self.paths.name)

    def up_to_date(self, audio: Path, output: Path, ledger: RenderLedger) -> bool:
        """Would `render_if_changed` skip this file?"""
        try:
            return ledger.is_done(self.key(file_sha256(audio)), output)
        except OSError:
            return False

    def key(self, audio_sha256: str) -> str:
        return render_key(
            model_name(self.paths.name),
            self.model.version,
            self.weights_sha256,
            audio_sha256,
            self.params,
        )

    def render(self, audio: Path, output: Path) -> FileOutcome:
        started = time.perf_counter()
        try:
            loaded = self._load()
            result = render_video(
                loaded.avatar,
                loaded.runtime,
                loaded.front_end,
                audio,
                output,
                self.params,
                self.device,
            )
        except Exception as exc:  # one bad file must not stop the batch
            if isinstance(exc, OSError) and exc.strerror:  # not the temporary file's name
                error = f"{audio} -> {output}: {exc.strerror}"
            else:
                error = str(exc) if str(audio) in str(exc) else f"{audio}: {exc}"
            log.error("%s", error)
            return FileOutcome(
                audio,
                output,
                "failed",
                error,
                transient=not is_bad_input(exc),
                seconds=time.perf_counter() - started,
            )
        return FileOutcome(
            audio,
            output,
            "done",
            frames=result.frames,
            duration=result.duration,
            seconds=result.seconds,
        )

    def render_if_changed(
        self, audio: Path, output: Path, ledger: RenderLedger, force: bool = False
    ) -> RenderRecord:
        """Render `audio` unless the ledger has this exact render done and its output is
        unchanged (or `force`); record the attempt."""
        with ledger.claim(output):
            return self._render_if_changed(audio, output, ledger, force)

    def _render_if_changed(
        self, audio: Path, output: Path, ledger: RenderLedger, force: bool
    ) -> RenderRecord:
        started_at = datetime.now(UTC)
        output_sha256 = ""
        try:
            digest = file_sha256(audio)
        except OSError as exc:
            digest, key = "", ""
            outcome = FileOutcome(audio, output, "failed", f"{audio}: {exc.strerror or exc}")
        else:
            key = self.key(digest)
            if not force and ledger.is_done(key, output):
                outcome = FileOutcome(audio, output, "skipped")
            else:
                outcome = self.render(audio, output)
        if outcome.status == "done":
            output_sha256 = file_sha256(output)
        record = RenderRecord(
            avatar=self.paths.name,
            audio_path=str(audio),
            audio_sha256=digest,
            model_name=model_name(self.paths.name),
            model_version=self.model.version,
            key=key,
            output_path=str(output),
            status=outcome.status,
            error=outcome.error,
            duration_s=outcome.duration,
            frames=outcome.frames,
            started_at=started_at,
            seconds=outcome.seconds,
            output_sha256=output_sha256,
            batch_id=self.batch_id,
            worker=self.worker,
            transient=outcome.transient,
        )
        ledger.append(record)
        return record

    def close(self) -> None:
        """Let the loaded model (an onnxruntime session: tens to hundreds of MB) go."""
        self._loaded = None


def render_batch(
    config: Config,
    avatar: str,
    audio: Path,
    out_dir: Path,
    model_alias: str | None = None,
    pattern: str = "*",
    root: Path = Path("."),
    force: bool = False,
) -> list[RenderRecord]:
    """Render every audio file of `audio` (a file or a folder) into out_dir (see
    `output_paths`), skipping what is already done; every attempt goes to the ledger."""
    files = [f.absolute() for f in audio_files(audio, pattern)]
    out_dir = out_dir.absolute()
    outputs = output_paths(files, out_dir)
    # the model first: with a registry that cannot be read, nothing is created
    renderer = AvatarRenderer(config, avatar, model_alias, root)
    try:
        check_writable(out_dir)
        ledger = RenderLedger(renders_ledger(root))
        ledger.check()
        renderer.sweep(out_dir)
        return [renderer.render_if_changed(f, outputs[f], ledger, force) for f in files]
    finally:
        renderer.close()
