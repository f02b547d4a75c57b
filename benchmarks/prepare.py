"""Preparation speed: extract and landmarks, frames per second.

    python benchmarks/prepare.py [--video ../shared/data/videos/lieu_address_45s.mp4]
    python benchmarks/prepare.py --backend onnx --onnx-dir ../shared/models
    python benchmarks/prepare.py --4k     # a 1080p clip upscaled to 3840x2160, against itself

Target on the 2-core CI CPU: landmarks >= 25 frames/s (the whole stage:
decode, face mesh, smoothing and writing the training crops). With --4k
(presenter_1080p_7s by default): extract + landmarks of the 4K copy >= 5
frames/s, and its crop boxes within 2% of the side of the 1080p clip's
(scaled by 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synctalk.config import ExtractParams, LandmarkParams, resolution  # noqa: E402
from synctalk.face.prepare import prepare_landmarks  # noqa: E402
from synctalk.media.extract import extract_avatar  # noqa: E402
from synctalk.paths import AvatarPaths  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = REPO.parent / "shared" / "data" / "videos" / "lieu_address_45s.mp4"
    parser.add_argument("--video", type=Path, default=default)
    parser.add_argument("--backend", default="mediapipe", choices=["mediapipe", "onnx"])
    parser.add_argument("--onnx-dir", type=Path, default=REPO / "models" / "face")
    parser.add_argument("--preset", default="328", choices=["160", "328"])
    parser.add_argument("--4k", dest="uhd", action="store_true", help="see the docstring")
    parser.add_argument(
        "--detection-height",
        type=int,
        default=LandmarkParams.detection_height,
        help="landmarks.detection_height (2160: search 4K frames at full size)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    params = LandmarkParams(
        backend=args.backend,
        onnx_detector=str(args.onnx_dir / "scrfd_2.5g_kps.onnx"),
        onnx_landmarks=str(args.onnx_dir / "pfld_ghostone_98pt_112.onnx"),
        detection_height=args.detection_height,
    )
    if args.uhd:
        video = args.video if args.video != default else default.with_name("presenter_1080p_7s.mp4")
        compare_4k(video, resolution(args.preset).crop_size, params)
        return
    result, track, landmarks_s = prepare(args.video, resolution(args.preset).crop_size, params)
    n = result.frames
    info = result.source
    print(f"clip: {args.video.name} {info.width}x{info.height} {info.fps:.2f} fps, {n} frames")
    print(f"extract:   {n / result.seconds:7.1f} frames/s ({result.seconds:.1f} s)")
    print(
        f"landmarks: {n / landmarks_s:7.1f} frames/s ({landmarks_s:.1f} s, {args.backend}, "
        f"detected {100 * track.detection_rate:.1f}%, jitter max {100 * track.jitter().max():.2f}%)"
    )


def prepare(video: Path, crop_size: int, params: LandmarkParams):
    """(extract result, landmark track, landmarks seconds) of `video` in a scratch avatar."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = AvatarPaths("bench", Path(tmp))
        result = extract_avatar(video, paths, ExtractParams())
        started = time.perf_counter()
        track = prepare_landmarks(
            paths.video, result.frames, paths.landmarks, paths.crops, crop_size, params
        )
        return result, track, time.perf_counter() - started


def compare_4k(video: Path, crop_size: int, params: LandmarkParams) -> None:
    from synctalk.media.ffmpeg import ffmpeg_input, run_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        uhd = Path(tmp) / f"{video.stem}_4k.mp4"
        scale = ["-vf", "scale=3840:2160:flags=bicubic", "-c:v", "libx264", "-crf", "16"]
        run_ffmpeg(["-y", "-i", ffmpeg_input(video), *scale, "-c:a", "copy", str(uhd)], uhd)
        hd, reference, hd_landmarks_s = prepare(video, crop_size, params)
        result, track, landmarks_s = prepare(uhd, crop_size, params)
    hd_fps = hd.frames / (hd.seconds + hd_landmarks_s)
    print(
        f"{video.name} as it is ({hd.source.width}x{hd.source.height}): extract "
        f"{hd.seconds:.1f} s + landmarks {hd_landmarks_s:.1f} s = {hd_fps:.1f} frames/s"
    )
    n = result.frames
    seconds = result.seconds + landmarks_s
    fps = n / seconds
    print(
        f"4K copy of {video.name}: {n} frames, extract {result.seconds:.1f} s + landmarks "
        f"{landmarks_s:.1f} s = {fps:.1f} frames/s (target >= 5): {'PASS' if fps >= 5 else 'FAIL'}"
    )
    expected = reference.crop_boxes.astype(float) * 2
    difference = (np.abs(track.crop_boxes - expected) / expected[:, 2:3]).max()
    print(
        f"crop boxes: at most {100 * difference:.2f}% of the side from the 1080p clip's x2 "
        f"(target <= 2%): {'PASS' if difference <= 0.02 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
