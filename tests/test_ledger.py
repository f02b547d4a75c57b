"""The renders ledger, output names and the sweep of temporaries: no renders involved."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synctalk.atomic import atomic_path, staging_dir, sweep_stale_temps, writer_of
from synctalk.process import ProcessId, current_process
from synctalk.render import ledger as ledger_module
from synctalk.render.batch import output_paths
from synctalk.render.ledger import RenderLedger, RenderRecord, recent_records

REPO = Path(__file__).resolve().parents[1]


def _record(i: int, output: Path, status: str = "done", batch: str = "b1", **kw) -> RenderRecord:
    return RenderRecord(
        avatar=kw.pop("avatar", "bob"),
        audio_path=f"/in/clip{i}.wav",
        audio_sha256=f"a{i}",
        model_name="avatar-bob",
        model_version="1",
        key=kw.pop("key", f"k{i}"),
        output_path=str(output),
        status=status,
        batch_id=batch,
        **kw,
    )


def _render(output: Path, content: bytes) -> str:
    """Pretend to render: write the output, return its sha256."""
    from synctalk.hashing import file_sha256

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(content)
    return file_sha256(output)


def test_done_means_the_output_still_holds_the_recorded_render(tmp_path):
    ledger = RenderLedger(tmp_path / "renders.parquet")
    out = tmp_path / "bob" / "clip0.mp4"
    assert not ledger.is_done("k0", out)
    ledger.append(_record(0, out, output_sha256=_render(out, b"version 1 render")))
    assert ledger.is_done("k0", out)
    assert not ledger.is_done("k0", tmp_path / "elsewhere.mp4")  # another output
    assert not ledger.is_done("k1", out)  # another key
    out.write_bytes(b"another model's render, same name")  # overwritten by hand
    assert not ledger.is_done("k0", out)
    out.unlink()
    assert not ledger.is_done("k0", out)
    # failed and skipped records never make a key done
    ledger.append(_record(1, tmp_path / "x.mp4", status="failed", error="bad"))
    assert not ledger.is_done("k1", tmp_path / "x.mp4")
    # the ledger is a Parquet dataset pandas reads, with every record once
    frame = pd.read_parquet(ledger.path)
    assert sorted(frame["status"]) == ["done", "failed"]
    assert ledger.read().num_rows == 2


def test_appends_never_rewrite_history(tmp_path):
    ledger = RenderLedger(tmp_path / "renders.parquet")
    ledger.append(_record(0, tmp_path / "a.mp4", status="failed"))
    (first,) = ledger.path.glob("part-*.parquet")
    stamp = first.stat().st_mtime_ns
    for i in range(1, 4):
        ledger.append(_record(i, tmp_path / f"{i}.mp4", status="skipped"))
    assert first.stat().st_mtime_ns == stamp
    assert len(list(ledger.path.glob("part-*.parquet"))) == 4


def test_two_processes_appending_500_records_each_lose_nothing(tmp_path):
    path = tmp_path / "renders.parquet"
    writer = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from synctalk.render.ledger import RenderLedger, RenderRecord
        ledger = RenderLedger(Path({str(path)!r}))
        tag = sys.argv[1]
        for i in range(500):
            ledger.append(RenderRecord(avatar="bob", audio_path=f"{{tag}}-{{i}}.wav",
                audio_sha256="", model_name="m", model_version="1", key=f"{{tag}}-{{i}}",
                output_path=f"/out/{{tag}}-{{i}}.mp4", status="failed", batch_id=tag))
            if i % 100 == 50:
                ledger.check()  # merges parts while the other process appends
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, tag], cwd=REPO) for tag in ("p1", "p2")
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    ledger = RenderLedger(path)
    ledger.check()
    table = ledger.read()
    keys = table.column("key").to_pylist()
    assert len(keys) == 1000 and len(set(keys)) == 1000
    assert len(set(table.column("record_id").to_pylist())) == 1000
    assert len(pd.read_parquet(path)) == 1000  # what users read: no duplicate either


def test_a_truncated_ledger_file_is_set_aside_and_its_done_records_restored(tmp_path, caplog):
    ledger = RenderLedger(tmp_path / "data" / "renders" / "renders.parquet")
    outs = [tmp_path / f"clip{i}.mp4" for i in range(3)]
    ledger.append(
        _record(0, outs[0], output_sha256=_render(outs[0], b"0")),
        _record(9, tmp_path / "x.mp4", status="failed", error="silent"),
    )
    ledger.append(_record(1, outs[1], output_sha256=_render(outs[1], b"1")))
    first = sorted(ledger.path.glob("part-*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])  # truncated: its footer is gone
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises for it
        pd.read_parquet(ledger.path)

    report = ledger.check()
    assert [p.name for p in report.set_aside] == [first.name]
    aside = report.set_aside[0]
    assert aside.parent.name.startswith("renders.parquet.corrupt-") and aside.is_file()
    assert first.name in caplog.text and "damaged" in caplog.text
    assert report.recovered == 1  # clip0's done record, from the index
    frame = pd.read_parquet(ledger.path)
    assert sorted(frame["key"]) == ["k0", "k1"]  # the failed record is lost with its file
    assert ledger.is_done("k0", outs[0]) and ledger.is_done("k1", outs[1])
    assert ledger.check().recovered == 0  # nothing more to do


def test_a_one_file_ledger_of_an_earlier_version_is_converted(tmp_path):
    path = tmp_path / "renders.parquet"
    out = tmp_path / "clip.mp4"
    _render(out, b"old render")
    old = pa.table(
        {
            "avatar": ["bob"],
            "audio_path": ["/in/clip.wav"],
            "audio_sha256": ["a"],
            "model_name": ["avatar-bob"],
            "model_version": ["1"],
            "key": ["k"],
            "output_path": [str(out)],
            "status": ["done"],
            "error": [""],
            "duration_s": [1.0],
            "frames": [25],
            "started_at": pa.array([pd.Timestamp.now(tz="UTC")], pa.timestamp("us", "UTC")),
            "seconds": [2.0],
        }
    )
    pq.write_table(old, path)
    ledger = RenderLedger(path)
    assert ledger.read().num_rows == 1
    report = ledger.check()
    assert path.is_dir() and report.converted is not None and report.converted.is_file()
    assert ledger.is_done("k", out)  # as before the upgrade
    ledger.append(_record(1, tmp_path / "y.mp4", status="failed"))
    assert len(pd.read_parquet(path)) == 2

    damaged = tmp_path / "other" / "renders.parquet"
    damaged.parent.mkdir()
    damaged.write_bytes(b"PAR1 not really")
    report = RenderLedger(damaged).check()
    assert report.set_aside[0].name.startswith("renders.parquet.corrupt-")
    assert damaged.is_dir()


def test_merging_keeps_every_record_once(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "COMPACT_PARTS", 4)
    ledger = RenderLedger(tmp_path / "renders.parquet")
    for i in range(10):
        ledger.append(_record(i, tmp_path / f"{i}.mp4", status="skipped"))
    report = ledger.check()
    assert report.merged == 10
    assert [p.name.split("-")[0] for p in ledger.path.glob("*.parquet")] == ["compact"]
    assert sorted(ledger.read().column("key").to_pylist()) == sorted(f"k{i}" for i in range(10))
    # A merge caught between writing its file and removing its parts: no duplicates read.
    merged = next(ledger.path.glob("compact-*.parquet"))
    (ledger.path / "part-copy.parquet").write_bytes(merged.read_bytes())
    assert ledger.read().num_rows == 10


def test_status_shows_each_avatars_latest_batch(tmp_path):
    ledger = RenderLedger(tmp_path / "renders.parquet")
    ledger.append(_record(0, tmp_path / "0.mp4", batch="old"))
    ledger.append(
        _record(1, tmp_path / "1.mp4", batch="new", status="failed"),
        _record(2, tmp_path / "2.mp4", batch="new", status="skipped"),
    )
    ledger.append(_record(3, tmp_path / "3.mp4", batch="amy1", avatar="amy"))
    latest = recent_records(ledger)
    assert sorted((r.avatar, r.key) for r in latest) == [
        ("amy", "k3"),
        ("bob", "k1"),
        ("bob", "k2"),
    ]
    assert [r.key for r in recent_records(ledger, avatar="bob", failed_only=True)] == ["k1"]
    since = pd.Timestamp("2000-01-01", tz="UTC").to_pydatetime()
    assert len(recent_records(ledger, since=since)) == 4


# --------------------------------------------------------------------------
# output names


def test_files_sharing_a_stem_keep_their_extension(tmp_path):
    files = [tmp_path / n for n in ("dup.wav", "dup.mp3", "solo.flac", "Case.wav", "case.m4a")]
    names = {f.name: out.name for f, out in output_paths(files, tmp_path / "out").items()}
    assert names == {
        "dup.wav": "dup.wav.mp4",
        "dup.mp3": "dup.mp3.mp4",
        "solo.flac": "solo.mp4",
        "Case.wav": "Case.wav.mp4",
        "case.m4a": "case.m4a.mp4",
    }


def test_an_output_that_would_replace_an_input_is_refused(tmp_path):
    files = [tmp_path / "talk.mp4", tmp_path / "other.wav"]
    with pytest.raises(ValueError, match="talk.mp4 would render to .*talk.mp4, which is one"):
        output_paths(files, tmp_path)
    # two folders' files (a single file and a folder, say) that still collide
    same = [tmp_path / "A.WAV", tmp_path / "a.wav", tmp_path / "x" / "A.wav"]
    with pytest.raises(ValueError, match="would both render to"):
        output_paths(same, tmp_path / "out")


# --------------------------------------------------------------------------
# temporaries of killed processes


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from synctalk.atomic import atomic_path, staging_dir
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half a video")
    staging_dir(Path(sys.argv[1]).parent, "extract")
    os.kill(os.getpid(), signal.SIGKILL)  # no chance to clean up
"""


