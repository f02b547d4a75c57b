"""The MLflow model registry: one registered model per avatar, `avatar-<name>`.

Each U-Net training registers a new version holding everything rendering
needs: the U-Net checkpoint (original layout + sidecar), the avatar's audio
front-end (new audio must be encoded the way the training audio was),
its SyncNet (for sync scores), the resolved preset and render settings, and
the avatar's prepared footage. It is an MLflow pyfunc model that turns audio
into the rendered mp4 (see synctalk.render.pyfunc), so
`mlflow models serve -m models:/avatar-bob@champion` serves it; the pipeline
reads the files directly with `fetch_model`.

Aliases carry the review workflow: `evaluate` attaches its metrics and review
videos to the version and sets `candidate`; a person promotes a version to
`champion` through a quality gate (`check_promotion`); rendering uses the
champion when there is one, else the newest version not trained for an
experiment (tagged `experiment`: such versions are compared, never picked).

Reads fail closed: when the registry cannot be read (a missing or locked
database, an unreachable or failing tracking server) every function here
raises RegistryUnavailableError naming the store. Only a registry that was
read and lacks what was asked for is "not found", and only then does
`resolve_version` fall back from the champion to the newest version.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synctalk.config import ReviewParams
from synctalk.hashing import file_sha256
from synctalk.paths import AvatarPaths
from synctalk.tracking import (
    EXPERIMENT_TAG,
    RUN_TAGS,
    TrackingStoreError,
    apply_offline_env,
    check_tracking_store,
    git_commit,
    git_dirty,
)

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
# File names inside a registered version's artifacts/ folder.
ARTIFACT_FILES = ("unet.pth", "unet.pth.json", "audio_encoder.pth", "syncnet.pth", "config.json")
# Evaluation metrics are logged on the version's model as eval_<name of metrics.json>.
EVAL_PREFIX = "eval_"
REVIEW_ARTIFACTS = "review"  # folder of the version's run holding the review videos and plots


class ModelNotFoundError(LookupError):
    """The registry was read and does not hold the model, version or alias asked for."""


class RegistryUnavailableError(RuntimeError):
    """The registry could not be read or written (nothing may be guessed from it)."""


class PromotionRefusedError(ValueError):
    """A version does not pass the review gate (see check_promotion)."""


def model_name(avatar: str) -> str:
    return f"avatar-{avatar}"


def store_uri() -> str:
    """The tracking store in use, any password in it masked."""
    import mlflow

    return re.sub(r"//([^:/@]+):[^@/]+@", r"//\1:***@", mlflow.get_tracking_uri())


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path if path.startswith("/") else f"./{path}")


def _client():
    apply_offline_env()
    import mlflow

    # MLflow creates a missing sqlite database on first use: a mistyped path or a
    # render run from the wrong folder would then read an empty registry.
    database = _sqlite_file(mlflow.get_tracking_uri())
    if database is not None and not database.is_file():
        raise RegistryUnavailableError(
            f"the model registry {store_uri()} does not exist (no such file); run from the "
            "project folder or set MLFLOW_TRACKING_URI"
        )
    try:  # MLflow retries a dead server for minutes; a connection attempt tells at once
        check_tracking_store(mlflow.get_tracking_uri())
    except TrackingStoreError as exc:
        raise RegistryUnavailableError(
            f"the model registry {store_uri()} is unavailable: {exc}"
        ) from None
    with _registry("open the model registry"):  # a sqlite store reads its schema here
        return mlflow.MlflowClient()


def _model_id(version: Any) -> str | None:
    """The LoggedModel behind a registry version (the sqlite registry leaves model_id
    empty; the version's source, models:/<model id>, names it)."""
    found = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
    return version.model_id or (found.group(1) if found else None)


def _not_found(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


@contextmanager
def _registry(doing: str) -> Iterator[None]:
    """Turn any failure to talk to the store into RegistryUnavailableError naming it.

    MLflow reports a missing model or version as RESOURCE_DOES_NOT_EXIST; that is
    left to the caller (re-raised as is). Everything else (a locked database, a
    dead server, HTTP 5xx, a broken schema) means the registry's state is unknown.
    """
    try:
        yield
    except (RegistryUnavailableError, ModelNotFoundError):
        raise
    except Exception as exc:
        if _not_found(exc):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryUnavailableError(
            f"cannot {doing}: the model registry {store_uri()} is unavailable ({detail[:300]})"
        ) from exc


# --------------------------------------------------------------------------
# registering a version


def register_avatar_model(
    paths: AvatarPaths, config: dict[str, Any], workdir: Path, cache_root: Path
) -> str:
    """Log the model into the active run and register it; returns the new version.

    `config` is recorded as config.json (it must hold `avatar` and `render`).
    MLflow checks the logged model on its input example (loads it and renders
    half a second); `cache_root` is where that render cache goes, so the
    project's renders re-use it.
    """
    import mlflow.pyfunc

    import synctalk
    from synctalk.render import pyfunc

    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2, default=str))
    footage = AvatarPaths(paths.name, workdir / "footage")
    footage.work.mkdir(parents=True)
    for source, copy in ((paths.video, footage.video), (paths.landmarks, footage.landmarks)):
        _link_or_copy(source, copy)
    if paths.audio.is_file():  # lets render.precision int8 calibrate on the avatar's own voice
        _link_or_copy(paths.audio, footage.audio)
    code = workdir / "code"
    shutil.copytree(
        Path(synctalk.__file__).parent,
        code / "synctalk",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    with _environ(pyfunc.CACHE_ENV, str(cache_root.resolve())):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc.AvatarVideoModel(),
            artifacts={
                "unet": str(paths.unet),
                "unet_meta": str(paths.unet.with_name(paths.unet.name + ".json")),
                "audio_encoder": str(paths.audio_encoder),
                "syncnet": str(paths.syncnet),
                "config": str(config_path),
                "footage": str(footage.root),
            },
            code_paths=[str(code / "synctalk")],
            signature=pyfunc.signature(),
            input_example=pyfunc.input_example(),
            # explicit: inferring requirements would import-scan the environment (slow, noisy)
            pip_requirements=pyfunc.requirements(),
            registered_model_name=model_name(paths.name),
        )
    version = str(info.registered_model_version)
    # unet_sha256 lets `evaluate` find the version of the checkpoint it is given; the
    # rest is the version's lineage (`synctalk models show`)
    tags = {
        "unet_sha256": file_sha256(paths.unet),
        "git_commit": git_commit(paths.root),
        "git_dirty": git_dirty(paths.root),
        **RUN_TAGS,
    }
    with _registry("tag the new version"):
        client = _client()
        for key, value in tags.items():
            client.set_model_version_tag(model_name(paths.name), version, key, value)
    log.info("registered %s version %s", model_name(paths.name), version)
    return version


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source.resolve(), target)
    except OSError:  # another file system
        shutil.copy2(source, target)


@contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def version_of_checkpoint(avatar: str, unet: Path) -> str:
    """The newest registered version whose U-Net is the file `unet` (a seeded training
    repeated on the same inputs may register the same weights again)."""
    digest = file_sha256(unet)
    for v in reversed(list_versions(avatar)):
        if (v.tags or {}).get("unet_sha256") == digest:
            return str(v.version)
    raise ModelNotFoundError(f"{unet} is not registered as a version of {model_name(avatar)}")


# --------------------------------------------------------------------------
# finding a version


@dataclass(frozen=True)
class ModelFiles:
    avatar: str
    version: str
    aliases: tuple[str, ...]
    unet: Path
    audio_encoder: Path
    syncnet: Path
    config: dict[str, Any]
    run_id: str


def aliases(avatar: str) -> dict[str, str]:
    """alias -> version of the avatar's model."""
    name = model_name(avatar)
    client = _client()
    try:
        with _registry(f"read the aliases of {name}"):
            return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except Exception as exc:
        if _not_found(exc):
            raise ModelNotFoundError(_no_model(avatar)) from exc
        raise


def champion_version(avatar: str) -> str | None:
    """The version @champion points at, None when no version has been promoted."""
    return aliases(avatar).get(CHAMPION)


def resolve_version(avatar: str, alias_or_version: str | None = None) -> Any:
    """The ModelVersion to use: the given alias or number, else champion, else newest.

    Each way this can fail says what is wrong: the store cannot be read
    (RegistryUnavailableError naming it), the avatar has no model yet, or it
    has no such alias or version (listing those it has)."""
    name = model_name(avatar)
    versions = {str(v.version): v for v in list_versions(avatar)}
    if not versions:
        raise ModelNotFoundError(_no_model(avatar))
    by_alias = aliases(avatar)
    numbers = ", ".join(versions)
    wanted = alias_or_version
    if wanted is None:
        if CHAMPION in by_alias:
            return versions[by_alias[CHAMPION]]
        # an experiment's version is there to be compared: only a person promotes one
        trained = [v for v in versions.values() if EXPERIMENT_TAG not in (v.tags or {})]
        if not trained:
            raise ModelNotFoundError(
                f"{name} has only experiment versions ({numbers}): promote one to @{CHAMPION} "
                "or train the avatar with `dvc repro`"
            )
        newest = trained[-1]
        log.warning(
            "%s has no @%s: using the newest version, %s, which nobody promoted",
            name,
            CHAMPION,
            newest.version,
        )
        return newest
    if wanted.isdigit():
        if wanted not in versions:
            raise ModelNotFoundError(f"{name} has no version {wanted} (versions: {numbers})")
        return versions[wanted]
    if wanted not in by_alias:
        known = ", ".join(f"@{a} = version {v}" for a, v in sorted(by_alias.items())) or "none"
        raise ModelNotFoundError(
            f"{name} has no alias {wanted!r} (aliases: {known}; versions: {numbers})"
        )
    return versions[by_alias[wanted]]


