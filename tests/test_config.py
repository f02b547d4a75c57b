import pytest

from synctalk.config import (
    RESOLUTIONS,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    resolution,
)
from tests.conftest import REPO


def test_presets_derive_crop_geometry():
    r160, r328 = resolution("160"), resolution(328)
    assert (r160.size, r160.crop_size, r160.unet_depth) == (160, 168, 4)
    assert (r328.size, r328.crop_size, r328.unet_depth) == (320, 328, 5)
    assert r160.inner_box == (4, 4, 164, 164)
    assert r328.inner_box == (4, 4, 324, 324)
    # x 5..S-5, y 5..S-10, end-exclusive
    assert r160.mouth_mask == (5, 5, 155, 150)
    assert r328.mouth_mask == (5, 5, 315, 310)


def test_unknown_resolution_is_an_error():
    with pytest.raises(ConfigError, match="256"):
        resolution("256")
    assert set(RESOLUTIONS) == {"160", "328"}


def test_repo_params_yaml_is_valid():
    config = load_config(REPO / "params.yaml")
    assert config.presets["tiny"].geometry.size == 160
    assert config.presets["tiny"].mobile is True
    assert config.presets["default"].geometry.size == 320


def test_missing_file_gives_defaults(tmp_path):
    assert load_config(tmp_path / "nope.yaml") == Config()


@pytest.mark.parametrize(
    "data, key",
    [
        ({"devcie": "cpu"}, "devcie"),
        ({"presets": {"tiny": {"resolution": "160", "mobil": True}}}, "presets.tiny.mobil"),
        ({"presets": {"tiny": {"mobile": "yes"}}}, "presets.tiny.mobile"),
        ({"presets": {"tiny": {"resolution": "256"}}}, "presets.tiny.resolution"),
        ({"presets": {"tiny": {"audio_mode": "mfcc"}}}, "presets.tiny.audio_mode"),
        ({"device": "gpu"}, "device"),
        ({"avatars": {"bob": {"preset": "default"}}}, "avatars.bob.video"),
        ({"avatars": {"bob": {"video": 3}}}, "avatars.bob.video"),
        ({"avatars": {"bob": {"video": "a.mp4", "preset": "huge"}}}, "avatars.bob.preset"),
        ({"presets": ["tiny"]}, "presets"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert key in str(info.value)


def test_int_resolution_is_accepted_for_the_string_preset():
    config = config_from_dict({"presets": {"p": {"resolution": 160}}})
    assert config.presets["p"].resolution == "160"


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("device: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml"):
        load_config(bad)
    bad.write_text("presets:\n  tiny:\n    mobile: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: presets.tiny.mobile: expected bool"):
        load_config(bad)


def test_avatar_preset_lookup():
    config = config_from_dict(
        {
            "presets": {"tiny": {"resolution": "160"}},
            "avatars": {"bob": {"video": "b.mp4", "preset": "tiny"}},
        }
    )
    assert config.preset_of("bob").resolution == "160"
    with pytest.raises(ConfigError, match="alice"):
        config.preset_of("alice")


@pytest.mark.parametrize("name", ["bob\n", "Bob", "bob smith", "-bob", "x" * 65, "bob/x"])
def test_avatar_names_are_matched_whole(name):
    # a name ends up in folder names, DVC stage names and the MLflow model's name
    with pytest.raises(ConfigError, match="avatar name is 1-64 lower-case"):
        config_from_dict({"avatars": {name: {"video": "b.mp4"}}})
    assert config_from_dict({"avatars": {"bob_2-x": {"video": "b.mp4"}}}).avatars
