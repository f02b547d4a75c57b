"""Atomic writes: a file appears whole under its final name or not at all.

Temporary files and staging folders are hidden (a leading dot) and carry the
identity of the process that writes them: `.<name>.st-<pid>-<start>-<host>.<random>.tmp`,
where <start> is the process's start time and <host> a short hash of the
machine's name. A process killed by SIGKILL cannot clean up after itself, so
every stage, render and batch sweeps its folders when it starts
(`sweep_stale_temps`): a temporary whose writer is no longer running is
removed; one whose writer still runs (a concurrent render, say) is left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from synctalk.process import ProcessId, current_process

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

# .<name>.st-<pid>-<start>-<host>.<random>.tmp (the random part is mkstemp's)
_TAGGED = re.compile(r"^\..+\.st-(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{8})\.[^.]+\.tmp$")
# Written before temporaries were tagged: mkstemp's 8 random characters.
_UNTAGGED = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
# An untagged temporary, or one from another machine, is only removed when
# nothing has touched it for this long: its writer cannot be asked.
FOREIGN_MAX_AGE_S = 24 * 3600


def _prefix(name: str) -> str:
    me = current_process()
    return f".{name}.st-{me.pid}-{me.start}-{me.host}."


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds.

    The temporary file is in the same folder (so the rename is atomic) and is
    removed if the block raises, so a crash never leaves a half-written file
    under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path.name), suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staging_dir(parent: str | Path, label: str) -> Path:
    """A new hidden folder in `parent` for outputs that are moved into place when complete.

    The caller removes it; if the process is killed first, `sweep_stale_temps` does."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=_prefix(label), suffix=".tmp"))


def writer_of(path: Path) -> ProcessId | None:
    """The process that wrote the temporary `path` (None if it is not a tagged temporary)."""
    match = _TAGGED.match(path.name)
    if match is None:
        return None
    return ProcessId(int(match["pid"]), int(match["start"]), match["host"])


def is_stale(path: Path, now: float | None = None) -> bool:
    """Is `path` a temporary of ours that nobody will finish or remove?"""
    writer = writer_of(path)
    if writer is not None:
        running = writer.is_running()
        if running is not None:
            return not running
    elif not _UNTAGGED.match(path.name):
        return False
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_MAX_AGE_S


def sweep_stale_temps(folders: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Remove the temporaries left in `folders` by processes that no longer run.

    Returns what was removed (each is logged). Missing folders are fine.
    """
    removed: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
        for path in sorted(candidates):
            if not is_stale(path):
                continue
            try:
                size = _size(path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # another sweeper was quicker
                continue
            log.info(
                "removed %s (%.1f MB), left by a process that no longer runs", path, size / 1e6
            )
            removed.append(path)
    return removed


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
