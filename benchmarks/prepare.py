"""Preparation speed on a 512x512 clip: extract and landmarks, frames per second.

    python benchmarks/prepare.py [--video ../shared/data/videos/lieu_address_45s.mp4]
    python benchmarks/prepare.py --backend onnx --onnx-dir ../shared/models

Target on the 2-core CI CPU: landmarks >= 25 frames/s (the whole stage:
decode, face mesh, smoothing and writing the training crops).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    params = LandmarkParams(
        backend=args.backend,
        onnx_detector=str(args.onnx_dir / "scrfd_2.5g_kps.onnx"),
        onnx_landmarks=str(args.onnx_dir / "pfld_ghostone_98pt_112.onnx"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = AvatarPaths("bench", Path(tmp))
        result = extract_avatar(args.video, paths, ExtractParams())
        n = result.frames
        started = time.perf_counter()
        track = prepare_landmarks(
            paths.video, n, paths.landmarks, paths.crops, resolution(args.preset).crop_size, params
        )
        landmarks_s = time.perf_counter() - started
    info = result.source
    print(f"clip: {args.video.name} {info.width}x{info.height} {info.fps:.2f} fps, {n} frames")
    print(f"extract:   {n / result.seconds:7.1f} frames/s ({result.seconds:.1f} s)")
    print(
        f"landmarks: {n / landmarks_s:7.1f} frames/s ({landmarks_s:.1f} s, {args.backend}, "
        f"detected {100 * track.detection_rate:.1f}%, jitter max {100 * track.jitter().max():.2f}%)"
    )


if __name__ == "__main__":
    main()
