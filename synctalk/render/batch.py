"""Rendering an avatar saying a batch of audio files: what the CLI and flows call.

The model comes from the MLflow registry (`@champion` when set, else the
newest version, or the alias/version asked for), downloaded once into
data/cache/models. Everything that depends only on the avatar is prepared
once (see synctalk.render.avatar) and shared by every file of the batch.
One file failing (unreadable, silent...) is recorded with its error and the
others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from synctalk.config import Config
from synctalk.device import resolve_device
from synctalk.hashing import file_sha256
from synctalk.paths import AvatarPaths
from synctalk.registry import ModelFiles, fetch_model, model_name
from synctalk.render.engine import LoadedModel, load_for_rendering, render_video
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


class AvatarRenderer:
    """An avatar and one model version, rendering any number of files.

    The model version is resolved at once (rendering keys need it); the avatar
    cache and the runtime load only when a file actually has to be rendered,
    so a batch where everything is up to date costs a registry query and
    hashing the audio.
    """

    def __init__(self, config: Config, avatar: str, model_alias: str | None = None,
                 root: Path = Path(".")):  # fmt: skip
        if avatar not in config.avatars:
            raise LookupError(
                f"unknown avatar {avatar!r}; params.yaml lists {sorted(config.avatars)}"
            )
        self.config = config
        self.params = config.render
        self.device = resolve_device(config.device)
        self.paths = AvatarPaths(avatar, root)
        self.cache = root / "data" / "cache"
        self.model: ModelFiles = fetch_model(avatar, model_alias, self.cache / "models")
        self.weights_sha256 = file_sha256(self.model.unet)
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def _load(self) -> LoadedModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_for_rendering(self.paths, self.model.unet,
                                                  self.model.audio_encoder, self.params,
                                                  self.device, self.cache)  # fmt: skip
                log.info("rendering %s with %s version %s", self.paths.name,
                         model_name(self.paths.name), self.model.version)  # fmt: skip
            return self._loaded

    def key(self, audio_sha256: str) -> str:
        return render_key(model_name(self.paths.name), self.model.version, self.weights_sha256,
                          audio_sha256, self.params)  # fmt: skip

    def render(self, audio: Path, output: Path) -> FileOutcome:
        started = time.perf_counter()
        try:
            loaded = self._load()
            result = render_video(loaded.avatar, loaded.runtime, loaded.front_end, audio, output,
                                  self.params, self.device)  # fmt: skip
        except Exception as exc:  # one bad file must not stop the batch
            log.error("%s: %s", audio, exc)
            return FileOutcome(audio, output, "failed", str(exc),
                               seconds=time.perf_counter() - started)  # fmt: skip
        return FileOutcome(audio, output, "done", frames=result.frames,
                           duration=result.duration, seconds=result.seconds)  # fmt: skip

    def render_if_changed(self, audio: Path, output: Path, ledger: RenderLedger) -> RenderRecord:
        """Render `audio` unless the ledger has this exact render done; record the attempt."""
        started_at = datetime.now(UTC)
        try:
            digest = file_sha256(audio)
        except OSError as exc:
            digest, key = "", ""
            outcome = FileOutcome(audio, output, "failed", f"{audio}: {exc}")
        else:
            key = self.key(digest)
            if ledger.is_done(key, output):
                outcome = FileOutcome(audio, output, "skipped")
            else:
                outcome = self.render(audio, output)
        record = RenderRecord(
            avatar=self.paths.name, audio_path=str(audio), audio_sha256=digest,
            model_name=model_name(self.paths.name), model_version=self.model.version, key=key,
            output_path=str(output), status=outcome.status, error=outcome.error,
            duration_s=outcome.duration, frames=outcome.frames, started_at=started_at,
            seconds=outcome.seconds,
        )  # fmt: skip
        ledger.append(record)
        return record

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.close()


def render_batch(
    config: Config, avatar: str, audio: Path, out_dir: Path, model_alias: str | None = None,
    pattern: str = "*",
) -> list[FileOutcome]:  # fmt: skip
    """Render every audio file of `audio` (a file or a folder) to out_dir/<stem>.mp4."""
    files = audio_files(audio, pattern)
    renderer = AvatarRenderer(config, avatar, model_alias)
    try:
        return [renderer.render(f, out_dir / f"{f.stem}.mp4") for f in files]
    finally:
        renderer.close()
