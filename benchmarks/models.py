"""U-Net speed per preset: parameters, GFLOP/frame, eager and onnxruntime ms/frame.

    python benchmarks/models.py                 # CPU: eager + onnxruntime, batch 1
    python benchmarks/models.py --device cuda --batch 32 --amp

Reference on the 2-core CI CPU (original SyncTalk_2D U-Net-328): eager 306 ms,
onnxruntime 51 ms per frame. Batching made CPU per-frame time worse; on a
GPU, batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synctalk.device import resolve_device  # noqa: E402
from synctalk.models import build_unet  # noqa: E402
from synctalk.render.onnx import OnnxUNet, example_inputs, export_unet  # noqa: E402


def _time_ms(fn, repeats: int, warmup: int = 2, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench(preset: str, mobile: bool, args: argparse.Namespace) -> dict[str, str]:
    device = resolve_device(args.device)
    model = build_unet(preset, mobile=mobile).eval()
    params = sum(p.numel() for p in model.parameters())
    one = example_inputs(model, batch=1)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(*one)
    gflop = counter.get_total_flops() / 1e9

    image, audio = (t.to(device) for t in example_inputs(model, batch=args.batch))
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def eager():
        with torch.inference_mode(), torch.autocast(device.type, enabled=args.amp):
            model(image, audio)

    row = {
        "preset": preset + (" mobile" if mobile else ""),
        "params": f"{params:,}",
        "GFLOP/frame": f"{gflop:.2f}",
        f"eager ms/frame ({device.type}, b{args.batch}{', amp' if args.amp else ''})": (
            f"{_time_ms(eager, args.repeats, sync=sync) / args.batch:.1f}"
        ),
    }
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            runner = OnnxUNet(
                export_unet(build_unet(preset, mobile=mobile).eval(), Path(tmp) / "u.onnx")
            )
            x, a = (t.numpy() for t in example_inputs(model, batch=args.batch))
            row[f"onnxruntime ms/frame (cpu, b{args.batch})"] = (
                f"{_time_ms(lambda: runner(x, a), args.repeats) / args.batch:.1f}"
            )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["160", "328"], choices=["160", "328"])
    parser.add_argument("--mobile", action="store_true", help="also time the half-width models")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="autocast (CUDA: float16)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [bench(p, False, args) for p in args.presets]
    if args.mobile:
        rows += [bench(p, True, args) for p in args.presets]
    for row in rows:
        print("  ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
