"""Serve the deployments: `render/batch` on the nightly cron, and `train/avatar`.

    python -m flows.serve          # or: synctalk serve

Runs against the Prefect API at $PREFECT_API_URL (e.g. a local
`prefect server start`, which listens on 127.0.0.1:4200). The process stays
up and executes the runs it is given: the nightly schedule, and any
`prefect deployment run render/batch --param avatar=bob --param audio_dir=...`.
"""

from __future__ import annotations

import flows  # noqa: F401  (offline settings before Prefect starts)
from flows.render import DEFAULTS, render
from flows.train import train


def main() -> None:
    from prefect import serve

    batch = render.to_deployment(
        name="batch",
        cron=DEFAULTS.cron,
        description="Nightly batch render: every new or changed audio file of audio_dir.",
    )
    avatar = train.to_deployment(
        name="avatar", description="Bring one avatar's models up to date (dvc repro)."
    )
    serve(batch, avatar)


if __name__ == "__main__":
    main()
