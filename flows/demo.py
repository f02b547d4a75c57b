"""The one-command demo: a synthetic avatar trained, evaluated and batch-rendered.

    make demo          # = synctalk demo = python -m flows.demo

No input and no downloads: the avatar is a public-domain portrait shipped by
scikit-image, animated to speak sentences synthesised by eSpeak NG. It goes
through the real pipeline with the `tiny` preset: the `train` flow runs its
stages up to evaluate@demo (extract, landmarks, audio features, SyncNet,
U-Net, evaluation) one task each, their output streamed as they go; then the
`render` flow renders two new sentences from data/inbox/demo/ (the avatar's
inbox) with the new `@candidate` (the nightly run itself renders only a
reviewed `@champion`). Finally it measures whether the rendered mouth follows the
audio: the correlation between the mouth opening (face landmarks of the
rendered video) and the loudness of the driving audio, next to the same
measure for a render by an untrained model.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (offline settings before Prefect starts)
from flows.render import render
from flows.train import train
from synctalk.avatars import add_avatar
from synctalk.config import load_config
from synctalk.demo_avatar import lip_sync_check, make_demo_audio, make_demo_avatar
from synctalk.paths import AvatarPaths, render_cache

log = logging.getLogger("flows.demo")

ROOT = Path(__file__).resolve().parents[1]
AVATAR = "demo"
SECONDS = 40.0


def _untrained_render(audio: Path) -> Path:
    """The same avatar and audio rendered by a U-Net that never trained (seeded).

    Kept in the render cache under a key of everything that decides its pixels, so a
    second demo run exports and renders nothing when nothing changed."""
    import hashlib
    import io

    import torch

    from synctalk.device import resolve_device
    from synctalk.features.frontend import load_front_end
    from synctalk.hashing import file_sha256
    from synctalk.models import build_unet
    from synctalk.render.avatar import prepare_render_avatar
    from synctalk.render.engine import load_runtime, render_video
    from synctalk.render.ledger import render_key

    config = load_config(ROOT / "params.yaml")
    preset = config.preset_of(AVATAR)
    torch.manual_seed(0)
    unet = build_unet(preset.resolution, preset.audio_mode, preset.mobile, preset.input_mask).eval()
    paths = AvatarPaths(AVATAR, ROOT)
    weights = io.BytesIO()
    torch.save(unet.state_dict(), weights)
    # the model here is the untrained U-Net with this avatar's front-end and footage
    model = hashlib.sha256(weights.getvalue())
    for used in (paths.audio_encoder, paths.video, paths.landmarks):
        model.update(file_sha256(used).encode())
    key = render_key("untrained", "seed-0", model.hexdigest(), file_sha256(audio), config.render)
    out = render_cache(ROOT) / AVATAR / f"untrained-{key[:16]}.mp4"
    if out.is_file():
        log.info("untrained comparison up to date: %s", out)
        return out
    device = resolve_device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        avatar = prepare_render_avatar(paths, unet.spec.geometry, render_cache(ROOT))
        runtime = load_runtime(unet, config.render, device, Path(tmp))
        front_end = load_front_end(paths.audio_encoder)
        render_video(avatar, runtime, front_end, audio, out, config.render, device)
    return out


def run_demo() -> dict[str, object]:
    started = time.perf_counter()
    paths = AvatarPaths(AVATAR, ROOT)
    config = load_config(ROOT / "params.yaml")
    if AVATAR not in config.avatars:
        with tempfile.TemporaryDirectory() as tmp:
            video = make_demo_avatar(Path(tmp) / "demo.mp4", seconds=SECONDS)
            add_avatar(AVATAR, video, "tiny", ROOT / "params.yaml", ROOT)
        log.info("demo avatar added: %s", paths.avatar_dir)

    metrics = train(avatar=AVATAR)  # its stages up to evaluate@demo, output streamed
    sentences = make_demo_audio(paths.inbox)  # what the nightly run would render
    # the version just evaluated: nobody has reviewed and promoted it to @champion yet
    counts = render(avatar=AVATAR, model_alias="candidate")  # its inbox, into its renders
    out = paths.renders
    videos = [out / f"{s.stem}.mp4" for s in sentences]

    trained_r = [lip_sync_check(v).correlation for v in videos]
    untrained = _untrained_render(sentences[0])
    untrained_r = lip_sync_check(untrained).correlation
    return {
        "videos": videos,
        "render counts": counts,
        "evaluation": metrics,
        "mouth/audio correlation (trained)": sum(trained_r) / len(trained_r),
        "mouth/audio correlation (untrained model)": untrained_r,
        "minutes": (time.perf_counter() - started) / 60,
    }


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    report = run_demo()
    print("\nDemo finished in {:.1f} min.".format(report["minutes"]))
    print("Rendered videos:")
    for video in report["videos"]:
        print(f"  {video}")
    print(f"Render batch: {report['render counts']}")
    print(f"Evaluation (held-out footage): {report['evaluation']}")
    print(
        "Mouth opening vs audio loudness, correlation: "
        f"{report['mouth/audio correlation (trained)']:.2f} with the trained model, "
        f"{report['mouth/audio correlation (untrained model)']:.2f} with an untrained one"
    )
    print(
        "MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
        "  ->  http://127.0.0.1:5000"
    )
    version = report["evaluation"].get("model_version", "N")
    print(f"Review: videos in the review/ folder of avatar-{AVATAR} version {version}'s run")
    print(f"Promote after review: .venv/bin/synctalk models promote {AVATAR} {version}")
    print("Prefect UI: .venv/bin/prefect server start  ->  http://127.0.0.1:4200")
    print("Serve the nightly batch: .venv/bin/synctalk serve (with PREFECT_API_URL set)")


if __name__ == "__main__":
    main()
