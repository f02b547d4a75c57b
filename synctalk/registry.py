"""The MLflow model registry: one registered model per avatar, `avatar-<name>`.

Each U-Net training registers a new version holding everything rendering
needs: the U-Net checkpoint (original layout + sidecar), the avatar's AVE
audio encoder (new audio must be encoded the way the training audio was),
its SyncNet (for sync scores) and the resolved preset. It is an MLflow
pyfunc model, so `mlflow.pyfunc.load_model("models:/avatar-bob@champion")`
works too, but the pipeline reads the files directly with `fetch_model`.

Aliases carry the review workflow: `evaluate` sets `candidate`, a person
promotes a version to `champion`, and rendering uses the champion when there
is one, else the newest version.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synctalk.models.checkpoint import file_sha256
from synctalk.tracking import TrackingStoreError, apply_offline_env, check_tracking_store

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
# File names inside a registered version's artifacts/ folder.
ARTIFACT_FILES = ("unet.pth", "unet.pth.json", "ave_encoder.pth", "syncnet.pth", "config.json")


class ModelNotFoundError(LookupError):
    pass


def model_name(avatar: str) -> str:
    return f"avatar-{avatar}"


def _client():
    apply_offline_env()
    import mlflow

    return mlflow.MlflowClient()


def _python_model():
    import mlflow.pyfunc

    class AvatarUNet(mlflow.pyfunc.PythonModel):
        """pyfunc face of a registered avatar: predict({"image", "audio"}) -> crops."""

        def load_context(self, context):
            from synctalk.models.checkpoint import load_unet

            self.unet = load_unet(context.artifacts["unet"])

        def predict(self, context, model_input, params=None):
            import torch

            image = torch.as_tensor(model_input["image"], dtype=torch.float32)
            audio = torch.as_tensor(model_input["audio"], dtype=torch.float32)
            with torch.inference_mode():
                return self.unet(image, audio).numpy()

    return AvatarUNet()


def register_avatar_model(
    avatar: str, unet: Path, ave_encoder: Path, syncnet: Path, config: dict[str, Any], workdir: Path
) -> str:
    """Log the model into the active run and register it; returns the new version."""
    import mlflow.pyfunc

    import synctalk

    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2, default=str))
    meta = unet.with_name(unet.name + ".json")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=_python_model(),
        artifacts={
            "unet": str(unet),
            "unet_meta": str(meta),
            "ave_encoder": str(ave_encoder),
            "syncnet": str(syncnet),
            "config": str(config_path),
        },
        # explicit: inferring requirements would import-scan the environment (slow, noisy)
        pip_requirements=[f"synctalk=={synctalk.__version__}", "torch==2.13.0"],
        registered_model_name=model_name(avatar),
    )
    version = str(info.registered_model_version)
    # lets `evaluate` find the version of the checkpoint it is given
    _client().set_model_version_tag(model_name(avatar), version, "unet_sha256", file_sha256(unet))
    log.info("registered %s version %s", model_name(avatar), version)
    return version


def version_of_checkpoint(avatar: str, unet: Path) -> str:
    """The registered version whose U-Net is the file `unet`."""
    digest = file_sha256(unet)
    for v in list_versions(avatar):
        if (v.tags or {}).get("unet_sha256") == digest:
            return str(v.version)
    raise ModelNotFoundError(f"{unet} is not registered as a version of {model_name(avatar)}")


@dataclass(frozen=True)
class ModelFiles:
    avatar: str
    version: str
    aliases: tuple[str, ...]
    unet: Path
    ave_encoder: Path
    syncnet: Path
    config: dict[str, Any]
    run_id: str


def resolve_version(avatar: str, alias_or_version: str | None = None) -> Any:
    """The ModelVersion to use: the given alias or number, else champion, else newest.

    Each way this can fail says what is wrong: the store cannot be reached
    (with its URI), the avatar has no model yet, or it has no such alias or
    version (listing those it has)."""
    name = model_name(avatar)
    uri = _tracking_uri()
    check_tracking_store(uri)
    client = _client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
        aliases = dict(client.get_registered_model(name).aliases) if versions else {}
    except Exception as exc:  # a damaged database, a server error...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingStoreError(f"cannot read the MLflow registry at {uri}: {first}") from exc
    if not versions:
        raise ModelNotFoundError(
            f"no model {name} in the registry at {uri}: train the avatar first "
            f"(dvc repro unet@{avatar})"
        )
    by_number = {str(v.version): v for v in versions}
    numbers = ", ".join(sorted(by_number, key=int))
    if alias_or_version is None:
        if CHAMPION in aliases:
            return client.get_model_version(name, str(aliases[CHAMPION]))
        return max(versions, key=lambda v: int(v.version))
    if alias_or_version.isdigit():
        if alias_or_version not in by_number:
            raise ModelNotFoundError(
                f"{name} has no version {alias_or_version} (versions: {numbers})"
            )
        return client.get_model_version(name, alias_or_version)
    if alias_or_version not in aliases:
        known = ", ".join(f"@{a} = version {v}" for a, v in sorted(aliases.items())) or "none"
        raise ModelNotFoundError(
            f"{name} has no alias {alias_or_version!r} (aliases: {known}; versions: {numbers})"
        )
    return client.get_model_version(name, str(aliases[alias_or_version]))


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def fetch_model(avatar: str, alias_or_version: str | None, cache_root: Path) -> ModelFiles:
    """Download (once) a registered version's files to cache_root/<name>/<version>/."""
    version = resolve_version(avatar, alias_or_version)
    target = cache_root / model_name(avatar) / str(version.version)
    if not (target / "complete").is_file():
        import mlflow.artifacts

        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name(avatar)}/{version.version}", dst_path=str(target)
        )
        (target / "complete").write_text("ok")
    folder = target / "artifacts"
    missing = [n for n in ARTIFACT_FILES if not (folder / n).is_file()]
    if missing:
        raise ModelNotFoundError(f"{folder}: the registered model lacks {', '.join(missing)}")
    return ModelFiles(
        avatar=avatar,
        version=str(version.version),
        aliases=tuple(getattr(version, "aliases", ()) or ()),
        unet=folder / "unet.pth",
        ave_encoder=folder / "ave_encoder.pth",
        syncnet=folder / "syncnet.pth",
        config=json.loads((folder / "config.json").read_text()),
        run_id=version.run_id,
    )


