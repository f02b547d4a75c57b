"""Render-only-what-changed: render keys and the renders ledger.

A render is redone only when one of its inputs changed. Its key is a hash of
everything that decides the output: the model (registry name, version and
the U-Net's weights), the audio bytes, the render settings and the renderer's
version. A key is skipped only when the ledger has it `done` for that output
and the file on disk still has the sha256 recorded then: an output that was
overwritten (by hand, or by a render with another model) is rendered again.

The ledger records every attempt (done, failed or skipped) with the key,
timings, the output's sha256 and any error, so a nightly batch leaves an
audit trail. It is a Parquet dataset folder, which `pd.read_parquet` reads
as one table:

    renders.parquet/
      part-<time>-<pid>-<id>.parquet    one per append: never rewritten
      compact-<time>-<id>.parquet       many parts merged into one (`check`)
      _done/<xy>/<hash>.json            index: the latest `done` record of each
                                        (key, output), with the output's sha256
      _locks/<xy>/<hash>.lock           held while an output is being rendered

An append writes a new file under a unique name (atomically), so writers in
several processes, or on several machines sharing the folder, need no lock
and lose nothing; "is this key done?" reads one small index file instead of
scanning the history. Parquet readers skip names starting with `_` or `.`.

`check` runs when a batch starts: it converts a ledger written as one file
by earlier versions, sets damaged files aside as
`renders.parquet.corrupt-<time>/` (naming them in the log), restores the
`done` records they held from the index (those are still on disk), and
merges small parts. Merging writes the merged file before removing its
parts, so a reader can briefly see a record twice, never miss one;
`read` drops such duplicates by record id.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import synctalk
from synctalk.atomic import atomic_path, sweep_stale_temps
from synctalk.config import RenderParams
from synctalk.hashing import file_sha256
from synctalk.process import ProcessId, current_process

log = logging.getLogger(__name__)

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
        pa.field("output_sha256", pa.string(), nullable=False),  # of the file when done
        pa.field("record_id", pa.string(), nullable=False),  # unique per record
        pa.field("batch_id", pa.string(), nullable=False),  # the batch (run) it belongs to
        pa.field("worker", pa.string(), nullable=False),  # who rendered it
        # failed for a reason other than the input (disk full, process killed): retryable
        pa.field("transient", pa.bool_(), nullable=False),
    ]
)

COMPACT_PARTS = 64  # merge the parts once there are more than this many
COMPACT_MERGED = 16  # ...and the merged files once there are more than this many
LOCK_STALE_S = 600  # a merge lock older than this, from another machine, is abandoned


def render_key(
    model_name: str,
    model_version: str,
    weights_sha256: str,
    audio_sha256: str,
    params: RenderParams,
) -> str:
    """sha256 of everything that decides a render's output."""
    # batch size and queue length change speed, not pixels (the runtime may change the
    # last bit: onnxruntime and torch round differently)
    pixels = {k: v for k, v in asdict(params).items() if k not in ("batch_size", "queue_frames")}
    if params.precision == "fp32":
        # int8's settings mean nothing in fp32; leaving them out keeps the keys of renders
        # made before they existed, so adding them re-rendered nothing.
        del pixels["precision"], pixels["int8_min_psnr"]
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
    output_sha256: str = ""
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    batch_id: str = ""
    worker: str = ""
    transient: bool = False

    def row(self) -> dict:
        row = asdict(self)
        row["started_at"] = row["started_at"] or datetime.now(UTC)
        return row

    @classmethod
    def from_row(cls, row: dict) -> RenderRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class LedgerCheck:
    """What `RenderLedger.check` found and did."""

    set_aside: list[Path] = field(default_factory=list)  # damaged files, moved away
    recovered: int = 0  # done records restored from the index
    merged: int = 0  # files merged into one
    converted: Path | None = None  # a one-file ledger of an earlier version, kept here


