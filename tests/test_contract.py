"""dvc.yaml against the stage contracts (stages/contract.py): deps, outs, params, code."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import yaml

from stages.contract import STAGES, code_deps, differences, expected_dvc_yaml
from synctalk.config import Config, Training
from tests.conftest import REPO


@pytest.fixture(scope="module")
def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_yaml_matches_the_contracts(dvc_yaml):
    problems = differences(dvc_yaml, expected_dvc_yaml())
    assert not problems, "dvc.yaml is out of date (`python -m stages.contract` rewrites it):\n" + (
        "\n".join(problems)
    )


def test_a_missing_code_dep_is_caught(dvc_yaml):
    broken = copy.deepcopy(dvc_yaml)
    broken["stages"]["unet"]["do"]["deps"].remove("synctalk/models/blocks.py")
    missing = ["unet: deps lacks synctalk/models/blocks.py"]
    assert differences(broken, expected_dvc_yaml()) == missing


def test_a_missing_data_dep_an_extra_dep_and_a_speed_param_are_caught(dvc_yaml):
    broken = copy.deepcopy(dvc_yaml)
    broken["stages"]["syncnet"]["do"]["deps"].remove("data/work/${key}/crops.npy")
    broken["stages"]["extract"]["do"]["deps"].append("synctalk/models/blocks.py")
    broken["stages"]["unet"]["do"]["params"].append("device")
    assert differences(broken, expected_dvc_yaml()) == [
        "extract: deps has synctalk/models/blocks.py, which the contract does not",
        "syncnet: deps lacks data/work/${key}/crops.npy",
        "unet: params has device, which the contract does not",
    ]


def test_code_deps_are_the_modules_each_stage_imports():
    unet = code_deps("unet")
    # what the issue found missing: the U-Net's building blocks, windows, checkpoints
    for module in (
        "synctalk/models/blocks.py",
        "synctalk/features/windows.py",
        "synctalk/models/checkpoint.py",
        "synctalk/models/unet.py",
        "stages/unet.py",
        "stages/_common.py",
        "synctalk/__init__.py",
    ):
        assert module in unet
    # preparation runs no model: editing one leaves it up to date
    for stage in ("extract", "landmarks"):
        models = ("synctalk/models/", "synctalk/train/")
        assert not [m for m in code_deps(stage) if m.startswith(models)]
    # nothing a stage does not import: the CLI, the flows, the other stages
    everything = {m for s in STAGES for m in code_deps(s.name)}
    assert not [m for m in everything if m.startswith("flows/")]
    assert "synctalk/cli.py" not in everything and "stages/contract.py" not in everything
    assert "stages/unet.py" not in code_deps("syncnet")


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "synctalk" / "sub").mkdir(parents=True)
    for init in ("stages", "synctalk", "synctalk/sub"):
        (tmp_path / init / "__init__.py").write_text("")
    (tmp_path / "stages" / "s.py").write_text(
        "import os\nfrom synctalk import a\n\ndef f():\n    from synctalk.sub import b\n"
    )
    (tmp_path / "synctalk" / "a.py").write_text("import numpy\n")
    (tmp_path / "synctalk" / "sub" / "b.py").write_text("from . import c\nfrom ..d import x\n")
    (tmp_path / "synctalk" / "sub" / "c.py").write_text("")
    (tmp_path / "synctalk" / "d.py").write_text("x = 1\n")
    (tmp_path / "synctalk" / "unused.py").write_text("")
    assert code_deps("s", tmp_path) == [
        "stages/__init__.py",
        "stages/s.py",
        "synctalk/__init__.py",
        "synctalk/a.py",
        "synctalk/d.py",
        "synctalk/sub/__init__.py",
        "synctalk/sub/b.py",
        "synctalk/sub/c.py",
    ]


def test_speed_settings_are_not_params():
    speed = {"device", "num_workers", "render.batch_size", "render.queue_frames"}
    for stage in STAGES:
        assert not speed & set(stage.params), stage.name
        assert "render" not in stage.params  # the whole section holds speed knobs too
    # whole preset sections are params: they must hold no speed knobs
    assert "num_workers" not in {f.name for f in dataclasses.fields(Training)}
    assert "num_workers" in {f.name for f in dataclasses.fields(Config)}


def test_weights_in_models_are_stage_inputs_that_go_through_a_dvc_remote(tmp_path):
    """Weights users put under models/ (README: `dvc add` each file) are inputs: the stages
    that may read a folder depend on it; git ignores the file and keeps its pointer;
    `dvc push` stores it and a `git clone` gets it back with `dvc pull`."""
    from tests.project import commit, make_project, run

    deps = {s.name: set(s.deps) for s in STAGES}
    assert "models/face" in deps["landmarks"] & deps["evaluate"]
    assert "models/ave" in deps["audio_encoder"] and "models/vgg" in deps["unet"]

    root = make_project(tmp_path)
    weights = root / "models" / "vgg" / "vgg19.pth"
    weights.write_bytes(os.urandom(4096))  # stands in for the 550 MB file
    run(root, "dvc", "add", "models/vgg/vgg19.pth")
    run(root, "git", "check-ignore", "-q", "models/vgg/vgg19.pth")  # fails unless ignored
    run(root, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    run(root, "dvc", "push")
    commit(root, "VGG19 weights")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(root), str(clone))
    assert (clone / "models/vgg/vgg19.pth.dvc").is_file()
    assert not (clone / "models/vgg/vgg19.pth").exists()
    run(clone, "dvc", "pull")
    assert (clone / "models/vgg/vgg19.pth").read_bytes() == weights.read_bytes()


def test_the_stages_up_to_the_unet_can_be_restored_from_a_remotes_run_cache():
    """`synctalk models show`'s commands restore a version's inputs from DVC's run cache,
    which reaches another machine only for a stage whose every output is cached and not
    persistent (`dvc push --run-cache` pushes no uncached file). evaluate stays out of
    the run cache: it moves @candidate, which a restore would not."""
    by_out = {str(o.path): s for s in STAGES for o in (*s.outs, *s.metrics, *s.plots)}
    upstream, todo = set(), [next(s for s in STAGES if s.name == "unet")]
    while todo:
        stage = todo.pop()
        upstream.add(stage.name)
        todo += [by_out[str(d)] for d in stage.deps if str(d) in by_out]
    assert upstream == {"extract", "landmarks", "audio_encoder", "features", "syncnet", "unet"}
    for stage in STAGES:
        outs = (*stage.outs, *stage.metrics, *stage.plots)
        restorable = all(o.cache and not o.persist for o in outs)
        assert restorable == (stage.name in upstream), stage.name
