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


def run_ffmpeg(args: list[str], source: str | Path, loglevel: str = "error") -> tuple[bytes, str]:
    """Run ffmpeg with `args`; return (stdout, stderr text).

    On failure raise MediaError naming `source` with ffmpeg's last message.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", loglevel, *args]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"ffmpeg exited with status {proc.returncode}"
        raise MediaError(f"{source}: {detail}")
    return proc.stdout, stderr
