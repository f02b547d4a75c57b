"""Prefect flows: thin shells over synctalk (train.py, render.py, serve.py)."""

from synctalk.tracking import apply_offline_env

# Before Prefect reads its settings: no telemetry from offline machines.
apply_offline_env()
