import numpy as np
import pytest
import torch

from synctalk.config import AveEncoderParams, resolution
from synctalk.features.ave import load_encoder
from synctalk.train.ave_encoder import (
    EVAL_EVERY,
    VALIDATION_NEGATIVES,
    AudioEncoderTask,
    LowerFaces,
    lower_face,
    prepare_audio_encoder,
    train_audio_encoder,
)
from synctalk.train.data import off_sync_frame


def test_off_sync_frames_are_close_but_not_in_sync():
    rng = np.random.default_rng(0)
    frames = np.arange(100, 400)
    for frame in rng.integers(100, 400, size=300):
        other = off_sync_frame(rng, frames, int(frame), min_offset=6)
        assert 6 <= abs(other - frame) <= 18 and 100 <= other < 400
    # a short range: still at least min_offset away
    assert abs(off_sync_frame(rng, np.arange(14), 7, min_offset=6) - 7) >= 6


def test_lower_face_takes_the_bottom_half_of_the_inner_crop():
    geometry = resolution("160")
    crops = np.zeros((2, 168, 168, 3), np.uint8)
    crops[:, 84:164, 4:164] = 255  # the lower half of the inner 160 x 160
    out = lower_face(crops, geometry)
    assert out.shape == (2, 3, 48, 96) and out.dtype == np.uint8
    assert (out == 255).all()


def _synthetic_avatar(n=240, seed=0):
    """Mouth brightness follows the loudness of a mel window: a learnable sync."""
    rng = np.random.default_rng(seed)
    loud = (np.sin(np.arange(n) / 3.0) > 0).astype(np.float32)
    mels = rng.normal(0, 0.3, (n, 1, 80, 16)).astype(np.float32) + loud[:, None, None, None] * 2
    faces = np.full((n, 3, 48, 96), 60, np.uint8)
    faces[:, :, 24:40, 30:66] = (60 + 150 * loud)[:, None, None, None].astype(np.uint8)
    return faces, mels


def test_training_learns_a_visible_sync_and_keeps_the_best_step():
    faces, mels = _synthetic_avatar()
    params = AveEncoderParams(steps=100, batch_size=16, min_offset_frames=6)
    encoder, report = train_audio_encoder(faces, mels, params, torch.device("cpu"))
    assert report.val_loss < report.val_loss_start
    assert report.val_accuracy > 0.7 and report.val_pair_accuracy > 0.7
    # 100 steps round up to whole validation rounds (here one pass over the
    # training frames each); the kept step is one of them
    assert 100 <= report.steps < 100 + EVAL_EVERY
    assert 0 < report.best_step <= report.steps
    assert encoder(torch.from_numpy(mels[:4])).shape == (4, 512)


def test_held_out_faces_come_with_several_off_sync_windows():
    faces, mels = _synthetic_avatar()
    task = AudioEncoderTask(LowerFaces(faces, mels), AveEncoderParams(min_offset_frames=6))
    face, own, off = task.train_set[0]
    assert face.shape == (3, 48, 96) and own.shape == (1, 80, 16) and off.shape == (1, 1, 80, 16)
    _, own, off = task.val_set[3]
    frame = int(task.val_set.frames[3])
    assert torch.equal(own, torch.from_numpy(mels[frame]))
    assert off.shape == (VALIDATION_NEGATIVES, 1, 80, 16)
    assert not any(torch.equal(own, o) for o in off)  # min_offset_frames away (distinct noise)
    batch = [torch.stack(x) for x in zip(*(task.val_set[i] for i in range(4)), strict=True)]
    logits, label, weight = task._pairs(batch)
    assert logits.shape == (4 * (1 + VALIDATION_NEGATIVES),) and label[:4].sum() == 4


def test_too_little_footage_is_refused():
    faces, mels = _synthetic_avatar(n=30)
    with pytest.raises(ValueError, match="too few"):
        train_audio_encoder(faces, mels, AveEncoderParams(steps=2), torch.device("cpu"))


def test_official_weights_are_used_when_present(tmp_path, shared):
    official = shared("reference", "ave_random_seed0.pth")
    out = tmp_path / "ave_encoder.pth"
    source = prepare_audio_encoder(
        official,
        tmp_path / "no-crops.npy",
        tmp_path / "no-audio.wav",
        resolution("160"),
        AveEncoderParams(),
        out,
        torch.device("cpu"),
    )
    assert source.kind == "official" and source.report is None
    a, b = load_encoder(out).state_dict(), load_encoder(official).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
