"""Evaluation metrics: PSNR, SSIM, LMD, mouth opening, loudness, Pearson, LSE-D/C."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from synctalk.evaluate.metrics import (
    LOUDNESS_FLOOR_DB,
    MEDIAPIPE_MOUTH,
    MEDIAPIPE_MOUTH_INNER,
    MEDIAPIPE_MOUTH_OUTER,
    loudness_envelope,
    mouth_landmark_distance,
    mouth_opening,
    pearson,
    psnr,
    ssim,
)
from synctalk.evaluate.sync import (
    SyncScore,
    embed,
    offset_range,
    score_embeddings,
    sync_score,
)
from synctalk.face.mediapipe_backend import MEDIAPIPE_ANCHORS
from synctalk.models import build_syncnet
from synctalk.models.syncnet import SYNCNET_AUDIO_SHAPES
from tests.conftest import shared_path

FAST = settings(max_examples=40, deadline=None)


def _texture(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth mid-grey uint8 texture: room for noise without clipping at 0 or 255."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, shape)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return np.clip(128 + 40 * smooth / smooth.std(), 0, 255).astype(np.uint8)


def _uint8_images(min_side: int = 1):
    shapes = st.tuples(
        st.integers(min_side, 20), st.integers(min_side, 20), st.sampled_from([1, 3])
    )
    return shapes.flatmap(
        lambda s: st.tuples(
            hnp.arrays(np.uint8, s, elements=st.integers(0, 255)),
            hnp.arrays(np.uint8, s, elements=st.integers(0, 255)),
        )
    )


# --------------------------------------------------------------------------
# PSNR


def test_psnr_of_a_known_error():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a + 5) == pytest.approx(10 * math.log10(255**2 / 25))


def test_psnr_of_identical_images_is_infinite():
    a = _texture((16, 16, 3))
    assert psnr(a, a.copy()) == math.inf


def test_psnr_mask_ignores_pixels_outside_it():
    a = _texture((16, 16, 3))
    b = a.copy()
    b[:8] = 0  # damage the top half only
    b[8:] = np.clip(a[8:].astype(int) + 5, 0, 255)
    mask = np.zeros((16, 16), bool)
    mask[8:] = True
    expected = psnr(a[8:], b[8:])
    assert psnr(a, b, mask=mask) == pytest.approx(expected)
    # a stack with one shared mask ([1, H, W]) or one per frame ([N, H, W])
    stack_a, stack_b = np.stack([a, a]), np.stack([b, b])
    assert psnr(stack_a, stack_b, mask=mask[None]) == pytest.approx(expected)
    assert psnr(stack_a, stack_b, mask=np.stack([mask, mask])) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no pixels"):
        psnr(a, b, mask=np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="does not fit"):
        psnr(a, b, mask=np.ones((8, 8), bool))


def test_psnr_of_a_stack_pools_the_error_over_frames():
    a = np.full((2, 4, 4), 50, np.uint8)
    b = a.copy()
    b[1] += 10  # frame 0 identical, frame 1 off by 10: pooled MSE 50
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 50))


def test_psnr_rejects_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))


@FAST
@given(_uint8_images())
def test_psnr_is_symmetric(pair):
    a, b = pair
    assert psnr(a, b) == psnr(b, a)


# --------------------------------------------------------------------------
# SSIM


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM written out with explicit windows, independent of OpenCV."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    px = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
    py = np.lib.stride_tricks.sliding_window_view(y, (11, 11))

    def mean(p: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", p, w)

    mx, my = mean(px), mean(py)
    vx = mean(px * px) - mx**2
    vy = mean(py * py) - my**2
    cxy = mean(px * py) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def test_ssim_of_identical_images_is_one():
    a = _texture((32, 32, 3))
    assert ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # No structure: variances and covariance are 0, SSIM = (2 m n + C1) / (m^2 + n^2 + C1).
    c1 = (0.01 * 255) ** 2
    a, b = np.full((16, 16), 100, np.uint8), np.full((16, 16), 110, np.uint8)
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_an_independent_implementation(seed):
    a = _texture((40, 48), seed)
    noise = np.random.default_rng(seed + 10).normal(0, 12, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_reference_ssim(a, b), abs=1e-9)


def test_ssim_of_colour_is_the_mean_over_channels_and_of_a_stack_over_frames():
    a = _texture((24, 24, 3), 2)
    b = _texture((24, 24, 3), 3)
    per_channel = [_reference_ssim(a[..., c], b[..., c]) for c in range(3)]
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-9)
    assert ssim(np.stack([a, a]), np.stack([a, b])) == pytest.approx((1 + ssim(a, b)) / 2)


def test_ssim_falls_monotonically_as_noise_grows():
    a = _texture((48, 48, 3), 4)
    noise = np.random.default_rng(5).normal(0, 1, a.shape)
    scores = [
        ssim(a, np.clip(np.round(a + sigma * noise), 0, 255).astype(np.uint8))
        for sigma in (0, 2, 5, 10, 20, 40)
    ]
    assert scores[0] == pytest.approx(1.0)
    assert all(x > y for x, y in itertools.pairwise(scores)), scores
    assert scores[-1] < 0.5


def test_ssim_needs_a_full_window():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((10, 20), np.uint8), np.zeros((10, 20), np.uint8))


@FAST
@given(_uint8_images(min_side=11))
def test_ssim_is_bounded_and_symmetric(pair):
    a, b = pair
    s = ssim(a, b)
    assert -1.0 - 1e-9 <= s <= 1.0 + 1e-9
    assert s == pytest.approx(ssim(b, a), abs=1e-12)


# --------------------------------------------------------------------------
# mouth landmarks


def test_mediapipe_mouth_is_the_face_mesh_lip_set():
    assert len(MEDIAPIPE_MOUTH_OUTER) == len(MEDIAPIPE_MOUTH_INNER) == 20
    assert len(set(MEDIAPIPE_MOUTH)) == 40
    # the anchors' mouth corners are on the outer contour, the lip midpoints on the inner one
    assert {61, 291} <= set(MEDIAPIPE_MOUTH_OUTER)
    assert set(MEDIAPIPE_ANCHORS["lip_top"] + MEDIAPIPE_ANCHORS["lip_bottom"]) <= set(
        MEDIAPIPE_MOUTH_INNER
    )
    connections = pytest.importorskip("mediapipe.python.solutions.face_mesh_connections")
    lips = {i for edge in connections.FACEMESH_LIPS for i in edge}
    assert lips == set(MEDIAPIPE_MOUTH)


def _random_points(n_frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 500, (n_frames, 468, 2)).astype(np.float32)


def test_lmd_of_a_known_shift_and_its_normalisation():
    true = _random_points(3)
    pred = true + np.array([3.0, 4.0], np.float32)  # every point 5 px off
    assert mouth_landmark_distance(pred, true, MEDIAPIPE_MOUTH) == pytest.approx(5.0, rel=1e-5)
    assert mouth_landmark_distance(pred, true, MEDIAPIPE_MOUTH, normalise_by=10.0) == (
        pytest.approx(0.5, rel=1e-5)
    )
    per_frame = np.array([5.0, 10.0, 50.0])
    assert mouth_landmark_distance(pred, true, MEDIAPIPE_MOUTH, normalise_by=per_frame) == (
        pytest.approx(np.mean([1.0, 0.5, 0.1]), rel=1e-5)
    )
    assert mouth_landmark_distance(pred, true, MEDIAPIPE_MOUTH, align_centroids=True) == (
        pytest.approx(0.0, abs=1e-4)
    )


def test_lmd_sees_only_the_mouth_points():
    true = _random_points(2)
    pred = true.copy()
    others = np.setdiff1d(np.arange(468), MEDIAPIPE_MOUTH)
    pred[:, others] += 100.0
    assert mouth_landmark_distance(pred, true, MEDIAPIPE_MOUTH) == 0.0
    pred[:, 13, 1] += 8.0  # open the inner upper lip by 8 px: one point of 40 moves
    assert mouth_landmark_distance(pred, true, MEDIAPIPE_MOUTH) == pytest.approx(8.0 / 40)


def test_lmd_rejects_bad_inputs():
    pts = _random_points(2)
    with pytest.raises(ValueError, match="shapes differ"):
        mouth_landmark_distance(pts, pts[:1], MEDIAPIPE_MOUTH)
    with pytest.raises(ValueError, match="normalise_by"):
        mouth_landmark_distance(pts, pts, MEDIAPIPE_MOUTH, normalise_by=np.ones(3))
    with pytest.raises(ValueError, match="positive"):
        mouth_landmark_distance(pts, pts, MEDIAPIPE_MOUTH, normalise_by=0.0)


_frames_of_mouths = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.just(6), st.just(2)),
    elements=st.floats(-1000, 1000, allow_nan=False),
)


@FAST
@given(_frames_of_mouths, st.booleans())
def test_lmd_of_identical_points_is_zero(points, align):
    assert mouth_landmark_distance(points, points.copy(), range(6), align_centroids=align) == 0.0


@FAST
@given(
    _frames_of_mouths,
    _frames_of_mouths,
    hnp.arrays(np.float64, (4, 1, 2), elements=st.floats(-500, 500, allow_nan=False)),
)
def test_lmd_with_centroid_alignment_ignores_a_per_frame_shift(pred, true, shift):
    n = min(len(pred), len(true))
    pred, true = pred[:n], true[:n]
    base = mouth_landmark_distance(pred, true, range(6), align_centroids=True)
    moved = mouth_landmark_distance(pred + shift[:n], true, range(6), align_centroids=True)
    assert moved == pytest.approx(base, abs=1e-6)


def test_mouth_opening_is_the_lip_gap_over_the_mouth_width():
    pts = np.zeros((2, 468, 2), np.float32)
    a = {name: idx[0] for name, idx in MEDIAPIPE_ANCHORS.items()}
    pts[:, a["mouth_left"]] = (100, 200)
    pts[:, a["mouth_right"]] = (150, 200)
    pts[:, a["lip_top"]] = (125, 195)
    pts[0, a["lip_bottom"]] = (125, 195)  # closed
    pts[1, a["lip_bottom"]] = (125, 210)  # open 15 px over a 50 px mouth
    np.testing.assert_allclose(mouth_opening(pts, MEDIAPIPE_ANCHORS), [0.0, 0.3])
    # independent of face size and position
    np.testing.assert_allclose(mouth_opening(pts * 3 + 7, MEDIAPIPE_ANCHORS), [0.0, 0.3])
    assert mouth_opening(pts[1], MEDIAPIPE_ANCHORS).shape == (1,)
    pts[1, a["mouth_right"]] = pts[1, a["mouth_left"]]
    assert np.isnan(mouth_opening(pts, MEDIAPIPE_ANCHORS)[1])


@pytest.mark.slow
def test_mouth_metrics_on_a_real_talker():
    from synctalk.face.mediapipe_backend import MediapipeFaceBackend

    cap = cv2.VideoCapture(str(shared_path("data", "videos", "may_5s.mp4")))
    frames = []
    while len(frames) < 50:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    with MediapipeFaceBackend() as backend:
        points = np.stack([backend.detect(f)[0].points for f in frames])

    opening = mouth_opening(points, MEDIAPIPE_ANCHORS)
    assert ((opening >= 0) & (opening < 0.8)).all()
    assert opening.max() - opening.min() > 0.05  # she talks: the mouth opens and closes
    # the inner contour lies inside the outer one
    outer, inner = points[:, MEDIAPIPE_MOUTH_OUTER], points[:, MEDIAPIPE_MOUTH_INNER]
    assert (inner.min(axis=1) >= outer.min(axis=1) - 1).all()
    assert (inner.max(axis=1) <= outer.max(axis=1) + 1).all()
    # lip shape changes more between distant frames than between neighbours
    width = np.linalg.norm(points[:, 291] - points[:, 61], axis=1)
    near = mouth_landmark_distance(
        points[1:], points[:-1], MEDIAPIPE_MOUTH, width[:-1], align_centroids=True
    )
    far = mouth_landmark_distance(
        points[10:], points[:-10], MEDIAPIPE_MOUTH, width[:-10], align_centroids=True
    )
    assert 0 < near < far < 0.5

    # a JPEG round trip of a real frame: high but finite PSNR, SSIM near 1
    frame = frames[0]
    jpeg = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], 1)
    assert 28 < psnr(frame, jpeg) < 50
    assert 0.8 < ssim(frame, jpeg) < 1.0


# --------------------------------------------------------------------------
# loudness and correlation


def test_loudness_of_a_sine_and_of_silence():
    sr = 16_000
    t = np.arange(sr) / sr
    wav = np.zeros(2 * sr, np.float32)
    wav[:sr] = 0.5 * np.sin(2 * np.pi * 200 * t)  # 1 s tone (200 Hz: 8 periods per frame)
    env = loudness_envelope(wav, 50)
    assert env.shape == (50,)
    np.testing.assert_allclose(env[:25], 20 * np.log10(0.5 / np.sqrt(2)), atol=1e-3)
    np.testing.assert_allclose(env[25:], LOUDNESS_FLOOR_DB)


def test_loudness_frame_i_covers_its_own_40_ms():
    wav = np.zeros(32_000, np.float32)
    wav[25 * 640 : 26 * 640] = 0.1  # exactly [1.00, 1.04) s
    assert (loudness_envelope(wav[: 25 * 640], 25) == LOUDNESS_FLOOR_DB).all()
    env = loudness_envelope(wav, 50)
    assert env[25] == pytest.approx(-20.0)
    assert (np.delete(env, 25) == LOUDNESS_FLOOR_DB).all()


def test_loudness_matches_a_direct_loop_at_any_fps_and_past_the_end():
    rng = np.random.default_rng(0)
    wav = rng.normal(0, 0.1, 5_000).astype(np.float32)
    fps, n = 30.0, 12  # 533.3 samples per frame; frame 9 is partial, 10 and 11 empty
    env = loudness_envelope(wav, n, fps=fps)
    for i in range(n):
        chunk = wav[round(i * 16_000 / fps) : round((i + 1) * 16_000 / fps)].astype(np.float64)
        expected = 20 * np.log10(np.sqrt(np.mean(chunk**2))) if len(chunk) else LOUDNESS_FLOOR_DB
        assert env[i] == pytest.approx(expected, abs=1e-6), i


def test_pearson_known_values_and_undefined_cases():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    y = np.random.default_rng(1).normal(size=10)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson(x, np.full(10, 0.1)))
    assert math.isnan(pearson([1.0], [2.0]))
    x_gap = x.copy()
    x_gap[3] = np.nan  # a frame without a face drops out
    assert pearson(x_gap, 2 * x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lengths differ"):
        pearson(x, x[:5])


@FAST
@given(
    hnp.arrays(np.float64, 12, elements=st.floats(-1e3, 1e3)),
    hnp.arrays(np.float64, 12, elements=st.floats(-1e3, 1e3)),
)
def test_pearson_is_bounded_and_symmetric(a, b):
    r = pearson(a, b)
    assert math.isnan(r) or -1.0 <= r <= 1.0
    assert r == pytest.approx(pearson(b, a), nan_ok=True)


# --------------------------------------------------------------------------
# LSE-D / LSE-C


class ShiftedSyncNet(nn.Module):
    """A stand-in SyncNet whose face i and audio i + shift get the same embedding.

    The frame index travels in the inputs (face pixel [0, 0, 0] = i / n,
    audio [0, 0, 0] = j), each index looks up a random unit vector.
    """

    def __init__(self, n_frames: int, shift: int, dim: int = 64):
        super().__init__()
        self.n, self.shift, self.pad = n_frames, shift, abs(shift)
        table = torch.randn(
            n_frames + 2 * abs(shift) + 1, dim, generator=torch.Generator().manual_seed(0)
        )
        self.register_buffer("table", F.normalize(table, dim=1))

    def forward(self, face: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = (face[:, 0, 0, 0] * self.n).round().long()
        j = audio[:, 0, 0, 0].round().long()
        return self.table[j - self.shift + self.pad], self.table[i + self.pad]


def _indexed_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    faces = torch.zeros(n, 3, 4, 4)
    faces[:, 0, 0, 0] = torch.arange(n) / n
    audio = torch.zeros(n, 2, 2, 2)
    audio[:, 0, 0, 0] = torch.arange(n).float()
    return faces, audio


@pytest.mark.parametrize("shift", [3, -2, 0])
def test_sync_finds_the_offset_where_face_i_matches_audio_i_plus_k(shift):
    n = 60
    faces, audio = _indexed_inputs(n)
    score = sync_score(ShiftedSyncNet(n, shift), faces, audio, batch_size=16)
    assert score.best_offset == shift
    np.testing.assert_array_equal(score.offsets, np.arange(-15, 16))
    assert score.min_distance == pytest.approx(0.0, abs=1e-6)
    assert score.confidence > 1.0  # unrelated unit vectors are ~sqrt(2) apart
    assert score.as_metrics() == {
        "lse_d": score.min_distance,
        "lse_c": score.confidence,
        "sync_offset": float(shift),
    }


def test_sync_confidence_of_random_embeddings_is_near_zero():
    g = torch.Generator().manual_seed(1)
    faces = F.normalize(torch.randn(300, 512, generator=g), dim=1)
    audio = F.normalize(torch.randn(300, 512, generator=g), dim=1)
    score = score_embeddings(faces, audio)
    assert score.distances == pytest.approx(math.sqrt(2), abs=0.02)
    assert 0 <= score.confidence < 0.02


def test_sync_distances_match_a_direct_loop_and_offsets_clip_on_short_clips():
    rng = np.random.default_rng(2)
    f, a = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    score = score_embeddings(f, a)
    np.testing.assert_array_equal(score.offsets, np.arange(-6, 7))  # 7 frames: |k| <= 6
    for k, off in enumerate(score.offsets):
        pairs = [np.linalg.norm(f[i] - a[i + off]) for i in range(7) if 0 <= i + off < 7]
        assert score.distances[k] == pytest.approx(np.mean(pairs))
    assert score.min_distance == score.distances.min()
    assert score.confidence == pytest.approx(np.median(score.distances) - score.distances.min())


def test_offset_range():
    np.testing.assert_array_equal(offset_range(1), [0])
    np.testing.assert_array_equal(offset_range(10), np.arange(-9, 10))
    np.testing.assert_array_equal(offset_range(31), np.arange(-15, 16))
    np.testing.assert_array_equal(offset_range(500, max_offset=4), np.arange(-4, 5))
    with pytest.raises(ValueError):
        offset_range(0)


def test_sync_with_the_real_syncnet_on_a_short_clip():
    torch.manual_seed(0)
    model = build_syncnet("160")  # random weights, left in train mode on purpose
    n = 6
    faces = torch.rand(n, 3, 160, 160)
    audio = torch.randn(n, *SYNCNET_AUDIO_SHAPES["ave"])
    score = sync_score(model, faces, audio, batch_size=4, device="cpu")
    assert isinstance(score, SyncScore)
    np.testing.assert_array_equal(score.offsets, np.arange(-5, 6))
    assert np.isfinite(score.distances).all()
    assert ((score.distances >= 0) & (score.distances <= 2)).all()
    assert score.best_offset in score.offsets
    assert model.training  # the caller's mode is restored
    # eval mode: the batch size does not change the embeddings
    f1, a1 = embed(model, faces.numpy(), audio.numpy(), batch_size=3)
    assert f1.shape == a1.shape == (n, 4608)
    np.testing.assert_allclose(score_embeddings(f1, a1).distances, score.distances, atol=1e-5)


def test_sync_rejects_bad_inputs():
    faces, audio = _indexed_inputs(5)
    model = ShiftedSyncNet(5, 0)
    with pytest.raises(ValueError, match="audio windows"):
        sync_score(model, faces, audio[:4])
    with pytest.raises(TypeError, match="float"):
        sync_score(model, (faces * 255).to(torch.uint8), audio)
