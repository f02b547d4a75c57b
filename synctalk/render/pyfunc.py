"""A registered avatar model as an MLflow pyfunc: audio in, the rendered mp4 out.

    mlflow models serve -m models:/avatar-bob@champion --env-manager local -p 5001
    curl -X POST -H 'Content-Type: application/json' -d @request.json \\
        http://127.0.0.1:5001/invocations

Input: a DataFrame with one column, `audio`: each row an audio file (any
format ffmpeg reads) encoded in base64. Output: a DataFrame with one column,
`video`: each row the base64 of the mp4 `synctalk render` makes of that audio
with the same version (same engine, same settings, same pixels).

A version carries everything this needs: the U-Net, the audio front-end, the
render settings it was registered with (config.json), the avatar's prepared
footage (the extract stage's mezzanine, its 16 kHz audio for int8
calibration, and the landmarks stage's landmarks.parquet, laid out as a
project folder under `footage/`) and the synctalk code itself (MLflow's
code_paths). The render cache and the ONNX export (and, with
render.precision int8, the int8 model) are built on first load under
$SYNCTALK_CACHE_DIR (default: a `synctalk-<uid>` folder in the temp
directory) and re-used by later loads.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

log = logging.getLogger(__name__)

AUDIO_COLUMN, VIDEO_COLUMN = "audio", "video"
CACHE_ENV = "SYNCTALK_CACHE_DIR"
# Third-party distributions the render path imports: the model's requirements.txt
# pins them to the versions installed when it was logged (synctalk itself travels
# as code). `--env-manager local` installs nothing.
RENDER_REQUIREMENTS = """torch numpy scipy librosa soxr opencv-python-headless onnx onnxruntime
    pandas pyarrow imageio-ffmpeg PyYAML mlflow""".split()


def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"synctalk-{os.getuid()}" / "cache"


def requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in RENDER_REQUIREMENTS]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, AUDIO_COLUMN)]),
        outputs=Schema([ColSpec(DataType.string, VIDEO_COLUMN)]),
    )


def input_example():
    """One row: half a second of a swelling 220 Hz tone as a base64 WAV (~21 KB)."""
    import pandas as pd
    from scipy.io import wavfile

    from synctalk.config import SAMPLE_RATE

    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / t[-1])
    buffer = io.BytesIO()
    wavfile.write(buffer, SAMPLE_RATE, (tone * 32767).astype(np.int16))
    return pd.DataFrame({AUDIO_COLUMN: [base64.b64encode(buffer.getvalue()).decode("ascii")]})


def _bad_input(message: str) -> Exception:
    """An error the scoring server answers with HTTP 400 and this message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class AvatarVideoModel(mlflow.pyfunc.PythonModel):
    """predict(DataFrame[audio: base64 file]) -> DataFrame[video: base64 mp4]."""

    def load_context(self, context) -> None:
        import json

        from synctalk.config import RenderParams
        from synctalk.paths import AvatarPaths
        from synctalk.render.engine import load_for_rendering

        config = json.loads(Path(context.artifacts["config"]).read_text())
        self.params = RenderParams(**config["render"])
        self.device = "auto"  # the serving machine's choice, not the training machine's
        footage = AvatarPaths(config["avatar"], Path(context.artifacts["footage"]))
        unet, encoder = Path(context.artifacts["unet"]), Path(context.artifacts["audio_encoder"])
        self.loaded = load_for_rendering(
            footage, unet, encoder, self.params, self.device, cache_root()
        )
        self.lock = threading.Lock()  # one render at a time: each uses every core

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        from synctalk.media.ffmpeg import MediaError
        from synctalk.render.engine import RenderError, render_video

        if AUDIO_COLUMN not in model_input:
            raise _bad_input(f"the input has no {AUDIO_COLUMN!r} column (base64 audio files)")
        videos = []
        for row, text in enumerate(model_input[AUDIO_COLUMN]):
            try:
                audio = base64.b64decode(str(text), validate=True)
            except (binascii.Error, ValueError):
                raise _bad_input(f"row {row}: {AUDIO_COLUMN} is not base64") from None
            with tempfile.TemporaryDirectory(prefix="synctalk-pyfunc-") as tmp:
                source, out = Path(tmp) / f"row{row}.audio", Path(tmp) / f"row{row}.mp4"
                source.write_bytes(audio)
                loaded = self.loaded
                try:
                    with self.lock:
                        render_video(
                            loaded.avatar,
                            loaded.runtime,
                            loaded.front_end,
                            source,
                            out,
                            self.params,
                            self.device,
                        )
                except (MediaError, RenderError) as exc:
                    message = str(exc).replace(str(source), "the audio")
                    raise _bad_input(f"row {row}: {message}") from None
                videos.append(base64.b64encode(out.read_bytes()).decode("ascii"))
        return pd.DataFrame({VIDEO_COLUMN: videos})
