"""Render speed end to end (audio file -> mp4 on disk) and memory on long audio.

    python benchmarks/render.py                       # 160 and 328 presets, fp32 and int8
    python benchmarks/render.py --mobile              # the half-width U-Nets
    python benchmarks/render.py --threads 1           # onnxruntime intra-op threads
    python benchmarks/render.py --precision fp32      # fp32 only (render.precision)
    python benchmarks/render.py --unet data/models/bob/unet.pth --presets 160  # a trained U-Net
    python benchmarks/render.py --long-audio-minutes 10 --presets 160

Each render runs in a fresh process (spawned), so its peak memory is its own:
peak RSS of the render process and, separately, of its children (ffmpeg).
Untrained weights by default: speed does not depend on them, but the
int8-vs-fp32 PSNR does, and an untrained U-Net's says nothing of a trained
one's (its output is nearly flat: ~60 dB); `--unet` measures a trained
checkpoint (any audio mode; its preset must be the one given).
Alongside the end-to-end figure it prints the U-Net alone in onnxruntime
(ms/frame, same session settings) and the CPU time per frame of the whole
render, which says how fast it would go on 2 otherwise idle cores (this
machine is often shared).

fp32 and int8 (render.precision) are rendered alternately in the same run,
`--repeat` times each, so both see the same load; the best of each is shown,
side by side, with the load average during each render.

Targets on the 2-core CI CPU: 328 preset >= 12 frames/s end to end in fp32,
>= 25 in int8; 160 preset >= 25 frames/s in fp32, >= 50 in int8 (the
original SyncTalk_2D loop: 3.0 frames/s); int8 vs fp32 U-Net output >= 38 dB
PSNR; peak memory < 2 GB for 10 minutes of audio.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data"


def prepare(video: Path, root: Path, crop_size: int) -> None:
    """extract + landmarks (+ an AVE encoder) for avatar `bench` under `root`."""
    import torch

    from synctalk.config import ExtractParams, LandmarkParams
    from synctalk.face.prepare import prepare_landmarks
    from synctalk.features.ave import save_encoder
    from synctalk.media.extract import extract_avatar
    from synctalk.models import AudioEncoder
    from synctalk.paths import AvatarPaths

    paths = AvatarPaths("bench", root)
    result = extract_avatar(video, paths, ExtractParams())
    prepare_landmarks(
        paths.video, result.frames, paths.landmarks, paths.crops, crop_size, LandmarkParams()
    )
    torch.manual_seed(0)
    save_encoder(AudioEncoder(), paths.audio_encoder)


def checkpoint(job: dict) -> Path:
    return Path(job["root"]) / f"unet-{job['preset']}.pth"


def front_end_file(job: dict) -> Path:
    """The audio front-end the U-Net's audio mode needs (the avatar's AVE encoder, or Whisper)."""
    return Path(job["root"]) / f"audio-encoder-{job['preset']}.pth"


def make_unet(job: dict) -> None:
    """The U-Net the renders use, saved as a checkpoint: `--unet`'s, or untrained (seeded)."""
    import shutil

    import torch

    from synctalk.features.frontend import save_whisper_encoder
    from synctalk.models import build_unet
    from synctalk.models.checkpoint import load_unet, save_model
    from synctalk.paths import AvatarPaths

    if job["unet"]:
        unet = load_unet(job["unet"])
        if unet.spec.resolution != job["preset"]:
            raise SystemExit(f"{job['unet']}: a {unet.spec.resolution} U-Net, not {job['preset']}")
    else:
        torch.manual_seed(0)
        audio_mode = job.get("audio_mode", "ave")
        unet = build_unet(job["preset"], audio_mode=audio_mode, mobile=job["mobile"])
    save_model(unet.eval(), checkpoint(job))
    if unet.spec.audio_mode == "whisper":
        save_whisper_encoder(front_end_file(job))
    else:
        shutil.copy(AvatarPaths("bench", Path(job["root"])).audio_encoder, front_end_file(job))


