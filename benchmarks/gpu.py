"""The GPU path measured: training step time with and without AMP, AMP-vs-fp32
loss parity, peak GPU memory, and batched render throughput at 328.

Two steps, because the GPU machine has neither ffmpeg nor our face models:

    # here: pack a prepared avatar's crops (JPEG, cut at the 328 preset's crop
    # size from its landmarks' crop boxes) and Whisper features into one file
    python benchmarks/gpu.py pack --work data/work/lieu --out .gpu/lieu.npz

    # on the GPU machine
    python benchmarks/gpu.py run --data .gpu/lieu.npz --out results/

`run` trains the `default` preset from params.yaml through the project's own
Trainer and tasks: a SyncNet for --syncnet-steps, then the U-Net for
--unet-steps three times from the same seed: with AMP (what a CUDA run uses),
in float32, and in float32 again (where float32 runs on a GPU drift apart,
that drift is the yardstick for AMP's; the Trainer asks torch for
deterministic kernels, so they should not). Step time is the median interval
between step starts inside an epoch, data loading included, the first epoch
(cuDNN start-up, workers) left out; then the step alone on one batch kept on
the GPU, per batch size, AMP or not, cudnn.benchmark or not. The perceptual
term is off (models/vgg19.pth is not shipped), everything else is the
preset's. Then the render's own torch runner (fp16 autocast, channels_last)
is timed per batch size on the held-out crops, uint8 in and out as the
render pipeline hands them over, against float32, and fp16's output is
compared with float32's. onnxruntime's CUDA provider is timed when the
installed onnxruntime has it.

Nothing in CI runs this; figures go to the README's GPU section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("gpu")

JPEG_QUALITY = 92  # the packed crops must fit the 64 MiB a device call carries


def pack(work: Path, out: Path, resolution_name: str = "328") -> None:
    import cv2
    import pandas as pd

    from synctalk.config import resolution
    from synctalk.face.crop import cut_crop
    from synctalk.media.video import iter_frames

    size = resolution(resolution_name).crop_size
    boxes = np.stack(pd.read_parquet(work / "landmarks.parquet")["crop_box"].to_numpy())
    features = np.load(work / "features.npy")
    blobs = []
    for frame, box in zip(iter_frames(work / "video.mp4"), boxes, strict=True):
        ok, jpeg = cv2.imencode(
            ".jpg", cut_crop(frame, box, size), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise OSError("JPEG encoding failed")
        blobs.append(jpeg.ravel())
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        jpeg=np.concatenate(blobs),
        offsets=offsets,
        features=features,
        resolution=np.array(resolution_name),
    )
    print(f"{out}: {len(blobs)} crops of {size} px, {out.stat().st_size / 1e6:.1f} MB")


def unpack(path: Path):
    import cv2

    from synctalk.config import resolution
    from synctalk.train.data import AvatarFrames

    z = np.load(path)
    jpeg, offsets = z["jpeg"], z["offsets"]
    crops = np.stack(
        [
            cv2.imdecode(jpeg[a:b], cv2.IMREAD_COLOR)
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )
    return AvatarFrames(crops, z["features"], resolution(str(z["resolution"])))


class Report:
    """Results written to <out>/gpu.json after every step, so a cut-short run keeps them."""

    def __init__(self, out: Path):
        self.path = out / "gpu.json"
        self.data: dict = {}

    def __setitem__(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2))
        log.info("%s: %s", key, json.dumps(value))


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def train(task, settings, device, amp: bool, workdir: Path):
    """Train `task`: (trainer, history, peak GPU GiB, per-step seconds, per-step losses).

    Step times are the intervals between the starts of consecutive steps inside
    an epoch (the GPU synchronised at each), so they include waiting for data
    but not validation or the data loader's start at each epoch.
    """
    import torch

    from synctalk.train.trainer import Trainer

    _reset_peak()
    trainer = Trainer(task, settings, device, workdir, amp=amp)
    stamps: list[float] = []
    losses: list[float] = []
    loss = task.loss

    def timed_loss(batch):
        if device.type == "cuda":
            torch.cuda.synchronize()  # the previous step has finished
        stamps.append(time.perf_counter())
        total, parts = loss(batch)
        losses.append(float(total.detach()))
        return total, parts

    task.loss = timed_loss
    history = trainer.fit()
    n = trainer.steps_per_epoch
    intervals = []
    for epoch in range(1, trainer.settings.epochs):  # the first epoch warms up
        within = stamps[epoch * n : (epoch + 1) * n]
        intervals += [b - a for a, b in zip(within, within[1:], strict=False)]
    step_s = statistics.median(intervals) if intervals else float("nan")
    return trainer, history, _peak_gib(), step_s, losses


def run(
    data_path: Path,
    out: Path,
    syncnet_steps: int,
    unet_steps: int,
    epochs: int,
    device_name: str,
    batches: tuple[int, ...],
    frames: int = 0,
    compute_batches: tuple[int, ...] = (8, 32),
    amp_only: bool = False,
) -> None:
    import torch

    from synctalk.config import load_config
    from synctalk.train.tasks import SyncNetTask, UNetTask, train_settings, write_image

    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    device = torch.device(device_name)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    report["machine"] = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
    }
    data = unpack(data_path)
    if frames:
        data = dataclasses.replace(data, crops=data.crops[:frames], features=data.features[:frames])
    config = load_config(REPO / "params.yaml")
    preset = config.presets["default"]
    if preset.geometry != data.geometry:
        raise SystemExit(
            f"{data_path} holds {data.geometry.name} crops, default is {preset.resolution}"
        )
    per_epoch = lambda steps: max(1, steps // epochs)  # noqa: E731
    sync_training = dataclasses.replace(
        preset.syncnet, epochs=epochs, steps_per_epoch=per_epoch(syncnet_steps)
    )
    unet_training = dataclasses.replace(
        preset.unet, epochs=epochs, perceptual_weight=0.0, steps_per_epoch=per_epoch(unet_steps)
    )
    report["setup"] = {
        "frames": len(data),
        "preset": "default",
        "syncnet": dataclasses.asdict(sync_training),
        "unet": dataclasses.asdict(unet_training),
    }
    scratch = Path(tempfile.mkdtemp())

    sync_task = SyncNetTask(data, preset, sync_training)
    trainer, history, peak, step_s, _ = train(
        sync_task,
        train_settings(sync_training, config.num_workers),
        device,
        True,
        scratch / "syncnet",
    )
    syncnet = trainer.model.eval()
    report["syncnet"] = {
        "steps": trainer.total_steps,
        "batch": sync_training.batch_size,
        "step_ms_amp": 1000 * step_s,
        "peak_gib": peak,
        "val": history.val[-1],
    }

    # fp32 twice: how far two runs drift apart anyway (kernels without a
    # deterministic version), the yardstick for AMP's own drift
    unets = {}
    runs = (("amp", True), ("fp32", False), ("fp32_again", False))[: 1 if amp_only else 3]
    for key, amp in runs:
        task = UNetTask(data, preset, unet_training, syncnet).to(device)
        settings = train_settings(unet_training, config.num_workers)
        trainer, history, peak, step_s, losses = train(
            task, settings, device, amp, scratch / f"unet-{key}"
        )
        unets[key] = trainer.model
        write_image(out / f"validation_grid_{key}.png", task.sample_grid(device))
        report[f"unet_{key}"] = {
            "steps": trainer.total_steps,
            "batch": unet_training.batch_size,
            "step_ms": 1000 * step_s,
            "peak_gib": peak,
            "epoch_train_loss": [e["train_loss"] for e in history.train],
            "step_loss": losses,
            "val": history.val[-1],
        }
    if not amp_only:
        report["parity"] = {
            "amp_vs_fp32": _parity(report.data["unet_amp"], report.data["unet_fp32"]),
            "fp32_vs_fp32_again": _parity(report.data["unet_fp32_again"], report.data["unet_fp32"]),
        }
    report["compute_step_ms"] = [
        compute_step_ms(
            data, preset, unet_training, syncnet, device, amp, batch, autotune, config.num_workers
        )
        for batch in compute_batches
        for amp in (True, False)
        for autotune in (False, True)
    ]

    render_throughput(unets["amp"], data, report, device, batches)
    onnx_cuda(unets["amp"], data, report)


def _parity(a: dict, b: dict) -> dict:
    la, lb = np.array(a["step_loss"]), np.array(b["step_loss"])
    last = max(1, len(la) // 4)
    rel = np.abs(la - lb) / np.abs(lb)
    return {
        "speedup": b["step_ms"] / a["step_ms"],
        "first_10_steps_max_rel_diff": float(rel[:10].max()),
        "step_loss_corr": float(np.corrcoef(la, lb)[0, 1]) if len(la) > 2 else float("nan"),
        "median_rel_diff_step_loss": float(np.median(rel)),
        f"mean_loss_last_{last}_steps": [float(la[-last:].mean()), float(lb[-last:].mean())],
        "val_l1": [a["val"]["val_l1"], b["val"]["val_l1"]],
        "val_psnr": [a["val"]["val_psnr"], b["val"]["val_psnr"]],
    }


def compute_step_ms(
    data, preset, training, syncnet, device, amp, batch, autotune, num_workers, steps=30
):
    """The U-Net's train step alone: one batch kept on the GPU, no data loading."""
    import torch

    from synctalk.train.tasks import UNetTask, train_settings
    from synctalk.train.trainer import Trainer

    training = dataclasses.replace(training, batch_size=batch)
    task = UNetTask(data, preset, training, syncnet).to(device)
    settings = train_settings(training, num_workers)
    trainer = Trainer(task, settings, device, Path(tempfile.mkdtemp()), amp=amp)
    # after the Trainer: its seeding turns the autotuner off (deterministic kernels)
    torch.backends.cudnn.benchmark = autotune
    task.train_set.set_epoch(0)
    fixed = trainer._to_device(next(iter(trainer._loader(task.train_set))))
    for _ in range(5):
        trainer.train_step(fixed)
    _reset_peak()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(fixed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = 1000 * (time.perf_counter() - started) / steps
    torch.backends.cudnn.benchmark = False
    return {
        "batch": batch,
        "amp": amp,
        "cudnn_benchmark": autotune,
        "ms": ms,
        "frames_s": 1000 * batch / ms,
        "peak_gib": _peak_gib(),
    }


def _held_out(data, spec, n: int):
    """uint8 crops [n,3,S,S] and float32 audio windows of the held-out frames (cycled)."""
    _, val = data.split()
    frames = np.resize(val, n)
    x0, y0, x1, y1 = data.geometry.inner_box
    crops = np.stack([data.crops[i, y0:y1, x0:x1].transpose(2, 0, 1) for i in frames])
    audio = np.stack([data.audio(int(i), spec.audio_shape) for i in frames])
    return np.ascontiguousarray(crops), audio


def render_throughput(unet, data, report: Report, device, batches: tuple[int, ...]) -> None:
    import torch

    from synctalk.models.unet import make_unet_input
    from synctalk.render.engine import _TorchRunner

    runner = _TorchRunner(unet, device, batch_size=max(batches))
    spec = runner.spec

    @torch.inference_mode()
    def fp32(crops, audio):
        c = torch.from_numpy(crops).to(device).float().div_(255)
        image = make_unet_input(c, c, spec).contiguous(memory_format=torch.channels_last)
        out = runner.model(image, torch.from_numpy(audio).to(device))
        return out.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()

    fp16 = lambda crops, audio: runner.infer(runner.prepare(crops, audio))  # noqa: E731
    rows = []
    for batch in batches:
        crops, audio = _held_out(data, spec, batch)
        row = {"batch": batch}
        for name, fn in (("fp16", fp16), ("fp32", fp32)):
            for _ in range(3):
                fn(crops, audio)
            _reset_peak()
            calls, started = 0, time.perf_counter()
            while calls < 5 or time.perf_counter() - started < 2.0:
                fn(crops, audio)
                calls += 1
            seconds = time.perf_counter() - started
            row[f"{name}_frames_s"] = calls * batch / seconds
            row[f"{name}_peak_gib"] = _peak_gib()
        rows.append(row)
    report["render_328"] = rows

    n = max(batches)
    crops, audio = _held_out(data, spec, n)
    a = np.asarray(fp16(crops, audio), dtype=np.float32)
    b = np.asarray(fp32(crops, audio), dtype=np.float32)
    mse = float(np.mean((a - b) ** 2))
    report["fp16_vs_fp32"] = {
        "frames": n,
        "max_abs_u8": float(np.abs(a - b).max()),
        "mean_abs_u8": float(np.abs(a - b).mean()),
        "psnr_db": 10 * np.log10(255**2 / max(mse, 1e-12)),
    }


def onnx_cuda(unet, data, report: Report) -> None:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    entry = {"onnxruntime": ort.__version__, "providers": providers}
    if "CUDAExecutionProvider" not in providers:
        report["onnxruntime_cuda"] = {**entry, "measured": False}
        return
    import torch

    from synctalk.models.unet import make_unet_input
    from synctalk.render.onnx import export_unet

    path = export_unet(unet, Path(tempfile.mkdtemp()) / "unet.onnx")
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    crops, audio = _held_out(data, unet.spec, 16)
    c = torch.from_numpy(crops).float() / 255
    image = make_unet_input(c, c, unet.spec).numpy()
    feeds = dict(zip([i.name for i in session.get_inputs()], (image, audio), strict=False))
    for _ in range(3):
        session.run(None, feeds)
    started, calls = time.perf_counter(), 30
    for _ in range(calls):
        session.run(None, feeds)
    entry["fp32_batch16_frames_s"] = calls * 16 / (time.perf_counter() - started)
    report["onnxruntime_cuda"] = {**entry, "measured": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a prepared avatar for the GPU machine (run here)")
    p.add_argument("--work", type=Path, required=True, help="an avatar's data/work/<name>")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="train and render on the GPU (run there)")
    r.add_argument("--data", type=Path, required=True, help="the file `pack` wrote")
    r.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    r.add_argument("--syncnet-steps", type=int, default=300)
    r.add_argument("--unet-steps", type=int, default=200)
    r.add_argument("--epochs", type=int, default=10, help="steps are split over this many")
    r.add_argument("--device", default="cuda", help="cpu only to try the script out")
    r.add_argument(
        "--compute-batches", default="8,32", help="batch sizes of the loader-free step timing"
    )
    r.add_argument("--amp-only", action="store_true", help="train the U-Net once, with AMP")
    r.add_argument("--frames", type=int, default=0, help="use the first N frames (0: all)")
    r.add_argument("--batches", default="1,8,16,32,64,128", help="render batch sizes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "pack":
        pack(args.work, args.out)
    else:
        batches = tuple(int(b) for b in args.batches.split(","))
        run(
            args.data,
            args.out,
            args.syncnet_steps,
            args.unet_steps,
            args.epochs,
            args.device,
            batches,
            args.frames,
            tuple(int(b) for b in args.compute_batches.split(",") if b),
            args.amp_only,
        )


if __name__ == "__main__":
    main()
