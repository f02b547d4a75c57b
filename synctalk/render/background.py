"""The avatar's footage in the order a render shows it, decoded as the render goes.

Keeping an avatar's decoded frames on disk costs 6 MB per 1080p frame: 46 GB
for five minutes. Decoding them again is cheap next to the U-Net, so the
render decodes the mezzanine while it renders. The background schedule plays
the footage forward and then backward; forward stretches are one ffmpeg
decode each, backward stretches are decoded a segment at a time (forward
within the segment, then handed out last frame first), which is why the
mezzanine has a keyframe every second (`transcode_to_cfr`): a segment then
starts at most a second after a point where decoding can begin. Memory stays
at one segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from synctalk.media.video import VideoInfo, iter_frames, probe_video

SEGMENT_BYTES = 160 << 20  # decoded frames a backward segment may hold


class BackgroundError(RuntimeError):
    """The footage has fewer frames than the schedule asks for."""


def segment_frames(frame_size: tuple[int, int], fps: int = 25) -> int:
    """Frames per backward segment: a second of footage, fewer for very large frames."""
    h, w = frame_size
    return max(1, min(fps, SEGMENT_BYTES // (h * w * 3)))


def background_frames(video: Path, schedule: np.ndarray, segment: int) -> Iterator[np.ndarray]:
    """`video`'s frames in `schedule` order, BGR uint8 [H, W, 3], each a new array.

    `schedule` is any sequence of frame indices; the ping-pong schedule
    (steps of +1, -1 and, once, 0) costs about one decode per frame shown;
    consumers may write into the frames.
    Raises BackgroundError if `video` ends before a frame the schedule names.
    """
    info = probe_video(video)
    for first, last in _runs(np.asarray(schedule, dtype=np.int64)):
        if first <= last:
            yield from _decode(info, first, last - first + 1)
        else:
            yield from _backward(info, first, last, segment)


def _runs(schedule: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, last) of each stretch of consecutive indices, forward (+1) or backward (-1)."""
    n = len(schedule)
    i = 0
    while i < n:
        j = i
        if j + 1 < n and abs(int(schedule[j + 1]) - int(schedule[j])) == 1:
            step = int(schedule[j + 1]) - int(schedule[j])
            while j + 1 < n and int(schedule[j + 1]) - int(schedule[j]) == step:
                j += 1
        yield int(schedule[i]), int(schedule[j])
        i = j + 1


def _backward(info: VideoInfo, first: int, last: int, segment: int) -> Iterator[np.ndarray]:
    """Frames first, first-1, ..., last (first > last), one aligned segment at a time."""
    # One buffer for every segment, and a copy of each frame as it is handed
    # out: a segment's worth of new frames held at once would come from fresh
    # pages each time (the allocator gives such a heap back), and faulting
    # them in costs more CPU than the copies.
    held = np.empty((segment, info.height, info.width, 3), np.uint8)
    top = first
    while top >= last:
        low = max(last, top - top % segment)
        count = top - low + 1
        for _ in _decode(info, low, count, into=held):
            pass
        for k in range(count - 1, -1, -1):
            yield held[k].copy()
        top = low - 1


def _decode(
    info: VideoInfo, start: int, count: int, into: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    got = 0
    # One decoder thread: a render's cores are busy with the U-Net, and one
    # thread decodes faster than it renders at a fraction of the CPU that
    # frame-threading spends keeping its threads in step.
    frames = iter_frames(info.path, start=start, count=count, threads=1, info=info, into=into)
    for frame in frames:
        got += 1
        yield frame
    if got < count:
        raise BackgroundError(
            f"{info.path}: frames {start + got}..{start + count - 1} are past its end "
            f"({start + got} frames); re-run the landmarks stage"
        )