def render_child(job: dict, results: mp.Queue) -> None:
    """One render in this (fresh) process; puts a dict of figures on `results`."""
    if job["threads"]:
        os.environ["SYNCTALK_ORT_THREADS"] = str(job["threads"])
    if job["spinning"]:
        os.environ["SYNCTALK_ORT_SPINNING"] = "1"
    import numpy as np

    from synctalk.config import RenderParams, resolution
    from synctalk.features.frontend import load_front_end
    from synctalk.hashing import file_sha256
    from synctalk.models.checkpoint import load_unet
    from synctalk.paths import AvatarPaths
    from synctalk.render.avatar import prepare_render_avatar
    from synctalk.render.engine import load_runtime, render_video
    from synctalk.render.onnx import OnnxUNet

    logging.basicConfig(level=logging.WARNING)
    root = Path(job["root"])
    paths = AvatarPaths("bench", root)
    geometry = resolution(job["preset"])
    started = time.perf_counter()
    avatar = prepare_render_avatar(paths, geometry, root / "cache")
    cache_s = time.perf_counter() - started

    unet = load_unet(checkpoint(job)).eval()
    # A bar of 0: int8 is measured whatever its PSNR (export_child prints the PSNR).
    params = RenderParams(runtime=job["runtime"], precision=job["precision"], int8_min_psnr=0.0)
    # The ONNX files (int8 too) were made by export_child; nothing is exported here.
    model = load_runtime(unet, params, "cpu", root / "onnx", file_sha256(checkpoint(job)))
    front_end = load_front_end(front_end_file(job))

    unet_ms = unet_cpu_ms = float("nan")
    if isinstance(model, OnnxUNet):
        s = geometry.size
        image = np.random.rand(1, 6, s, s).astype(np.float32)
        audio = np.random.rand(1, *unet.spec.audio_shape).astype(np.float32)
        for _ in range(3):
            model(image, audio)
        times, cpu0 = [], time.process_time()
        for _ in range(job["unet_runs"]):
            t = time.perf_counter()
            model(image, audio)
            times.append(time.perf_counter() - t)
        unet_cpu_ms = (time.process_time() - cpu0) / job["unet_runs"] * 1e3
        unet_ms = float(np.median(times)) * 1e3

    # librosa imports its spectrum code (and numba) lazily on the first mel
    # spectrogram, ~1-2 s once per process: a batch worker pays it once, so it
    # is measured apart rather than charged to this one file.
    from synctalk.media.audio import melspectrogram

    started = time.perf_counter()
    melspectrogram(np.zeros(16000, dtype=np.float32))
    warmup_s = time.perf_counter() - started

    self0, kids0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    out = root / f"out-{job['preset']}.mp4"
    watch = _ChildPeak()
    load0 = os.getloadavg()[0]
    try:
        result = render_video(avatar, model, front_end, job["audio"], out, params, "cpu")
    finally:
        watch.stop()
    self_cpu = _cpu(resource.RUSAGE_SELF) - self0
    kids_cpu = _cpu(resource.RUSAGE_CHILDREN) - kids0
    results.put(
        {
            "preset": job["preset"],
            "precision": job["precision"],
            "load": (load0, os.getloadavg()[0]),
            "frames": result.frames,
            "seconds": result.seconds,
            "fps": result.frames_per_s,
            "stages": result.stage_seconds,
            "runtime": result.runtime,
            "cache_s": cache_s,
            "warmup_s": warmup_s,
            "unet_ms": unet_ms,
            "unet_cpu_ms": unet_cpu_ms,
            "self_cpu_ms": self_cpu / result.frames * 1e3,
            "ffmpeg_cpu_ms": kids_cpu / result.frames * 1e3,
            # ru_maxrss is in KiB on Linux
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # ru_maxrss of a child counts what it shared with this process between fork
            # and exec, so it reads as this process's size at the time; ffmpeg's own
            # peak is watched in /proc (VmHWM) as well.
            "peak_children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "ffmpeg_hwm_mb": watch.peak_kb / 1024,
            "mp4_mb": out.stat().st_size / 1e6,
        }
    )


