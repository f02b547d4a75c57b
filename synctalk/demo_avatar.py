"""The built-in demo avatar: a public-domain portrait that talks, made on the spot.

`make demo` must train, evaluate and render a talking head with no user input
and nothing downloaded at run time, so the avatar it trains on is generated
here from things the dependencies ship:

* the face is scikit-image's ``astronaut`` picture (Eileen Collins, a NASA
  portrait, public domain), cropped around the face and enlarged so the face
  fills the frame the way a talking-head recording does;
* the voice is eSpeak NG, whose library and language data the
  ``espeakng-loader`` wheel bundles (eSpeak NG is GPL-3.0-or-later; it is
  loaded at run time through ctypes, and the speech it produces is ours to use);
* the talking is a warp of the lower face: the jaw and lower lip drop in
  proportion to the speech's loudness in every video frame, and a dark mouth
  interior shows between the lips, while a slow sub-pixel sway and breathing
  scale keep the head from looking frozen.

The lip positions come from mediapipe's face mesh, run once on the still, so
nothing about the portrait is hard-coded but the choice of picture. What the
demo's model has to learn is exactly the property built in here: mouth
opening follows audio loudness. `lip_sync_check` measures it on a finished
video with the same landmark backend the pipeline uses, and
`make_demo_avatar` refuses to hand back a video where it does not hold
(detection on at least 98 % of frames, Pearson r >= 0.7).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.io import wavfile

from synctalk.atomic import atomic_path
from synctalk.config import FPS, SAMPLE_RATE
from synctalk.evaluate.metrics import loudness_envelope, mouth_opening
from synctalk.media.ffmpeg import MediaError, ffmpeg_exe, ffmpeg_input

log = logging.getLogger(__name__)

PORTRAIT_CREDIT = (
    "Eileen Collins, NASA portrait (public domain), from scikit-image's skimage.data.astronaut"
)
FRAME_SIZE = 512

# Plain sentences written for this project, read in turn (order and pauses
# depend on the seed) until the demo video's length is filled.
TRAINING_SENTENCES: tuple[str, ...] = (
    "Good morning, and thank you for joining us today.",
    "This short video was made from a single still photograph.",
    "The mouth opens and closes with the loudness of the voice you hear.",
    "A small network watches these frames and learns how speech shapes the lips.",
    "Later it can make the same face say words it has never heard before.",
    "The weather this week will be mild, with a little rain on Thursday.",
    "Please remember to drink some water and to rest your eyes.",
    "Every night the pipeline looks for new audio and renders only what changed.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "The quick brown fox jumps over the lazy dog.",
    "Open wide, say ah, and then close your mouth again.",
    "Bright blue boats bob gently in the harbour at dawn.",
    "We measure everything twice and write the results down once.",
    "Thank you for watching, and have a wonderful day.",
)

# For the demo's batch render: sentences the model never heard in training.
DRIVING_SENTENCES: tuple[str, ...] = (
    "Hello! This is the demo avatar, saying a sentence it was never trained on.",
    "Batch rendering turns a folder of recordings into talking videos overnight.",
)

# Loudness (dBFS of a frame's RMS, speech peak-normalised to 0.9) that maps to
# a closed and to a fully open mouth; eSpeak's vowels sit around -15 dB and its
# consonants and word gaps between -25 and -45 dB. The floor keeps digital
# silence finite.
SILENCE_DB = -60.0
CLOSED_DB = -42.0
OPEN_DB = -14.0
MAX_OPEN_FRACTION = 0.22  # of the mouth width: 20 px for this portrait at 512 px

MIN_DETECTION_RATE = 0.98
MIN_CORRELATION = 0.7


class SpeechError(RuntimeError):
    """eSpeak NG is missing or could not speak the text."""


class DemoAvatarError(RuntimeError):
    """The generated avatar does not have the properties the demo relies on."""


# --------------------------------------------------------------------------
# speech: eSpeak NG through ctypes

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_N_PATH_HOME = 160  # eSpeak copies the data path into a fixed buffer (230 bytes)

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass
class _Engine:
    lib: ctypes.CDLL
    rate: int
    callback: object  # the ctypes callback must outlive every espeak_Synth call
    chunks: list[np.ndarray]
    lock: threading.Lock


def _library_and_data() -> tuple[str, str | None]:
    """(shared library, data folder): the wheel's if installed, else the system's."""
    try:
        import espeakng_loader
    except ImportError:
        found = ctypes.util.find_library("espeak-ng")
        if not found:
            raise SpeechError(
                "eSpeak NG is not available: install the espeakng-loader wheel "
                "(`pip install espeakng-loader`, part of `make setup`) or Debian's "
                "libespeak-ng1 and espeak-ng-data"
            ) from None
        return found, None  # the system library knows where its data is
    data = espeakng_loader.get_data_path()
    if len(data.encode()) > _N_PATH_HOME:
        # A deep virtualenv would overflow eSpeak's path buffer: reach the data
        # through a short link instead.
        link = Path(tempfile.gettempdir()) / f"synctalk-espeak-{os.getuid()}"
        if not link.is_symlink() or os.readlink(link) != data:
            staged = link.with_name(f"{link.name}.{os.getpid()}")
            staged.unlink(missing_ok=True)
            staged.symlink_to(data)
            staged.replace(link)  # atomic: a process beside this one sees one link or the other
        data = str(link)
    return espeakng_loader.get_library_path(), data


_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    """The eSpeak NG engine, loaded and initialised once per process (it keeps global state)."""
    with _ENGINE_LOCK:
        return _load_engine()


@functools.cache
def _load_engine() -> _Engine:
    lib_path, data = _library_and_data()
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as exc:
        raise SpeechError(f"eSpeak NG library {lib_path} cannot be loaded: {exc}") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode() if data else None, _INITIALIZE_DONT_EXIT
    )
    if rate <= 0:
        raise SpeechError(f"eSpeak NG could not start (data folder {data or 'default'})")
    chunks: list[np.ndarray] = []

    def on_samples(wav, n, _events) -> int:
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on synthesising

    callback = _SYNTH_CALLBACK(on_samples)
    lib.espeak_SetSynthCallback(callback)
    log.debug("eSpeak NG loaded from %s (%d Hz)", lib_path, rate)
    return _Engine(lib=lib, rate=rate, callback=callback, chunks=chunks, lock=threading.Lock())


def speak(text: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    """(int16 samples, sample rate) of `text` spoken by eSpeak NG (22,050 Hz mono)."""
    if not text.strip():
        raise SpeechError("nothing to say: the text is empty")
    engine = _engine()
    with engine.lock:  # one synthesis at a time: the engine and its buffer are shared
        if engine.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SpeechError(f"eSpeak NG has no voice {voice!r}")
        engine.chunks.clear()
        data = text.encode() + b"\0"
        status = engine.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
        engine.lib.espeak_Synchronize()
        samples = np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, np.int16)
        engine.chunks.clear()
    if status != 0 or not np.any(samples):
        raise SpeechError(f"eSpeak NG produced no audio for {text[:40]!r} (status {status})")
    return samples.astype(np.int16), engine.rate


def synthesise_speech(text: str, out_wav: Path, voice: str = "en-us") -> Path:
    """Write `text` spoken by eSpeak NG to `out_wav` (16-bit mono WAV at 22,050 Hz), atomically.

    Raises SpeechError when eSpeak NG is not installed, the voice is unknown
    or nothing could be synthesised.
    """
    samples, rate = speak(text, voice)
    out_wav = Path(out_wav)
    with atomic_path(out_wav) as tmp:
        wavfile.write(tmp, rate, samples)
    log.info("wrote %s: %.2f s of speech (%s)", out_wav, len(samples) / rate, voice)
    return out_wav


def compose_speech(
    seconds: float, seed: int = 0, texts: tuple[str, ...] = TRAINING_SENTENCES
) -> tuple[np.ndarray, int]:
    """float32 speech of exactly `seconds`: sentences with short pauses, peak 0.9.

    Sentences are taken in a seeded order (repeating the list if needed); one
    that would run past the end is skipped, and the rest is silence, so every
    sentence is heard whole.
    """
    rng = np.random.default_rng(seed)
    rate = _engine().rate
    total = round(seconds * rate)
    out = np.zeros(total, np.float32)
    pos = round(rng.uniform(0.3, 0.6) * rate)  # a closed mouth at the start
    order = list(rng.permutation(len(texts)))
    misses = 0
    spoken: dict[int, np.ndarray] = {}
    while order and misses < len(texts):
        index = order.pop(0)
        order.append(index)
        if index not in spoken:  # a long video repeats sentences: speak each once
            spoken[index] = speak(texts[index])[0]
        samples = spoken[index]
        if pos + len(samples) > total:
            misses += 1
            continue
        misses = 0
        out[pos : pos + len(samples)] = samples / 32768.0
        pos += len(samples) + round(rng.uniform(0.25, 0.7) * rate)
    peak = float(np.abs(out).max())
    if peak > 0:
        out *= 0.9 / peak
    return out, rate


# --------------------------------------------------------------------------
# loudness and mouth opening


def frame_loudness_db(wav: np.ndarray, rate: int, n_frames: int) -> np.ndarray:
    """float [n_frames]: RMS in dBFS of each 25 fps frame's samples, floored at -60 dB."""
    return loudness_envelope(wav, n_frames, sample_rate=rate, floor_db=SILENCE_DB)


