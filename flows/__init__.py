"""Prefect flows: thin shells over synctalk (render.py, train.py, serve.py, deploy.py)."""

import logging

from synctalk.tracking import apply_offline_env

# Before Prefect reads its settings: no telemetry from offline machines.
apply_offline_env()


def ship_library_logs() -> None:
    """Send the library's log records (`synctalk.*`) to the run's logs in the Prefect API,
    however this process was started (serve, a worker, a plain call)."""
    from prefect.logging.handlers import APILogHandler

    library = logging.getLogger("synctalk")
    library.setLevel(logging.INFO)
    if not any(isinstance(h, APILogHandler) for h in library.handlers):
        library.addHandler(APILogHandler())
