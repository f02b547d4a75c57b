"""The lip-follow yardstick: does the avatar say new audio, and does it look right?

    make quality                                   # the cpu preset on lieu_address_45s
    python benchmarks/quality.py --preset tiny     # the preset CI trains, for comparison
    python benchmarks/quality.py --project DIR --avatar lieu   # an avatar already trained

Without --project it builds a scratch project in --out, adds the avatar with
the preset and runs its DVC stages one by one (timing each), as a user would.
Then it drives the avatar with the audio track of each driver (the other
clips of ../shared/data/videos: real people talking, whose own lips are what
the rendered lips should do), renders with `synctalk render`, and measures
(synctalk.evaluate.lipsync):

* follow: correlation of the rendered lip gap with the driver's own;
* replay: correlation of the rendered lip gap with the avatar footage's at
  the frames the render was drawn on.

From the evaluate stage (the avatar's held-out last 10%, its own audio):
lower-face SSIM and PSNR, mean CIEDE2000 inside the pasted region and the
seam ratio (gradient energy along the paste's edge over the real frame's).

It writes report.json, contact_sheet.png (per driver: the driver's mouth,
the rendered mouth and the background's mouth over time) and one
side-by-side mp4 per driver (driver | render) into --out, and prints each
target with pass/fail. Targets (issue 14), on the 2-core CPU: training at
most 30 minutes; follow >= 0.5 on average and follow > replay for every
driver; face SSIM >= 0.90, CIEDE2000 <= 3, seam ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synctalk.config import load_config  # noqa: E402
from synctalk.evaluate.lipsync import (  # noqa: E402
    follow_and_replay,
    lip_gap,
    video_face_points,
)
from synctalk.evaluate.metrics import MEDIAPIPE_MOUTH_OUTER  # noqa: E402
from synctalk.manifest import LANDMARKS_SCHEMA, read_manifest  # noqa: E402
from synctalk.media.ffmpeg import ffmpeg_exe  # noqa: E402
from synctalk.media.video import iter_frames  # noqa: E402
from synctalk.paths import AvatarPaths  # noqa: E402
from synctalk.render.avatar import background_schedule  # noqa: E402
from tests.project import make_project, run  # noqa: E402  (the scratch project the pipeline tests use)

log = logging.getLogger("quality")
VIDEOS = REPO.parent / "shared" / "data" / "videos"
STAGES = ("extract", "landmarks", "audio_encoder", "features", "syncnet", "unet", "evaluate")
TRAINING = ("audio_encoder", "syncnet", "unet")  # what "training time" counts
TARGETS = {
    "train_minutes": ("<=", 30.0),
    "follow_mean": (">=", 0.5),
    "face_ssim": (">=", 0.90),
    "colour_de2000": ("<=", 3.0),
    "seam_ratio": ("<=", 1.2),
}
SHEET_COLUMNS = 12
MOUTH_TILE = (96, 64)  # width, height of a mouth in the contact sheet


def apply_settings(params: Path, settings: list[str]) -> None:
    """Edit params.yaml: each setting is `dotted.key=value`, the value read as YAML."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(params.read_text())
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise SystemExit(f"--set {setting!r}: expected KEY=VALUE (presets.tiny.audio_mode=ave)")
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = yaml.load(value)
    with open(params, "w") as f:
        yaml.dump(data, f)


def build_project(
    out: Path, video: Path, avatar: str, preset: str, settings: list[str]
) -> tuple[Path, dict]:
    """A scratch project with `avatar` trained by its DVC stages; seconds per stage."""

    root = make_project(out)
    apply_settings(root / "params.yaml", settings)
    run(
        root,
        sys.executable,
        "-m",
        "synctalk.cli",
        "avatar",
        "add",
        avatar,
        str(video),
        "--preset",
        preset,
    )
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        log.info("dvc repro %s@%s", stage, avatar)
        run(root, "dvc", "repro", "--single-item", f"{stage}@{avatar}")
        seconds[stage] = time.perf_counter() - started
        log.info("%s@%s: %.1f min", stage, avatar, seconds[stage] / 60)
    return root, seconds


