"""DVC stage `render@<avatar>`: render every audio file of the avatar's inbox.

data/inbox/<avatar>/ -> data/renders/<avatar>/, with the avatar's `@champion`
(or, with a warning in the log, its newest version when none is promoted),
through the same render keys and ledger as the Prefect `render` flow and
`synctalk render`: a file already rendered by that model, with its video
unchanged on disk, is skipped. The stage is `always_changed` (see
stages/contract.py): which renders are up to date depends on the registry's
aliases, which DVC cannot see, and the ledger can. In a `dvc exp run`
experiment it renders nothing: production renders do not change with an
experiment.
"""

from __future__ import annotations

import logging

from stages._common import dvc_experiment, run_stage
from synctalk.config import Config
from synctalk.paths import AvatarPaths
from synctalk.render.batch import AUDIO_SUFFIXES, render_batch

log = logging.getLogger("stages.render")


def render(name: str, config: Config, paths: AvatarPaths) -> None:
    paths.renders.mkdir(parents=True, exist_ok=True)  # the stage's out, even when idle
    experiment = dvc_experiment()
    if experiment is not None:  # the inbox's renders are the workspace pipeline's
        log.info("%s: experiment %s renders nothing (renders use @champion)", name, experiment)
        return
    pattern = config.nightly.glob
    inbox = paths.inbox
    waiting = inbox.is_dir() and any(
        p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES for p in inbox.glob(pattern)
    )
    if not waiting:
        log.info("%s: no audio in %s (matching %r): nothing to render", name, inbox, pattern)
        return
    records = render_batch(config, name, inbox, paths.renders, None, pattern)
    counts = {s: [r for r in records if r.status == s] for s in ("done", "skipped", "failed")}
    log.info(
        "%s: %d rendered, %d up to date, %d failed -> %s",
        name,
        len(counts["done"]),
        len(counts["skipped"]),
        len(counts["failed"]),
        paths.renders,
    )
    if counts["failed"]:
        failed = ", ".join(f"{r.audio_path} ({r.error})" for r in counts["failed"])
        raise RuntimeError(f"{len(counts['failed'])} of {len(records)} files failed: {failed}")


if __name__ == "__main__":
    run_stage("render", __doc__, render)
