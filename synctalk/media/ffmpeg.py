"""Where the ffmpeg binary is, and running it with errors that name the file."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class MediaError(RuntimeError):
    """An input file could not be read as the media it should be."""


@functools.cache
def ffmpeg_exe() -> str:
    """$SYNCTALK_FFMPEG, else ffmpeg on PATH, else the imageio-ffmpeg wheel's binary."""
    override = os.environ.get("SYNCTALK_FFMPEG")
    if override:
        return override
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # a wheel with a static ffmpeg (libx264, aac), no ffprobe

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_input(path: str | Path) -> str:
    """`path` as ffmpeg should be given it.

    The `file:` prefix stops ffmpeg from reading a name such as
    `take 2:30.mp4` as a URL of the protocol "take 2" ("Protocol not found").
    """
    return f"file:{path}"


def check_file(path: Path) -> None:
    """MediaError naming `path` if it is missing or empty (ffmpeg's own words are vaguer)."""
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")


# ffmpeg's most telling complaints; its last line is often just the consequence
# ("Error opening output files: Invalid argument").
_TELLING = ("matches no streams", "Invalid data found", "moov atom not found", "No such file")


def run_ffmpeg(args: list[str], source: str | Path, loglevel: str = "error") -> tuple[bytes, str]:
    """Run ffmpeg with `args`; return (stdout, stderr text).

    On failure raise MediaError naming `source` with ffmpeg's last message.
    """
    proc = subprocess.run(_command(args, loglevel), capture_output=True, check=False)
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise MediaError(f"{source}: {failure_detail(stderr, proc.returncode)}")
    return proc.stdout, stderr


def widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let a pipe hold 1 MiB (Linux) rather than 64 KiB.

    With the default, ffmpeg blocks a dozen times per 512x512 frame waiting
    for this process to read; the larger pipe made a fast-decoding source
    about 10 % faster here. Where it is not allowed, the default stays.
    """
    try:
        import fcntl  # Linux and macOS only

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError):
        pass


class FfmpegStream:
    """ffmpeg's stdout, read in blocks of up to `block` bytes as ffmpeg produces them.

    Iterate once; afterwards `stderr` holds ffmpeg's log. Memory stays at one
    block however long the output. stderr goes to a temporary file, not a pipe
    nobody reads while stdout is (ffmpeg would block on a full pipe). On
    failure the iteration raises MediaError naming `source` with ffmpeg's last
    message; a consumer that stops early stops ffmpeg.
    """

    def __init__(
        self, args: list[str], source: str | Path, loglevel: str = "error", block: int = 1 << 20
    ):
        self.args, self.source, self.loglevel, self.block = args, source, loglevel, block
        self.stderr = ""

    def __iter__(self) -> Iterator[bytes]:
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(
                _command(self.args, self.loglevel), stdout=subprocess.PIPE, stderr=log
            )
            try:
                while data := proc.stdout.read(self.block):
                    yield data
                returncode = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
                proc.wait()
            log.seek(0)
            self.stderr = log.read().decode(errors="replace")
        if returncode != 0:
            raise MediaError(f"{self.source}: {failure_detail(self.stderr, returncode)}")


def failure_detail(stderr: str, returncode: int) -> str:
    """What went wrong, from ffmpeg's stderr: its most telling line, else its last, else
    the exit status."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    telling = [ln for ln in lines if any(marker in ln for marker in _TELLING)]
    return (telling or lines or [f"ffmpeg exited with status {returncode}"])[-1]


def _command(args: list[str], loglevel: str) -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", loglevel, *args]
