"""A long 1080p avatar: what its render cache costs, and how fast it renders.

    python benchmarks/long_avatar.py                        # 5 minutes of presenter_1080p_7s
    python benchmarks/long_avatar.py --minutes 1 --audio-s 20

The clip is looped with ffmpeg's -stream_loop into a `--minutes` long avatar,
prepared (extract, landmarks; timed), and its render cache built; then
`--audio-s` seconds of speech are rendered at 328 (onnxruntime fp32, an
untrained full-width Whisper U-Net) in a fresh process, as in
benchmarks/render.py. The render cache used to hold every decoded frame
(6.2 MB per 1080p frame: ~46 GB for 5 minutes).

Targets (issue 16): render cache <= 1.5 GB on disk, built in <= 2 minutes;
render frames/s at 328 no lower than before on the same footage
(benchmarks/render.py --video ../shared/data/videos/presenter_1080p_7s.mp4
--presets 328 --precision fp32 before and after the change).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render as bench  # noqa: E402  (benchmarks/render.py: U-Net, ONNX export, render child)

TARGET_CACHE_GB = 1.5
TARGET_BUILD_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video", type=Path, default=bench.SHARED / "videos" / "presenter_1080p_7s.mp4"
    )
    parser.add_argument(
        "--audio", type=Path, default=bench.SHARED / "audio" / "commentary_en_60s.wav"
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--audio-s", type=float, default=60.0, help="seconds of audio rendered")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from synctalk.config import ExtractParams, LandmarkParams, resolution
    from synctalk.face.prepare import prepare_landmarks
    from synctalk.media.extract import extract_avatar
    from synctalk.media.ffmpeg import ffmpeg_input, run_ffmpeg
    from synctalk.paths import AvatarPaths
    from synctalk.render.avatar import prepare_render_avatar

    geometry = resolution("328")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "long.mp4"
        loop = ["-stream_loop", "-1", "-i", ffmpeg_input(args.video), "-t", f"{args.minutes * 60}"]
        run_ffmpeg(["-y", *loop, "-c", "copy", str(source)], source=source)
        paths = AvatarPaths("bench", root)
        started = time.perf_counter()
        extracted = extract_avatar(source, paths, ExtractParams())
        extract_s = time.perf_counter() - started
        started = time.perf_counter()
        prepare_landmarks(
            paths.video,
            extracted.frames,
            paths.landmarks,
            paths.crops,
            geometry.crop_size,
            LandmarkParams(),
        )
        landmarks_s = time.perf_counter() - started
        n = extracted.frames
        info = extracted.source
        print(
            f"avatar: {args.video.name} looped to {args.minutes:g} min, "
            f"{info.width}x{info.height}, "
            f"{n} frames; extract {extract_s:.0f} s, landmarks {landmarks_s:.0f} s "
            f"(mezzanine {paths.video.stat().st_size / 1e9:.2f} GB)"
        )
        started = time.perf_counter()
        avatar = prepare_render_avatar(paths, geometry, root / "cache")
        build_s = time.perf_counter() - started
        cache_bytes = sum(p.stat().st_size for p in avatar.cache_dir.iterdir())
        cache_gb = cache_bytes / 1e9
        print(
            f"render cache: {cache_bytes / 1e3:.1f} kB on disk (target <= {TARGET_CACHE_GB} GB; "
            f"decoded frames would be {n * info.width * info.height * 3 / 1e9:.1f} GB): "
            f"{'PASS' if cache_gb <= TARGET_CACHE_GB else 'FAIL'}"
        )
        print(
            f"built in {build_s:.1f} s (target <= {TARGET_BUILD_S:.0f} s): "
            f"{'PASS' if build_s <= TARGET_BUILD_S else 'FAIL'}"
        )

        audio = root / "audio.wav"
        run_ffmpeg(
            ["-y", "-i", ffmpeg_input(args.audio), "-t", f"{args.audio_s}", str(audio)], audio
        )
        job = {
            "root": str(root),
            "preset": "328",
            "mobile": False,
            "runtime": "auto",
            "threads": 0,
            "spinning": False,
            "audio": str(audio),
            "unet_runs": 20,
            "unet": "",
            "precisions": ["fp32"],
            "audio_mode": "whisper",
            "precision": "fp32",
        }
        bench.run_job(job, bench.export_child)
        r = bench.run_job(job)
        bench.report(r, 2)


if __name__ == "__main__":
    main()
