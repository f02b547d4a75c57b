"""Everything rendering needs that depends only on the avatar, prepared once and cached.

Rendering an audio file re-uses the same few seconds or minutes of the
avatar's video as the background, over and over. Decoding that video, cutting
the crops and arranging them the way the U-Net wants them is the same work
for every audio file of a night's batch, so it is done once and kept on disk
under ``data/cache/<name>/render-<key>/``:

=================  =========================================================
``frames.npy``     uint8 [N, H, W, 3] BGR: the decoded 25 fps mezzanine
``crops.npy``      uint8 [N, crop_size, crop_size, 3] BGR: the crops of
                   landmarks.parquet's crop boxes (the margin ring of the
                   paste-back comes from here)
``inputs.npy``     uint8 [N, 3, S, S]: the crops' inner S x S box, channel
                   first, which is both the U-Net's reference crop and (with
                   the mouth masked) its current crop
``boxes.npy``      int32 [N, 3]: the crop boxes (x0, y0, side)
``meta.json``      what the cache was made from; written last
=================  =========================================================

The key is a short hash of the mezzanine's and landmarks.parquet's sha256,
the crop geometry and the cache's format version, so a re-extracted video or
re-run landmarks give a new directory rather than stale pixels. The
directory is built under a temporary name and renamed into place, so a cache
is either complete or absent; older caches of the same avatar and crop size
are removed once a new one is in place (frames.npy is large).

The reference crop for output frame i is the avatar's own crop of the
background frame it is drawn on, as in SyncTalk_2D's inference: the U-Net
then has the exact face it must reproduce and only redraws the mouth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import synctalk
from synctalk.atomic import staging_dir
from synctalk.config import Resolution
from synctalk.face.crop import cut_crop
from synctalk.hashing import file_sha256
from synctalk.manifest import LANDMARKS_SCHEMA, fixed_list_to_numpy, read_manifest
from synctalk.media.video import iter_frames, probe_video
from synctalk.paths import AvatarPaths
from synctalk.progress import progress

log = logging.getLogger(__name__)

# Bump when the files' layout or content changes: every cache is then rebuilt.
CACHE_FORMAT = 1
_FILES = ("frames.npy", "crops.npy", "inputs.npy", "boxes.npy")


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


class _Rows:
    """Reads rows of a .npy file by positional reads (pread).

    A memory map would do too, but every page it touches counts towards the
    process's resident memory: rendering the whole 5-minute 1080p avatar
    background would show as tens of GB of RSS. pread copies the row into a
    buffer the caller owns and maps nothing, so memory stays at the buffers.
    It is positional, hence safe from several threads at once.
    """

    def __init__(self, path: Path):
        array = np.load(path, mmap_mode="r")
        self.shape: tuple[int, ...] = array.shape
        self.dtype = array.dtype
        self.offset: int = array.offset
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        del array
        self.fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def read(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(self.shape[1:], dtype=self.dtype)
        got = os.preadv(self.fd, [memoryview(out).cast("B")], self.offset + index * self.row_bytes)
        if got != self.row_bytes:
            raise RenderError(f"short read of row {index} ({got} of {self.row_bytes} bytes)")
        return out

    def close(self) -> None:
        self._closer()


@dataclass
class RenderAvatar:
    """An avatar ready to render: see the module docstring for the files.

    `frames`, `crops` and `inputs` are read-only memory maps for random
    access (tests, tools); the engine's hot loop reads rows with
    `read_frame`, `read_crop` and `read_input` instead (see `_Rows`).
    """

    name: str
    geometry: Resolution
    cache_dir: Path
    key: str
    crop_boxes: np.ndarray  # int32 [N, 3] (x0, y0, side)
    frames: np.ndarray  # uint8 [N, H, W, 3] memmap
    crops: np.ndarray  # uint8 [N, crop_size, crop_size, 3] memmap
    inputs: np.ndarray  # uint8 [N, 3, S, S] memmap
    _readers: dict[str, _Rows] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.crop_boxes)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the background frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def _reader(self, name: str) -> _Rows:
        with self._lock:  # the engine's threads open their files at the same time
            if name not in self._readers:
                self._readers[name] = _Rows(self.cache_dir / name)
            return self._readers[name]

    def read_frame(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Background frame `index` (uint8 [H, W, 3]), into `out` if given."""
        return self._reader("frames.npy").read(index, out)

    def read_crop(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Crop `index` at crop_size (uint8 [C, C, 3] BGR), into `out` if given."""
        return self._reader("crops.npy").read(index, out)

    def read_input(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """The model-size crop `index`, channel first (uint8 [3, S, S] BGR)."""
        return self._reader("inputs.npy").read(index, out)

    def close(self) -> None:
        """Close the files `read_*` opened (they are also closed when the object goes)."""
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()


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
    landmarks.parquet (crops.npy is used when its crop size matches, else the
    crops are cut again from the frames, with the same function). The cache
    lives in ``cache_root/<name>/render-<key>``; a valid one is opened as is.
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
    avatar = _open_cache(paths.name, geometry, cache_dir, key)
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
            if _open_cache(paths.name, geometry, cache_dir, key) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale(avatar_root, cache_dir, geometry)
    avatar = _open_cache(paths.name, geometry, cache_dir, key)
    if avatar is None:  # pragma: no cover - we just built it
        raise RenderError(f"{cache_dir}: render cache unreadable right after it was built")
    return avatar


def _open_cache(name: str, geometry: Resolution, cache_dir: Path, key: str) -> RenderAvatar | None:
    """The cache at `cache_dir`, or None if it is absent, incomplete or inconsistent."""
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        boxes = np.load(cache_dir / "boxes.npy")
        frames = np.load(cache_dir / "frames.npy", mmap_mode="r")
        crops = np.load(cache_dir / "crops.npy", mmap_mode="r")
        inputs = np.load(cache_dir / "inputs.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the render cache (%s)", cache_dir, exc)
        return None
    n, c, s = meta.get("frames"), geometry.crop_size, geometry.size
    h, w = meta.get("height"), meta.get("width")
    expected = {
        "boxes": (boxes.shape, (n, 3)),
        "frames": (frames.shape, (n, h, w, 3)),
        "crops": (crops.shape, (n, c, c, 3)),
        "inputs": (inputs.shape, (n, 3, s, s)),
    }
    wrong = [k for k, (got, want) in expected.items() if got != want]
    if wrong or meta.get("key") != key:
        log.warning("%s: render cache does not match its metadata (%s)", cache_dir, wrong or "key")
        return None
    return RenderAvatar(
        name=name,
        geometry=geometry,
        cache_dir=cache_dir,
        key=key,
        crop_boxes=boxes.astype(np.int32),
        frames=frames,
        crops=crops,
        inputs=inputs,
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
    h, w = info.height, info.width
    _check_boxes(boxes, w, h, paths.landmarks)
    c, s, m = geometry.crop_size, geometry.size, geometry.margin

    source_crops = None
    if paths.crops.is_file():
        candidate = np.load(paths.crops, mmap_mode="r")
        if candidate.shape == (n, c, c, 3) and candidate.dtype == np.uint8:
            source_crops = candidate
        else:
            log.info(
                "%s has shape %s, not (%d, %d, %d, 3): cutting %dx%d crops from the frames",
                *(paths.crops, candidate.shape, n, c, c, c, c),
            )

    needed = n * (h * w * 3 + c * c * 3 + 3 * s * s)
    free = shutil.disk_usage(out).free
    if needed > free:
        raise RenderError(
            f"{out.parent}: the render cache of {paths.name} needs {needed / 1e9:.1f} GB "
            f"({n} decoded {w}x{h} frames), only {free / 1e9:.1f} GB are free"
        )
    log.info("building the render cache of %s (%d frames of %dx%d): %s", paths.name, n, w, h, out)
    frames = np.lib.format.open_memmap(out / "frames.npy", "w+", np.uint8, (n, h, w, 3))
    crops = np.lib.format.open_memmap(out / "crops.npy", "w+", np.uint8, (n, c, c, 3))
    inputs = np.lib.format.open_memmap(out / "inputs.npy", "w+", np.uint8, (n, 3, s, s))
    count = 0
    for i, frame in enumerate(progress(iter_frames(paths.video), "render cache", total=n)):
        if i >= n:
            raise RenderError(
                f"{paths.video} has more frames than the {n} rows of {paths.landmarks}; "
                "re-run the landmarks stage"
            )
        if frame.shape != (h, w, 3):
            raise RenderError(f"{paths.video}: frame {i} is {frame.shape}, expected {(h, w, 3)}")
        frames[i] = frame
        crop = source_crops[i] if source_crops is not None else cut_crop(frame, boxes[i], c)
        crops[i] = crop
        inputs[i] = np.asarray(crop)[m : m + s, m : m + s].transpose(2, 0, 1)
        count += 1
    if count != n:
        raise RenderError(
            f"{paths.video} has {count} frames but {paths.landmarks} has {n} rows; "
            "re-run the landmarks stage"
        )
    for array in (frames, crops, inputs):
        array.flush()
    del frames, crops, inputs
    np.save(out / "boxes.npy", boxes)
    meta = {
        "key": key,
        "avatar": paths.name,
        "frames": n,
        "height": h,
        "width": w,
        "crop_size": c,
        "size": s,
        "format": CACHE_FORMAT,
        "code_version": synctalk.__version__,
        **shas,
        "from_crops_npy": source_crops is not None,
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