class RenderLedger:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def index(self) -> Path:
        return self.path / "_done"

    # ------------------------------------------------------------------ writing

    def append(self, *records: RenderRecord) -> None:
        """Add records: one new file (and an index entry per `done` record)."""
        if not records:
            return
        if not self.path.is_dir():
            self._make_folder()
        table = pa.Table.from_pylist([r.row() for r in records], schema=RENDERS_SCHEMA)
        with atomic_path(self.path / _data_name("part")) as tmp:
            pq.write_table(table, tmp)
        # After the records: a crash in between costs a re-render, never a false skip.
        for record in records:
            if record.status == "done":
                self._write_index(record)

    def _write_index(self, record: RenderRecord) -> None:
        entry = {**record.row()}
        entry["started_at"] = entry["started_at"].isoformat()
        with atomic_path(self._index_path(record.key, record.output_path)) as tmp:
            tmp.write_text(json.dumps(entry))

    def _index_path(self, key: str, output: str | Path) -> Path:
        digest = hashlib.sha256(f"{key}\n{os.path.abspath(output)}".encode()).hexdigest()
        return self.index / digest[:2] / f"{digest}.json"

    @contextmanager
    def claim(self, output: str | Path) -> Iterator[None]:
        """Hold `output` while deciding whether to render it and rendering it: a second
        batch wanting the same output waits, then finds it done. (A lock file per
        output under _locks/; fcntl locks also hold across machines on NFSv4.)"""
        digest = hashlib.sha256(os.path.abspath(output).encode()).hexdigest()
        lock = self.path / "_locks" / digest[:2] / f"{digest}.lock"
        if not self.path.is_dir():
            self._make_folder()
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ lookups

    def done_record(self, key: str, output: str | Path) -> RenderRecord | None:
        """The latest `done` record of `key` rendered to `output`, if any (one file read)."""
        try:
            entry = json.loads(self._index_path(key, output).read_text())
            entry["started_at"] = datetime.fromisoformat(entry["started_at"])
            return RenderRecord.from_row(entry)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged entry
            log.warning("ledger index entry for %s unreadable (%s): rendering again", output, exc)
            return None

    def is_done(self, key: str, output: str | Path) -> bool:
        """Was `key` rendered to `output`, and does the file still hold that render?"""
        record = self.done_record(key, output)
        if record is None or not record.output_sha256:
            return False
        try:
            return file_sha256(Path(output)) == record.output_sha256
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ reading

    def _data_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(
            p
            for p in self.path.iterdir()
            if p.suffix == ".parquet" and not p.name.startswith((".", "_")) and p.is_file()
        )

    def read(self) -> pa.Table:
        """Every readable record, oldest first (damaged files are skipped with a warning;
        `check` sets them aside)."""
        if self.path.is_file():
            return _legacy_table(self.path)
        tables = []
        for path in self._data_files():
            try:
                tables.append(pq.read_table(path, schema=RENDERS_SCHEMA))
            except FileNotFoundError:  # merged away meanwhile; its records are in the merge
                continue
            except Exception as exc:  # noqa: BLE001 - any damage: report, go on
                log.warning("%s: unreadable ledger file (%s)", path, exc)
        if not tables:
            return RENDERS_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        # a merge in progress shows its records twice for a moment
        table = _drop_duplicates(table)
        return table.sort_by([("started_at", "ascending"), ("record_id", "ascending")])

    # ------------------------------------------------------------------ upkeep

    def check(self) -> LedgerCheck:
        """Make the ledger whole before a batch: see the module docstring."""
        report = LedgerCheck()
        if self.path.is_file():
            report.converted = self._convert_legacy(report)
        if not self.path.is_dir():
            return report
        sweep_stale_temps([self.path])
        damaged: list[tuple[Path, str]] = []
        ids: list[pa.ChunkedArray] = []
        for path in self._data_files():
            try:
                table = pq.read_table(path, schema=RENDERS_SCHEMA)
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001 - any damage
                damaged.append((path, str(exc).splitlines()[0] if str(exc) else repr(exc)))
                continue
            ids.append(table.column("record_id"))
        if damaged:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{_stamp()}")
            aside.mkdir(parents=True, exist_ok=True)
            for path, problem in damaged:
                try:
                    path.replace(aside / path.name)
                except FileNotFoundError:
                    continue
                report.set_aside.append(aside / path.name)
                log.error("%s: damaged ledger file (%s); set aside in %s", path, problem, aside)
        if not self.index.is_dir():  # a converted ledger: index its done records
            self._rebuild_index()
        elif damaged:  # the done records the damaged files held are in the index
            known = {i for column in ids for i in column.to_pylist()}
            report.recovered = self._restore_from_index(known)
        if report.recovered:
            log.warning(
                "restored %d done record(s) of %s from its index", report.recovered, self.path
            )
        report.merged = self.compact()
        return report

    def _restore_from_index(self, known_ids: set[str]) -> int:
        """Done records the index holds but no readable file does: append them again."""
        lost = []
        for entry_path in self.index.glob("*/*.json"):
            try:
                entry = json.loads(entry_path.read_text())
            except (OSError, ValueError):
                continue
            if entry.get("record_id") not in known_ids:
                entry["started_at"] = datetime.fromisoformat(entry["started_at"])
                lost.append(RenderRecord.from_row(entry))
        if lost:
            table = pa.Table.from_pylist([r.row() for r in lost], schema=RENDERS_SCHEMA)
            with atomic_path(self.path / _data_name("part")) as tmp:
                pq.write_table(table, tmp)
        return len(lost)

    def _rebuild_index(self) -> None:
        self.index.mkdir(parents=True, exist_ok=True)
        done = self.read().filter(pc.equal(pc.field("status"), "done"))
        for row in done.to_pylist():  # oldest first: the latest of each (key, output) wins
            record = RenderRecord.from_row(row)
            output = Path(record.output_path)
            if not record.output_sha256 and output.is_file():
                # an earlier version's record: it trusted the file as it is now
                record.output_sha256 = file_sha256(output)
            self._write_index(record)

    def compact(self) -> int:
        """Merge small parts (and merged files, when many); returns files merged."""
        files = self._data_files()
        parts = [p for p in files if p.name.startswith("part-")]
        merged = [p for p in files if p.name.startswith("compact-")]
        if len(merged) > COMPACT_MERGED:
            sources = merged + parts
        elif len(parts) > COMPACT_PARTS:
            sources = parts
        else:
            return 0
        lock = self.path / "_merge.lock"
        if not _acquire(lock):
            return 0  # another process is merging
        try:
            tables = []
            for path in sources:
                try:
                    tables.append(pq.read_table(path, schema=RENDERS_SCHEMA))
                except FileNotFoundError:
                    continue
            if not tables:
                return 0
            table = _drop_duplicates(pa.concat_tables(tables))
            with atomic_path(self.path / _data_name("compact")) as tmp:
                pq.write_table(table, tmp)
            for path in sources:
                path.unlink(missing_ok=True)
            log.info("merged %d ledger files of %s", len(sources), self.path)
            return len(sources)
        finally:
            lock.unlink(missing_ok=True)

    def _make_folder(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a one-file ledger of an earlier version
            self._convert_legacy(LedgerCheck())

    def _convert_legacy(self, report: LedgerCheck) -> Path | None:
        """An earlier version's single-file ledger becomes the first part of the folder;
        the file itself is kept beside it (renamed), as is a damaged one."""
        stamp = _stamp()
        try:
            table = _legacy_table(self.path)
        except FileNotFoundError:
            return None  # another process converted it
        except Exception as exc:  # noqa: BLE001 - damaged
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            self.path.replace(aside)
            log.error("%s: damaged ledger (%s); set aside as %s", self.path, exc, aside)
            report.set_aside.append(aside)
            self.path.mkdir(exist_ok=True)
            return None
        kept = self.path.with_name(f"{self.path.name}.v1-{stamp}")
        self.path.replace(kept)
        self.path.mkdir(exist_ok=True)
        with atomic_path(self.path / _data_name("part")) as tmp:
            pq.write_table(table, tmp)
        log.info(
            "converted the one-file ledger %s to a folder (the file is kept as %s)", self.path, kept
        )
        return kept


def _legacy_table(path: Path) -> pa.Table:
    """A ledger file of an earlier version (fewer columns) in today's schema."""
    table = pq.read_table(path)
    columns = {}
    for f in RENDERS_SCHEMA:
        if f.name in table.column_names:
            columns[f.name] = table.column(f.name).cast(f.type)
        elif f.name == "record_id":
            columns[f.name] = pa.array([uuid.uuid4().hex for _ in range(table.num_rows)])
        elif f.name == "transient":
            columns[f.name] = pa.array([False] * table.num_rows, pa.bool_())
        else:
            columns[f.name] = pa.array([""] * table.num_rows, pa.string())
    return pa.table(columns, schema=RENDERS_SCHEMA)


def _drop_duplicates(table: pa.Table) -> pa.Table:
    ids = table.column("record_id").to_pylist()
    seen: set[str] = set()
    keep = []
    for i, record_id in enumerate(ids):
        if record_id not in seen:
            seen.add(record_id)
            keep.append(i)
    return table.take(keep) if len(keep) != len(ids) else table


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def _data_name(kind: str) -> str:
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{kind}-{now}-{current_process().pid}-{uuid.uuid4().hex[:12]}.parquet"


def _acquire(lock: Path) -> bool:
    """Create `lock` exclusively (works on shared network folders too); take over one
    whose holder is gone."""
    me = str(current_process())
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = ProcessId.parse(lock.read_text().strip())
                age = time.time() - lock.stat().st_mtime
            except (FileNotFoundError, ValueError):
                continue
            running = holder.is_running() if holder else None
            if running or (running is None and age < LOCK_STALE_S):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def recent_records(
    ledger: RenderLedger,
    avatar: str | None = None,
    since: datetime | None = None,
    failed_only: bool = False,
) -> list[RenderRecord]:
    """What `synctalk renders status` shows: every record since `since`, or else each
    avatar's latest batch; optionally one avatar's, optionally failed ones only."""
    table = ledger.read()
    if avatar:
        table = table.filter(pc.equal(table.column("avatar"), avatar))
    if since is not None:
        table = table.filter(
            pc.greater_equal(
                table.column("started_at"), pa.scalar(since, pa.timestamp("us", tz="UTC"))
            )
        )
    else:
        latest: dict[str, tuple[datetime, str]] = {}
        for row in table.select(["avatar", "started_at", "batch_id"]).to_pylist():
            if row["avatar"] not in latest or row["started_at"] >= latest[row["avatar"]][0]:
                latest[row["avatar"]] = (row["started_at"], row["batch_id"])
        batches = pa.array([b for _, b in latest.values()], pa.string())
        table = table.filter(pc.is_in(table.column("batch_id"), value_set=batches))
    if failed_only:
        table = table.filter(pc.equal(table.column("status"), "failed"))
    return [RenderRecord.from_row(r) for r in table.to_pylist()]
