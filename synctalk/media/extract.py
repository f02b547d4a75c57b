"""Extract: a customer's video to a 25 fps mezzanine, 16 kHz audio and a frame manifest.

The input is checked before any work: it must have a video and an audio
stream and last at least `min_duration_s`. Everything is written into a
staging folder and moved into place only when all of it succeeded, so a bad
input leaves no partial outputs behind.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synctalk.atomic import staging_dir
from synctalk.config import FPS, SAMPLE_RATE, ExtractParams
from synctalk.manifest import FRAMES_SCHEMA, content_hash, write_manifest
from synctalk.media.ffmpeg import MediaError
from synctalk.media.video import VideoInfo, iter_frames, probe_video, transcode_to_cfr, write_wav16k
from synctalk.paths import AvatarPaths

log = logging.getLogger(__name__)


class InputError(MediaError):
    """The customer's video cannot be used as an avatar source."""


@dataclass
class ExtractResult:
    source: VideoInfo
    frames: int
    audio_seconds: float
    seconds: float  # wall time


def validate_source(path: Path, params: ExtractParams) -> VideoInfo:
    info = probe_video(path)
    if not info.has_audio:
        raise InputError(f"{path}: no audio stream; an avatar video needs the person's voice")
    if info.duration < params.min_duration_s:
        raise InputError(
            f"{path}: {info.duration:.2f} s long; at least {params.min_duration_s:g} s needed "
            "(extract.min_duration_s)"
        )
    return info


def extract_avatar(source: Path, paths: AvatarPaths, params: ExtractParams) -> ExtractResult:
    started = time.perf_counter()
    info = validate_source(source, params)
    paths.work.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(paths.work, "extract")
    try:
        video = staging / paths.video.name
        audio = staging / paths.audio.name
        transcode_to_cfr(source, video, fps=FPS, crf=params.crf)
        n_samples = write_wav16k(source, audio)
        n_frames = _write_frames_manifest(video, info, staging / paths.frames.name)
        if n_frames == 0:
            raise InputError(f"{source}: no frames could be decoded")
        for produced in (video, audio, staging / paths.frames.name):
            produced.replace(paths.work / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExtractResult(info, n_frames, n_samples / SAMPLE_RATE, time.perf_counter() - started)


def _write_frames_manifest(video: Path, source: VideoInfo, out: Path) -> int:
    hashes = [content_hash(frame) for frame in iter_frames(video)]
    index = np.arange(len(hashes), dtype=np.int32)
    timestamp = index / FPS
    # The fps filter picks, for each output time, the source frame shown then.
    n_source = max(1, round(source.duration * source.fps))
    source_frame = np.minimum(np.floor(timestamp * source.fps + 1e-6), n_source - 1)
    write_manifest(
        out,
        {
            "frame": index,
            "timestamp": timestamp,
            "source_frame": source_frame.astype(np.int32),
            "hash": hashes,
        },
        FRAMES_SCHEMA,
        meta={
            "source": str(source.path),
            "source_fps": source.fps,
            "source_size": [source.width, source.height],
            "rotation": source.rotation,
            "fps": FPS,
        },
    )
    return len(hashes)
