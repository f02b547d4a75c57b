"""What every stage shares: arguments, logging, config, one clear error on failure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from stages.lineage import lineage
from synctalk.atomic import atomic_path, sweep_stale_temps
from synctalk.config import Config, ConfigError, load_config
from synctalk.paths import AvatarPaths
from synctalk.tracking import EXPERIMENT_TAG, RUN_TAGS, tracking_uri

log = logging.getLogger("stages")


def dvc_experiment() -> str | None:
    """The experiment this stage runs in, when `dvc exp run` runs it (in the workspace,
    --temp or from the queue: DVC names every experiment in DVC_EXP_NAME); None in a
    plain `dvc repro`. An experiment's versions are tagged as such and move no alias."""
    return os.environ.get("DVC_EXP_NAME") or None


def _use_the_projects_store() -> None:
    """`dvc exp run --temp` and the queue run stages in a copy of the project under
    .dvc/tmp/exps/, and DVC_ROOT names the project itself: its runs and versions belong
    in the project's tracking store, not in a database made in the copy and deleted
    with it."""
    project = os.environ.get("DVC_ROOT")
    if project and not os.environ.get("MLFLOW_TRACKING_URI"):
        if Path(project).resolve() != Path.cwd().resolve():
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(Path(project))


def write_json(path: Path, data) -> None:
    """Metrics or plot data for DVC, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def sweep_avatar(paths: AvatarPaths) -> None:
    """Remove the temporary files and folders killed stages of this avatar left behind."""
    sweep_stale_temps([paths.work, paths.models, paths.avatar_dir])
    sweep_stale_temps([paths.training_states, paths.eval_dir], recursive=True)


def run_stage(
    name: str, description: str, body: Callable[[str, Config, AvatarPaths], None]
) -> None:
    """Parse `<avatar> [--params]`, run `body`, exit 1 with one error line on failure."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=description)
    parser.add_argument("avatar", help="avatar name, as listed under `avatars:` in params.yaml")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.params)
        if args.avatar not in config.avatars:
            raise ConfigError(
                f"unknown avatar {args.avatar!r}; {args.params} lists {sorted(config.avatars)}"
            )
        paths = AvatarPaths(args.avatar, Path("."))
        sweep_avatar(paths)
        _use_the_projects_store()
        RUN_TAGS.update(lineage(name, args.avatar, config, Path(args.params)))
        if dvc_experiment():
            RUN_TAGS[EXPERIMENT_TAG] = dvc_experiment()
        body(args.avatar, config, paths)
    except Exception as exc:  # one readable line for DVC's log, the trace at debug level
        log.debug("stage %s failed", name, exc_info=True)
        log.error("%s@%s failed: %s", name, args.avatar, exc)
        sys.exit(1)
