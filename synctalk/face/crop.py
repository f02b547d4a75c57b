"""The SyncTalk crop box and cutting crops out of frames.

SyncTalk_2D's crop is a square: its left and right edges are the face contour
at cheek height, its top edge the nose bridge, its side the face width. It
holds the lower face (nose, mouth, chin), which is all the U-Net redraws.

Boxes here are `crop_box` arrays (x0, y0, side) in pixels. The raw per-frame
box jitters with landmark noise, so the track is smoothed over time (a
zero-phase Gaussian on centre and side, which does not lag behind real head
motion) before it is rounded to whole pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from synctalk.face.landmarks import ANCHOR_NAMES

_LEFT, _RIGHT, _TOP = (ANCHOR_NAMES.index(n) for n in ("cheek_left", "cheek_right", "nose_bridge"))


def raw_crop_boxes(anchors: np.ndarray) -> np.ndarray:
    """float64 [N, 3] (x0, y0, side) from anchors [N, len(ANCHOR_NAMES), 2]."""
    anchors = np.asarray(anchors, dtype=np.float64)
    x0 = anchors[:, _LEFT, 0]
    side = anchors[:, _RIGHT, 0] - x0
    if (side <= 0).any():
        bad = int(np.flatnonzero(side <= 0)[0])
        raise ValueError(
            f"frame {bad}: cheek anchors are in the wrong order (side {side[bad]:.1f})"
        )
    return np.stack([x0, anchors[:, _TOP, 1], side], axis=1)


def smooth_crop_boxes(boxes: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth (x0, y0, side) over time by smoothing the centre and the side."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if sigma <= 0 or len(boxes) < 2:
        return boxes.copy()
    side = boxes[:, 2]
    centre = boxes[:, :2] + side[:, None] / 2
    centre = gaussian_filter1d(centre, sigma, axis=0, mode="nearest")
    side = gaussian_filter1d(side, sigma, mode="nearest")
    return np.column_stack([centre - side[:, None] / 2, side])


def round_crop_boxes(boxes: np.ndarray) -> np.ndarray:
    """int32 [N, 3]: whole-pixel (x0, y0, side), side at least 2."""
    out = np.rint(boxes).astype(np.int32)
    out[:, 2] = np.maximum(out[:, 2], 2)
    return out


def crop_jitter(boxes: np.ndarray) -> np.ndarray:
    """Per step: how far the box centre moves, as a fraction of the side, float [N-1]."""
    boxes = np.asarray(boxes, dtype=np.float64)
    centre = boxes[:, :2] + boxes[:, 2:3] / 2
    step = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    return step / boxes[1:, 2]


def cut_crop(frame: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """The crop_box region of `frame` resized to size x size.

    Parts of the box outside the frame are filled by replicating the border,
    so a face at the frame's edge still gives a full crop.
    """
    x0, y0, side = (int(v) for v in crop_box)
    h, w = frame.shape[:2]
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x0 + side - w), max(0, y0 + side - h)
    ya, yb = min(h, max(0, y0)), min(h, max(0, y0 + side))
    xa, xb = min(w, max(0, x0)), min(w, max(0, x0 + side))
    region = frame[ya:yb, xa:xb]
    if region.size == 0:
        raise ValueError(f"crop box {x0, y0, side} lies outside the {w}x{h} frame")
    if pad_l or pad_t or pad_r or pad_b:
        region = cv2.copyMakeBorder(region, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)
