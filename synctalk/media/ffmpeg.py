"""Where the ffmpeg binary is, and running it with errors that name the file."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
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
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", loglevel, *args]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        telling = [ln for ln in lines if any(marker in ln for marker in _TELLING)]
        detail = (telling or lines or [f"ffmpeg exited with status {proc.returncode}"])[-1]
        raise MediaError(f"{source}: {detail}")
    return proc.stdout, stderr
