from pathlib import Path

import numpy as np
import pytest
import torch

from synctalk.models import AudioEncoder, build_syncnet, build_unet
from synctalk.models.syncnet import SYNCNET_AUDIO_SHAPES, sync_probability
from synctalk.models.unet import UNET_AUDIO_SHAPES, make_unet_input
from tests.conftest import SHARED


def _reference_files() -> list[Path]:
    files = sorted((SHARED / "reference").glob("*.state_dict.tsv"))
    return files or [pytest.param(None, marks=pytest.mark.skip(reason="../shared absent"))]


def _read_layout(path: Path) -> tuple[dict[str, tuple[int, ...]], int]:
    lines = path.read_text().splitlines()
    params = int(lines[0].split("parameters=")[1].split(";")[0])
    layout = {}
    for line in lines[2:]:
        key, shape, _dtype = line.split("\t")
        layout[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return layout, params


def _model_for(name: str) -> torch.nn.Module:
    if name == "ave_audio_encoder":
        return AudioEncoder()
    kind, rest = ("unet", name[4:]) if name.startswith("unet") else ("syncnet", name[7:])
    preset, mode = rest.split("_")
    return build_unet(preset, mode) if kind == "unet" else build_syncnet(preset, mode)


@pytest.mark.parametrize(
    "layout_file", _reference_files(), ids=lambda p: p and p.name.split(".")[0]
)
def test_state_dict_matches_original_layout(layout_file):
    expected, n_params = _read_layout(layout_file)
    model = _model_for(layout_file.name.split(".")[0])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_parameter_counts_quoted_in_design():
    assert sum(p.numel() for p in build_unet("160").parameters()) == 12_163_591
    assert sum(p.numel() for p in build_unet("328").parameters()) == 12_186_935


@pytest.mark.parametrize("preset", ["160", "328"])
@pytest.mark.parametrize("mode", ["ave", "hubert", "wenet", "whisper"])
def test_unet_forward_shape_and_range(preset, mode):
    torch.manual_seed(0)
    model = build_unet(preset, mode).eval()
    size = model.spec.geometry.size
    x = torch.rand(2, 6, size, size)
    audio = torch.randn(2, *UNET_AUDIO_SHAPES[mode])
    with torch.inference_mode():
        y = model(x, audio)
    assert y.shape == (2, 3, size, size)
    assert y.min() >= 0 and y.max() <= 1
    # the audio is actually used: another window changes the output (in train
    # mode: a fresh model's eval-mode activations all but vanish with depth)
    model.train()
    with torch.no_grad():
        assert (model(x, audio) - model(x, audio.flip(0))).abs().max() > 1e-3


@pytest.mark.parametrize("preset", ["160", "328"])
def test_mobile_unet_is_smaller_and_runs(preset):
    full = sum(p.numel() for p in build_unet(preset).parameters())
    model = build_unet(preset, mobile=True).eval()
    assert sum(p.numel() for p in model.parameters()) < full / 3
    size = model.spec.geometry.size
    with torch.inference_mode():
        y = model(torch.rand(1, 6, size, size), torch.randn(1, 32, 16, 16))
    assert y.shape == (1, 3, size, size)


@pytest.mark.parametrize("preset", ["160", "328"])
@pytest.mark.parametrize("mode", ["ave", "hubert", "wenet", "whisper"])
def test_syncnet_gives_unit_vectors(preset, mode):
    model = build_syncnet(preset, mode).eval()
    size = 160 if preset == "160" else 320
    with torch.inference_mode():
        a, f = model(torch.rand(2, 3, size, size), torch.randn(2, *SYNCNET_AUDIO_SHAPES[mode]))
    assert a.shape == f.shape == (2, 512 * 3 * 3)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))
    p = sync_probability(a, f)
    assert ((p > 0) & (p < 1)).all()
    if mode == "whisper":  # ends in a ReLU, as the face tower ends in an activation
        assert (a >= 0).all()


def test_audio_encoder_output():
    with torch.inference_mode():
        out = AudioEncoder().eval()(torch.randn(3, 1, 80, 16))
    assert out.shape == (3, 512)


def test_unet_input_masks_exactly_the_mouth_rectangle():
    spec = build_unet("160").spec
    ref = torch.full((1, 3, 160, 160), 0.25)
    cur = torch.ones(1, 3, 160, 160)
    x = make_unet_input(ref, cur, spec)
    assert x.shape == (1, 6, 160, 160)
    assert torch.equal(x[:, :3], ref)
    masked = x[0, 3:]
    zero = (masked == 0).all(dim=0).numpy()
    ys, xs = np.nonzero(zero)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == spec.geometry.mouth_mask
    assert zero.sum() == (155 - 5) * (150 - 5)
    assert torch.equal(cur, torch.ones(1, 3, 160, 160))  # input not modified


