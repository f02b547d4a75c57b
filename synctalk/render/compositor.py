"""Pasting the U-Net's S x S crop back into the background frame.

As in SyncTalk_2D, the prediction replaces the inner box of the crop_size
crop (the thin margin ring keeps the original crop's pixels) and that crop
is resized back to the crop box's side. The original then overwrote the box,
which leaves a visible square wherever the model's colours drift even
slightly. Here the box is blended in with a feathered alpha instead: 1 in
the middle, ramping to 0 over `feather` x side at the box's border (a
smoothstep, so there is no kink at the inner edge of the ramp either). The
border of the box is therefore the source frame's own pixels, and nothing
outside the box is touched at all.

Only the box is processed: the whole-frame work is one uint8 copy of the
background per frame. The alpha masks depend only on the box side, so they
are made once per distinct side and kept.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from synctalk.config import Resolution

# Masks kept: enough for a normal avatar's range of box sides (a few px to a few dozen),
# bounded for a 1080p one whose head moves a lot (each mask is side^2 x 8 bytes).
_CACHED_SIDES = 96
_PRECOMPUTE = 64


# The lower face inside a crop box, as an ellipse in box-relative units: the
# crop's top edge is the nose bridge and its sides the cheeks, so this spans
# from under the nose to past the chin (with room for the jaw to open) and
# leaves the nose, the cheeks' outer edges and the neck to the source frame.
LOWER_FACE_CENTRE = (0.5, 0.62)  # (x, y)
LOWER_FACE_RADII = (0.40, 0.35)
PASTE_REGIONS = ("box", "lower_face")


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=_CACHED_SIDES)
def feather_alpha(side: int, feather: float, region: str = "box") -> tuple[np.ndarray, np.ndarray]:
    """(alpha, 1 - alpha) of a side x side box, float32, read-only.

    region "box": the whole box, its border ramped down over `feather` x side
    (separable: the product of two 1-D smoothstep ramps). region
    "lower_face": the ellipse above, its edge ramped over `feather` x side
    inward. Pixel centres are used, so the mask is symmetric.
    """
    if side < 1:
        raise ValueError(f"box side must be positive, got {side}")
    if region not in PASTE_REGIONS:
        raise ValueError(f"paste region must be one of {PASTE_REGIONS}, got {region!r}")
    width = feather * side
    centres = np.arange(side, dtype=np.float64) + 0.5
    if region == "lower_face":
        (cx, cy), (rx, ry) = LOWER_FACE_CENTRE, LOWER_FACE_RADII
        u = (centres / side - cx) / rx
        v = (centres / side - cy) / ry
        distance = np.sqrt(v[:, None] ** 2 + u[None, :] ** 2)  # 1 on the ellipse
        ramp = max(feather / min(rx, ry), 1e-6)
        alpha = _smoothstep((1.0 - distance) / ramp).astype(np.float32)
    elif width <= 0:
        alpha = np.ones((side, side), dtype=np.float32)
    else:
        ramp = _smoothstep(np.minimum(centres, side - centres) / width)
        alpha = np.outer(ramp, ramp).astype(np.float32)
    inverse = (1.0 - alpha).astype(np.float32)
    alpha.flags.writeable = False
    inverse.flags.writeable = False
    return alpha, inverse


class Compositor:
    """Pastes predicted crops into frames of one avatar (one size, one geometry)."""

    def __init__(
        self,
        geometry: Resolution,
        frame_size: tuple[int, int],
        feather: float = 0.08,
        sides: np.ndarray | None = None,
        region: str = "box",
    ):
        """frame_size is (height, width); `sides`, if given, are the box sides to expect.

        The alpha masks of up to _PRECOMPUTE distinct sides are made here, before
        the render loop, rather than on first use inside it.
        """
        if not 0 <= feather <= 0.5:
            raise ValueError(f"feather must be in [0, 0.5] (a fraction of the side), got {feather}")
        self.geometry = geometry
        self.height, self.width = frame_size
        self.feather = float(feather)
        self.region = region
        if sides is not None:
            for side in np.unique(np.asarray(sides))[:_PRECOMPUTE]:
                feather_alpha(int(side), self.feather, region)

    def paste(
        self,
        frame: np.ndarray,
        crop: np.ndarray,
        prediction: np.ndarray,
        crop_box: np.ndarray | tuple[int, int, int],
    ) -> np.ndarray:
        """Blend `prediction` into `frame` (in place) inside `crop_box`; returns `frame`.

        frame: uint8 [H, W, 3], the background, modified in place.
        crop: uint8 [crop_size, crop_size, 3], the original crop of this box
        (its margin ring surrounds the prediction). It is modified too: pass a
        scratch copy.
        prediction: uint8 [S, S, 3], same channel order as the frame.
        crop_box: (x0, y0, side) in frame pixels; it may stick out of the frame.
        """
        g = self.geometry
        x0, y0, side = (int(v) for v in crop_box)
        m, s = g.margin, g.size
        crop[m : m + s, m : m + s] = prediction
        # Clip the box to the frame; the resized crop and the alpha are cut alike.
        xa, xb = max(0, x0), min(self.width, x0 + side)
        ya, yb = max(0, y0), min(self.height, y0 + side)
        if xa >= xb or ya >= yb:
            return frame  # wholly outside: nothing to paste
        # Bilinear, as the original; INTER_AREA only for a strong shrink, where bilinear
        # would alias (it is 7x slower for the usual 328 -> ~250 px).
        interpolation = cv2.INTER_AREA if 2 * side < g.crop_size else cv2.INTER_LINEAR
        resized = cv2.resize(crop, (side, side), interpolation=interpolation)
        alpha, inverse = feather_alpha(side, self.feather, self.region)
        sy, sx = slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)
        target = frame[ya:yb, xa:xb]
        if self.feather == 0 and self.region == "box":
            target[...] = resized[sy, sx]
            return frame
        blended = cv2.blendLinear(
            np.ascontiguousarray(resized[sy, sx]),
            np.ascontiguousarray(target),
            np.ascontiguousarray(alpha[sy, sx]),
            np.ascontiguousarray(inverse[sy, sx]),
        )
        target[...] = blended
        return frame

    def alpha_in_frame(self, crop_box: np.ndarray | tuple[int, int, int]) -> np.ndarray:
        """float32 [H, W]: how much of each frame pixel `paste` takes from the prediction."""
        x0, y0, side = (int(v) for v in crop_box)
        out = np.zeros((self.height, self.width), dtype=np.float32)
        xa, xb = max(0, x0), min(self.width, x0 + side)
        ya, yb = max(0, y0), min(self.height, y0 + side)
        if xa < xb and ya < yb:
            alpha, _ = feather_alpha(side, self.feather, self.region)
            out[ya:yb, xa:xb] = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0]
        return out