def background_points(root: Path, avatar: str, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(schedule, face-mesh points [n, 468, 2]) of the avatar frames a render is drawn on."""
    paths = AvatarPaths(avatar, root)
    table, _ = read_manifest(paths.landmarks, LANDMARKS_SCHEMA)
    points = np.stack([np.asarray(p, np.float32).reshape(-1, 2) for p in table["landmarks"]])
    same_start_end = load_config(root / "params.yaml").render.same_start_end
    schedule = background_schedule(len(points), n_frames, same_start_end)
    return schedule, points[schedule]


def mouth_tiles(frames: list[np.ndarray], points: np.ndarray) -> list[np.ndarray]:
    """Each frame's mouth (outer-lip box with a margin) resized to MOUTH_TILE."""
    import cv2

    tiles = []
    for frame, pts in zip(frames, points, strict=True):
        lips = pts[list(MEDIAPIPE_MOUTH_OUTER)]
        if not np.isfinite(lips).all():
            tiles.append(np.zeros((MOUTH_TILE[1], MOUTH_TILE[0], 3), np.uint8))
            continue
        (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.75 * (x1 - x0)
        box = [int(cx - half), int(cy - half / 1.5), int(cx + half), int(cy + half / 1.5)]
        h, w = frame.shape[:2]
        box = [max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])]
        tiles.append(cv2.resize(frame[box[1] : box[3], box[0] : box[2]], MOUTH_TILE))
    return tiles


def _frames_at(path: Path, indices: np.ndarray) -> list[np.ndarray]:
    wanted = {int(i) for i in indices}
    by_index = {i: f for i, f in enumerate(iter_frames(path)) if i in wanted}
    return [by_index[int(i)] for i in indices]


def measure_driver(root: Path, avatar: str, driver: Path, render: Path, sheet: list) -> dict:
    from synctalk.media.video import transcode_to_cfr

    driver_25 = render.with_name(f"{driver.stem}.driver25.mp4")
    transcode_to_cfr(driver, driver_25)
    driver_points = video_face_points(driver_25)
    render_points = video_face_points(render)
    n = len(render_points)
    schedule, bg_points = background_points(root, avatar, n)
    follow, replay = follow_and_replay(
        lip_gap(render_points), lip_gap(driver_points), lip_gap(bg_points)
    )
    picks = np.linspace(0, min(n, len(driver_points)) - 1, SHEET_COLUMNS).astype(int)
    mezzanine = AvatarPaths(avatar, root).video
    rows = [
        mouth_tiles(_frames_at(driver_25, picks), driver_points[picks]),
        mouth_tiles(_frames_at(render, picks), render_points[picks]),
        mouth_tiles(_frames_at(mezzanine, schedule[picks]), bg_points[picks]),
    ]
    sheet.append((driver.stem, rows))
    side_by_side(driver_25, render, render.with_name(f"{driver.stem}.side_by_side.mp4"))
    return {
        "follow": follow,
        "replay": replay,
        "frames": n,
        "faces_found": float(np.isfinite(render_points[:, 0, 0]).mean()),
    }


