"""Everything rendering needs that depends only on the avatar, prepared once and cached.

A render shows the avatar's own footage as the background, over and over,
with the model's mouth pasted in. What it needs per footage frame is the
frame itself, decoded from the extract stage's mezzanine as the render goes
(synctalk.render.background), and the frame's crop box, from which the crop
(the paste-back's margin ring) and the U-Net's input are cut again each
time: cutting costs less than reading a stored crop would. So the cache,
under ``data/cache/<name>/render-<key>/``, holds only what is checked once:

=================  =========================================================
``boxes.npy``      int32 [N, 3]: the crop boxes (x0, y0, side), checked to
                   lie in the frame
``meta.json``      what the cache was made from, the frame size; written last
=================  =========================================================

and a five-minute 1080p avatar costs kilobytes of cache rather than the 46 GB
its decoded frames would take. The key is a short hash of the mezzanine's and
landmarks.parquet's sha256, the crop geometry and the cache's format
version, so a re-extracted video or re-run landmarks give a new directory.
The directory is built under a temporary name and renamed into place, so a
cache is either complete or absent; older caches of the same avatar and crop
size are removed once a new one is in place.

The reference crop for output frame i is the avatar's own crop of the
background frame it is drawn on, as in SyncTalk_2D's inference: the U-Net
then has the exact face it must reproduce and only redraws the mouth. It is
cut with the function that cut the training crops, from the same decoded
frames, so it is exactly the crop the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import synctalk
from synctalk.atomic import staging_dir
from synctalk.config import FPS, Resolution
from synctalk.face.crop import cut_crop
from synctalk.hashing import file_sha256
from synctalk.manifest import LANDMARKS_SCHEMA, fixed_list_to_numpy, read_manifest
from synctalk.media.video import probe_video
from synctalk.paths import AvatarPaths
from synctalk.render.background import background_frames, segment_frames

log = logging.getLogger(__name__)

# Bump when the files' layout or content changes: every cache is then rebuilt.
CACHE_FORMAT = 2


class RenderError(RuntimeError):
    """Rendering cannot proceed: a bad audio input, an unusable avatar, ffmpeg failing."""


# --------------------------------------------------------------------------
# the background loop


def background_schedule(
    n_avatar_frames: int, n_output_frames: int, same_start_end: bool = False
) -> np.ndarray:
    """Which avatar frame is the background of each output frame, int64 [n_output_frames].

    The avatar's frames play back and forth (ping-pong): 0, 1, ..., N-1,
    N-2, ..., 1, 0, 1, ... A loop that jumped from the last frame back to the
    first would make the head snap; reversing keeps every step one frame.

    With `same_start_end` the sequence ends on frame 0, the frame it started
    on (so renders can be cut together or looped). Rule: play full ping-pong
    cycles (0 .. N-1 .. 0) while they fit, then one last, shorter excursion
    that turns early, at frame r // 2 where r is the number of steps left,
    and comes back to 0. A walk of single steps from 0 back to 0 has an even
    number of steps, so when r is odd the turning frame is shown twice: a
    40 ms hold where the head's motion reverses anyway, the least visible
    place for it. Every step therefore differs by at most one frame.
    """
    if n_avatar_frames < 1:
        raise ValueError(f"the avatar has no frames ({n_avatar_frames})")
    if n_output_frames < 0:
        raise ValueError(f"negative output frame count {n_output_frames}")
    if n_avatar_frames == 1 or n_output_frames == 0:
        return np.zeros(n_output_frames, dtype=np.int64)
    period = 2 * (n_avatar_frames - 1)
    k = np.arange(n_output_frames, dtype=np.int64)
    if not same_start_end:
        return _ping_pong(k, period)
    steps = n_output_frames - 1
    full = (steps // period) * period  # positions 0..full follow the plain ping-pong
    out = _ping_pong(k, period)
    r = steps - full  # steps of the last excursion, r < period
    if r:
        t = k[full:] - full  # 0..r
        # 0, 1, .., r//2, .., 1, 0; for odd r the turning frame r//2 comes twice
        out[full:] = np.minimum(t, r - t)
    return out


def _ping_pong(k: np.ndarray, period: int) -> np.ndarray:
    t = k % period
    return np.where(t < period // 2 + 1, t, period - t)


# --------------------------------------------------------------------------
# the cached avatar


@dataclass
class RenderAvatar:
    """An avatar ready to render: its footage, crop boxes and crop geometry."""

    name: str
    geometry: Resolution
    cache_dir: Path
    key: str
    video: Path  # the 25 fps mezzanine
    crop_boxes: np.ndarray  # int32 [N, 3] (x0, y0, side)
    frame_size: tuple[int, int]  # (height, width) of the footage

    def __len__(self) -> int:
        return len(self.crop_boxes)

    def backgrounds(self, schedule: np.ndarray) -> Iterator[np.ndarray]:
        """The footage's frames in `schedule` order (uint8 [H, W, 3] BGR, each a new array)."""
        return background_frames(self.video, schedule, segment_frames(self.frame_size))

    def crop(self, frame: np.ndarray, index: int) -> np.ndarray:
        """Footage frame `index`'s crop at crop_size (uint8 [C, C, 3] BGR)."""
        return cut_crop(frame, self.crop_boxes[index], self.geometry.crop_size)

    def model_input(self, crop: np.ndarray) -> np.ndarray:
        """The U-Net's crop of a crop: its inner box, channel first (uint8 [3, S, S] BGR)."""
        m, s = self.geometry.margin, self.geometry.size
        return crop[m : m + s, m : m + s].transpose(2, 0, 1)

    def model_inputs(self, indices: np.ndarray) -> np.ndarray:
        """The U-Net's crops of footage frames `indices` (uint8 [k, 3, S, S]), in that order."""
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), 3, self.geometry.size, self.geometry.size), np.uint8)
        wanted = np.asarray(indices)[order]
        for k, frame in zip(order, self.backgrounds(wanted), strict=True):
            out[k] = self.model_input(self.crop(frame, int(indices[k])))
        return out


