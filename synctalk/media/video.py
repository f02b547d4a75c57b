"""Video in: probing, a constant-frame-rate mezzanine, frames as arrays, the audio track.

Uploaded talking-head clips come as anything: phone recordings with rotation
metadata, screen captures at a variable 22.13 fps, 1080p exports, files whose
upload stopped half way. Everything downstream assumes 25 fps, upright, square
pixels, so the first step of the pipeline turns a source into a mezzanine with
`transcode_to_cfr` and only ever reads frames from that.

There is no ffprobe here (the imageio-ffmpeg wheel ships ffmpeg alone), so
`probe_video` reads the stream summary that ``ffmpeg -i FILE`` prints. That
text is meant for people, but its layout has been stable for a decade and the
parser only relies on its coarse structure (see `_parse_streams`).

Every path given to ffmpeg is prefixed with ``file:``: ffmpeg reads a name such
as ``take 2:30.mp4`` as a URL of the protocol "take 2", and fails with
"Protocol not found".
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from synctalk.atomic import atomic_path
from synctalk.config import FPS, SAMPLE_RATE
from synctalk.media.audio import load_audio
from synctalk.media.ffmpeg import MediaError, check_file, ffmpeg_exe, ffmpeg_input, widen_pipe

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120  # `ffmpeg -i` reads headers only; longer means a stalled network mount


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learnt about a file's first real video stream (and first audio stream).

    width and height are those of the frames a decoder hands out after
    applying the rotation metadata, i.e. what `iter_frames` yields. duration is
    the container's, which spans the longest stream (usually audio and video
    agree to within a frame).
    """

    path: Path
    width: int
    height: int
    fps: float  # average frame rate as ffmpeg prints it (2 decimals), e.g. 22.13
    duration: float  # seconds
    rotation: int  # counter-clockwise degrees a player turns the frames: 0, 90, 180 or 270
    video_codec: str
    has_audio: bool
    audio_rate: int | None = None
    audio_channels: int | None = None
    # Width of a pixel relative to its height, after rotation; != 1 for anamorphic
    # sources (DV, some broadcast files), which `transcode_to_cfr` turns square.
    pixel_aspect: float = 1.0

    def n_frames_at(self, fps: float) -> int:
        """How many frames this clip's duration makes at a constant `fps`."""
        return round(self.duration * fps)


# --------------------------------------------------------------------------
# probing