class _ChildPeak:
    """Polls the peak resident memory (VmHWM) of this process's children (ffmpeg)."""

    def __init__(self, interval: float = 0.5):
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        me = str(os.getpid())
        while not self._stop.wait(interval):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                        continue
                    status = (stat.parent / "status").read_text()
                except (OSError, IndexError):
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def export_child(job: dict, results: mp.Queue) -> None:
    """Make the U-Net, export it to ONNX (cached in root/onnx) and, for int8, quantize it
    as a render would (calibrated on the avatar), in its own process; put the figures."""
    from synctalk.config import RenderParams
    from synctalk.features.frontend import load_front_end
    from synctalk.hashing import file_sha256
    from synctalk.models.checkpoint import load_unet
    from synctalk.paths import AvatarPaths
    from synctalk.render.avatar import prepare_render_avatar
    from synctalk.render.engine import load_runtime
    from synctalk.render.onnx import OnnxUNet
    from synctalk.render.quantize import PSNR_KEY, avatar_calibration, int8_path

    logging.basicConfig(level=logging.WARNING)
    root = Path(job["root"])
    make_unet(job)
    unet = load_unet(checkpoint(job)).eval()
    sha = file_sha256(checkpoint(job))
    started = time.perf_counter()
    fp32 = load_runtime(unet, RenderParams(runtime=job["runtime"]), "cpu", root / "onnx", sha)
    figures = {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if "int8" in job["precisions"]:
        paths = AvatarPaths("bench", root)
        avatar = prepare_render_avatar(paths, unet.spec.geometry, root / "cache")
        front_end = load_front_end(front_end_file(job))

        def calibration():
            return avatar_calibration(avatar, paths.audio, front_end, unet.spec)

        started = time.perf_counter()
        # A bar of 0: no fallback warning here; the PSNR is printed below.
        params = RenderParams(runtime=job["runtime"], precision="int8", int8_min_psnr=0.0)
        load_runtime(unet, params, "cpu", root / "onnx", sha, calibration=calibration)
        int8 = OnnxUNet(int8_path(fp32.path))
        figures.update(
            int8_seconds=time.perf_counter() - started,
            int8_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            psnr=float(int8.metadata[PSNR_KEY]),
        )
    results.put(figures)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_job(job: dict, target=render_child) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=target, args=(job, results))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"render of preset {job['preset']} failed (exit {proc.exitcode})")
    return results.get()


def long_audio(src: Path, minutes: float, out: Path) -> Path:
    from synctalk.media.ffmpeg import ffmpeg_exe, ffmpeg_input

    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", ffmpeg_input(src)]
    cmd += ["-t", f"{minutes * 60:.3f}", "-c:a", "pcm_s16le", ffmpeg_input(out)]
    subprocess.run(cmd, check=True)
    return out


