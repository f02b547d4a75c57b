"""The shared trainer and the training tasks, on small synthetic avatars."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from synctalk.config import ModelPreset, SyncNetTraining, UNetTraining, resolution
from synctalk.models import build_unet
from synctalk.models.checkpoint import load_unet
from synctalk.models.unet import UNetSpec
from synctalk.train.data import AvatarFrames, ResumableSampler, UNetSamples, colour_jitter
from synctalk.train.losses import MissingWeightsError
from synctalk.train.tasks import VALIDATION_NEGATIVES, SyncNetTask, UNetTask, train_settings
from synctalk.train.trainer import Trainer, cosine_with_warmup

TINY = ModelPreset(resolution="160", audio_mode="ave", mobile=True)


def synthetic_avatar(n: int = 60, seed: int = 0) -> AvatarFrames:
    """Crops whose 'mouth' brightness follows the first audio feature."""
    rng = np.random.default_rng(seed)
    loud = (np.sin(np.arange(n) / 2.5) > 0).astype(np.float32)
    crops = np.full((n, 168, 168, 3), 90, np.uint8)
    crops[:, 20:60, 30:138] = 160  # 'eyes and nose'
    crops[:, 100:140, 50:118] = (40 + 180 * loud)[:, None, None, None].astype(np.uint8)
    crops = np.clip(crops + rng.integers(-8, 9, crops.shape), 0, 255).astype(np.uint8)
    features = rng.normal(0, 0.1, (n, 512)).astype(np.float32)
    features[:, :64] += loud[:, None]
    return AvatarFrames(crops, features, resolution("160"))


def unet_training(**overrides) -> UNetTraining:
    base = UNetTraining(
        epochs=2,
        steps_per_epoch=4,
        batch_size=4,
        learning_rate=2e-3,
        perceptual_weight=0.0,
        sync_weight=0.0,
        checkpoint_every=2,
    )
    return replace(base, **overrides)


def test_time_split_holds_out_the_last_tenth():
    data = synthetic_avatar(100)
    train, val = data.split()
    assert train.max() < val.min() and len(val) == 10 and len(train) + len(val) == 100


@pytest.mark.parametrize("input_mask", ["mouth", "jaw"])
def test_unet_samples_follow_the_method(input_mask):
    data = synthetic_avatar()
    spec = UNetSpec("160", "ave", input_mask=input_mask)
    samples = UNetSamples(data, np.arange(50), seed=0, spec=spec)
    image, audio, target = samples[3]
    assert image.shape == (6, 160, 160) and target.shape == (3, 160, 160)
    assert audio.shape == (32, 16, 16)
    x0, y0, x1, y1 = spec.masked_box
    assert (image[3:, y0:y1, x0:x1] == 0).all()  # the mouth is masked in the input...
    assert torch.equal(image[3:, :y0], target[:, :y0])  # ...the rest is the current crop
    assert torch.equal(image[3:, y1:], target[:, y1:])
    assert (y1 == 160) == (input_mask == "jaw")  # "jaw" hides the chin strip too
    # the same (seed, epoch, index) gives the same sample; another epoch may not
    assert torch.equal(samples[3][0], image)
    references = set()
    for epoch in range(5):
        samples.set_epoch(epoch)
        references.add(samples[3][0][:3].numpy().tobytes())
    assert len(references) > 1  # the reference frame is drawn anew each epoch


def test_colour_jitter_is_shared_and_bounded():
    rng = np.random.default_rng(0)
    a = np.full((3, 8, 8), 0.5, np.float32)
    b = a.copy()
    ja, jb = colour_jitter(rng, 0.2, a, b)
    assert np.array_equal(ja, jb) and not np.array_equal(ja, a)
    assert ja.min() >= 0 and ja.max() <= 1


def test_sampler_resumes_mid_epoch():
    sampler = ResumableSampler(20, seed=3)
    sampler.set_position(epoch=2, start=0)
    full = list(sampler)
    sampler.set_position(epoch=2, start=8)
    assert list(sampler) == full[8:]


def test_schedule_warms_up_then_decays():
    f = cosine_with_warmup(total=100, warmup=10)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(99) < 0.1 and f(99) >= 0.05


def _unet_trainer(tmp_path, training: UNetTraining, name="run") -> Trainer:
    task = UNetTask(synthetic_avatar(), TINY, training, syncnet=None)
    return Trainer(task, train_settings(training), torch.device("cpu"), tmp_path / name)


def _channels_last(model: torch.nn.Module) -> bool:
    kernel = next(p for p in model.parameters() if p.dim() == 4 and min(p.shape) > 1)
    return kernel.is_contiguous(memory_format=torch.channels_last)


def test_same_seed_same_first_epoch_losses(tmp_path):
    histories = [_unet_trainer(tmp_path, unet_training(epochs=1), f"r{i}").fit() for i in range(2)]
    assert histories[0].train[0]["train_loss"] == histories[1].train[0]["train_loss"]
    assert histories[0].val == histories[1].val


def test_unet_learns(tmp_path):
    trainer = _unet_trainer(tmp_path, unet_training(epochs=3, steps_per_epoch=10))
    assert _channels_last(trainer.model)  # measured faster for the U-Net on the CPU too
    history = trainer.fit()
    assert history.val[-1]["val_l1"] < 0.75 * history.val[0]["val_l1"]
    assert len(history.val) == 4 and history.best_epoch >= 1
    assert trainer.best_path.is_file() and trainer.last_path.is_file()
    trainer.finish()
    assert not trainer.last_path.exists()


def test_resume_continues_where_it_stopped(tmp_path):
    """An interrupted run (saved mid-epoch) resumes and ends where an uninterrupted one does."""
    training = unet_training(epochs=2, steps_per_epoch=4, checkpoint_every=2)
    straight = _unet_trainer(tmp_path, training, "straight").fit()

    interrupted = _unet_trainer(tmp_path, training, "killed")
    original = interrupted.task.train_set.__class__.__getitem__
    calls = {"n": 0}

    def die_after_six_steps(self, index):
        if self is interrupted.task.train_set:  # validation samples do not count
            calls["n"] += 1
            if calls["n"] > 4 * 6:  # batch 4: the 7th step's batch
                raise KeyboardInterrupt
        return original(self, index)

    interrupted.task.train_set.__class__.__getitem__ = die_after_six_steps
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupted.fit()
    finally:
        interrupted.task.train_set.__class__.__getitem__ = original
    state = torch.load(interrupted.last_path, weights_only=False)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 6)

    resumed = _unet_trainer(tmp_path, training, "killed")
    history = resumed.fit()
    assert resumed.global_step == 8
    assert [row["train_loss"] for row in history.train] == pytest.approx(
        [row["train_loss"] for row in straight.train], rel=1e-5
    )


def test_resume_refuses_state_from_other_inputs(tmp_path):
    training = unet_training(epochs=1)
    first = _unet_trainer(tmp_path, training)
    first.fingerprint = "inputs-a"
    first.fit()
    other = _unet_trainer(tmp_path, training)
    other.fingerprint = "inputs-b"
    assert not other.try_resume()


def test_syncnet_task_trains_and_reports_accuracy(tmp_path):
    training = SyncNetTraining(epochs=1, steps_per_epoch=3, batch_size=4, checkpoint_every=10)
    task = SyncNetTask(synthetic_avatar(150), TINY, training)
    face, in_sync, off_sync = task.train_set[0]
    assert face.shape == (3, 160, 160) and in_sync.shape == (32, 16, 16)
    assert off_sync.shape == (1, 32, 16, 16) and not torch.equal(in_sync, off_sync[0])
    _, _, held_out_negatives = task.val_set[0]
    assert held_out_negatives.shape == (VALIDATION_NEGATIVES, 32, 16, 16)
    trainer = Trainer(task, train_settings(training), torch.device("cpu"), tmp_path)
    assert not _channels_last(trainer.model)  # slower for the SyncNet on the CPU
    history = trainer.fit()
    assert {"val_loss", "val_accuracy", "val_pair_accuracy"} <= set(history.val[-1])
    assert 0 <= history.val[-1]["val_accuracy"] <= 1
    curve = task.offset_curve(torch.device("cpu"))
    assert curve.offsets.tolist() == list(range(-14, 15))  # 15 held-out frames
    assert curve.distances[curve.offsets == curve.best_offset][0] == curve.min_distance


def test_syncnet_validation_metrics_count_every_negative(monkeypatch):
    """2 faces x 2 negatives: ranked accuracy over the 4 (face, negative) pairs,
    thresholded accuracy balanced between the 2 positives and the 4 negatives."""
    task = SyncNetTask(synthetic_avatar(150), TINY, SyncNetTraining(epochs=1))
    p = torch.tensor([0.9, 0.4, 0.3, 0.95, 0.2, 0.1])
    label = torch.tensor([1.0, 1, 0, 0, 0, 0])
    weight = torch.tensor([0.25, 0.25, 0.125, 0.125, 0.125, 0.125])
    monkeypatch.setattr(task, "_pairs", lambda batch: (p, label, weight))
    metrics = task.validate(None)
    assert metrics["pair_accuracy"] == pytest.approx(3 / 4)  # only 0.9 < 0.95 is wrong
    assert metrics["accuracy"] == pytest.approx(0.5 * 1 / 2 + 0.5 * 3 / 4)
    expected = -(
        0.25 * (np.log(0.9) + np.log(0.4))
        + 0.125 * (np.log(0.7) + np.log(0.05) + np.log(0.8) + np.log(0.9))
    )
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)


def test_syncnet_pairs_weigh_positives_and_negatives_equally():
    task = SyncNetTask(synthetic_avatar(150), TINY, SyncNetTraining(epochs=1))
    batch = [torch.stack(x) for x in zip(*(task.val_set[i] for i in range(3)), strict=True)]
    p, label, weight = task._pairs(batch)
    assert p.shape == label.shape == weight.shape == (3 * (1 + VALIDATION_NEGATIVES),)
    assert label[:3].tolist() == [1, 1, 1] and label[3:].sum() == 0
    assert float(weight[label == 1].sum()) == pytest.approx(0.5)
    assert float(weight[label == 0].sum()) == pytest.approx(0.5)


def test_fine_tuning_from_an_original_checkpoint(tmp_path):
    """A bare state dict in the original layout (random values) loads and trains."""
    original = build_unet("160", "ave")  # the full-width layout the original code saves
    g = torch.Generator().manual_seed(1)
    state = {
        k: (torch.rand(v.shape, generator=g) * 0.1 if v.is_floating_point() else v)
        for k, v in original.state_dict().items()
    }
    for k in state:
        if k.endswith("running_var"):
            state[k] = torch.ones_like(state[k])
    path = tmp_path / "synctalk_original.pth"
    torch.save(state, path)
    preset = ModelPreset(resolution="160", audio_mode="ave", mobile=False, input_mask="mouth")
    training = unet_training(epochs=1, steps_per_epoch=3, init_checkpoint=str(path))
    task = UNetTask(synthetic_avatar(), preset, training, syncnet=None)
    assert torch.equal(task.model.state_dict()["outc.conv.weight"], state["outc.conv.weight"])
    history = Trainer(task, train_settings(training), torch.device("cpu"), tmp_path / "ft").fit()
    assert np.isfinite(history.train[0]["train_loss"])
    assert load_unet(path).spec == task.model.spec


def test_perceptual_loss_without_vgg_weights_says_how_to_fix_it(tmp_path):
    training = unet_training(perceptual_weight=0.01, vgg19=str(tmp_path / "vgg19.pth"))
    with pytest.raises(MissingWeightsError) as info:
        UNetTask(synthetic_avatar(), TINY, training, syncnet=None)
    message = str(info.value)
    assert "vgg19.pth" in message and "perceptual_weight to 0" in message


def test_sync_loss_needs_a_syncnet():
    with pytest.raises(ValueError, match="SyncNet"):
        UNetTask(synthetic_avatar(), TINY, unet_training(sync_weight=1.0), syncnet=None)