def set_alias(avatar: str, version: str, alias: str) -> None:
    _client().set_registered_model_alias(model_name(avatar), alias, str(version))


def list_versions(avatar: str) -> list[Any]:
    client = _client()
    versions = client.search_model_versions(f"name='{model_name(avatar)}'")
    return sorted(versions, key=lambda v: int(v.version))


def set_version_metrics(avatar: str, version: str, metrics: dict[str, float]) -> None:
    """Record evaluation metrics on a version, for `synctalk models list` and the UI."""
    client = _client()
    for key, value in metrics.items():
        client.set_model_version_tag(model_name(avatar), str(version), key, f"{value:.6g}")


def describe_versions(avatar: str) -> list[dict[str, Any]]:
    """One row per version: number, aliases, when, its run's validation L1, its tags."""
    client = _client()
    rows = []
    for v in list_versions(avatar):
        try:
            run_metrics = client.get_run(v.run_id).data.metrics
        except Exception:  # the run was deleted: the version still stands
            run_metrics = {}
        rows.append(
            {
                "version": str(v.version),
                "aliases": ",".join(getattr(v, "aliases", []) or []) or "-",
                "created": _when(v.creation_timestamp),
                "val_l1": run_metrics.get("best_val_l1"),
                **{k: v for k, v in (v.tags or {}).items()},
            }
        )
    return rows


def _when(millis: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M")
