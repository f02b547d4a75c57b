"""What a stage's result came from, as tags on its MLflow run (and on the version the
U-Net stage registers): the code (git commit, and whether the tree had uncommitted
changes), the source video's md5, the md5 of every dependency in the stage's contract
(for files what dvc.lock records for this run) and the values of its DVC params.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from stages.contract import STAGES, code_deps
from synctalk.config import Config

LINEAGE_TAGS = ("source_md5", "dvc_deps_md5", "dvc_params")


def _md5(path: Path) -> str:
    """A file's md5; a folder's as DVC computes it (dvc.lock's `<md5>.dir`): the md5 of
    the JSON list of its files' md5s and relative paths, sorted by path."""
    if path.is_dir():
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        entries = [{"md5": _md5(path / f), "relpath": f} for f in files]
        return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve(template: str, name: str, config: Config) -> str:
    avatar = config.avatars[name]
    return (
        template.replace("${key}", name)
        .replace("${item.video}", avatar.video)
        .replace("${item.preset}", avatar.preset)
    )


def _lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


def lineage(stage: str, name: str, config: Config, params_file: Path) -> dict[str, str]:
    """Tags for the runs of `stage@name`, read from the workspace it runs in."""
    contract = next(s for s in STAGES if s.name == stage)
    deps = [_resolve(str(d), name, config) for d in contract.deps] + code_deps(stage, Path("."))
    raw = yaml.safe_load(params_file.read_text())
    params = {(key := _resolve(p, name, config)): _lookup(raw, key) for p in contract.params}
    return {
        "source_md5": _md5(Path(config.avatars[name].video)),
        "dvc_deps_md5": json.dumps({d: _md5(Path(d)) for d in deps if Path(d).exists()}),
        "dvc_params": json.dumps(params, sort_keys=True, default=str),
    }
