"""What a person reviewing a trained avatar watches, besides its numbers.

The evaluate stage logs these to the registered version's MLflow run, where
the UI plays the videos:

- `heldout_side_by_side.mp4`: the held-out footage (never trained on), real
  on the left and rendered on the right, with its own audio;
- `review_sentence.mp4`: the avatar rendered by the version under review
  saying a fixed sentence (params.yaml `review.sentence`) in a synthetic
  voice that is not the avatar's, through the same engine as `synctalk render`;
- `mouth_contact_sheet.png`: the mouths of evenly spaced held-out frames,
  real above rendered, for a quick look.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy.io import wavfile

from synctalk.atomic import atomic_path
from synctalk.config import FPS, SAMPLE_RATE, Config
from synctalk.media.audio import load_audio
from synctalk.paths import AvatarPaths
from synctalk.render.engine import Mp4Encoder, RenderError

log = logging.getLogger(__name__)

SIDE_BY_SIDE = "heldout_side_by_side.mp4"
REVIEW_SENTENCE = "review_sentence.mp4"
CONTACT_SHEET = "mouth_contact_sheet.png"

_LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _label(image: np.ndarray, text: str, x: int, y: int, scale: float = 0.6) -> None:
    """White text with a dark outline, readable on any background."""
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, (x, y), _LABEL_FONT, scale, colour, thickness, cv2.LINE_AA)


def side_by_side_video(
    real: Sequence[np.ndarray],
    rendered: Sequence[np.ndarray],
    audio: Path,
    first_frame: int,
    out: Path,
    config: Config,
) -> Path:
    """Real frames left, rendered right, with the audio of those frames, as an mp4.

    `audio` is the avatar's whole audio track; the part under frames
    first_frame .. first_frame + len(real) is cut from it, so the video and its
    sound last len(real) / 25 s.
    """
    if len(real) != len(rendered) or not len(real):
        raise ValueError(f"{len(real)} real and {len(rendered)} rendered frames")
    wav = load_audio(audio)
    per_frame = SAMPLE_RATE // FPS
    segment = wav[first_frame * per_frame : (first_frame + len(real)) * per_frame]
    segment = np.pad(segment, (0, len(real) * per_frame - len(segment)))  # a short last frame
    h, w = real[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="synctalk-review-") as tmp:
        sound = Path(tmp) / "heldout.wav"
        wavfile.write(sound, SAMPLE_RATE, (np.clip(segment, -1, 1) * 32767).astype(np.int16))
        with (
            atomic_path(out) as target,
            Mp4Encoder(target, (h, 2 * w), sound, config.render) as sink,
        ):
            for k, (left, right) in enumerate(zip(real, rendered, strict=True)):
                frame = np.concatenate([left, right], axis=1)
                _label(frame, f"real  {first_frame + k}", 10, 24)
                _label(frame, "rendered", w + 10, 24)
                sink.write(np.ascontiguousarray(frame))
            sink.finish()
    return out


def contact_sheet(
    real: np.ndarray, rendered: np.ndarray, frames: np.ndarray, out: Path, columns: int = 8
) -> Path:
    """The mouth band of `columns` evenly spaced crops, real above rendered, as a PNG.

    `real` and `rendered` are uint8 [N, S, S, 3] BGR model-size crops of the
    frames numbered `frames`.
    """
    n, size = len(real), real.shape[1]
    picks = np.unique(np.linspace(0, n - 1, min(columns, n)).round().astype(int))
    scale = max(1, round(256 / size))  # tiles ~256 px wide, whatever the preset
    # The crop's top edge is at the nose bridge and its side the face width: the lips
    # lie between 40 % and 90 % of its height.
    top, bottom = round(0.4 * size), round(0.9 * size)
    rows = []
    for name, crops in (("real", real), ("rendered", rendered)):
        tiles = []
        for k in picks:
            mouth = np.ascontiguousarray(crops[k, top:bottom])
            tile = cv2.resize(mouth, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            _label(tile, f"{name} {int(frames[k])}", 6, 20, scale=0.5)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    with atomic_path(out) as tmp:
        ok, png = cv2.imencode(".png", sheet)
        if not ok:
            raise RenderError(f"{out}: OpenCV could not encode the contact sheet")
        tmp.write_bytes(png.tobytes())
    return out


def review_sentence_video(config: Config, paths: AvatarPaths, version: str, out: Path) -> Path:
    """The avatar saying `review.sentence` in the voice `review.voice`, rendered with
    registered `version` exactly as `synctalk render --model-alias <version>` would."""
    from synctalk.demo_avatar import synthesise_speech
    from synctalk.render.batch import AvatarRenderer

    with tempfile.TemporaryDirectory(prefix="synctalk-review-") as tmp:
        speech = Path(tmp) / "sentence.wav"
        synthesise_speech(config.review.sentence, speech, voice=config.review.voice)
        renderer = AvatarRenderer(config, paths.name, version, paths.root)
        try:
            outcome = renderer.render(speech, out)
        finally:
            renderer.close()
    if outcome.status != "done":
        raise RenderError(f"the review sentence could not be rendered: {outcome.error}")
    return out