def report(r: dict, cores: int) -> None:
    st = r["stages"]
    total_cpu = r["self_cpu_ms"] + r["ffmpeg_cpu_ms"]
    print(
        f"preset {r['preset']} {r['precision']}: {r['fps']:6.1f} frames/s end to end "
        f"({r['frames']} frames in {r['seconds']:.1f} s, {r['runtime']}, load average "
        f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}); "
        f"U-Net alone {r['unet_ms']:.1f} ms/frame ({r['unet_cpu_ms']:.0f} ms CPU)"
    )
    print(
        f"    CPU per frame: {total_cpu:.1f} ms (python+onnxruntime {r['self_cpu_ms']:.1f}, "
        f"ffmpeg {r['ffmpeg_cpu_ms']:.1f}) -> at most {cores * 1000 / total_cpu:.1f} frames/s "
        f"on {cores} idle cores"
    )
    per = {k: v / r["frames"] * 1e3 for k, v in st.items()}
    print(
        f"    wall per frame: audio+AVE {per['audio']:.1f} ms, prepare {per['prepare']:.1f}, "
        f"infer {per['infer']:.1f}, composite {per['composite']:.1f}, "
        f"write {per['write']:.1f}; render cache {r['cache_s']:.1f} s; mp4 {r['mp4_mb']:.1f} MB"
    )
    print(
        f"    not included: first mel spectrogram of the process (librosa's lazy imports) "
        f"{r['warmup_s']:.1f} s, ONNX export (above)"
    )
    print(
        f"    peak RSS: render process {r['peak_rss_mb']:.0f} MB; children: RUSAGE_CHILDREN "
        f"{r['peak_children_rss_mb']:.0f} MB (inflated by fork, see render_child), "
        f"ffmpeg's own VmHWM {r['ffmpeg_hwm_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=SHARED / "videos" / "may_5s.mp4")
    parser.add_argument("--audio", type=Path, default=SHARED / "audio" / "macron_fr_12s.wav")
    parser.add_argument("--presets", nargs="+", default=["160", "328"], choices=["160", "328"])
    parser.add_argument("--mobile", action="store_true", help="half-width U-Nets")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"])
    parser.add_argument(
        "--precision",
        default="both",
        choices=["both", "fp32", "int8"],
        help="render.precision to render with; both: fp32 and int8 alternately",
    )
    parser.add_argument("--unet", type=Path, help="a trained U-Net checkpoint (one preset)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: auto)")
    parser.add_argument(
        "--spinning", action="store_true", help="let onnxruntime's idle threads busy-wait"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="renders per preset and precision; best shown"
    )
    parser.add_argument("--unet-runs", type=int, default=20)
    parser.add_argument("--long-audio-minutes", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.unet and len(args.presets) != 1:
        parser.error("--unet is one preset's U-Net: give its --presets")
    precisions = ["fp32", "int8"] if args.precision == "both" else [args.precision]
    if args.runtime == "torch":
        precisions = ["fp32"]  # int8 is onnxruntime's

    from synctalk.config import resolution

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crop_size = max(resolution(p).crop_size for p in args.presets)
        prepare(args.video, root, crop_size)  # the other preset's crops are cut from frames
        audio = args.audio
        if args.long_audio_minutes:
            audio = long_audio(args.audio, args.long_audio_minutes, root / "long.wav")
        print(
            f"avatar {args.video.name}, audio {args.audio.name}"
            + (f" looped to {args.long_audio_minutes:g} min" if args.long_audio_minutes else "")
            + f", {'mobile' if args.mobile else 'full-width'} U-Nets, {cores} cores, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        summary = []
        for preset in args.presets:
            job = {
                "root": str(root),
                "preset": preset,
                "mobile": args.mobile,
                "runtime": args.runtime,
                "threads": args.threads,
                "spinning": args.spinning,
                "audio": str(audio),
                "unet_runs": args.unet_runs,
                "unet": str(args.unet) if args.unet else "",
                "precisions": precisions,
            }
            # Export first, in its own process: the renders then measure the steady state of
            # a nightly batch (ONNX files cached), and the exporter's memory is reported apart.
            export = run_job(job, export_child)
            print(
                f"preset {preset}: ONNX export {export['seconds']:.1f} s, "
                f"peak RSS of that process {export['peak_rss_mb']:.0f} MB"
            )
            if "psnr" in export:
                print(
                    f"preset {preset}: int8 quantization {export['int8_seconds']:.1f} s "
                    f"(peak RSS {export['int8_peak_rss_mb']:.0f} MB); int8 vs fp32 U-Net output "
                    f"on held-out frames of the avatar: PSNR {export['psnr']:.1f} dB"
                    + ("" if args.unet else " (untrained weights: see --unet)")
                )
            # Alternately, so that both precisions see the same load.
            runs = {precision: [] for precision in precisions}
            for _ in range(args.repeat):
                for precision in precisions:
                    runs[precision].append(run_job({**job, "precision": precision}))
            best = {k: max(v, key=lambda r: r["fps"]) for k, v in runs.items()}
            for r in best.values():
                report(r, cores)
            summary.append((preset, best, export.get("psnr")))
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        for preset, best, psnr in summary:
            line = ", ".join(
                f"{k} {r['fps']:.1f} frames/s (U-Net {r['unet_ms']:.1f} ms)"
                for k, r in best.items()
            )
            if len(best) == 2:
                line += f"; int8/fp32 x{best['int8']['fps'] / best['fp32']['fps']:.2f}"
            if psnr is not None:
                line += f"; PSNR int8 vs fp32 {psnr:.1f} dB"
            print(f"summary {preset}: {line}")


if __name__ == "__main__":
    main()
