"""A render's peak memory against the length of its audio.

    python benchmarks/audio_memory.py                       # 1 and 60 minutes at 328
    python benchmarks/audio_memory.py --minutes 1 10 60 --preset 160

For each length, the audio (`--audio`, looped with ffmpeg's -stream_loop) is
rendered in a fresh process exactly as `synctalk render` does (onnxruntime,
fp32, an untrained U-Net of `--audio-mode`), and that process's peak resident memory
(VmHWM) is read from /proc. Audio and its features stream through the render
and every queue of the frame loop is bounded, so what could grow with the
audio's length is all allocated before the frame loop starts; the render is
stopped `--frames-s` seconds into its frame loop (an hour of audio is 90,000
frames, about two hours of rendering at 328 on two cores), for every length
alike.

Targets (issue 16): 60 minutes at 328 <= 1.5 GB peak; 1 vs 60 minutes
differ by < 150 MB.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render as bench  # noqa: E402  (benchmarks/render.py: avatar, U-Net, ONNX export)

TARGET_PEAK_MB = 1536
TARGET_GROWTH_MB = 150


class _FrameLoopStarted(logging.Handler):
    """Sets `event` when render_video logs the start of its frame loop."""

    def __init__(self, event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("rendering "):
            self.event.set()


def render_child(job: dict, started) -> None:
    from synctalk.config import RenderParams, resolution
    from synctalk.features.frontend import load_front_end
    from synctalk.hashing import file_sha256
    from synctalk.models.checkpoint import load_unet
    from synctalk.paths import AvatarPaths
    from synctalk.render.avatar import prepare_render_avatar
    from synctalk.render.engine import load_runtime, render_video

    engine_log = logging.getLogger("synctalk.render.engine")
    engine_log.setLevel(logging.INFO)
    engine_log.addHandler(_FrameLoopStarted(started))
    root = Path(job["root"])
    avatar = prepare_render_avatar(
        AvatarPaths("bench", root), resolution(job["preset"]), root / "cache"
    )
    unet = load_unet(bench.checkpoint(job)).eval()
    params = RenderParams()
    model = load_runtime(unet, params, "cpu", root / "onnx", file_sha256(bench.checkpoint(job)))
    front_end = load_front_end(bench.front_end_file(job))
    render_video(avatar, model, front_end, job["audio"], root / "out.mp4", params, "cpu")


def peak_of(pid: int) -> int:
    """VmHWM of process `pid` in KiB (0 once it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")), 0)


def measure(job: dict, frames_s: float) -> dict:
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=render_child, args=(job, started))
    t0 = time.perf_counter()
    proc.start()
    peak_kb, loop_at = 0, None
    while proc.is_alive():
        peak_kb = max(peak_kb, peak_of(proc.pid))
        if loop_at is None and started.is_set():
            loop_at = time.perf_counter()
        if loop_at is not None and time.perf_counter() - loop_at > frames_s:
            proc.terminate()
            break
        time.sleep(0.1)
    proc.join()
    if loop_at is None:
        raise SystemExit(f"the render of {job['audio']} failed before its frame loop")
    return {"peak_mb": peak_kb / 1024, "audio_s": loop_at - t0, "finished": proc.exitcode == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=bench.SHARED / "videos" / "may_5s.mp4")
    parser.add_argument(
        "--audio", type=Path, default=bench.SHARED / "audio" / "commentary_en_60s.wav"
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 60.0])
    parser.add_argument("--preset", default="328", choices=["160", "328"])
    parser.add_argument("--audio-mode", default="whisper", choices=["whisper", "ave"])
    parser.add_argument("--frames-s", type=float, default=60.0, help="seconds of frame loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from synctalk.config import resolution

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench.prepare(args.video, root, resolution(args.preset).crop_size)
        job = {
            "root": str(root),
            "preset": args.preset,
            "mobile": False,
            "runtime": "auto",
            "unet": "",
            "precisions": ["fp32"],
            "audio_mode": args.audio_mode,
        }
        bench.run_job(job, bench.export_child)  # the U-Net and its ONNX export, cached
        figures = {}
        for minutes in args.minutes:
            audio = bench.long_audio(args.audio, minutes, root / f"audio-{minutes:g}min.wav")
            figures[minutes] = r = measure({**job, "audio": str(audio)}, args.frames_s)
            print(
                f"{minutes:g} min of audio at {args.preset}: peak RSS {r['peak_mb']:.0f} MB "
                f"(audio and features {r['audio_s']:.0f} s, then "
                + ("the whole render)" if r["finished"] else f"{args.frames_s:g} s of frames)")
            )
            audio.unlink()
    longest, shortest = figures[max(figures)], figures[min(figures)]
    growth = longest["peak_mb"] - shortest["peak_mb"]
    ok_peak = longest["peak_mb"] <= TARGET_PEAK_MB
    ok_growth = growth < TARGET_GROWTH_MB
    print(
        f"peak at {max(figures):g} min: {longest['peak_mb']:.0f} MB (target <= {TARGET_PEAK_MB}): "
        f"{'PASS' if ok_peak else 'FAIL'}"
    )
    print(
        f"{min(figures):g} vs {max(figures):g} min: {growth:+.0f} MB (target < "
        f"{TARGET_GROWTH_MB}): {'PASS' if ok_growth else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
