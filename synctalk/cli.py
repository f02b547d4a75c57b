"""The `synctalk` command line. Every sub-command has `--help`."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("synctalk")


def _cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the chosen device and the ffmpeg in use."""
    import numpy
    import onnxruntime
    import torch

    import synctalk
    from synctalk.config import load_config
    from synctalk.device import resolve_device
    from synctalk.media.ffmpeg import ffmpeg_exe

    config = load_config(args.params)
    print(f"synctalk     {synctalk.__version__}")
    print(f"torch        {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"onnxruntime  {onnxruntime.__version__}")
    print(f"numpy        {numpy.__version__}")
    print(f"ffmpeg       {ffmpeg_exe()}")
    print(f"device       {config.device} -> {resolve_device(config.device)}")
    print(f"presets      {', '.join(sorted(config.presets))}")
    print(f"avatars      {', '.join(sorted(config.avatars)) or '(none yet)'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run the model core end to end on built-in data and print what it measured."""
    from synctalk.demo import run_model_demo

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="synctalk-demo-"))
    report = run_model_demo(out, preset=args.preset, seconds=args.seconds)
    for key, value in report.items():
        print(f"{key:28s} {value}")
    return 0


def _cmd_avatar_add(args: argparse.Namespace) -> int:
    """Copy a video into data/avatars/<name>/ and list the avatar in params.yaml."""
    from synctalk.avatars import add_avatar

    target = add_avatar(
        args.name, Path(args.video), args.preset, Path(args.params), force=args.force
    )
    print(f"added avatar {args.name!r}: {target} (preset {args.preset})")
    print(f"prepare it with: dvc repro extract@{args.name} landmarks@{args.name} ave@{args.name}")
    print("or everything at once: dvc repro")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synctalk",
        description=(
            "Lip-synced talking-head production with SyncTalk_2D's method: "
            "prepare an avatar, train its models, render it saying new audio."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="versions, device and ffmpeg in use")
    info.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    info.set_defaults(func=_cmd_info)

    avatar = sub.add_parser("avatar", help="manage avatars (the people videos are made of)")
    avatar_sub = avatar.add_subparsers(dest="avatar_command", required=True, metavar="ACTION")
    add = avatar_sub.add_parser(
        "add",
        help="add an avatar from a video of the person talking to camera",
        description=(
            "Check the video (video and audio streams, long enough), copy it to "
            "data/avatars/<name>/source.<ext> and add <name> to params.yaml, so that "
            "`dvc repro` prepares it."
        ),
    )
    add.add_argument("name", help="avatar name: lower-case letters, digits, '-' and '_'")
    add.add_argument("video", help="the source video (any format ffmpeg reads)")
    add.add_argument("--preset", default="default", help="model preset from params.yaml "
                     "(default: %(default)s; 'tiny' trains on a CPU in minutes)")  # fmt: skip
    add.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    add.add_argument("--force", action="store_true", help="replace an existing avatar")
    add.set_defaults(func=_cmd_avatar_add)

    demo = sub.add_parser(
        "demo",
        help="run the model core on built-in data (no input needed)",
        description=(
            "Synthesise a speech-like signal, decode it like any user file, compute its "
            "mel spectrogram and per-frame AVE features, run the U-Net on every frame in "
            "PyTorch and in onnxruntime, and report shapes, agreement and speed."
        ),
    )
    demo.add_argument("--out", help="folder for the demo's files (default: a new temp folder)")
    demo.add_argument("--preset", default="160", choices=["160", "328"], help="resolution preset")
    demo.add_argument("--seconds", type=float, default=4.0, help="length of the synthetic audio")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    started = time.perf_counter()
    try:
        code = args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    log.debug("done in %.1f s", time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
