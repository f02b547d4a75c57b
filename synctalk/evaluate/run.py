"""How good is a trained avatar: render its held-out footage and compare.

The last 10% of the avatar's video was never trained on. Each of those
frames is redrawn by the U-Net from its own audio, exactly as rendering does
(reference = the frame's own crop, mouth masked, the audio window of the
frame, the render settings' articulation and audio smoothing), pasted back
with the compositor, and compared with the real frame:

- PSNR and SSIM on the model-size crop;
- LMD: the distance between mouth landmarks found by the landmarks backend
  on the rendered and on the real frame, after aligning the mouth centres and
  divided by the real mouth width (so avatars and presets compare);
- sync: LSE-D / LSE-C with the avatar's SyncNet over offsets -15..+15, for
  the render and, as a yardstick, for the real footage.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from synctalk.config import LandmarkParams, ModelPreset, RenderParams
from synctalk.evaluate.metrics import (
    MEDIAPIPE_MOUTH,
    ciede2000,
    gradient_energy,
    mouth_landmark_distance,
    psnr,
    seam_band,
    ssim,
)
from synctalk.evaluate.sync import SyncScore, sync_score
from synctalk.face.prepare import open_backend
from synctalk.features.windows import smooth_features
from synctalk.manifest import LANDMARKS_SCHEMA, fixed_list_to_numpy, read_manifest
from synctalk.media.video import iter_frames
from synctalk.models.syncnet import SYNCNET_AUDIO_SHAPES, SyncNet
from synctalk.models.unet import UNet, articulate, make_unet_input
from synctalk.paths import AvatarPaths
from synctalk.render.compositor import Compositor
from synctalk.train.data import AvatarFrames

log = logging.getLogger(__name__)

WFLW_MOUTH = tuple(range(76, 96))  # outer and inner lip of the 98-point layout


@dataclass
class Evaluation:
    metrics: dict[str, float]
    frame_psnr: np.ndarray  # per held-out frame
    sync: SyncScore  # of the render
    sync_real: SyncScore  # of the real footage, for comparison
    frames: np.ndarray  # indices of the held-out frames
    # What a reviewer looks at (synctalk.evaluate.review): the held-out frames,
    # real and with the rendered mouth pasted in (uint8 [H, W, 3] BGR each), and
    # their model-size crops (uint8 [n, S, S, 3] BGR).
    real_frames: list[np.ndarray]
    rendered_frames: list[np.ndarray]
    real_crops: np.ndarray
    rendered_crops: np.ndarray


def _predict(unet: UNet, data: AvatarFrames, frames: np.ndarray, device, batch: int = 16):
    unet = unet.to(device).eval()
    shape = unet.spec.audio_shape
    out = []
    with torch.inference_mode():
        for chunk in np.array_split(frames, max(1, len(frames) // batch)):
            crops = torch.from_numpy(np.stack([data.crop(i) for i in chunk])).to(device)
            audio = torch.from_numpy(np.stack([data.audio(i, shape) for i in chunk])).to(device)
            out.append(unet(make_unet_input(crops, crops, unet.spec), audio).float().cpu())
    return torch.cat(out).numpy()  # [n, 3, S, S] in [0, 1]


def _to_uint8(chw: np.ndarray) -> np.ndarray:
    return (np.clip(chw, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _mouth_lmd(rendered, real, backend, indices) -> float:
    distances = []
    for fake_frame, real_frame in zip(rendered, real, strict=True):
        found_fake, found_real = backend.detect(fake_frame), backend.detect(real_frame)
        if not found_fake or not found_real:
            continue
        true = found_real[0].points
        anchors = backend.anchors
        width = np.linalg.norm(
            true[list(anchors["mouth_right"])].mean(0) - true[list(anchors["mouth_left"])].mean(0)
        )
        distances.append(
            mouth_landmark_distance(
                found_fake[0].points[None],
                true[None],
                indices,
                normalise_by=max(width, 1.0),
                align_centroids=True,
            )
        )
    return float(np.mean(distances)) if distances else float("nan")


def paste_quality(
    rendered: list[np.ndarray], real: list[np.ndarray], boxes: np.ndarray, compositor: Compositor
) -> dict[str, float]:
    """How the pasted frames look next to the real ones, where a viewer looks.

    face_ssim / face_psnr: over the crop box (the lower face, nose to chin);
    colour_de2000: mean CIEDE2000 where the paste takes most of its pixels from
    the model (alpha > 0.5), a colour cast reads above ~3; seam_ratio:
    gradient energy along the paste's edge over the real frame's at the same
    place, 1 when the edge is invisible.
    """
    ssims, psnrs, colours, seam, seam_real = [], [], [], [], []
    for fake, true, box in zip(rendered, real, boxes, strict=True):
        x0, y0, side = (int(v) for v in box)
        ya, yb = max(0, y0), min(true.shape[0], y0 + side)
        xa, xb = max(0, x0), min(true.shape[1], x0 + side)
        ssims.append(ssim(fake[ya:yb, xa:xb], true[ya:yb, xa:xb]))
        psnrs.append(psnr(fake[ya:yb, xa:xb], true[ya:yb, xa:xb]))
        alpha = compositor.alpha_in_frame(box)
        colours.append(ciede2000(fake, true, alpha > 0.5))
        band = seam_band(alpha)
        seam.append(gradient_energy(fake, band))
        seam_real.append(gradient_energy(true, band))
    finite = [p for p in psnrs if np.isfinite(p)]
    return {
        "face_ssim": float(np.mean(ssims)),
        "face_psnr": float(np.mean(finite)) if finite else float("inf"),
        "colour_de2000": float(np.mean(colours)),
        "seam_ratio": float(np.sum(seam) / max(np.sum(seam_real), 1e-9)),
    }


def evaluate_avatar(
    paths: AvatarPaths,
    preset: ModelPreset,
    unet: UNet,
    syncnet: SyncNet,
    landmarks: LandmarkParams,
    render: RenderParams,
    device: torch.device,
) -> Evaluation:
    geometry = preset.geometry
    data = AvatarFrames.load(paths.crops, paths.features, geometry)
    _, frames = data.split()
    # the audio drives the mouth as in a render; the SyncNet below judges the real audio
    driven = dataclasses.replace(
        data, features=smooth_features(data.features, render.audio_smoothing)
    )
    prediction = _predict(articulate(unet, render.articulation), driven, frames, device)
    real = np.stack([data.crop(i) for i in frames])
    pred8, real8 = _to_uint8(prediction), _to_uint8(real)
    frame_psnr = np.array([psnr(p, r) for p, r in zip(pred8, real8, strict=True)])

    # Paste back into the real frames, as a render would, for the landmarks.
    table, _ = read_manifest(paths.landmarks, LANDMARKS_SCHEMA)
    boxes = fixed_list_to_numpy(table.column("crop_box"), 3, np.int32)
    start = int(frames[0])
    originals = list(itertools.islice(iter_frames(paths.video), start, int(frames[-1]) + 1))
    compositor = None
    rendered = []
    for k, frame in enumerate(originals):
        if compositor is None:
            compositor = Compositor(
                geometry, frame.shape[:2], feather=render.feather, region=render.paste_region
            )
        i = int(frames[k])
        rendered.append(compositor.paste(frame.copy(), data.crops[i].copy(), pred8[k], boxes[i]))
    pasted = paste_quality(rendered, originals, boxes[frames], compositor)
    backend = open_backend(landmarks)
    try:
        indices = MEDIAPIPE_MOUTH if backend.name == "mediapipe" else WFLW_MOUTH
        lmd = _mouth_lmd(rendered, originals, backend, indices)
    finally:
        backend.close()

    shape = SYNCNET_AUDIO_SHAPES[preset.audio_mode]
    windows = np.stack([data.audio(i, shape) for i in frames])
    max_offset = min(15, len(frames) - 1)
    sync = sync_score(syncnet, prediction.astype(np.float32), windows, max_offset, device=device)
    sync_real = sync_score(syncnet, real, windows, max_offset, device=device)
    metrics = {
        "psnr": float(np.mean(frame_psnr[np.isfinite(frame_psnr)])),
        "ssim": ssim(pred8, real8),
        "lmd": lmd,
        **pasted,
        **sync.as_metrics(),
        "lse_d_real": sync_real.min_distance,
        "lse_c_real": sync_real.confidence,
        # how much of the real footage's sync confidence the render keeps
        "lse_c_ratio": (
            sync.confidence / sync_real.confidence if sync_real.confidence > 0 else float("nan")
        ),
        "frames": int(len(frames)),
    }
    log.info("evaluation of %s: %s", paths.name, metrics)
    return Evaluation(
        metrics,
        frame_psnr,
        sync,
        sync_real,
        frames,
        real_frames=originals,
        rendered_frames=rendered,
        real_crops=real8,
        rendered_crops=pred8,
    )
