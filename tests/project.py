"""Scratch copies of the project for tests that run DVC stages the way users do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from tests.conftest import REPO

# What a project checkout needs for `dvc repro` (the rest is tests and docs).
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "stages", "synctalk", "models", ".dvc"]


def make_project(tmp: Path) -> Path:
    root = tmp / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy2(src, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def set_params(root: Path, **sections) -> None:
    yaml = YAML()
    data = yaml.load((root / "params.yaml").read_text())
    for section, values in sections.items():
        for key, value in values.items():
            data[section][key] = value
    with open(root / "params.yaml", "w") as f:
        yaml.dump(data, f)


def run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]
