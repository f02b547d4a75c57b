import logging

from synctalk import progress as progress_module
from synctalk.progress import progress


def test_long_loops_log_their_progress_off_a_terminal(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)  # a line per step
    caplog.set_level(logging.INFO, logger="synctalk.progress")
    assert list(progress(range(4), "training", unit="step")) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].startswith("training: 4/4 steps (100%)") and len(lines) == 4
    caplog.clear()
    with progress(None, "render", total=10) as bar:
        bar.update(5)
    assert caplog.records[0].getMessage().startswith("render: 5/10 frames (50%), about")
