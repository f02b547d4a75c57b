"""The `synctalk` command line. Every sub-command has `--help`."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
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
    """The main job on built-in data: a synthetic avatar trained, evaluated and rendered."""
    if args.models_only:
        from synctalk.demo import run_model_demo

        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="synctalk-demo-"))
        report = run_model_demo(out, preset=args.preset, seconds=args.seconds)
        for key, value in report.items():
            print(f"{key:28s} {value}")
        return 0
    from flows.demo import main as demo

    demo()
    return 0


def _dvc_add(root: Path) -> Callable[[Path], None] | None:
    """`dvc add` of a file of the DVC project at `root` (None when it is not one), so that
    `dvc push` stores it and another clone's `dvc pull` gets it."""
    if not (root / ".dvc").is_dir():
        log.warning("%s is not a DVC project: the avatar's video is not tracked", root.resolve())
        return None
    beside = Path(sys.executable).parent / "dvc"  # the environment's own dvc
    dvc = str(beside) if beside.exists() else "dvc"

    def track(path: Path) -> None:
        import subprocess

        relative = path.resolve().relative_to(root.resolve())
        proc = subprocess.run([dvc, "add", str(relative)], cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "")
            raise RuntimeError(f"dvc add {relative} failed: {why}")

    return track


def _cmd_avatar_add(args: argparse.Namespace) -> int:
    """Copy a video into data/avatars/<name>/, put it under DVC, list the avatar in params.yaml."""
    from synctalk.avatars import add_avatar

    params = Path(args.params)
    root = params.parent
    target = add_avatar(
        args.name, Path(args.video), args.preset, params, root, args.force, track=_dvc_add(root)
    )
    print(f"added avatar {args.name!r}: {target} (preset {args.preset})")
    if (root / ".dvc").is_dir():
        dvc_file = target.with_name(f"{target.name}.dvc").relative_to(root)
        print(f"tracked by DVC: git add {dvc_file} {dvc_file.parent / '.gitignore'} params.yaml")
    print(f"prepare it with: dvc repro features@{args.name}")
    print("or everything at once: dvc repro")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    """Render an avatar saying one audio file or every audio file in a folder."""
    from synctalk.config import load_config
    from synctalk.paths import AvatarPaths
    from synctalk.render.batch import render_batch

    _use_tracking(args)
    config = load_config(args.params)
    if args.device:
        from dataclasses import replace

        config = replace(config, device=args.device)
    out = Path(args.out) if args.out else AvatarPaths(args.avatar).renders
    records = render_batch(
        config, args.avatar, Path(args.audio), out, args.model_alias, args.glob, force=args.force
    )
    for r in records:
        detail = {
            "done": f"{r.frames} frames, {r.seconds:.1f} s",
            "skipped": f"up to date, version {r.model_version}",
        }.get(r.status, r.error)
        print(f"{r.status:7s} {r.output_path}  ({detail})")
    counts = {s: sum(r.status == s for r in records) for s in ("done", "failed", "skipped")}
    print("{done} rendered, {failed} failed, {skipped} skipped (up to date)".format(**counts))
    return 1 if counts["failed"] else 0


def _cmd_renders_status(args: argparse.Namespace) -> int:
    """Print the ledger's recent records: each avatar's last batch, or all since a date."""
    from datetime import UTC, datetime

    from synctalk.paths import renders_ledger
    from synctalk.render.ledger import RenderLedger, recent_records

    since = None
    if args.since:
        since = datetime.fromisoformat(args.since)
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    ledger = RenderLedger(renders_ledger())
    records = recent_records(ledger, args.avatar, since, args.failed)
    if not records:
        print(f"no render records in {ledger.path} (for that selection)")
        return 0
    print(
        f"{'started (UTC)':16s}  {'avatar':10s}  {'status':7s}  {'version':>7s}  "
        f"{'frames':>6s}  {'seconds':>7s}  audio -> output / error"
    )
    for r in records:
        result = r.output_path if r.status != "failed" else r.error
        print(
            f"{r.started_at:%Y-%m-%d %H:%M}  {r.avatar:10s}  {r.status:7s}  "
            f"{r.model_version:>7s}  {r.frames:6d}  {r.seconds:7.1f}  "
            f"{Path(r.audio_path).name} -> {result}"
        )
    counts = {s: sum(r.status == s for r in records) for s in ("done", "failed", "skipped")}
    print("{done} done, {failed} failed, {skipped} skipped".format(**counts))
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export a U-Net checkpoint to ONNX and check onnxruntime agrees with torch."""
    import numpy as np
    import torch

    from synctalk.models.checkpoint import load_unet
    from synctalk.render.onnx import OnnxUNet, example_inputs, export_unet

    unet = load_unet(args.checkpoint, audio_mode=args.audio_mode)
    out = export_unet(unet, Path(args.out))
    image, audio = example_inputs(unet, batch=2)
    with torch.inference_mode():
        expected = unet(image, audio).numpy()
    error = float(np.abs(OnnxUNet(out)(image.numpy(), audio.numpy()) - expected).max())
    if error > 1e-3:
        out.unlink()
        raise RuntimeError(f"onnxruntime disagrees with torch by {error:.2e}; nothing exported")
    print(f"{out}: {unet.spec}, max |onnxruntime - torch| = {error:.1e}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve the Prefect deployments (render/batch on its cron, train/avatar)."""
    from flows.serve import main as serve

    serve()
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    """Register the deployments on a Prefect work pool (created if missing)."""
    from flows.deploy import deploy

    for name in deploy(args.pool):
        print(f"deployed {name} to work pool {args.pool}")
    print(f"start workers where renders should run: prefect worker start --pool {args.pool}")
    return 0


