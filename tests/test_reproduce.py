"""A trained avatar reproduced and experimented on: `synctalk models show`'s commands
retrain a version bit for bit in a fresh clone, `dvc repro --force` gives the same bytes
again, and `dvc exp run` experiments are compared and move no registry alias."""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import shared_path
from tests.project import commit, few_steps, make_project, run, stages_run

pytestmark = pytest.mark.slow

AVATAR = "may"
LEARNING_RATE = "presets.tiny.unet.learning_rate"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """may_5s added and committed, then trained by `dvc repro unet@may` (the tiny preset
    cut to a few steps), version 1 promoted to @champion, dvc.lock committed and
    everything pushed, with the run cache, to a DVC remote (a local folder)."""
    root = make_project(tmp_path_factory.mktemp("reproduce"))
    few_steps(root)
    video = shared_path("data", "videos", "may_5s.mp4")
    run(
        root,
        sys.executable,
        "-m",
        "synctalk.cli",
        "avatar",
        "add",
        AVATAR,
        str(video),
        "--preset",
        "tiny",
    )
    commit(root, "avatar may")  # what version 1's lineage names
    run(root, "dvc", "repro", f"unet@{AVATAR}")  # evaluate@ runs in each experiment
    run(
        root,
        sys.executable,
        "-m",
        "synctalk.cli",
        "models",
        "promote",
        AVATAR,
        "1",
        "--force",
        "--reason",
        "the experiments' baseline",
    )
    run(root, "dvc", "remote", "add", "-d", "--local", "store", str(root.parent / "remote"))
    run(root, "dvc", "push", "--run-cache")
    commit(root, "avatar may trained")
    return root


