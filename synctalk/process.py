"""Which process is this, and is another one still running?

Used to tell leftovers of a killed process (temporary files, MLflow runs left
RUNNING) from the work of one that is still going. A process is named by its
machine, its pid and its start time: a pid alone can be reused after the
process ends, pid and start time together cannot.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path


def host_id(hostname: str | None = None) -> str:
    """8 hex characters naming a machine (a hash: host names may hold any character)."""
    return hashlib.sha1((hostname or socket.gethostname()).encode()).hexdigest()[:8]


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux); 0 where /proc does not exist;
    None if no such process runs."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        return 0 if _pid_exists(pid) else None
    try:
        text = stat.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished; only its exit status is left
        return None
    return int(fields[19])  # field 22 of the whole line


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int
    host: str  # host_id()

    def is_running(self) -> bool | None:
        """True or False on this machine; None for another machine's process (unknowable)."""
        if self.host != host_id():
            return None
        return start_time(self.pid) == self.start

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    @classmethod
    def parse(cls, text: str) -> ProcessId | None:
        try:
            host, pid, start = text.split(":")
            return cls(int(pid), int(start), host)
        except ValueError:
            return None


@functools.cache
def _current(pid: int) -> ProcessId:
    return ProcessId(pid, start_time(pid) or 0, host_id())


def current_process() -> ProcessId:
    # keyed by pid: a forked child is another process
    return _current(os.getpid())
