"""A stage's lineage tags (stages/lineage.py): source md5, deps md5, params."""

from __future__ import annotations

import hashlib
import json

import yaml

from stages.contract import code_deps
from stages.lineage import lineage
from synctalk.config import load_config
from tests.conftest import REPO


def test_lineage_records_the_source_the_deps_and_the_params(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # stages run from the project root
    video = tmp_path / "source.mp4"
    video.write_bytes(b"not really a video")
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["avatars"] = {"bob": {"video": str(video), "preset": "tiny"}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))

    tags = lineage("unet", "bob", load_config(params_file), params_file)

    assert tags["source_md5"] == hashlib.md5(video.read_bytes()).hexdigest()
    deps = json.loads(tags["dvc_deps_md5"])
    # bob's data files do not exist here; the (empty) weights folder models/vgg does
    assert set(deps) == set(code_deps("unet")) | {"models/vgg"}
    assert deps["models/vgg"].endswith(".dir")
    blocks = (REPO / "synctalk" / "models" / "blocks.py").read_bytes()
    assert deps["synctalk/models/blocks.py"] == hashlib.md5(blocks).hexdigest()
    recorded = json.loads(tags["dvc_params"])
    assert recorded == {"avatars.bob.preset": "tiny", "presets.tiny": data["presets"]["tiny"]}