def _use_tracking(args: argparse.Namespace) -> None:
    import mlflow

    from synctalk.tracking import apply_offline_env, tracking_uri

    apply_offline_env()
    mlflow.set_tracking_uri(tracking_uri())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_table(columns: list[str], rows: list[list[object]]) -> None:
    width = max(10, *(len(c) for c in columns))
    for row in [columns, *rows]:
        print("  ".join(f"{_cell(value):>{width}}" for value in row))


def _cmd_models_list(args: argparse.Namespace) -> int:
    """Print the registered versions of an avatar's model with their aliases and metrics."""
    from synctalk.registry import describe_versions

    _use_tracking(args)
    rows = describe_versions(args.avatar)
    if not rows:
        print(f"no versions of avatar-{args.avatar} yet (train it: dvc repro unet@{args.avatar})")
        return 1
    columns = ["version", "aliases", "created", "val_l1"]
    columns += sorted({k for row in rows for k in row} - set(columns))
    _print_table(columns, [[row.get(c) for c in columns] for row in rows])
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    """Print a version's aliases, metrics and lineage, and the commands that reproduce it."""
    import json

    from synctalk.paths import AvatarPaths
    from synctalk.registry import aliases, evaluation_metrics, resolve_version

    _use_tracking(args)
    version = resolve_version(args.avatar, args.version)
    number, tags = str(version.version), dict(version.tags or {})
    on = sorted(a for a, v in aliases(args.avatar).items() if v == number)
    print(f"avatar-{args.avatar} version {number}  aliases: {', '.join(on) or '-'}")
    print(f"run {version.run_id}")
    for key, value in sorted(evaluation_metrics(args.avatar, number).items()):
        print(f"  {key:24s} {value:.6g}")
    print("lineage:")
    for key in ("git_commit", "git_dirty", "source_md5", "unet_sha256"):
        print(f"  {key:24s} {tags.get(key, '-')}")
    for title, key in (("params", "dvc_params"), ("dependencies (md5)", "dvc_deps_md5")):
        print(f"{title}:")
        for name, value in json.loads(tags.get(key, "{}")).items():
            print(f"  {name}: {json.dumps(value) if isinstance(value, dict) else value}")
    # The commit is the one checked out when it trained, which has no dvc.lock for it
    # yet: the inputs come back from DVC's run cache (`dvc push --run-cache` stored every
    # stage run), keyed by exactly the code, data and params they were made from.
    print("reproduce it (the same commit, data and machine give the same bytes):")
    commit = tags.get("git_commit", "unknown")
    if tags.get("git_dirty") == "true":
        print("  # the tree had uncommitted changes then: the commit alone may not reproduce it")
    name = args.avatar
    print(f"  git checkout {commit}")
    print(f"  dvc repro --pull unet@{name}             # its inputs, from the remote's run cache")
    print(f"  dvc repro --force --single-item unet@{name}   # the U-Net trained again")
    print(f"  sha256sum {AvatarPaths(name).unet}   # expect {tags.get('unet_sha256', '?')}")
    return 0


