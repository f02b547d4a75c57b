"""Pure image, landmark and audio metrics for the evaluate stage.

Everything here takes numpy arrays and returns numbers; reading videos,
running face backends and logging to MLflow belong to the stage. The
definitions follow the talking-head literature so our numbers can be read
next to published ones, and each function says where it deviates and why.

* `psnr`, `ssim`: reconstruction quality of rendered crops/frames against the
  ground-truth frames of a held-out clip (the avatar's own audio).
* `mouth_landmark_distance` (LMD): how far the rendered lip shape is from the
  real one, on landmarks of both videos found by the same face backend.
* `mouth_opening`, `loudness_envelope`, `pearson`: a reference-free check
  that a rendered mouth opens and closes with the audio.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from synctalk.config import FPS, SAMPLE_RATE

# Mediapipe face-mesh lip landmarks (the 40 points of FACEMESH_LIPS), each
# contour in drawing order starting at the left mouth corner (image left),
# along the upper lip to the right corner and back along the lower lip.
# Checked by drawing them on may_5s.mp4: the outer contour follows the
# vermilion border, the inner one the opening between the lips.
MEDIAPIPE_MOUTH_OUTER: tuple[int, ...] = (
    61,
    185,
    40,
    39,
    37,
    0,
    267,
    269,
    270,
    409,
    291,
    375,
    321,
    405,
    314,
    17,
    84,
    181,
    91,
    146,
)
MEDIAPIPE_MOUTH_INNER: tuple[int, ...] = (
    78,
    191,
    80,
    81,
    82,
    13,
    312,
    311,
    310,
    415,
    308,
    324,
    318,
    402,
    317,
    14,
    87,
    178,
    88,
    95,
)
MEDIAPIPE_MOUTH: tuple[int, ...] = MEDIAPIPE_MOUTH_OUTER + MEDIAPIPE_MOUTH_INNER

# SSIM constants of Wang et al. 2004 for 8-bit images.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_RANGE = 255.0

# Floor of `loudness_envelope`, the same -100 dB the mel front-end clips at,
# so digital silence is a finite number that `pearson` can use.
LOUDNESS_FLOOR_DB = -100.0


# --------------------------------------------------------------------------
# image quality


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("empty images")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images or stacks (peak 255).

    The squared error is pooled over every selected pixel and channel (of all
    frames, for a stack) before the log, rather than averaging per-frame
    PSNRs: a single identical frame would make a per-frame mean infinite, and
    the pooled value weights every pixel alike. For a paper-style per-frame
    mean, call this per frame and average the finite values.

    `mask` (bool) selects pixels, e.g. the mouth region: it covers the leading
    axes of the images and is broadcast over the rest, so [H, W] for an image
    [H, W] or [H, W, C], and [N, H, W] or [1, H, W] for a stack [N, H, W, C].

    Identical images (over the mask) give `math.inf`, which is what the
    formula gives and what a caller can test for; an empty mask is an error.
    """
    a, b = _same_shape(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim > diff.ndim:
            raise ValueError(f"mask {mask.shape} has more axes than the images {diff.shape}")
        mask = mask.reshape(mask.shape + (1,) * (diff.ndim - mask.ndim))
        try:
            mask = np.broadcast_to(mask, diff.shape)
        except ValueError as err:
            raise ValueError(f"mask {mask.shape} does not fit images {diff.shape}") from err
        if not mask.any():
            raise ValueError("mask selects no pixels")
        diff = diff[mask]
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two float64 single-channel images, 'valid' region only."""
    c1 = (SSIM_K1 * SSIM_RANGE) ** 2
    c2 = (SSIM_K2 * SSIM_RANGE) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    # Only windows that lie wholly inside the image count (MATLAB's 'valid'
    # filter in Wang's reference code, skimage's cropping): border handling
    # would otherwise invent pixels.
    r = SSIM_WINDOW // 2
    return (num / den)[r:-r, r:-r]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004) of two uint8 images, in [-1, 1].

    Gaussian window 11 x 11 with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255,
    population (co)variances, mean over the windows that fit inside the
    image, so both sides must be at least 11 pixels.

    Accepts [H, W] (grey), [H, W, C] (one image) or [N, H, W, C] (a stack:
    the mean of the per-frame values). Colour images are scored per channel
    and the channels averaged (skimage's ``channel_axis`` behaviour) rather
    than converted to grey: that needs no assumption about BGR vs RGB order,
    which our crops (BGR) and other tools (RGB) disagree on, and it still
    sees chroma errors a grey conversion would hide.
    """
    a, b = _same_shape(a, b)
    if a.ndim == 4:
        return float(np.mean([ssim(x, y) for x, y in zip(a, b, strict=True)]))
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected [H, W], [H, W, C] or [N, H, W, C], got {a.shape}")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {a.shape[:2]}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean([_ssim_map(x[..., c], y[..., c]).mean() for c in range(a.shape[2])]))


def ciede2000(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean CIEDE2000 colour difference of two BGR uint8 images over `mask` ([H, W] bool).

    About 1 is the smallest difference a person can see side by side, above
    3 a cast is visible at a glance: the measure for a tinted mouth or skin.
    """
    from skimage.color import deltaE_ciede2000, rgb2lab

    a, b = _same_shape(a, b)
    lab_a = rgb2lab(a[..., ::-1].astype(np.float64) / 255.0)
    lab_b = rgb2lab(b[..., ::-1].astype(np.float64) / 255.0)
    delta = deltaE_ciede2000(lab_a, lab_b)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise ValueError("mask selects no pixels")
        delta = delta[mask]
    return float(delta.mean())


def gradient_energy(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared luminance gradient (Sobel) of a BGR uint8 image over `mask` [H, W]."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("mask selects no pixels")
    return float((gx * gx + gy * gy)[mask].mean())


def seam_band(alpha: np.ndarray, width: int = 2) -> np.ndarray:
    """bool [H, W]: where a paste's alpha passes from the frame to the prediction.

    The pixels whose alpha is strictly between 0 and 1, widened by `width`
    pixels on each side, so a hard-edged paste (alpha 0 or 1 only) still has
    a band along its edge.
    """
    alpha = np.asarray(alpha, dtype=np.float32)
    inside = (alpha > 0.02).astype(np.uint8)
    core = (alpha >= 0.98).astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return (cv2.dilate(inside, kernel) > 0) & ~(cv2.erode(core, kernel) > 0)


# --------------------------------------------------------------------------
# landmarks


def _frames_of_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"expected points [K, 2] or [N, K, 2], got {points.shape}")
    return points


def mouth_landmark_distance(
    pred_points: np.ndarray,
    true_points: np.ndarray,
    mouth_indices: tuple[int, ...] | list[int] | np.ndarray,
    normalise_by: float | np.ndarray | None = None,
    align_centroids: bool = False,
) -> float:
    """Landmark distance (LMD): mean L2 distance of corresponding mouth landmarks.

    `pred_points` / `true_points`: [N, K, 2] (or [K, 2]) landmarks of the
    rendered and the real frames in pixels, from the same backend;
    `mouth_indices` picks the mouth points of that backend's layout
    (`MEDIAPIPE_MOUTH` for mediapipe). The mean runs over every mouth
    landmark of every frame, as in Chen et al. 2019 (ATVGnet), where LMD was
    introduced.

    `align_centroids`: subtract each frame's mouth centroid from both sets
    first, so the score measures lip *shape* (opening, rounding) and not
    where the whole mouth sits. The evaluate stage should turn it on: the
    compositor pastes the rendered crop at the source frame's own box, so
    head position is not what the model is judged on, and the backend's
    frame-to-frame jitter of the whole mouth would otherwise count as error.

    `normalise_by`: divide each frame's distances by a scale, a number or a
    per-frame array [N] (e.g. the true mouth width, or the crop side), so
    scores compare across resolutions and avatars; published LMDs are in
    pixels of a fixed-size crop, which frame pixels are not.
    """
    pred = _frames_of_points(pred_points)
    true = _frames_of_points(true_points)
    if pred.shape != true.shape:
        raise ValueError(f"landmark shapes differ: {pred.shape} vs {true.shape}")
    idx = np.asarray(mouth_indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError("mouth_indices must be a non-empty list of landmark indices")
    pred, true = pred[:, idx], true[:, idx]
    if align_centroids:
        pred = pred - pred.mean(axis=1, keepdims=True)
        true = true - true.mean(axis=1, keepdims=True)
    dist = np.linalg.norm(pred - true, axis=-1)  # [N, M]
    if normalise_by is not None:
        scale = np.asarray(normalise_by, dtype=np.float64)
        if scale.ndim > 1 or (scale.ndim == 1 and len(scale) != len(dist)):
            raise ValueError(f"normalise_by must be a number or [N={len(dist)}], got {scale.shape}")
        if not np.all(scale > 0):
            raise ValueError("normalise_by must be positive")
        dist = dist / (scale[:, None] if scale.ndim == 1 else scale)
    return float(dist.mean())


def mouth_opening(points: np.ndarray, anchors: dict[str, tuple[int, ...]]) -> np.ndarray:
    """Per-frame inner-lip gap over mouth width, float64 [N].

    `points` [N, K, 2] (or [K, 2] for one frame), `anchors` the backend's
    anchor map (e.g. MEDIAPIPE_ANCHORS). Dividing by the width makes the
    value independent of face size and distance to the camera, so it can be
    compared across frames, renders and avatars: about 0 for closed lips,
    0.2-0.5 for an open vowel. A frame whose mouth corners coincide (a failed
    detection) gives NaN rather than a huge number.
    """
    pts = _frames_of_points(points)

    def anchor(name: str) -> np.ndarray:
        return pts[:, list(anchors[name])].mean(axis=1)

    gap = np.linalg.norm(anchor("lip_bottom") - anchor("lip_top"), axis=-1)
    width = np.linalg.norm(anchor("mouth_right") - anchor("mouth_left"), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gap / np.where(width > 0, width, 1.0), np.nan)


# --------------------------------------------------------------------------
# audio


def loudness_envelope(
    wav_16k: np.ndarray,
    n_frames: int,
    fps: float = FPS,
    sample_rate: int = SAMPLE_RATE,
    floor_db: float = LOUDNESS_FLOOR_DB,
) -> np.ndarray:
    """RMS level in dBFS per video frame, float64 [n_frames].

    Frame i covers samples [round(i * sr / fps), round((i + 1) * sr / fps)),
    i.e. [i/fps, (i+1)/fps) seconds, the span the frame is shown for (640
    samples at 25 fps). dB rather than linear RMS because perceived loudness,
    and how wide a mouth opens, track the log of the energy. Frames past the
    end of the audio, and silence, read `floor_db`; a frame partly
    past the end uses the samples it has.
    """
    wav = np.asarray(wav_16k, dtype=np.float64)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio [n], got {wav.shape}")
    if n_frames < 0:
        raise ValueError("n_frames must be >= 0")
    bounds = np.round(np.arange(n_frames + 1) * (sample_rate / fps)).astype(np.int64)
    bounds = np.minimum(bounds, len(wav))
    # Sums of squares per frame from a cumulative sum: one pass over the audio.
    energy = np.concatenate([[0.0], np.cumsum(wav * wav)])
    counts = np.diff(bounds)
    sums = np.maximum(energy[bounds[1:]] - energy[bounds[:-1]], 0.0)
    floor = 10.0 ** (floor_db / 20.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rms = np.sqrt(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0))
    return 20.0 * np.log10(np.maximum(rms, floor))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length 1-D series, in [-1, 1].

    NaNs (e.g. frames without a face) drop out pairwise. Returns NaN when
    fewer than two pairs remain or either series is constant, where the
    correlation is undefined: a 0 would read as "no relation" when nothing
    was measured.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"lengths differ: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    # Centre, then scale to a max of 1 so the dot products cannot overflow.
    x = x - x.mean()
    y = y - y.mean()
    x, y = x / np.abs(x).max(), y / np.abs(y).max()
    den = math.sqrt(float(x @ x) * float(y @ y))
    if den == 0.0:
        return math.nan
    return float(np.clip(float(x @ y) / den, -1.0, 1.0))