def _registry(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(alias -> version, version -> its experiment tag or "") of avatar-may."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    model = client.get_registered_model(f"avatar-{AVATAR}")
    versions = client.search_model_versions(f"name='avatar-{AVATAR}'")
    tags = {str(v.version): (v.tags or {}).get("experiment", "") for v in versions}
    return {a: str(v) for a, v in model.aliases.items()}, tags


def _shown(root: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> {"lr": its learning rate, "psnr": ...}."""
    found: dict[str, dict] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            data = node.get("data") or {}
            if node.get("name") and "params" in data:
                params = data["params"]["params.yaml"]["data"]
                metrics = data.get("metrics", {}).get(f"eval/{AVATAR}/metrics.json", {})
                found[node["name"]] = {
                    "lr": params["presets"]["tiny"]["unet"]["learning_rate"],
                    **(metrics.get("data") or {}),
                }
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run(root, "dvc", "exp", "show", "--json").stdout))
    return found


def test_models_show_commands_reproduce_the_version_in_a_fresh_clone(project, tmp_path):
    """What `synctalk models show may 1` prints, followed in a fresh clone that has only
    git and the DVC remote, trains version 1's U-Net again bit for bit: its inputs come
    back from the remote's run cache (nothing upstream runs), and the same commit, data
    and machine give the same unet.pth."""
    from synctalk.hashing import file_sha256

    root = project
    shown = run(root, sys.executable, "-m", "synctalk.cli", "models", "show", AVATAR, "1").stdout
    lines = shown.split("reproduce it", 1)[1].splitlines()[1:]
    commands = [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]
    *steps, check = commands
    assert steps[0].startswith("git checkout ") and check.startswith("sha256sum "), commands
    expected = re.search(r"expect ([0-9a-f]{64})", shown)[1]
    assert expected == file_sha256(root / check.split()[1])

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(root), str(clone))
    run(clone, "dvc", "remote", "add", "-d", "--local", "store", str(root.parent / "remote"))
    ran = []
    for command in steps:
        ran += stages_run(run(clone, *shlex.split(command)).stdout)
    assert ran == [f"unet@{AVATAR}"]  # the forced U-Net only: the rest was restored
    reproduced = file_sha256(clone / check.split()[1])
    print(f"\nversion 1: {expected}\nretrained: {reproduced}\ncommands: {steps}")
    assert reproduced == expected


def _experiment(root: Path, name: str, learning_rate: str, *how: str) -> list[str]:
    """`dvc exp run` (`how`: --temp, --queue) with the U-Net's learning rate set, from a
    shell with no MLFLOW_TRACKING_URI (the project's mlflow.db); the stages it ran."""
    unset = {"MLFLOW_TRACKING_URI": ""}
    proc = run(
        root,
        "dvc",
        "exp",
        "run",
        *how,
        "-n",
        name,
        "--set-param",
        f"{LEARNING_RATE}={learning_rate}",
        env=unset,
    )
    return stages_run(proc.stdout)


def test_experiments_are_listed_with_their_metrics_and_move_no_alias(project):
    """Two experiments, in the workspace and in a temporary copy (--temp, under
    .dvc/tmp/exps/): `dvc exp show` lists both with their metrics; their versions land in
    the project's registry, tagged as experiments, and @champion (and @candidate, which
    evaluating them would otherwise set) did not move."""
    root = project
    aliases, before = _registry(root)
    assert aliases == {"champion": "1"}
    ran = _experiment(root, "lr-low", "0.0005")
    # only what the learning rate changes: the U-Net, its evaluation, render@ (idle)
    assert ran == [f"unet@{AVATAR}", f"evaluate@{AVATAR}", f"render@{AVATAR}"], ran
    run(root, "git", "checkout", "--", ".")  # the workspace back at the baseline
    run(root, "dvc", "checkout")
    _experiment(root, "lr-high", "0.004", "--temp")
    shown = _shown(root)
    print("\n" + json.dumps({k: v for k, v in shown.items() if k.startswith("lr-")}))
    assert shown["lr-low"]["lr"] == 0.0005 and shown["lr-high"]["lr"] == 0.004
    for name in ("lr-low", "lr-high"):
        assert shown[name]["psnr"] > 0 and shown[name]["model_version"] > 1
    assert shown["lr-low"]["psnr"] != shown["lr-high"]["psnr"]
    after_aliases, after = _registry(root)
    assert after_aliases == aliases  # @candidate and @champion did not move
    new = {v: tag for v, tag in after.items() if v not in before}
    assert sorted(new.values()) == ["lr-high", "lr-low"]  # registered, tagged as experiments
    listed = run(root, sys.executable, "-m", "synctalk.cli", "models", "list", AVATAR).stdout
    assert "lr-high" in listed and "lr-low" in listed


def test_a_queued_experiment_records_into_the_projects_store(project):
    """`dvc exp run --queue` then `dvc queue start`: it runs in a copy under .dvc/tmp/exps/,
    and its version still lands in the project's registry, tagged, with no alias moved."""
    root = project
    aliases, before = _registry(root)
    _experiment(root, "lr-queued", "0.003", "--queue")
    run(root, "dvc", "queue", "start", env={"MLFLOW_TRACKING_URI": ""})
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(root, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "lr-queued" in status and "Success" in status, status
    shown = _shown(root)
    assert shown["lr-queued"]["lr"] == 0.003 and shown["lr-queued"]["psnr"] > 0
    after_aliases, after = _registry(root)
    assert after_aliases == aliases
    assert [t for v, t in after.items() if v not in before] == ["lr-queued"]


def test_forced_unet_repros_give_bit_identical_weights(project):
    """Same commit, data and machine: `dvc repro --force unet@may` (every stage up to the
    U-Net run again) twice gives the bytes the first `dvc repro` gave, so the workspace is
    left as committed."""
    from synctalk.hashing import file_sha256

    root = project
    unet = root / "data" / "models" / AVATAR / "unet.pth"
    committed = file_sha256(unet)
    digests = []
    for _ in range(2):
        ran = stages_run(run(root, "dvc", "repro", "--force", f"unet@{AVATAR}").stdout)
        assert ran[0] == f"extract@{AVATAR}" and ran[-1] == f"unet@{AVATAR}", ran
        digests.append(file_sha256(unet))
    print(f"\nunet.pth sha256: committed {committed}, forced repros {digests}")
    assert digests == [committed, committed]
    run(root, "git", "diff", "--exit-code", "dvc.lock")  # every output's md5 as committed