def side_by_side(driver: Path, render: Path, out: Path) -> None:
    """driver | render at the render's height, with the render's sound."""
    graph = "[0:v]scale=-2:{h}[a];[1:v]copy[b];[a][b]hstack=inputs=2:shortest=1"
    height = next(iter_frames(render)).shape[0]
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(driver), "-i", str(render)]
    cmd += ["-filter_complex", graph.format(h=height), "-map", "1:a", "-c:v", "libx264"]
    cmd += ["-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True)


def contact_sheet(sheet: list, out: Path) -> None:
    import cv2

    blocks = []
    for name, rows in sheet:
        label = np.full((18, MOUTH_TILE[0] * SHEET_COLUMNS, 3), 255, np.uint8)
        cv2.putText(
            label,
            f"{name}: driver / render / background",
            (4, 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
        )
        blocks += [label] + [np.concatenate(row, axis=1) for row in rows]
    cv2.imwrite(str(out), np.concatenate(blocks, axis=0))


def verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, target = TARGETS[name]
    ok = value <= target if op == "<=" else value >= target
    return f"{'PASS' if ok else 'FAIL'} (target {op} {target})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video",
        type=Path,
        default=VIDEOS / "lieu_address_45s.mp4",
        help="the avatar's source video (default: %(default)s)",
    )
    parser.add_argument("--avatar", default="lieu", help="avatar name (default: %(default)s)")
    parser.add_argument("--preset", default="cpu", help="preset to train (default: %(default)s)")
    parser.add_argument("--project", type=Path, help="an existing project with the avatar trained")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of the project's params.yaml (with --project: and re-run "
        "what it makes stale), e.g. "
        "--set presets.tiny.audio_mode=ave --set presets.tiny.input_mask=mouth",
    )
    parser.add_argument(
        "--drivers",
        type=Path,
        nargs="*",
        help="driver videos (default: every other clip in ../shared/data/videos)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("quality-report"),
        help="folder for the report (default: %(default)s)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()

    seconds: dict[str, float] = {}
    if args.project:
        root = args.project.resolve()
        if args.settings:  # what the change makes stale is re-run (a render setting: evaluate)
            apply_settings(root / "params.yaml", args.settings)
            run(root, "dvc", "repro", f"evaluate@{args.avatar}")
    else:
        root, seconds = build_project(
            out, args.video.resolve(), args.avatar, args.preset, args.settings
        )
    drivers = args.drivers or sorted(p for p in VIDEOS.glob("*.mp4") if p.name != args.video.name)

    renders = out / "renders"
    renders.mkdir(exist_ok=True)
    report: dict = {
        "preset": args.preset,
        "settings": args.settings,
        "avatar": args.avatar,
        "stage_seconds": seconds,
    }
    if seconds:
        report["train_minutes"] = sum(seconds[s] for s in TRAINING) / 60
    sheet: list = []
    report["drivers"] = {}
    for driver in drivers:
        log.info("driving %s with %s", args.avatar, driver.name)
        run(
            root,
            sys.executable,
            "-m",
            "synctalk.cli",
            "render",
            "--avatar",
            args.avatar,
            "--audio",
            str(driver.resolve()),
            "--out",
            str(renders),
        )
        report["drivers"][driver.stem] = measure_driver(
            root, args.avatar, driver, renders / f"{driver.stem}.mp4", sheet
        )
    follows = [d["follow"] for d in report["drivers"].values()]
    report["follow_mean"] = float(np.mean(follows))
    report["follow_above_replay"] = all(
        d["follow"] > d["replay"] for d in report["drivers"].values()
    )
    held_out = json.loads((root / "eval" / args.avatar / "metrics.json").read_text())
    report["held_out"] = held_out
    contact_sheet(sheet, out / "contact_sheet.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))

    print(f"\nLip-follow yardstick: avatar {args.avatar}, preset {args.preset}, out {out}")
    if seconds:
        for stage in STAGES:
            print(f"  {stage:14s} {seconds[stage] / 60:6.1f} min")
        print(
            f"  training       {report['train_minutes']:6.1f} min  "
            f"{verdict('train_minutes', report['train_minutes'])}"
        )
    print(f"  {'driver':28s} {'follow':>7s} {'replay':>7s}")
    for name, d in report["drivers"].items():
        mark = "PASS" if d["follow"] > d["replay"] else "FAIL"
        print(f"  {name:28s} {d['follow']:7.3f} {d['replay']:7.3f}  follow > replay: {mark}")
    follow_mean = report["follow_mean"]
    print(f"  follow mean {follow_mean:.3f}  {verdict('follow_mean', follow_mean)}")
    for key in ("face_ssim", "face_psnr", "colour_de2000", "seam_ratio", "psnr", "ssim", "lse_c"):
        if key in held_out:
            print(f"  held-out {key:14s} {held_out[key]:8.3f}  {verdict(key, held_out[key])}")


if __name__ == "__main__":
    main()
