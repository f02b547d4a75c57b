import subprocess
import sys

import numpy as np

from synctalk.cli import main


def test_help_explains_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "synctalk.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "info" in out and "demo" in out
    demo = subprocess.run(
        [sys.executable, "-m", "synctalk.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--models-only" in demo and "--out" in demo


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device" in out and "ffmpeg" in out


def test_demo_runs_on_built_in_data(tmp_path, capsys):
    assert main(["demo", "--models-only", "--out", str(tmp_path), "--seconds", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime ms/frame" in out
    features = np.load(tmp_path / "ave.npy")
    assert features.shape[1] == 512 and len(features) > 30
    for name in ("unet.pth", "unet.pth.json", "unet.onnx", "ave_encoder.pth"):
        assert (tmp_path / name).is_file()
    agreement = [ln for ln in out.splitlines() if ln.startswith("max |torch")][0]
    assert float(agreement.split()[-1]) < 1e-4


def test_bad_params_file_is_one_clear_error(tmp_path, caplog):
    bad = tmp_path / "params.yaml"
    bad.write_text("devcie: cpu\n")
    assert main(["info", "--params", str(bad)]) == 2
    assert "devcie" in caplog.text


def test_export_onnx_command(tmp_path, capsys):
    import torch

    from synctalk.models import build_unet

    torch.manual_seed(0)
    checkpoint = tmp_path / "original.pth"
    torch.save(build_unet("160", mobile=True).state_dict(), checkpoint)
    assert main(["export-onnx", str(checkpoint), str(tmp_path / "unet.onnx")]) == 0
    assert (tmp_path / "unet.onnx").is_file()
    assert "max |onnxruntime - torch|" in capsys.readouterr().out


def test_render_of_an_unknown_avatar_is_one_clear_error(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    assert main(["render", "--avatar", "nobody", "--audio", str(audio)]) == 2
    assert "unknown avatar 'nobody'" in caplog.text


def test_models_promote_checks_the_version(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("avatar-bob")
    for _ in range(2):
        client.create_model_version("avatar-bob", source=str(tmp_path))
    assert main(["models", "promote", "bob", "1"]) == 2  # not evaluated: the review gate refuses
    assert main(["models", "promote", "bob", "1", "--force", "--reason", "a test"]) == 0
    assert client.get_model_version_by_alias("avatar-bob", "champion").version in (1, "1")
    assert main(["models", "promote", "bob", "7"]) == 2
    assert main(["models", "promote", "bob", "one"]) == 2
    assert "@champion" in capsys.readouterr().out
