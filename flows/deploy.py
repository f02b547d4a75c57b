"""The deployments, for `synctalk serve` (one process) or a work pool (many workers).

    synctalk deploy --pool renders     # = python -m flows.deploy --pool renders

registers on the Prefect API ($PREFECT_API_URL) and a work pool (a process
pool, created if missing):

- `nightly/nightly`: on `nightly.cron` in `nightly.timezone`, every avatar's
  inbox (flows.render.nightly);
- `render/batch`: one folder of audio for one avatar;
- `render-file/file`: one audio file; batch and nightly start one such run
  per file, so every worker of the pool takes files; at most
  `nightly.max_parallel` run at once (a deployment concurrency limit);
- `train/avatar`: an avatar's stages up to evaluation.

Then start workers where the renders should run, each in a checkout of the
project at the same path: `prefect worker start --pool renders`.
"""

from __future__ import annotations

import argparse

import flows  # noqa: F401  (offline settings before Prefect starts)
from flows.render import DEFAULTS, FILE_DEPLOYMENT, job_environment, nightly, render, render_one
from flows.train import ROOT, train


def deployments(pool: bool) -> list:
    """The four deployments; for a work pool, the per-file fan-out is switched on and the
    runs get the project folder and the environment they need."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    fan_out = {"file_deployment": FILE_DEPLOYMENT} if pool else {}
    common = {}
    if pool:
        common = {
            # workers import the flows from the project, which they run in
            "entrypoint_type": EntrypointType.MODULE_PATH,
            "job_variables": {"working_dir": str(ROOT), "env": job_environment()},
        }
    return [
        nightly.to_deployment(
            name="nightly",
            schedule=Cron(DEFAULTS.cron, timezone=DEFAULTS.timezone),
            parameters=fan_out,
            description="Every avatar with new or changed audio in data/inbox/<avatar>/.",
            **common,
        ),
        render.to_deployment(
            name="batch",
            parameters=fan_out,
            description="Render one avatar saying every new audio file of a folder.",
            **common,
        ),
        render_one.to_deployment(
            name="file",
            concurrency_limit=max(1, DEFAULTS.max_parallel),
            description="Render one audio file (started by render/batch and nightly).",
            **common,
        ),
        train.to_deployment(
            name="avatar",
            description="Bring one avatar's models up to date (its DVC stages, in order).",
            **common,
        ),
    ]


def deploy(pool: str) -> list[str]:
    """Register the deployments on work pool `pool` (a process pool, created if missing)."""
    from prefect import deploy as prefect_deploy
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    items = deployments(pool=True)
    prefect_deploy(
        *items,
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return [f"{d.flow_name}/{d.name}" for d in items]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__)
    parser.add_argument("--pool", required=True, help="work pool name")
    args = parser.parse_args(argv)
    for name in deploy(args.pool):
        print(f"deployed {name} to work pool {args.pool}")


if __name__ == "__main__":
    main()
