"""One trainer for every model here: SyncNet, U-Net and the AVE audio encoder.

What it guarantees, whatever the task:
- seeded: the same seed and data give the same losses (on the CPU);
- the device comes from config; on CUDA it trains with AMP (float16 autocast
  + grad scaling; `amp=False` trains in float32, which benchmarks/gpu.py
  compares) and channels_last; on the CPU channels_last only where the
  task says its model is faster so;
- gradients are zeroed every step (SyncTalk_2D's SyncNet trainer forgot to);
- learning rate: linear warm-up, then cosine decay to 5% over all steps;
- validation before training (step 0) and after every epoch; the best model
  by the task's monitored metric is kept, as is the last full state;
- resume: `last.pt` (model, optimiser, schedule, scaler, position, history)
  is written atomically at every epoch end and every `checkpoint_every`
  steps; a run killed at any moment, even by SIGKILL, restarts from it and
  replays exactly the batches the uninterrupted run would have seen.

A task supplies the model, its loss, its validation metrics and the
datasets; the trainer owns the loop.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from synctalk.atomic import atomic_path
from synctalk.progress import progress
from synctalk.train.data import EpochDataset, ResumableSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    steps_per_epoch: int = 0  # 0: one full pass over the training frames
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    checkpoint_every: int = 50  # steps between mid-epoch checkpoints
    seed: int = 0
    num_workers: int = 0  # data loader processes (0 is fastest on small CPUs)


class Task(Protocol):
    name: str
    model: nn.Module
    monitor: str  # validation metric to minimise for the best checkpoint
    cpu_channels_last: bool  # channels_last on the CPU too (measured faster for this model)
    train_set: EpochDataset
    val_set: EpochDataset

    def loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a batch (on the device) and the parts to log."""
        ...

    def validate(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """Per-batch validation metrics (means over the batch)."""
        ...


@dataclass
class History:
    train: list[dict[str, float]] = field(default_factory=list)  # per epoch means
    val: list[dict[str, float]] = field(default_factory=list)  # index 0: before training
    best_epoch: int = 0
    best_value: float = math.inf


MetricsLogger = Callable[[dict[str, float], int], None]


def seed_everything(seed: int) -> None:
    """Seed every generator and ask torch for deterministic kernels: the same seed, data
    and machine then give the same weights, bit for bit (the data's own random choices
    are seeded per sample, see synctalk.train.data)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # cuBLAS is deterministic only with a fixed workspace; read when CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False  # its autotuner may pick other kernels each run
    # warn_only: an op without a deterministic kernel warns instead of stopping training
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ...which would also fill every new empty tensor with NaNs (a guard against reading
    # uninitialised memory, which nothing here does): time spent for nothing
    torch.utils.deterministic.fill_uninitialized_memory = False


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    return factor


class Trainer:
    def __init__(
        self,
        task: Task,
        settings: TrainSettings,
        device: torch.device,
        workdir: Path,
        fingerprint: str = "",
        on_metrics: MetricsLogger | None = None,
        amp: bool = True,
    ):
        self.task, self.settings, self.device = task, settings, device
        self.workdir = Path(workdir)
        self.fingerprint = fingerprint  # what the inputs were; a resume needs the same
        self.on_metrics = on_metrics or (lambda metrics, step: None)
        self.cuda = device.type == "cuda"
        self.amp = self.cuda and amp  # float16 autocast exists for CUDA only here
        self.channels_last = self.cuda or task.cpu_channels_last

        seed_everything(settings.seed)
        self.model = task.model.to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimiser = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        full_pass = math.ceil(len(task.train_set) / settings.batch_size)
        self.steps_per_epoch = min(settings.steps_per_epoch or full_pass, full_pass)
        self.total_steps = self.steps_per_epoch * settings.epochs
        warmup = int(settings.warmup_fraction * self.total_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser, cosine_with_warmup(self.total_steps, warmup)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = ResumableSampler(len(task.train_set), settings.seed)
        self.history = History()
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.running: dict[str, float] = {}  # sums of this epoch's step losses

    # ------------------------------------------------------------------ state

    @property
    def last_path(self) -> Path:
        return self.workdir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.workdir / "best.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "fingerprint": self.fingerprint,
            "settings": asdict(self.settings),
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "running": self.running,
            "history": asdict(self.history),
            "torch_rng": torch.get_rng_state(),
        }

    def save_last(self) -> None:
        with atomic_path(self.last_path) as tmp:
            torch.save(self._state(), tmp)

    def try_resume(self) -> bool:
        """Continue from last.pt when it belongs to this task with these settings."""
        if not self.last_path.is_file():
            return False
        state = torch.load(self.last_path, map_location=self.device, weights_only=False)
        same = (
            state.get("task") == self.task.name
            and state.get("fingerprint") == self.fingerprint
            and state.get("settings") == asdict(self.settings)
        )
        if not same:
            log.warning("%s is from other inputs or settings: starting over", self.last_path)
            return False
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.running = state["running"]
        self.history = History(**state["history"])
        torch.set_rng_state(state["torch_rng"].cpu())
        log.info(
            "resuming %s at epoch %d, step %d (%d done)",
            self.task.name,
            self.epoch + 1,
            self.step_in_epoch,
            self.global_step,
        )
        return True

    # ------------------------------------------------------------------- loop

    def _to_device(self, batch) -> tuple[torch.Tensor, ...]:
        out = []
        for t in batch:
            t = t.to(self.device, non_blocking=True)
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(t)
        return tuple(out)

    def _loader(self, dataset: EpochDataset, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.settings.num_workers,
            pin_memory=self.cuda,
            drop_last=False,
        )

    def validate(self) -> dict[str, float]:
        self.model.eval()
        self.task.val_set.set_epoch(0)  # the same validation samples every time
        sums: dict[str, float] = {}
        n = 0
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            for batch in self._loader(self.task.val_set):
                batch = self._to_device(batch)
                size = len(batch[0])
                for key, value in self.task.validate(batch).items():
                    sums[key] = sums.get(key, 0.0) + value * size
                n += size
        self.model.train()
        return {f"val_{k}": v / n for k, v in sums.items()}

    def fit(self) -> History:
        """Train (or finish training) and leave the best weights in the model."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if not resumed:
            metrics = self.validate()
            self.history.val.append(metrics)
            self.on_metrics(metrics, 0)
            log.info("%s before training: %s", self.task.name, _fmt(metrics))
        self.model.train()
        while self.epoch < self.settings.epochs:
            self._train_epoch()
        if self.best_path.is_file():
            self.model.load_state_dict(torch.load(self.best_path, map_location=self.device))
        return self.history

    def finish(self) -> None:
        """Forget the resumable state once the result is safely saved elsewhere."""
        self.last_path.unlink(missing_ok=True)
        self.best_path.unlink(missing_ok=True)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimiser step on a batch already on the device: (loss, its logged parts)."""
        with torch.autocast(self.device.type, enabled=self.amp):
            loss, parts = self.task.loss(batch)
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.schedule.step()
        return loss, parts

    def _train_epoch(self) -> None:
        settings, task = self.settings, self.task
        task.train_set.set_epoch(self.epoch)
        self.sampler.set_position(self.epoch, self.step_in_epoch * settings.batch_size)
        started = time.perf_counter()
        batches = iter(self._loader(task.train_set, self.sampler))
        remaining = self.steps_per_epoch - self.step_in_epoch
        desc = f"{task.name} epoch {self.epoch + 1}/{settings.epochs}"
        for _ in progress(range(remaining), desc, unit="step"):
            loss, parts = self.train_step(self._to_device(next(batches)))
            self.step_in_epoch += 1
            self.global_step += 1
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                self.running[key] = self.running.get(key, 0.0) + value
            if self.global_step % settings.checkpoint_every == 0:
                self.save_last()
        means = {f"train_{k}": v / self.steps_per_epoch for k, v in self.running.items()}
        means["lr"] = self.schedule.get_last_lr()[0]
        means["epoch_seconds"] = time.perf_counter() - started
        self.history.train.append(means)
        metrics = self.validate()
        self.history.val.append(metrics)
        value = metrics[f"val_{task.monitor}"]
        if value < self.history.best_value:
            self.history.best_value, self.history.best_epoch = value, self.epoch + 1
            with atomic_path(self.best_path) as tmp:
                torch.save(self.model.state_dict(), tmp)
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = {}
        self.on_metrics({**means, **metrics}, self.epoch)
        log.info("%s epoch %d: %s", task.name, self.epoch, _fmt({**means, **metrics}))
        self.save_last()


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
