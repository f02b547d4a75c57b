import numpy as np
import pytest
import torch

from synctalk.models import build_unet
from synctalk.render.onnx import OnnxUNet, example_inputs, export_unet


@pytest.mark.parametrize(
    "preset, mobile, audio_mode, input_mask",
    [
        ("160", True, "ave", "mouth"),
        ("328", False, "ave", "mouth"),
        ("160", True, "whisper", "jaw"),
    ],
)
def test_onnxruntime_agrees_with_torch(tmp_path, preset, mobile, audio_mode, input_mask):
    torch.manual_seed(0)
    model = build_unet(preset, audio_mode, mobile, input_mask).train()
    # give batch norm non-trivial statistics, as a trained model has
    with torch.no_grad():
        for _ in range(3):
            model(*example_inputs(model, batch=4))
    model.eval()
    path = export_unet(model, tmp_path / "unet.onnx")
    runner = OnnxUNet(path)
    assert runner.spec == model.spec  # the file says how its inputs are made
    image, audio = example_inputs(model, batch=3)  # the batch axis is dynamic
    with torch.inference_mode():
        expected = model(image, audio).numpy()
    got = runner(image.numpy(), audio.numpy())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))
