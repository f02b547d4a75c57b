"""Render-only-what-changed: render keys and the renders.parquet ledger.

A render is redone only when one of its inputs changed. Its key is a hash of
everything that decides the output: the model (registry name, version and
the U-Net's weights), the audio bytes, the render settings and the renderer's
version. A key whose output exists and is recorded as `done` is skipped.

renders.parquet records every attempt (done, failed or skipped) with the key,
timings and any error, so a nightly batch leaves an audit trail. Appends are
serialised with a lock file, so concurrent tasks and processes do not lose
rows, and the file is replaced atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import synctalk
from synctalk.atomic import atomic_path
from synctalk.config import RenderParams

# Bump when a change to the rendering code changes its output.
RENDERER_VERSION = "1"

RENDERS_SCHEMA = pa.schema(
    [
        pa.field("avatar", pa.string(), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False),
        pa.field("audio_sha256", pa.string(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("output_path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # done | failed | skipped
        pa.field("error", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),  # of the video
        pa.field("frames", pa.int64(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),  # wall time of the attempt
    ]
)

_THREAD_LOCK = threading.Lock()


def render_key(
    model_name: str, model_version: str, weights_sha256: str, audio_sha256: str,
    params: RenderParams,
) -> str:  # fmt: skip
    """sha256 of everything that decides a render's output."""
    # batch size, runtime and queue length change speed, not pixels
    pixels = {k: v for k, v in asdict(params).items() if k not in ("batch_size", "queue_frames")}
    blob = json.dumps(
        {
            "model": [model_name, model_version, weights_sha256],
            "audio": audio_sha256,
            "render": pixels,
            "renderer": [RENDERER_VERSION, synctalk.__version__],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class RenderRecord:
    avatar: str
    audio_path: str
    audio_sha256: str
    model_name: str
    model_version: str
    key: str
    output_path: str
    status: str
    error: str = ""
    duration_s: float = 0.0
    frames: int = 0
    started_at: datetime | None = None
    seconds: float = 0.0


class RenderLedger:
    def __init__(self, path: Path):
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _THREAD_LOCK, open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> pa.Table:
        if not self.path.is_file():
            return RENDERS_SCHEMA.empty_table()
        return pq.read_table(self.path, schema=RENDERS_SCHEMA)

    def append(self, record: RenderRecord) -> None:
        row = asdict(record)
        row["started_at"] = row["started_at"] or datetime.now(UTC)
        new = pa.Table.from_pylist([row], schema=RENDERS_SCHEMA)
        with self._locked():
            table = pa.concat_tables([self.read(), new])
            with atomic_path(self.path) as tmp:
                pq.write_table(table, tmp)

    def is_done(self, key: str, output: Path) -> bool:
        """Has this key been rendered to `output`, and is the file still there?"""
        if not output.is_file():
            return False
        table = self.read()
        for row_key, row_out, status in zip(
            table.column("key").to_pylist(),
            table.column("output_path").to_pylist(),
            table.column("status").to_pylist(),
            strict=True,
        ):
            if row_key == key and row_out == str(output) and status == "done":
                return True
        return False