def probe_video(path: str | Path) -> VideoInfo:
    """Describe the video file `path`.

    Raises MediaError, its message starting with the path, when the file is
    missing, empty, not a media file, an MP4 cut off before its index, or has
    no video stream (cover art in an audio file does not count). A video
    without sound is fine here: has_audio is False and callers decide.
    """
    path = Path(path)
    check_file(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_input(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MediaError(
            f"{path}: ffmpeg did not read the headers in {PROBE_TIMEOUT_S} s"
        ) from None
    # Without an output ffmpeg always exits non-zero ("At least one output file
    # must be specified"); whether it opened the file shows in the text.
    text = proc.stderr.decode(errors="replace")
    if "Input #0" not in text:
        raise MediaError(f"{path}: {_open_failure(text, proc.returncode)}")
    return _parse_info(path, text)


def _open_failure(text: str, returncode: int) -> str:
    """A sentence saying why ffmpeg could not open a file, from its log."""
    if "misdetection possible" in text:
        # e.g. a text file renamed .mp4: the extension is the only hint ffmpeg has
        return "not a media file (ffmpeg recognises no audio or video format in it)"
    if "moov atom not found" in text:
        return (
            "truncated or unfinished MP4/MOV: its index (the moov atom) is missing, "
            "so the upload or the recording probably did not complete"
        )
    if "Invalid data found when processing input" in text:
        return "not a media file, or damaged beyond reading (Invalid data found)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"ffmpeg exited with status {returncode}"


_DURATION = re.compile(r"Duration: (?:(\d+):(\d\d):(\d\d(?:\.\d+)?)|N/A)")
_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (\w+): (.*)$")
_DISPLAY_MATRIX = re.compile(r"display ?matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_ROTATE_TAG = re.compile(r"^\s*rotate\s*: (-?[\d.]+)\s*$")  # ffmpeg < 5 printed this instead
_SIZE = re.compile(r"^(\d+)x(\d+)\b")
_SAR = re.compile(r"SAR (\d+):(\d+)")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(k?) (fps|tbr)$")
_HZ = re.compile(r"^(\d+) Hz$")
_NOT_A_VIDEO = ("(attached pic)", "(timed thumbnails)")  # what `-map 0:V` also leaves out


@dataclass
class _Stream:
    kind: str  # Video, Audio, Subtitle, Data, Attachment
    desc: str  # the rest of the Stream line
    rotation: float = 0.0  # counter-clockwise degrees from the display matrix


def _parse_info(path: Path, text: str) -> VideoInfo:
    streams = _parse_streams(text)
    videos = [s for s in streams if s.kind == "Video" and not _is_cover(s)]
    if not videos:
        found = sorted({s.kind.lower() for s in streams})
        if any(s.kind == "Video" for s in streams):
            found = [f for f in found if f != "video"] + ["cover art"]
        raise MediaError(f"{path}: no video stream (it has {', '.join(found) or 'no streams'})")
    video = videos[0]
    tokens = _split_top_level(video.desc)

    size = next((m for t in tokens if (m := _SIZE.match(t))), None)
    if size is None:
        raise MediaError(f"{path}: ffmpeg reports no frame size for the video stream")
    width, height = int(size[1]), int(size[2])
    sar = _SAR.search(video.desc)
    pixel_aspect = int(sar[1]) / int(sar[2]) if sar and int(sar[1]) and int(sar[2]) else 1.0

    rotation = round(video.rotation / 90) * 90 % 360
    if abs(video.rotation - round(video.rotation / 90) * 90) > 1:
        log.warning("%s: rotation of %.1f degrees rounded to %d", path, video.rotation, rotation)
    if rotation in (90, 270):
        width, height, pixel_aspect = height, width, 1 / pixel_aspect

    rates = {m[3]: float(m[1]) * (1000 if m[2] else 1) for t in tokens if (m := _RATE.match(t))}
    fps = rates.get("fps") or rates.get("tbr")  # avg_frame_rate, else the stream's base rate
    if not fps:
        raise MediaError(f"{path}: ffmpeg reports no frame rate for the video stream")

    if "smpte2084" in video.desc or "arib-std-b67" in video.desc:
        log.warning("%s: HDR video; frames are converted to 8-bit without tone mapping", path)

    audio = next((s for s in streams if s.kind == "Audio"), None)
    audio_rate = audio_channels = None
    if audio is not None:
        a_tokens = _split_top_level(audio.desc)
        for i, tok in enumerate(a_tokens):
            if m := _HZ.match(tok):
                audio_rate = int(m[1])
                if i + 1 < len(a_tokens):
                    audio_channels = _channel_count(a_tokens[i + 1])
                break

    match = _DURATION.search(text)
    if match and match[1] is not None:
        h, m, s = match.groups()
        duration = int(h) * 3600 + int(m) * 60 + float(s)
    else:
        # Live WebM (a browser's MediaRecorder), raw .h264 and the like
        # declare no duration; count the packets instead.
        duration = _measure_duration(path, fps)

    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=fps,
        duration=duration,
        rotation=rotation,
        video_codec=tokens[0].split()[0] if tokens and tokens[0] else "unknown",
        has_audio=audio is not None,
        audio_rate=audio_rate,
        audio_channels=audio_channels,
        pixel_aspect=pixel_aspect,
    )


def _is_cover(stream: _Stream) -> bool:
    return any(flag in stream.desc for flag in _NOT_A_VIDEO)


def _parse_streams(text: str) -> list[_Stream]:
    """The input's streams from ffmpeg's summary.

    Each stream is one "Stream #0:N...: Kind: description" line, followed by
    indented Metadata and Side data blocks that belong to it until the next
    Stream line.
    """
    streams: list[_Stream] = []
    for line in text.splitlines():
        if line.startswith("Output #") or line.startswith("Stream mapping"):
            break
        if m := _STREAM.match(line):
            streams.append(_Stream(kind=m[1], desc=m[2].strip()))
        elif streams and (m := _DISPLAY_MATRIX.search(line)):
            streams[-1].rotation = float(m[1])
        elif streams and (m := _ROTATE_TAG.match(line)):
            streams[-1].rotation = -float(m[1])  # the old tag counted clockwise
    return streams


def _split_top_level(desc: str) -> list[str]:
    """Split a stream description at commas that are not inside brackets.

    "yuv420p(tv, bt709, progressive)" is one field; a plain split would make it three.
    """
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(desc):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(desc[start:i].strip())
            start = i + 1
    parts.append(desc[start:].strip())
    # "12800 tbn (default)": drop the trailing disposition flags
    return [re.sub(r"(\s*\([a-z ]+\))+$", "", p) for p in parts]


_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}


def _channel_count(layout: str) -> int | None:
    """1 for "mono", 6 for "5.1(side)", 8 for "8 channels"; None when unknown."""
    layout = re.sub(r"\(.*\)$", "", layout.strip())
    if m := re.fullmatch(r"(\d+) channels", layout):
        return int(m[1])
    if m := re.fullmatch(r"\d+(?:\.\d+)+", layout):
        return sum(int(n) for n in layout.split("."))  # "5.1" -> 6, "7.1.4" -> 12
    return _LAYOUTS.get(layout)


def _measure_duration(path: Path, fps: float) -> float:
    """Duration of the video stream found by reading its packets (no decoding).

    The last packet's time where packets have timestamps, else (raw H.264)
    the packet count at `fps`.
    """
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-nostats",
        "-i",
        ffmpeg_input(path),
    ]
    cmd += ["-map", "0:V:0", "-c", "copy", "-f", "null", "-progress", "pipe:1", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    times = re.findall(rb"out_time_us=(\d+)", proc.stdout)
    frames = re.findall(rb"frame=(\d+)", proc.stdout)
    if proc.returncode == 0 and times:
        return int(times[-1]) / 1e6
    if proc.returncode == 0 and frames and int(frames[-1]) > 0:
        return int(frames[-1]) / fps
    detail = _last_line(proc.stderr.decode(errors="replace"), proc.returncode)
    raise MediaError(f"{path}: declares no duration and reading it failed ({detail})")


# --------------------------------------------------------------------------
# the 25 fps mezzanine

# Messages of ffmpeg's demuxers when a file ends inside a packet: the file was
# cut off. ffmpeg still exits 0 having converted what it could.
_TRUNCATED = ("partial file", "Packet corrupt", "corrupt input packet")


def transcode_to_cfr(
    src: str | Path,
    dst: str | Path,
    fps: int = FPS,
    crf: int = 12,
    preset: str = "veryfast",
    *,
    duration: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> VideoInfo:
    """Re-encode `src`'s video as an upright, square-pixel H.264 file at exactly `fps`.

    The mezzanine is what every later stage reads, so it must mean the same
    thing to every reader: frame i shows time i / fps from the start of the
    file (the fps filter duplicates or drops frames of a variable-rate source;
    start_time=0 repeats the first frame if the video starts late, so audio
    and frames stay aligned), the rotation metadata is applied to the pixels
    and none is left behind, odd sizes lose their last row or column (libx264
    4:2:0 needs even sizes) and anamorphic pixels are stretched square. A
    keyframe every second lets a reader start anywhere after decoding at most a
    second (renders play the footage backwards a second at a time), and it is
    encoded for fast decoding, since every render decodes it. CRF 12 is
    visually lossless; the file is an intermediate, not a deliverable. No
    audio: the pipeline takes sound from the source (see `write_wav16k`).

    `duration` limits the output to its first seconds. `progress`, if given,
    is called with the seconds of output written so far, about twice a second.

    Written atomically (`atomic_path`: a temporary file in dst's folder, then
    a rename), so dst is either complete or absent. Raises MediaError naming
    `src` if it is unreadable or turns out to be truncated. Returns dst's VideoInfo.
    """
    src, dst = Path(src), Path(dst)
    info = probe_video(src)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the mezzanine cannot overwrite its source")

    width, height = info.width, info.height
    filters = [f"fps={fps}:start_time=0"]
    if abs(info.pixel_aspect - 1) > 1e-3:
        # Stretch the short side of the pixels, so no resolution is lost.
        if info.pixel_aspect > 1:
            width = round(width * info.pixel_aspect)
        else:
            height = round(height / info.pixel_aspect)
        width, height = _even(width), _even(height)
        filters.append(f"scale={width}:{height}:flags=lanczos")
    elif width % 2 or height % 2:
        width, height = _even(width), _even(height)
        filters.append(f"crop={width}:{height}:0:0")  # drop a pixel rather than resample
    filters += ["setsar=1", "format=yuv420p"]

    expected_s = info.duration if duration is None else min(info.duration, duration)
    log.info(
        "transcoding %s (%dx%d at %.2f fps, rotation %d, %.1f s) to %dx%d at %d fps: %s",
        *(src, info.width, info.height, info.fps, info.rotation, expected_s),
        *(width, height, fps, dst),
    )
    started = time.monotonic()

    container = {".mov": "mov", ".mkv": "matroska"}.get(dst.suffix.lower(), "mp4")
    with atomic_path(dst) as tmp:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "warning", "-nostats", "-y"]
        cmd += ["-i", ffmpeg_input(src), "-map", "0:V:0", "-an", "-sn", "-dn"]
        cmd += ["-map_metadata", "-1", "-map_chapters", "-1", "-vf", ",".join(filters)]
        cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p"]
        # A keyframe every second exactly (none at scene cuts, which would shift
        # the next ones): renders play the footage backwards a second at a time.
        # fastdecode (no CABAC, no deblocking) makes every render's decode of
        # the footage cheaper; at this CRF it costs a few % of size, no quality.
        cmd += ["-g", str(fps), "-sc_threshold", "0", "-tune", "fastdecode"]
        if duration is not None:
            cmd += ["-t", f"{duration:.3f}"]
        cmd += ["-progress", "pipe:1", "-f", container, ffmpeg_input(tmp)]
        returncode, stderr = _run_with_progress(cmd, progress)
        if returncode != 0:
            raise MediaError(f"{src}: cannot transcode ({_last_line(stderr, returncode)})")
        _check_not_truncated(src, stderr)
        out = dataclasses.replace(probe_video(tmp), path=dst)
        if out.rotation != 0:  # autorotation should have consumed it
            raise MediaError(f"{src}: the mezzanine still carries a rotation of {out.rotation}")
        if out.duration < expected_s * 0.9 - 0.2:
            raise MediaError(
                f"{src}: truncated, or its video track is much shorter than the file: "
                f"it declares {expected_s:.2f} s but only {out.duration:.2f} s of video "
                "could be decoded"
            )
    elapsed = time.monotonic() - started
    log.info(
        "wrote %s: %d frames of %dx%d in %.1f s (%.1fx real time)",
        *(dst, out.n_frames_at(fps), out.width, out.height, elapsed),
        out.duration / max(elapsed, 1e-6),
    )
    return out


def _even(n: int) -> int:
    return max(2, n - n % 2)


def _run_with_progress(cmd: list[str], progress: Callable[[float], None] | None) -> tuple[int, str]:
    """Run ffmpeg with `-progress pipe:1` on its stdout; return (exit status, stderr text).

    stderr goes to a temporary file rather than a pipe: ffmpeg could fill a
    pipe nobody reads while this reads stdout, and both would wait forever.
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                if progress is not None and raw.startswith(b"out_time_us="):
                    value = raw.split(b"=", 1)[1].strip()
                    if value.isdigit():
                        progress(int(value) / 1e6)
            returncode = proc.wait()
        finally:
            _stop(proc)
        err.seek(0)
        return returncode, err.read().decode(errors="replace")


def _check_not_truncated(src: Path, stderr: str) -> None:
    for line in stderr.splitlines():
        if any(marker in line for marker in _TRUNCATED):
            raise MediaError(f"{src}: truncated or corrupt ({line.split('] ')[-1].strip()})")


def _last_line(stderr: str, returncode: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"ffmpeg exited with status {returncode}"


def _stop(proc: subprocess.Popen) -> None:
    """Kill `proc` if it still runs and reap it, so no zombie is left."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# --------------------------------------------------------------------------
# frames


def iter_frames(
    path: str | Path,
    width: int | None = None,
    height: int | None = None,
    *,
    start: int = 0,
    count: int | None = None,
    threads: int = 0,
    info: VideoInfo | None = None,
    into: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Yield `path`'s frames in order as BGR uint8 arrays [H, W, 3], as cv2 would.

    Every decoded frame is yielded exactly once, at the file's own rate
    (``-fps_mode passthrough``: ffmpeg's default for raw output would
    duplicate frames of a 22 fps clip up to its 30 fps time base). Read a
    mezzanine from `transcode_to_cfr` to get 25 fps. Rotation metadata is
    applied. With `width` and/or `height` frames are resized (the missing one
    keeps the aspect ratio). `start` and `count` decode frames start ..
    start + count - 1 of a constant-rate file (a mezzanine) only: ffmpeg
    seeks to the keyframe before `start` and decodes from there. `threads`
    caps the decoder's threads (0: ffmpeg's choice, as many as cores). `info`,
    the file's VideoInfo if the caller has it, saves probing the file again.
    `into`, a uint8 [count, H, W, 3] array, receives the frames, which are
    yielded as views of it (otherwise each frame is a new array).

    Frames stream through a pipe one at a time, so memory stays at one frame
    whatever the length. Stopping early (break, or dropping the generator)
    kills ffmpeg. Raises MediaError naming the path if ffmpeg fails or the
    file turns out to be truncated, after the frames it could decode.
    """
    path = Path(path)
    info = info or probe_video(path)
    out_w, out_h = _output_size(info, width, height)
    if into is not None and (count is None or into.shape[0] < count):
        raise ValueError(f"`into` holds {into.shape[0]} frames; `count` must be at most that")
    filters = ["format=bgr24"]
    if (out_w, out_h) != (info.width, info.height):
        filters.insert(0, f"scale={out_w}:{out_h}:flags=bicubic")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "warning", "-nostats"]
    if start > 0:
        # Frame `start`'s own time: the demuxer starts at the keyframe at or
        # before it (a seek any earlier would start a whole keyframe interval
        # earlier when `start` is a keyframe), and decoding drops the frames
        # before it. At 25 fps every frame's time is a whole microsecond.
        cmd += ["-ss", f"{start / info.fps:.6f}"]
    if threads:
        cmd += ["-threads", str(threads)]
    cmd += [
        "-i",
        ffmpeg_input(path),
        "-map",
        "0:V:0",
        "-an",
        "-sn",
        "-dn",
        "-fps_mode",
        "passthrough",
    ]
    if count is not None:
        cmd += ["-frames:v", str(count)]
    cmd += ["-vf", ",".join(filters), "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
    frame_bytes = out_w * out_h * 3

    with tempfile.TemporaryFile() as err:  # a file, not a pipe: see _run_with_progress
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        widen_pipe(proc.stdout.fileno())
        n = 0
        try:
            while n != count:  # ffmpeg stops after `count` frames itself (-frames:v)
                frame = np.empty((out_h, out_w, 3), np.uint8) if into is None else into[n]
                got = _read_into(proc.stdout, memoryview(frame).cast("B"))
                if got == 0:
                    break
                if got < frame_bytes:
                    proc.wait()
                    err.seek(0)
                    detail = _last_line(err.read().decode(errors="replace"), proc.returncode)
                    raise MediaError(f"{path}: decoding stopped inside a frame ({detail})")
                yield frame
                n += 1
            returncode = proc.wait()
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            if returncode != 0:
                raise MediaError(f"{path}: cannot decode video ({_last_line(stderr, returncode)})")
            _check_not_truncated(path, stderr)
        finally:
            _stop(proc)


def _output_size(info: VideoInfo, width: int | None, height: int | None) -> tuple[int, int]:
    if (width is not None and width <= 0) or (height is not None and height <= 0):
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if width is None and height is None:
        return info.width, info.height
    if width is None:
        width = max(1, round(height * info.width / info.height))
    elif height is None:
        height = max(1, round(width * info.height / info.width))
    return width, height


def _read_into(stream, buf: memoryview) -> int:
    """Fill `buf` from `stream`; return the bytes read (less than its size only at the end)."""
    done = 0
    while done < len(buf):
        n = stream.readinto(buf[done:])
        if not n:
            break
        done += n
    return done


# --------------------------------------------------------------------------
# the audio track


def write_wav16k(src: str | Path, dst: str | Path) -> int:
    """Write `src`'s audio as a 16 kHz mono 16-bit PCM WAV; return its number of samples.

    Decoding goes through `load_audio`, so the samples are exactly those the
    feature extractors see when given the source itself. Written atomically.
    Raises AudioError (a MediaError) naming `src` when it has no usable audio.
    """
    dst = Path(dst)
    wav = load_audio(src)
    pcm = np.clip(np.round(wav * 32767.0), -32768, 32767).astype(np.int16)
    with atomic_path(dst) as tmp:
        wavfile.write(tmp, SAMPLE_RATE, pcm)
    log.info("wrote %s: %.2f s of 16 kHz mono audio from %s", dst, len(pcm) / SAMPLE_RATE, src)
    return len(pcm)