def mouth_track(loudness_db: np.ndarray) -> np.ndarray:
    """float [N] in [0, 1]: how far the mouth is open in each frame.

    Linear in dB between a closed and an open level (loudness is heard, and
    lips move, roughly logarithmically), then smoothed over three frames so
    the jaw does not jump 20 px between two frames.
    """
    x = np.clip((loudness_db - CLOSED_DB) / (OPEN_DB - CLOSED_DB), 0.0, 1.0)
    padded = np.pad(x, 1, mode="edge")
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


# --------------------------------------------------------------------------
# the face

# Inner lip contour of the 478-point mesh, corner to corner; the upper and
# lower lists pair up point by point.
_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


def _detect_still(image_bgr: np.ndarray) -> np.ndarray:
    """478 mesh points of the one face in a still image (static mode: no tracking)."""
    from synctalk.face.mediapipe_backend import MediapipeFaceBackend

    with MediapipeFaceBackend(max_faces=1, video_mode=False) as backend:
        faces = backend.detect(image_bgr)
    if not faces:
        raise DemoAvatarError("mediapipe found no face in the demo portrait")
    return faces[0].points


def load_portrait(size: int = FRAME_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 [size, size, 3], mesh points [478, 2]) of the portrait, face filling the frame.

    The astronaut picture is a half-length portrait with a face 90 px wide;
    a talking-head recording shows the head and shoulders, so a square about
    2.7 face widths wide around the face is cut out and enlarged.
    """
    try:
        from skimage import data
    except ImportError:
        raise DemoAvatarError(
            "the demo portrait comes from scikit-image: `pip install scikit-image`"
        ) from None
    picture = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    points = _detect_still(picture)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    side = min(2.7 * (x1 - x0), *picture.shape[:2])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.05 * side  # room for the neck below the chin
    left = float(np.clip(cx - side / 2, 0, picture.shape[1] - side))
    top = float(np.clip(cy - side / 2, 0, picture.shape[0] - side))
    scale = size / side
    affine = np.array([[scale, 0, -left * scale], [0, scale, -top * scale]], np.float64)
    image = cv2.warpAffine(picture, affine, (size, size), flags=cv2.INTER_CUBIC)
    return image, _detect_still(image)


@dataclass(frozen=True)
class MouthRig:
    """How the lower face moves, per pixel of opening, inside a box around the mouth.

    `drop` [h, w] is the downward displacement per pixel of jaw drop at each
    output pixel of the box (x0, y0) + (w, h): 1 on the lower lip and chin,
    fading out sideways along the jaw and down the neck, and 0 above the lip
    line. Across the lip line it rises over 1 px at the middle of the mouth
    but over ~20 px near the corners, so the lips part in a lens shape and
    the skin beyond the corners stretches instead of tearing.
    """

    x0: int
    y0: int
    drop: np.ndarray  # float32 [h, w]
    mouth_width: float
    interior_bgr: tuple[float, float, float]

    @property
    def max_open_px(self) -> float:
        return MAX_OPEN_FRACTION * self.mouth_width


def build_rig(points: np.ndarray, frame_shape: tuple[int, int]) -> MouthRig:
    """The `MouthRig` for a face whose mesh points are `points` in frames of `frame_shape`."""
    left, right = points[61], points[291]
    width = float(np.linalg.norm(right - left))
    half = width / 2
    cx = float((left[0] + right[0]) / 2)
    # The lip line: where the closed lips meet, from corner to corner.
    mids = (points[list(_INNER_UPPER)] + points[list(_INNER_LOWER)]) / 2
    line_pts = np.vstack([left, mids, right])
    line_pts = line_pts[np.argsort(line_pts[:, 0])]
    line_mid = float(np.interp(cx, line_pts[:, 0], line_pts[:, 1]))
    chin = float(points[152][1])
    lip_to_chin = max(chin - line_mid, 0.5 * width)

    h_img, w_img = frame_shape
    x0 = int(max(0, cx - 3.0 * half))
    x1 = int(min(w_img, cx + 3.0 * half))
    y0 = int(max(0, line_mid - 1.5 * half))
    y1 = int(min(h_img, chin + 2.2 * lip_to_chin))
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]

    line = np.interp(xs, line_pts[:, 0], line_pts[:, 1]).astype(np.float32)
    u = (xs - cx) / half
    band = 1.0 + 80.0 * np.clip(np.abs(u) - 0.3, 0, None) ** 2  # px over which the lips part
    t = ys - line  # below the lip line, positive
    below = _smoothstep((t + band / 2) / band)
    # The jaw is wider than the mouth: the sideways reach grows towards the chin.
    reach = half * (1.0 + 0.8 * np.clip(t / lip_to_chin, 0, 1))
    sideways = np.exp(-0.5 * ((xs - cx) / reach) ** 2)
    # Full drop down to just below the chin, fading out down the neck.
    fade_start, fade_len = 1.1 * lip_to_chin, 1.0 * lip_to_chin
    neck = 1.0 - _smoothstep((t - fade_start) / fade_len)
    drop = (below * sideways * neck).astype(np.float32)
    return MouthRig(x0=x0, y0=y0, drop=drop, mouth_width=width, interior_bgr=(28.0, 22.0, 58.0))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def render_mouth(image: np.ndarray, rig: MouthRig, open_px: float) -> np.ndarray:
    """`image` with the jaw dropped by `open_px` and the mouth interior drawn between the lips."""
    out = image.copy()
    if open_px <= 0.05:
        return out
    h, w = rig.drop.shape
    grid_x, grid_y = np.meshgrid(
        np.arange(rig.x0, rig.x0 + w, dtype=np.float32),
        np.arange(rig.y0, rig.y0 + h, dtype=np.float32),
    )
    src_y = grid_y - open_px * rig.drop
    box = cv2.remap(
        image, grid_x, src_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    # Where the backward map folds (a pixel would show what a pixel above it
    # already shows), the lips have parted: that is the mouth opening.
    seen = np.maximum.accumulate(src_y, axis=0)
    gap = np.clip(seen - src_y, 0.0, 1.0)
    gap = cv2.GaussianBlur(gap, (0, 0), 0.8)[..., None]
    # Darker in the middle of the opening, as a lit mouth cavity looks.
    depth = np.clip(cv2.GaussianBlur(gap[..., 0], (0, 0), 2.5), 0, 1)[..., None]
    interior = np.array(rig.interior_bgr, np.float32) * (1.3 - 0.6 * depth)
    blended = box.astype(np.float32) * (1 - gap) + interior * gap
    out[rig.y0 : rig.y0 + h, rig.x0 : rig.x0 + w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def head_motion(n_frames: int, seed: int, centre: tuple[float, float]) -> np.ndarray:
    """float64 [N, 2, 3]: per-frame affine maps of a gently swaying, breathing head.

    Sums of slow sines with seeded phases: about 1.5 px of sway, 0.5 % of
    scale (breathing, ~0.25 Hz) and 0.4 degrees of roll, small enough that
    the landmark track stays smooth and large enough to look alive.
    """
    rng = np.random.default_rng(seed + 1)
    t = np.arange(n_frames) / FPS

    def wander(amplitude: float, freqs: tuple[float, ...]) -> np.ndarray:
        phases = rng.uniform(0, 2 * np.pi, len(freqs))
        wave = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True))
        return amplitude * wave / len(freqs)

    dx = wander(1.5, (0.11, 0.23, 0.37))
    dy = wander(1.0, (0.13, 0.29))
    scale = 1.0 + wander(0.005, (0.25,))
    angle = wander(0.4, (0.07, 0.19))
    maps = np.empty((n_frames, 2, 3))
    for i in range(n_frames):
        m = cv2.getRotationMatrix2D(centre, float(angle[i]), float(scale[i]))
        m[:, 2] += (dx[i], dy[i])
        maps[i] = m
    return maps


# --------------------------------------------------------------------------
# the video


def make_demo_avatar(
    out_mp4: Path, seconds: float = 40.0, seed: int = 0, verify: bool = True
) -> Path:
    """Write the demo avatar video: 512x512, 25 fps H.264 + AAC, `seconds` long, atomically.

    The portrait talks eSpeak NG sentences with its mouth opening on every
    frame as far as that frame's speech is loud. With `verify` the finished
    file is checked with the pipeline's own landmark backend (`lip_sync_check`)
    and DemoAvatarError is raised if the face is missed on more than 2 % of
    frames or mouth opening and loudness correlate below r = 0.7: a demo
    avatar without that link would teach the demo's model nothing.
    """
    out_mp4 = Path(out_mp4)
    if seconds < 2.0:
        raise ValueError(f"a demo avatar needs at least 2 s, got {seconds}")
    started = time.perf_counter()
    image, points = load_portrait()
    rig = build_rig(points, image.shape[:2])
    n_frames = round(seconds * FPS)
    speech, rate = compose_speech(n_frames / FPS, seed)
    opening = mouth_track(frame_loudness_db(speech, rate, n_frames))
    centre = tuple(float(v) for v in points[[33, 263, 152]].mean(axis=0))
    motion = head_motion(n_frames, seed, centre)
    log.info(
        "demo avatar: %d frames, mouth %.0f px wide, up to %.0f px open (%.1f s to prepare)",
        n_frames,
        rig.mouth_width,
        rig.max_open_px,
        time.perf_counter() - started,
    )

    with tempfile.TemporaryDirectory(prefix="demo-avatar-") as tmp_dir, atomic_path(out_mp4) as tmp:
        wav = Path(tmp_dir) / "speech.wav"
        wavfile.write(wav, rate, np.round(speech * 32767).astype(np.int16))
        frames = (
            cv2.warpAffine(
                render_mouth(image, rig, float(opening[i]) * rig.max_open_px),
                motion[i],
                (FRAME_SIZE, FRAME_SIZE),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT101,
            )
            for i in range(n_frames)
        )
        _encode(frames, wav, tmp, Path(tmp_dir) / "ffmpeg.log")
    log.info("wrote %s in %.1f s", out_mp4, time.perf_counter() - started)

    if verify:
        check = lip_sync_check(out_mp4)
        if check.detection_rate < MIN_DETECTION_RATE or check.correlation < MIN_CORRELATION:
            out_mp4.unlink(missing_ok=True)
            raise DemoAvatarError(
                f"{out_mp4}: generated avatar fails its check ({check}); "
                f"needed detection >= {MIN_DETECTION_RATE} and r >= {MIN_CORRELATION}"
            )
        log.info("%s: %s", out_mp4, check)
    return out_mp4


def _encode(frames, wav: Path, out: Path, log_path: Path) -> None:
    """Pipe BGR frames into ffmpeg with `wav` as the sound: H.264 (yuv420p) + AAC, mp4."""
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{FRAME_SIZE}x{FRAME_SIZE}",
        "-r",
        str(FPS),
        "-i",
        "pipe:0",
        "-i",
        ffmpeg_input(wav),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "16",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        ffmpeg_input(out),
    ]
    with open(log_path, "w+b") as err:  # a file, not a pipe: ffmpeg must never block on it
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None
        try:
            for frame in frames:
                proc.stdin.write(frame.tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped; its exit status and log say why
        except BaseException:
            proc.kill()  # a frame failed: no half-written video
            proc.wait()
            raise
        code = proc.wait()
        if code != 0:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
            raise MediaError(f"{out}: encoding failed ({lines[-1] if lines else code})")


@dataclass(frozen=True)
class LipSyncCheck:
    n_frames: int
    detection_rate: float
    correlation: float  # Pearson r of mouth opening ratio vs loudness (dB), every frame

    def __str__(self) -> str:
        return (
            f"{self.n_frames} frames, face found on {100 * self.detection_rate:.1f} %, "
            f"mouth opening vs loudness r = {self.correlation:.3f}"
        )


def lip_sync_check(video: Path) -> LipSyncCheck:
    """Measure what the demo's model must learn from `video`, as the pipeline would see it.

    The mediapipe face mesh (video mode, as in the landmarks stage) gives the
    mouth opening ratio of every frame; the file's own audio, decoded to
    16 kHz, gives every frame's loudness. A frame where no face is found shows
    no open mouth and counts as 0: the correlation is over every frame, so a
    render whose face is mostly unrecognisable (an untrained model's) cannot
    score on the handful of frames where the detector guessed a face.
    """
    from synctalk.face.mediapipe_backend import MEDIAPIPE_ANCHORS, MediapipeFaceBackend
    from synctalk.media.audio import load_audio
    from synctalk.media.video import iter_frames

    ratios = []
    with MediapipeFaceBackend(max_faces=1) as backend:
        for frame in iter_frames(video):
            faces = backend.detect(frame)
            ratios.append(mouth_opening(faces[0].points, MEDIAPIPE_ANCHORS)[0] if faces else np.nan)
    ratio = np.array(ratios)
    found = ~np.isnan(ratio)
    opening = np.where(found, ratio, 0.0)
    loudness = frame_loudness_db(load_audio(video), SAMPLE_RATE, len(ratio))
    if len(ratio) < 3 or opening.std() == 0 or loudness.std() == 0:
        return LipSyncCheck(len(ratio), float(found.mean()) if len(ratio) else 0.0, 0.0)
    r = float(np.corrcoef(opening, loudness)[0, 1])
    return LipSyncCheck(len(ratio), float(found.mean()), r)


def make_demo_audio(out_dir: Path, texts: list[str] | None = None) -> list[Path]:
    """Speak `texts` (default: two sentences not in the training speech) into WAVs in `out_dir`.

    Files are named by their position and first words (`01_hello_this_is.wav`),
    since a render's output is named after its audio file's stem. A file already
    there is kept, not spoken again: eSpeak NG's output depends on what the process
    said before (its wave generator keeps state that even re-initialising it does
    not reset), so a second synthesis differs in a few samples (4.41 s instead of
    4.42) and the batch would render the sentence again.
    """
    texts = list(DRIVING_SENTENCES) if texts is None else texts
    out_dir = Path(out_dir)
    paths = []
    for i, text in enumerate(texts, start=1):
        words = re.findall(r"[a-z0-9]+", text.lower())[:3]
        path = out_dir / f"{'_'.join([f'{i:02d}', *words])}.wav"
        paths.append(path if path.is_file() else synthesise_speech(text, path))
    return paths