def _cmd_models_compare(args: argparse.Namespace) -> int:
    """Print the evaluation metrics of versions side by side."""
    from synctalk.registry import evaluation_metrics

    _use_tracking(args)
    metrics = {v: evaluation_metrics(args.avatar, v) for v in args.versions}
    names = sorted({k for m in metrics.values() for k in m})
    if not names:
        print(f"none of versions {', '.join(args.versions)} of avatar-{args.avatar} is evaluated")
        return 1
    columns = ["metric", *(f"v{v}" for v in args.versions)]
    _print_table(columns, [[n, *(metrics[v].get(n) for v in args.versions)] for n in names])
    return 0


def _cmd_models_promote(args: argparse.Namespace) -> int:
    """Point an alias (champion by default) at a version after review, through the gate."""
    from synctalk.config import load_config
    from synctalk.registry import promote

    if args.force and not (args.reason or "").strip():
        raise ValueError('--force needs --reason "why this version goes out anyway"')
    if args.reason and not args.force:
        raise ValueError("--reason goes with --force (a version that passes needs none)")
    _use_tracking(args)
    review = load_config(args.params).review
    reason = args.reason if args.force else None
    failure = promote(args.avatar, args.version, args.alias, review, forced_reason=reason)
    if failure:
        print(f"forced: {failure}; recorded with your reason on the version's tags")
    print(f"avatar-{args.avatar} version {args.version} is now @{args.alias}")
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
            "data/avatars/<name>/source.<ext>, track it with `dvc add` (so `dvc push` "
            "stores it) and add <name> to params.yaml, so that `dvc repro` prepares it."
        ),
    )
    add.add_argument("name", help="avatar name: lower-case letters, digits, '-' and '_'")
    add.add_argument("video", help="the source video (any format ffmpeg reads)")
    add.add_argument(
        "--preset",
        default="default",
        help="model preset from params.yaml "
        "(default: %(default)s; 'tiny' trains on a CPU in minutes)",
    )
    add.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    add.add_argument("--force", action="store_true", help="replace an existing avatar")
    add.set_defaults(func=_cmd_avatar_add)

    render = sub.add_parser(
        "render",
        help="render an avatar saying audio files",
        description="Render AVATAR saying AUDIO (a file, or every audio file in a folder) "
        "to OUT/<audio stem>.mp4 (25 fps H.264 + AAC; files sharing a stem keep their "
        "extension: a.wav.mp4, a.mp3.mp4). The model is the registry's @champion for the "
        "avatar, else its newest version, unless --model-alias says otherwise. A file "
        "already rendered with the same model, audio and settings, its video unchanged "
        "since, is skipped; every attempt is recorded in data/renders/renders.parquet. "
        "A file that fails is reported and the others go on.",
    )
    render.add_argument("--avatar", required=True, help="avatar name from params.yaml")
    render.add_argument("--audio", required=True, help="an audio file or a folder of them")
    render.add_argument("--out", help="output folder (default: data/renders/<avatar>)")
    render.add_argument("--model-alias", help="alias (e.g. candidate) or version number")
    render.add_argument("--glob", default="*", help="file pattern inside a folder (default: *)")
    render.add_argument("--force", action="store_true", help="render again even what is up to date")
    render.add_argument(
        "--device", choices=["auto", "cpu", "cuda", "mps"], help="override params.yaml's device"
    )
    render.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    render.set_defaults(func=_cmd_render)

    renders = sub.add_parser(
        "renders",
        help="what was rendered: the renders ledger",
        description="The ledger data/renders/renders.parquet records every render attempt "
        "(done, failed, skipped). pandas reads it: pd.read_parquet(path).",
    )
    renders_sub = renders.add_subparsers(dest="renders_command", required=True, metavar="ACTION")
    status = renders_sub.add_parser(
        "status", help="each avatar's last batch (or everything since a date), file by file"
    )
    status.add_argument("--avatar", help="one avatar only")
    status.add_argument(
        "--since",
        help="every record since this date or time (ISO, UTC), e.g. 2026-12-01 or 2026-12-01T02:00",
    )
    status.add_argument("--failed", action="store_true", help="failed files only")
    status.set_defaults(func=_cmd_renders_status)

    export = sub.add_parser(
        "export-onnx",
        help="export a U-Net checkpoint to ONNX (dynamic batch), checked against torch",
    )
    export.add_argument("checkpoint", help="U-Net .pth (ours, or an original SyncTalk_2D one)")
    export.add_argument("out", help="the .onnx file to write")
    export.add_argument(
        "--audio-mode",
        choices=["ave", "hubert", "wenet"],
        help="for an original checkpoint without sidecar (ave and hubert look alike)",
    )
    export.set_defaults(func=_cmd_export_onnx)

    serve = sub.add_parser(
        "serve",
        help="serve the Prefect deployments (nightly, render/batch, train/avatar) here",
        description="Register and run the deployments against $PREFECT_API_URL (start a "
        "local server with `prefect server start`), in this process: nightly/nightly on "
        "its schedule, render/batch and train/avatar when asked. Stays up; Ctrl-C stops it.",
    )
    serve.set_defaults(func=_cmd_serve)

    deploy = sub.add_parser(
        "deploy",
        help="register the deployments on a Prefect work pool, for workers on many machines",
        description="Register nightly/nightly, render/batch, render-file/file and "
        "train/avatar on work pool POOL at $PREFECT_API_URL (a process pool is created if "
        "missing). Batches then run one render-file run per audio file, which any worker "
        "of the pool picks up: `prefect worker start --pool POOL` on each machine, in a "
        "checkout of the project at the same path.",
    )
    deploy.add_argument("--pool", required=True, help="work pool name")
    deploy.set_defaults(func=_cmd_deploy)

    models = sub.add_parser(
        "models",
        help="review and promote trained avatar models (MLflow registry)",
        description="The MLflow registry holds one model per avatar, avatar-<name>; each "
        "training adds a version. The tracking store is $MLFLOW_TRACKING_URI, else "
        "./mlflow.db.",
    )
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_sub.add_parser(
        "list", help="versions of an avatar's model with their aliases and metrics"
    )
    listing.add_argument("avatar")
    listing.set_defaults(func=_cmd_models_list)
    show = models_sub.add_parser(
        "show",
        help="a version's aliases, metrics, lineage and how to reproduce it",
        description="The version's git commit (and whether the tree was dirty), source video "
        "md5, the md5 of every dependency and the params of the stage that trained it, its "
        "evaluation metrics and aliases, then the commands that reproduce its unet.pth.",
    )
    show.add_argument("avatar")
    show.add_argument("version", help="version number or alias")
    show.set_defaults(func=_cmd_models_show)
    compare = models_sub.add_parser(
        "compare",
        help="evaluation metrics of two or more versions side by side",
        description="One row per evaluation metric (eval/<avatar>/metrics.json's names), "
        "one column per version; '-' where a version lacks the metric.",
    )
    compare.add_argument("avatar")
    compare.add_argument("versions", nargs="+", metavar="VERSION", help="version numbers")
    compare.set_defaults(func=_cmd_models_compare)
    promote = models_sub.add_parser(
        "promote",
        help="make a version the champion (what renders use), if it passes review",
        description="Set an alias on a version. The version must have been evaluated and its "
        "metrics must be within params.yaml's review.minimum / review.maximum; --force "
        "--reason overrides and records who did it and why as tags of the version. The "
        "nightly batch renders @champion only.",
    )
    promote.add_argument("avatar")
    promote.add_argument("version", help="version number, see `synctalk models list`")
    promote.add_argument("--alias", default="champion", help="alias to set (default: %(default)s)")
    promote.add_argument(
        "--force", action="store_true", help="promote even if the version fails the review gate"
    )
    promote.add_argument("--reason", help="with --force: why (recorded on the version)")
    promote.add_argument(
        "--params", default="params.yaml", help="params file with review: (default: %(default)s)"
    )
    promote.set_defaults(func=_cmd_models_promote)

    demo = sub.add_parser(
        "demo",
        help="the main job on built-in data, no input needed",
        description=(
            "Make a synthetic avatar (a public-domain portrait speaking eSpeak NG sentences), "
            "train it with the tiny preset (dvc repro), evaluate it, batch-render two new "
            "sentences with the render flow, and report whether the rendered mouth follows "
            "the audio. With --models-only: a quick check of the model core instead (mel, AVE "
            "features, U-Net in PyTorch and onnxruntime on a synthetic signal)."
        ),
    )
    demo.add_argument("--models-only", action="store_true", help="only the quick model check")
    demo.add_argument("--out", help="--models-only: folder for its files (default: a temp one)")
    demo.add_argument(
        "--preset", default="160", choices=["160", "328"], help="--models-only: resolution preset"
    )
    demo.add_argument(
        "--seconds", type=float, default=4.0, help="--models-only: length of the synthetic audio"
    )
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
    except (ValueError, RuntimeError, LookupError, OSError) as exc:
        log.error("%s", exc)
        return 2
    log.debug("done in %.1f s", time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