def test_temporaries_of_killed_processes_are_swept_and_live_ones_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="synctalk.atomic")
    target = tmp_path / "out" / "clip.mp4"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], cwd=REPO)
    assert proc.returncode == -9
    left = sorted(p.name for p in target.parent.iterdir())
    assert len(left) == 2 and all(n.startswith(".") and n.endswith(".tmp") for n in left)
    assert not target.exists()

    with atomic_path(tmp_path / "out" / "mine.mp4") as live:  # this process: still running
        live.write_bytes(b"in progress")
        ours = staging_dir(tmp_path / "out", "render")
        (tmp_path / "out" / "notes.tmp").write_text("not ours")  # not a temporary of ours
        removed = sweep_stale_temps([tmp_path / "out", tmp_path / "missing"])
        assert sorted(p.name for p in removed) == left
        assert live.exists() and ours.is_dir() and (tmp_path / "out" / "notes.tmp").exists()
        assert writer_of(live) == current_process()
    assert "no longer runs" in caplog.text


def test_other_machines_temporaries_are_left_until_old(tmp_path):
    me = current_process()
    foreign = tmp_path / f".clip.mp4.st-{me.pid}-{me.start}-00000000.abcdefgh.tmp"
    foreign.write_bytes(b"x")
    assert writer_of(foreign) == ProcessId(me.pid, me.start, "00000000")
    assert sweep_stale_temps([tmp_path]) == []
    old = 2 * 24 * 3600
    os.utime(foreign, (foreign.stat().st_atime - old, foreign.stat().st_mtime - old))
    assert sweep_stale_temps([tmp_path]) == [foreign]


