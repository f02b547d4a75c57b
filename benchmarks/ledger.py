"""The renders ledger at scale: one append and one "is this key done?" on a large ledger.

    .venv/bin/python benchmarks/ledger.py                 # 100,000 records, target 20 ms
    .venv/bin/python benchmarks/ledger.py --records 20000 --keep /tmp/ledger

Builds a ledger the way nightly batches do (appends of a batch's records,
parts merged by `check` at batch start), every record `done` with its index
entry (the worst case for the index), then times, each as the median and the
slowest of --repeat tries:

- append: one record (a new Parquet file plus its index entry);
- is_done: a random key of the history, with its output on disk (a 1 MB
  file, hashed: the check that the video is still the one rendered);
- lookup: the same without hashing the output (the ledger's own cost);
and, for the record, the batch-start `check` and a full `pd.read_parquet`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from synctalk.hashing import file_sha256
from synctalk.render.ledger import RenderLedger, RenderRecord

TARGET_MS = 20.0


def record(i: int, output: Path, sha: str, batch: str) -> RenderRecord:
    return RenderRecord(
        avatar=f"avatar{i % 20}",
        audio_path=f"/inbox/avatar{i % 20}/clip{i}.wav",
        audio_sha256=f"{i:064x}",
        model_name=f"avatar-avatar{i % 20}",
        model_version="3",
        key=f"{i:064x}",
        output_path=str(output),
        status="done",
        duration_s=4.0,
        frames=100,
        seconds=3.2,
        output_sha256=sha,
        batch_id=batch,
        worker="w1",
    )


def timed(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), max(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="records per append when building")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--keep", help="build the ledger here (default: a temporary folder)")
    args = parser.parse_args()

    folder = Path(args.keep or tempfile.mkdtemp(prefix="ledger-bench-"))
    ledger = RenderLedger(folder / "renders.parquet")
    outputs = folder / "renders"
    outputs.mkdir(parents=True, exist_ok=True)
    video = outputs / "typical.mp4"
    video.write_bytes(os.urandom(1 << 20))  # a 4 s render at 512x512 is about this size
    sha = file_sha256(video)

    started = time.perf_counter()
    for first in range(0, args.records, args.batch):
        batch = [
            record(i, outputs / f"clip{i}.mp4", sha, f"b{first}")
            for i in range(first, min(first + args.batch, args.records))
        ]
        ledger.append(*batch)
        if first // args.batch % 64 == 63:
            ledger.check()  # what each batch start does: merges the parts
    ledger.check()
    build = time.perf_counter() - started
    files = len(list(ledger.path.glob("*.parquet")))
    print(
        f"ledger: {args.records:,} records in {files} Parquet files (+ index), built in "
        f"{build:.0f} s, at {ledger.path}"
    )

    rng = random.Random(0)
    n = args.records

    def append() -> None:
        i = n + rng.randrange(10**9)
        ledger.append(record(i, outputs / f"new{i}.mp4", sha, "bench"))

    # lookups of outputs that are on disk: re-point a sample of keys at the real file
    sample = [rng.randrange(n) for _ in range(args.repeat)]
    ledger.append(*(record(i, video, sha, "bench") for i in sample))
    picks = iter(sample * 2)

    def done_lookup() -> None:
        assert ledger.is_done(f"{next(picks):064x}", video)

    def index_lookup() -> None:
        assert ledger.done_record(f"{next(picks):064x}", video) is not None

    results = {
        "append one record": timed(append, args.repeat),
        "is this key done? (index + output sha256)": timed(done_lookup, args.repeat),
        "is this key done? (index only)": timed(index_lookup, args.repeat),
    }
    ok = True
    for name, (median, worst) in results.items():
        passed = median < TARGET_MS
        ok &= passed
        print(
            f"{name:45s} median {median:6.2f} ms, slowest {worst:6.2f} ms  "
            f"{'PASS' if passed else 'FAIL'} (< {TARGET_MS:g} ms)"
        )
    check_ms, _ = timed(ledger.check, 3)
    import pandas as pd

    read_ms, _ = timed(lambda: pd.read_parquet(ledger.path), 3)
    print(f"{'batch start (check: verify, merge)':45s} median {check_ms:6.0f} ms")
    print(f"{'pd.read_parquet of the whole ledger':45s} median {read_ms:6.0f} ms")
    if not args.keep:
        shutil.rmtree(folder)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