def _no_model(avatar: str, wanted: str | None = None) -> str:
    what = f"{model_name(avatar)} ({wanted})" if wanted else model_name(avatar)
    return (
        f"no model {what} in the registry at {store_uri()}: train the avatar first "
        f"(dvc repro unet@{avatar}) or check `synctalk models list {avatar}`"
    )


def fetch_model(avatar: str, alias_or_version: str | None, cache_root: Path) -> ModelFiles:
    """Download (once) a registered version's files to cache_root/<name>/<version>/."""
    version = resolve_version(avatar, alias_or_version)
    target = cache_root / model_name(avatar) / str(version.version)
    if not (target / "complete").is_file():
        import mlflow.artifacts

        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        with _registry(f"download {model_name(avatar)} version {version.version}"):
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name(avatar)}/{version.version}",
                dst_path=str(target),
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
        audio_encoder=folder / "audio_encoder.pth",
        syncnet=folder / "syncnet.pth",
        config=json.loads((folder / "config.json").read_text()),
        run_id=version.run_id,
    )


def list_versions(avatar: str) -> list[Any]:
    client = _client()
    with _registry(f"list the versions of {model_name(avatar)}"):
        versions = client.search_model_versions(f"name='{model_name(avatar)}'")
    return sorted(versions, key=lambda v: int(v.version))


# --------------------------------------------------------------------------
# evaluation


def attach_evaluation(
    avatar: str, version: str, metrics: dict[str, float], media: Path | None = None
) -> None:
    """Log evaluation `metrics` on the version's model and its run, `media` into the run.

    On the model (MLflow's LoggedModel) the registry's version pages and
    `models compare` find them; on the run, MLflow's compare view. Each is
    logged as eval_<name>; non-finite values are left out (the gate then
    reports the metric as missing). The files of the folder `media` (review
    videos, contact sheet, plots) go to the run's review/ folder.
    """
    from mlflow.entities import Metric

    name = model_name(avatar)
    client = _client()
    with _registry(f"attach the evaluation to {name} version {version}"):
        v = client.get_model_version(name, str(version))
        now = int(time.time() * 1000)
        entries = [
            Metric(f"{EVAL_PREFIX}{k}", float(value), now, 0, model_id=_model_id(v))
            for k, value in metrics.items()
            if math.isfinite(float(value))
        ]
        client.log_batch(v.run_id, metrics=entries)
        if media is not None:
            client.log_artifacts(v.run_id, str(media), REVIEW_ARTIFACTS)