def test_index_entries_are_small_json(tmp_path):
    ledger = RenderLedger(tmp_path / "renders.parquet")
    out = tmp_path / "a.mp4"
    ledger.append(_record(0, out, output_sha256=_render(out, b"a")))
    (entry,) = ledger.index.glob("*/*.json")
    data = json.loads(entry.read_text())
    assert data["key"] == "k0" and data["output_sha256"] and entry.stat().st_size < 2000


def test_the_render_key_changes_with_each_input():
    from synctalk.config import RenderParams
    from synctalk.render.ledger import render_key

    base = ("avatar-bob", "1", "weights", "audio", RenderParams())
    key = render_key(*base)
    assert render_key(*base) == key
    assert render_key("avatar-bob", "2", "weights", "audio", RenderParams()) != key
    assert render_key("avatar-bob", "1", "other", "audio", RenderParams()) != key
    assert render_key("avatar-bob", "1", "weights", "other", RenderParams()) != key
    assert render_key("avatar-bob", "1", "weights", "audio", RenderParams(crf=20)) != key
    # speed settings do not change pixels
    assert render_key("avatar-bob", "1", "weights", "audio", RenderParams(batch_size=2)) == key
    # int8 renders other pixels; its bar means nothing in fp32, and leaving both out in fp32
    # kept the keys made before render.precision existed
    assert render_key(*base[:4], RenderParams(precision="int8")) != key
    assert render_key(*base[:4], RenderParams(int8_min_psnr=50.0)) == key


def test_bad_input_is_told_from_transient_faults():
    import errno

    from synctalk.media.audio import AudioError
    from synctalk.media.ffmpeg import MediaError
    from synctalk.render.avatar import RenderError
    from synctalk.render.batch import is_bad_input
    from synctalk.render.engine import EncodeError

    for bad in (
        AudioError("x.wav: cannot decode"),
        MediaError("x"),
        RenderError("silent"),
        FileNotFoundError("x.wav"),
    ):
        assert is_bad_input(bad), bad
    for transient in (
        EncodeError("ffmpeg: No space left on device"),
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("oom"),
    ):
        assert not is_bad_input(transient), transient
