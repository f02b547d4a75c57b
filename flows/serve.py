"""Serve the deployments from this process: the nightly schedule, batches, training.

    python -m flows.serve          # or: synctalk serve

Runs against the Prefect API at $PREFECT_API_URL (e.g. a local
`prefect server start`, which listens on 127.0.0.1:4200). The process stays
up and executes the runs it is given: `nightly/nightly` on its schedule, and
any `prefect deployment run render/batch --param avatar=bob` or
`prefect deployment run train/avatar --param avatar=bob`. Files render in
the batch's own process here; to spread them over several machines, deploy
to a work pool instead (flows.deploy, `synctalk deploy --pool NAME`).
"""

from __future__ import annotations

import flows  # noqa: F401  (offline settings before Prefect starts)
from flows.deploy import deployments


def main() -> None:
    from prefect import serve

    serve(*deployments(pool=False))


if __name__ == "__main__":
    main()