def test_jaw_mask_hides_the_chin_strip_the_mouth_mask_shows():
    mouth, jaw = build_unet("160").spec, build_unet("160", input_mask="jaw").spec
    assert mouth.masked_box == (5, 5, 155, 150)  # SyncTalk_2D's
    assert jaw.masked_box == (5, 5, 155, 160)
    x = make_unet_input(torch.zeros(1, 3, 160, 160), torch.ones(1, 3, 160, 160), jaw)
    assert (x[0, 3:, 150:, 5:155] == 0).all()


def test_a_luminance_only_syncnet_cannot_push_colours(tmp_path):
    """Its face embedding ignores hue, so the gradient it sends a U-Net is equal on R, G, B."""
    from synctalk.models.checkpoint import load_syncnet, save_model

    torch.manual_seed(0)
    net = build_syncnet("160", "whisper", mobile=True, luminance_only=True).eval()
    face = torch.rand(2, 3, 160, 160, requires_grad=True)
    grey = face.detach().mean(1, keepdim=True).expand(-1, 3, -1, -1)
    torch.testing.assert_close(net.embed_face(face), net.embed_face(grey))
    audio = torch.randn(2, *SYNCNET_AUDIO_SHAPES["whisper"])
    a, f = net(face, audio)
    (a * f).sum().backward()
    g = face.grad
    torch.testing.assert_close(g[:, 0], g[:, 1])
    torch.testing.assert_close(g[:, 1], g[:, 2])
    # the choice travels with the checkpoint; SyncTalk_2D's own SyncNets see colour
    save_model(net, tmp_path / "syncnet.pth")
    assert load_syncnet(tmp_path / "syncnet.pth").luminance_only
    colour = build_syncnet("160", "ave", mobile=True)
    assert not colour.luminance_only
    assert colour.embed_face(face).sub(colour.embed_face(grey)).abs().max() > 0


def _whisper_unet_with_centre(windows: torch.Tensor):
    from synctalk.models.unet import fit_audio_centre

    torch.manual_seed(0)
    unet = build_unet("160", "whisper", mobile=True, input_mask="jaw").eval()
    fit_audio_centre(unet, windows)
    return unet


def test_articulation_pushes_the_audio_vector_from_its_training_centre():
    from synctalk.models.unet import articulate

    torch.manual_seed(1)
    windows = torch.randn(40, *UNET_AUDIO_SHAPES["whisper"])
    unet = _whisper_unet_with_centre(windows)
    centre = unet.audio_model.centre
    with torch.no_grad():
        assert torch.allclose(unet.audio_model(windows).mean(0).flatten(), centre, atol=1e-4)
        pushed = articulate(unet, 2.5)
        assert pushed is not unet and unet.audio_model.centre is centre  # a copy
        before = unet.audio_model(windows[:3]).flatten(1)
        after = pushed.audio_model(windows[:3]).flatten(1)
    assert torch.allclose(after, centre + 2.5 * (before - centre), atol=1e-3)
    assert articulate(unet, 1.0) is unet


def test_a_unet_without_a_centre_renders_unarticulated(caplog):
    from synctalk.models.unet import articulate

    unet = build_unet("160", "whisper", mobile=True, input_mask="jaw")
    assert torch.isnan(unet.audio_model.centre).all()  # never fitted
    assert articulate(unet, 2.0) is unet
    assert "articulation 2.00 ignored" in caplog.text
    ave = build_unet("160", "ave")
    assert articulate(ave, 2.0) is ave and "audio mode ave" in caplog.text


def test_the_audio_centre_travels_with_the_checkpoint(tmp_path):
    from synctalk.models.checkpoint import load_unet, save_model

    windows = torch.randn(8, *UNET_AUDIO_SHAPES["whisper"])
    unet = _whisper_unet_with_centre(windows)
    save_model(unet, tmp_path / "unet.pth", avatar="t")
    loaded = load_unet(tmp_path / "unet.pth")
    assert torch.equal(loaded.audio_model.centre, unet.audio_model.centre)
    # a Whisper U-Net saved before the centre existed still loads (without one)
    state = {k: v for k, v in unet.state_dict().items() if k != "audio_model.centre"}
    torch.save(state, tmp_path / "old.pth")
    (tmp_path / "old.pth.json").write_text((tmp_path / "unet.pth.json").read_text())
    assert torch.isnan(load_unet(tmp_path / "old.pth").audio_model.centre).all()