def evaluation_metrics(avatar: str, version: str) -> dict[str, float]:
    """The evaluation metrics attached to a version (names of metrics.json); {} if none."""
    name = model_name(avatar)
    client = _client()
    try:
        with _registry(f"read the evaluation of {name} version {version}"):
            model_id = _model_id(client.get_model_version(name, str(version)))
            if model_id is None:  # registered before models carried metrics
                return {}
            logged = client.get_logged_model(model_id).metrics or []
    except Exception as exc:
        if _not_found(exc):
            raise ModelNotFoundError(_no_model(avatar, str(version))) from exc
        raise
    latest: dict[str, tuple[int, float]] = {}
    for m in logged:
        if m.key.startswith(EVAL_PREFIX) and m.timestamp >= latest.get(m.key, (-1, 0.0))[0]:
            latest[m.key] = (m.timestamp, m.value)  # a re-evaluation replaces the last one
    return {k.removeprefix(EVAL_PREFIX): value for k, (_, value) in sorted(latest.items())}


# --------------------------------------------------------------------------
# review and promotion


def check_promotion(metrics: dict[str, float], review: ReviewParams) -> str | None:
    """Why a version with these evaluation metrics may not be promoted; None if it may."""
    if not metrics:
        return "it has no evaluation (dvc repro evaluate@<avatar> evaluates the newest training)"
    for bound, limits, worse in (
        ("minimum", review.minimum, float.__lt__),
        ("maximum", review.maximum, float.__gt__),
    ):
        for metric, limit in limits.items():
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                return f"its evaluation has no {metric} (review.{bound}.{metric} is {limit:g})"
            if worse(float(value), float(limit)):
                return f"{metric} {value:.4g} is beyond review.{bound}.{metric} {limit:g}"
    return None


def promote(
    avatar: str,
    version: str,
    alias: str,
    review: ReviewParams,
    forced_reason: str | None = None,
    who: str | None = None,
) -> str | None:
    """Point `alias` at `version` if it passes the review gate.

    Raises PromotionRefusedError naming the failing check, unless
    `forced_reason` is given: then the version is promoted anyway and who
    forced it, why, and what it failed are recorded as version tags. Returns
    what the gate found (None when it passed).
    """
    import getpass

    name = model_name(avatar)
    known = [str(v.version) for v in list_versions(avatar)]
    if version not in known:
        raise ModelNotFoundError(f"{name} has no version {version} (versions: {known})")
    failure = check_promotion(evaluation_metrics(avatar, version), review)
    if failure and forced_reason is None:
        raise PromotionRefusedError(
            f"{name} version {version} not promoted to @{alias}: {failure} "
            '(--force --reason "..." overrides)'
        )
    client = _client()
    with _registry(f"promote {name} version {version}"):
        if forced_reason is not None:
            tags = {
                f"forced_{alias}_by": who or getpass.getuser(),
                f"forced_{alias}_reason": forced_reason,
                f"forced_{alias}_over": failure or "nothing: the version passed the gate",
            }
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, alias, version)
    return failure


def set_alias(avatar: str, version: str, alias: str) -> None:
    with _registry(f"set @{alias} on {model_name(avatar)} version {version}"):
        _client().set_registered_model_alias(model_name(avatar), alias, str(version))


def describe_versions(avatar: str) -> list[dict[str, Any]]:
    """One row per version: number, aliases, when, its run's validation L1, its evaluation."""
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases(avatar).items():
        by_version.setdefault(version, []).append(alias)
    client = _client()
    rows = []
    for v in list_versions(avatar):
        try:
            run_metrics = client.get_run(v.run_id).data.metrics
        except Exception as exc:  # a deleted run: the version still stands
            if not _not_found(exc):
                raise RegistryUnavailableError(f"cannot read run {v.run_id}: {exc}") from exc
            run_metrics = {}
        tags = v.tags or {}
        forced = [k[len("forced_") : -len("_by")] for k in tags if re.match(r"forced_.+_by$", k)]
        rows.append(
            {
                "version": str(v.version),
                "aliases": ",".join(sorted(by_version.get(str(v.version), []))) or "-",
                "created": _when(v.creation_timestamp),
                "val_l1": run_metrics.get("best_val_l1"),
                **evaluation_metrics(avatar, str(v.version)),
                **({"forced": ",".join(sorted(forced))} if forced else {}),
                **({EXPERIMENT_TAG: tags[EXPERIMENT_TAG]} if EXPERIMENT_TAG in tags else {}),
            }
        )
    return rows


def _when(millis: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
