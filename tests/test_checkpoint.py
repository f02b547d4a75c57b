import json

import pytest
import torch

from synctalk.models import build_syncnet, build_unet
from synctalk.models.checkpoint import (
    load_syncnet,
    load_unet,
    read_metadata,
    save_model,
    sidecar_path,
)
from synctalk.models.vgg import VGG19Features, load_vgg19_features


def _randomise(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.rand(v.shape, generator=g) if v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("preset, mode", [("160", "ave"), ("328", "wenet"), ("160", "hubert")])
def test_original_unet_checkpoint_loads_strictly(tmp_path, preset, mode):
    """A bare state dict, as the original code saves it, with no sidecar."""
    original = _randomise(build_unet(preset, mode))
    path = tmp_path / "original.pth"
    torch.save(original, path)
    model = load_unet(path, audio_mode=None if mode != "hubert" else "hubert")
    assert model.spec.resolution == preset
    assert model.spec.audio_mode == mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_save_writes_original_layout_plus_sidecar(tmp_path):
    model = build_unet("160", "hubert", mobile=True)
    path = tmp_path / "unet.pth"
    meta = save_model(model, path, avatar="bob")
    # the weights file is a bare state dict with the original keys
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())
    side = json.loads(sidecar_path(path).read_text())
    assert side == meta == read_metadata(path)
    assert side["kind"] == "unet" and side["resolution"] == "160"
    assert side["audio_mode"] == "hubert" and side["mobile"] is True
    assert side["avatar"] == "bob" and len(side["sha256"]) == 64 and side["code_version"]
    loaded = load_unet(path)
    assert loaded.spec == model.spec  # hubert is known from the sidecar, not guessed
    assert not list(tmp_path.glob("*.tmp"))


def test_syncnet_round_trip_and_original(tmp_path):
    model = build_syncnet("328", "ave")
    model.load_state_dict(_randomise(model))
    save_model(model, tmp_path / "syncnet.pth")
    back = load_syncnet(tmp_path / "syncnet.pth")
    assert (back.preset, back.audio_mode) == ("328", "ave")
    torch.save(model.state_dict(), tmp_path / "orig.pth")
    orig = load_syncnet(tmp_path / "orig.pth")
    assert orig.preset == "328"
    assert torch.equal(
        orig.state_dict()["face_encoder.17.conv_block.0.weight"],
        model.state_dict()["face_encoder.17.conv_block.0.weight"],
    )


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_unet(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_unet(junk)
    syncnet = tmp_path / "syncnet.pth"
    torch.save(build_syncnet("160").state_dict(), syncnet)
    with pytest.raises(ValueError, match="not a SyncTalk_2D U-Net"):
        load_unet(syncnet)
    unet = tmp_path / "unet.pth"
    state = build_unet("160").state_dict()
    state.pop("outc.conv.bias")
    torch.save(state, unet)
    with pytest.raises(ValueError, match="outc.conv.bias"):
        load_unet(unet)


def test_vgg19_loads_a_torchvision_format_file(tmp_path):
    # torchvision's VGG19 keys: features.<i>.weight/bias for convs, plus classifier.*
    full = VGG19Features(until="relu5_4")
    state = _randomise(full)
    state["classifier.0.weight"] = torch.zeros(4096, 25088)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    model = load_vgg19_features(path)  # conv3_3 by default
    assert len(model.features) == 15  # torchvision features[:15]
    assert torch.equal(model.features[14].weight, state["features.14.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 256, 16, 16)

    del state["features.12.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="VGG19"):
        load_vgg19_features(path)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_vgg19_features(tmp_path / "nothere.pth")