def cache_key(video_sha256: str, landmarks_sha256: str, geometry: Resolution) -> str:
    """16 hex digits identifying a render cache's inputs and format."""
    text = json.dumps(
        {
            "video": video_sha256,
            "landmarks": landmarks_sha256,
            "crop_size": geometry.crop_size,
            "size": geometry.size,
            "format": CACHE_FORMAT,
            "code": synctalk.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_render_avatar(
    paths: AvatarPaths, geometry: Resolution, cache_root: Path
) -> RenderAvatar:
    """The avatar's render cache for `geometry`, built if missing or out of date.

    Needs the extract stage's mezzanine and the landmarks stage's
    landmarks.parquet. The cache lives in ``cache_root/<name>/render-<key>``;
    a valid one is opened as is.
    """
    for needed, stage in ((paths.video, "extract"), (paths.landmarks, "landmarks")):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed}: not found; run the {stage}@{paths.name} stage first"
            )
    shas = {
        "video_sha256": file_sha256(paths.video),
        "landmarks_sha256": file_sha256(paths.landmarks),
    }
    key = cache_key(shas["video_sha256"], shas["landmarks_sha256"], geometry)
    avatar_root = Path(cache_root) / paths.name
    cache_dir = avatar_root / f"render-{key}"
    avatar = _open_cache(paths, geometry, cache_dir, key)
    if avatar is not None:
        log.info("render cache of %s: %s (%d frames)", paths.name, cache_dir, len(avatar))
        return avatar
    if cache_dir.exists():
        log.warning("%s: incomplete or damaged render cache; rebuilding it", cache_dir)
        shutil.rmtree(cache_dir, ignore_errors=True)

    avatar_root.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(avatar_root, f"render-{key}")
    try:
        _build_cache(paths, geometry, staging, key, shas)
        try:
            staging.rename(cache_dir)
        except OSError:
            # Another process finished the same cache first; theirs is as good as ours.
            if _open_cache(paths, geometry, cache_dir, key) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale(avatar_root, cache_dir, geometry)
    avatar = _open_cache(paths, geometry, cache_dir, key)
    if avatar is None:  # pragma: no cover - we just built it
        raise RenderError(f"{cache_dir}: render cache unreadable right after it was built")
    return avatar


def _open_cache(
    paths: AvatarPaths, geometry: Resolution, cache_dir: Path, key: str
) -> RenderAvatar | None:
    """The cache at `cache_dir`, or None if it is absent, incomplete or inconsistent."""
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        boxes = np.load(cache_dir / "boxes.npy")
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the render cache (%s)", cache_dir, exc)
        return None
    if boxes.shape != (meta.get("frames"), 3) or meta.get("key") != key:
        log.warning("%s: render cache does not match its metadata", cache_dir)
        return None
    return RenderAvatar(
        name=paths.name,
        geometry=geometry,
        cache_dir=cache_dir,
        key=key,
        video=paths.video,
        crop_boxes=boxes.astype(np.int32),
        frame_size=(int(meta["height"]), int(meta["width"])),
    )


def _build_cache(
    paths: AvatarPaths, geometry: Resolution, out: Path, key: str, shas: dict[str, str]
) -> None:
    table, _ = read_manifest(paths.landmarks, LANDMARKS_SCHEMA)
    boxes = fixed_list_to_numpy(table.column("crop_box"), 3, dtype=np.int32)
    n = len(boxes)
    if n == 0:
        raise RenderError(f"{paths.landmarks}: no frames")
    info = probe_video(paths.video)
    frames = info.n_frames_at(FPS)
    if frames != n:
        raise RenderError(
            f"{paths.video} has {frames} frames but {paths.landmarks} has {n} rows; "
            "re-run the landmarks stage"
        )
    _check_boxes(boxes, info.width, info.height, paths.landmarks)
    np.save(out / "boxes.npy", boxes)
    meta = {
        "key": key,
        "avatar": paths.name,
        "frames": n,
        "height": info.height,
        "width": info.width,
        "crop_size": geometry.crop_size,
        "size": geometry.size,
        "format": CACHE_FORMAT,
        "code_version": synctalk.__version__,
        **shas,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def _check_boxes(boxes: np.ndarray, width: int, height: int, source: Path) -> None:
    """RenderError naming the first crop box that cannot be pasted back."""
    x0, y0, side = boxes[:, 0], boxes[:, 1], boxes[:, 2]
    bad = (side < 2) | (x0 >= width) | (y0 >= height) | (x0 + side <= 0) | (y0 + side <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RenderError(
            f"{source}: frame {i}'s crop box {tuple(int(v) for v in boxes[i])} "
            f"lies outside the {width}x{height} frame"
        )


def _remove_stale(avatar_root: Path, keep: Path, geometry: Resolution) -> None:
    """Delete this avatar's other render caches of the same crop size (out of date)."""
    for other in avatar_root.glob("render-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("crop_size") in (geometry.crop_size, None):
            log.info("removing out-of-date render cache %s", other)
            shutil.rmtree(other, ignore_errors=True)
