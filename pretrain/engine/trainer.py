"""The training loop every training command shares (pretraining, fine-tuning, linear probing, and
recipes counted in iterations): what differs between them is a :class:`Task`.

The loop owns what must agree for a run to resume bit for bit: the batch plan, the precision, the
data order and the seeding of every random generator from (seed, epoch, rank), gradient
accumulation, the learning rate per optimizer update, when to evaluate and save, and what a
checkpoint records of where the run stands and of which run it is (:mod:`pretrain.engine.resume` checks
it). A run is counted in epochs or, for recipes counted in iterations, in optimizer updates
(``max_steps``); it resumes from any checkpoint, also one written in mid-epoch: the batches that
epoch already consumed are drawn again and dropped (same order, same augmentation), and the
generators are re-seeded from the position.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pretrain.engine.backends import TorchBackend
from pretrain.engine.run_logging import RunLogger, fmt_eta
from pretrain.errors import LsmaeError, NonFiniteLossError

OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable")  # param-group options that are no hyperparameter


def position_seed(seed: int, epoch: int, rank: int, batch: int = 0) -> int:
    """The seed of a position in a run: (seed, epoch, rank) and, in mid-epoch, the batches consumed."""
    return (seed * 1_000_003 + epoch * 1_009 + rank + batch * 2_147_483_647) % 2**63


def seed_epoch(seed: int, epoch: int, rank: int, batch: int = 0) -> int:
    """Seed torch, numpy and random (timm's mixup uses numpy) from the position only
    (:func:`position_seed`): a resumed run replays exactly. Returns the seed for the epoch's other
    generators."""
    s = position_seed(seed, epoch, rank, batch)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    return s


@dataclass(frozen=True)
class Progress:
    """Where a run stands: ``step`` optimizer updates done, the sampler's ``epoch`` in progress (the
    number of whole epochs done) and the ``batch``es of it consumed."""

    step: int
    epoch: int
    batch: int


@dataclass(frozen=True)
class LoopConfig:
    """Length, learning-rate schedule and cadence of a run, counted in ``epochs`` or, for recipes
    counted in iterations, in optimizer updates (``max_steps``); ``warmup``, ``eval_every`` and
    ``ckpt_every`` count in the same unit. ``print_freq`` counts batches. The learning rate rises
    linearly from ``warmup_lr_init`` during the warmup, then decays to ``min_lr`` along a
    ``cosine`` or a ``poly`` (``(1 - t) ** poly_power``) curve, updated per optimizer update."""

    seed: int
    min_lr: float
    print_freq: int
    epochs: int | None = None
    max_steps: int | None = None
    warmup: int = 0
    eval_every: int = 1
    ckpt_every: int = 1
    schedule: str = "cosine"
    poly_power: float = 1.0
    warmup_lr_init: float = 0.0

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("LoopConfig: give exactly one of epochs and max_steps")
        if self.schedule not in ("cosine", "poly"):
            raise ValueError(f"LoopConfig: schedule {self.schedule!r} is neither 'cosine' nor 'poly'")
        for name in ("print_freq", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise LsmaeError(f"{name} must be at least 1, got {getattr(self, name)}")


class Task(Protocol):
    """What a run trains and how it reports: the rest is :class:`Trainer`'s."""

    model: nn.Module
    """The module trained: put in train mode, its gradient all-reduce skipped on accumulation steps."""

    def forward_loss(self, batch: Sequence[Any], generator: torch.Generator) -> torch.Tensor:
        """The loss of one batch (autocast is the task's: what runs in low precision differs).
        ``generator`` is the loop's, on the device, seeded with everything else."""

    def evaluate(self, at: Progress, train_loss: float) -> dict[str, Any]:
        """At each evaluation point: measure and log; returns the record for the run log.
        ``train_loss`` is the mean over all devices since the previous point."""

    def checkpoint_path(self, at: Progress) -> Path:
        """Where the resume checkpoint of this point goes (on every process)."""

    def checkpoint_extra(self, at: Progress) -> dict[str, Any]:
        """The task's entries of that checkpoint (the weights, the arguments...; main process only)."""

    # Optional: ``host_inputs(batch, epoch, index) -> batch``, called in the main process for each
    # batch as the loader hands it over (``index``: its position in the epoch), before it goes to the
    # device; on XLA it must return a dict of tensors, rows first (see ``device_loader``). It may run
    # ahead of the step (a prefetching thread), so it may depend on nothing but its arguments.


class _LossWatch:
    """The first non-finite loss, kept on the device: reading it on the host stalls the device
    queue, so it is read only at progress lines, evaluations and checkpoints."""

    def __init__(self, device: torch.device, first: int, steps_per_epoch: int, stop_hint: str) -> None:
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.finite = torch.zeros((), dtype=torch.long, device=device)  # batches before the first bad loss
        self.bad = torch.zeros((), device=device)  # that loss
        self.first, self.steps_per_epoch, self.stop_hint = first, steps_per_epoch, stop_hint

    def update(self, loss: torch.Tensor) -> None:
        """Out of place: an XLA step closure may still hold the previous tensors."""
        finite = torch.isfinite(loss)
        self.bad = torch.where(self.ok & ~finite, loss.float(), self.bad)
        self.ok = self.ok & finite
        self.finite = self.finite + self.ok

    def state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ok, self.finite, self.bad

    def check(self, ok: torch.Tensor, finite: torch.Tensor, bad: torch.Tensor) -> None:
        if ok.item():
            return
        at = self.first + int(finite.item())
        raise NonFiniteLossError(f"loss is {bad.item()} at epoch {at // self.steps_per_epoch} step "
                                 f"{at % self.steps_per_epoch}; stopping. {self.stop_hint}")


class Trainer:
    """One run's loop: builds the data loader, the learning-rate schedule and, for fp16, the grad
    scaler; :meth:`resume` then :meth:`fit`."""

    def __init__(self, backend: TorchBackend, optimizer: torch.optim.Optimizer, dataset: Dataset, *, batch: int,
                 accum: int, num_workers: int, dtype: torch.dtype | None, config: LoopConfig, output_dir: Path,
                 log: logging.Logger, stop_hint: str, identity: Mapping[str, Any],
                 collate_fn: Callable[[list], Any] | None = None) -> None:
        """``stop_hint`` ends the error of a non-finite loss (how to resume, what to change);
        ``identity`` is what makes the run this run (:func:`pretrain.engine.resume.run_identity`), saved in
        each checkpoint as ``run`` and checked on resume; ``collate_fn`` batches the data set's items
        (default: torch's)."""
        self.backend, self.optimizer, self.config, self.log = backend, optimizer, config, log
        self.identity = identity
        self.batch_size, self.accum, self.stop_hint = batch, accum, stop_hint
        self.output_dir = Path(output_dir)
        # the data is split over the processes; each loads the rows of the devices it feeds
        self.sampler = backend.train_sampler(dataset, config.seed)
        self.loader = DataLoader(dataset, batch_size=batch * backend.local_devices, sampler=self.sampler,
                                 num_workers=num_workers,
                                 pin_memory=backend.name == "cuda", drop_last=True, generator=torch.Generator(),
                                 collate_fn=collate_fn)
        batches = len(self.loader)
        if batches < accum:
            raise LsmaeError(f"{len(dataset)} training images give {batches} batches of {batch} per device, fewer "
                             f"than one optimizer update ({accum} accumulation steps); lower the batch size")
        self.updates_per_epoch = batches // accum
        # batches left over after the last whole update are not used: they are no step of the epoch
        self.steps_per_epoch = self.updates_per_epoch * accum
        unit = self.updates_per_epoch if config.epochs is not None else 1
        self.total_steps = config.epochs * unit if config.epochs is not None else config.max_steps
        self.eval_every, self.ckpt_every = config.eval_every * unit, config.ckpt_every * unit
        warmup = config.warmup * unit
        schedule = dict(t_initial=max(1, self.total_steps - warmup), lr_min=config.min_lr, warmup_t=warmup,
                        warmup_lr_init=config.warmup_lr_init, warmup_prefix=True, t_in_epochs=False)
        self.scheduler = CosineLRScheduler(optimizer, **schedule) if config.schedule == "cosine" \
            else PolyLRScheduler(optimizer, power=config.poly_power, **schedule)
        self.scaler = torch.amp.GradScaler(backend.device.type) if dtype == torch.float16 else None
        self.step = self.epoch = self.batch = 0
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.output_dir.glob(".*.pth.tmp*") if backend.is_main else ():
            stale.unlink(missing_ok=True)  # left by a process killed while saving

    @property
    def progress(self) -> Progress:
        return Progress(self.step, self.epoch, self.batch)

    def resume(self, ckpt: Mapping[str, Any]) -> None:
        """Continue from a checkpoint :meth:`fit` wrote (the task restores its own entries). One
        without ``progress`` (written before it was recorded) ends epoch ``ckpt['epoch']``."""
        # the checkpoint's groups carry how the backend that wrote it ran AdamW (fused on GPUs and CPUs,
        # capturable on XLA); this backend keeps its own, so a run moves between them
        own = [{k: g[k] for k in OPTIMIZER_IMPLEMENTATION if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, keep in zip(self.optimizer.param_groups, own):
            group.update(keep)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        at = ckpt.get("progress") or {"epoch": ckpt["epoch"] + 1, "batch": 0}
        epoch, batch = int(at["epoch"]), int(at["batch"])
        if batch >= self.steps_per_epoch or batch % self.accum:
            raise LsmaeError(f"the checkpoint stopped after batch {batch} of epoch {epoch}, where this run's batch "
                             f"plan ({self.steps_per_epoch} batches per epoch, {self.accum} per update) cannot "
                             "continue: resume with the batch size it was written with")
        self.epoch, self.batch = epoch, batch
        # counted in epochs, the position is the epoch's (a changed batch plan moves the schedule with it)
        self.step = int(at["step"]) if self.config.max_steps is not None and "step" in at \
            else epoch * self.updates_per_epoch + batch // self.accum

    def fit(self, task: Task) -> None:
        """Train from the current position to the end, evaluating and saving on the way."""
        self._logger = RunLogger(self.output_dir, self.backend.is_main, self.log)
        self._watch = _LossWatch(self.backend.device, self.epoch * self.steps_per_epoch + self.batch,
                                 self.steps_per_epoch, self.stop_hint)
        self._loss_sum, self._loss_count = torch.zeros((), device=self.backend.device), 0
        self._t_start, self._images, self._done = time.time(), 0, 0
        self._todo = (self.total_steps - self.step) * self.accum
        try:
            while self.step < self.total_steps:
                self._run_epoch(task)
        finally:
            self._logger.close()

    def _seed(self, batch: int) -> int:
        seed = seed_epoch(self.config.seed, self.epoch, self.backend.rank, batch)
        self._generator = self.backend.generator(seed)
        return seed

    def _run_epoch(self, task: Task) -> None:
        self.sampler.set_epoch(self.epoch)
        self.loader.generator.manual_seed(self._seed(0))
        batches = iter(self.loader)
        if self.batch:  # resuming in mid-epoch: the consumed batches drawn again, then the generators as saved
            for _ in range(self.batch):
                next(batches)
            self._seed(self.batch)
        task.model.train()
        prepare = getattr(task, "host_inputs", None)
        if prepare is not None:  # may run in a prefetching thread: bound to this epoch now
            epoch = self.epoch
            batches = (prepare(b, epoch, i) for i, b in enumerate(batches, start=self.batch))
        for data in self.backend.device_loader(batches):
            pos = self.batch
            update_now = (pos + 1) % self.accum == 0
            if pos % self.accum == 0:
                self.scheduler.step_update(self.step)
                self._lr_now = max(g["lr"] for g in self.optimizer.param_groups)  # floats, before place_lr
                self.backend.place_lr(self.optimizer)
            with self.backend.no_sync(task.model, not update_now):
                loss = task.forward_loss(data, self._generator)
            self.backend.backward_and_step(loss, self.optimizer, self.scaler, self.accum, update_now)
            loss = loss.detach()
            self._watch.update(loss)
            self._loss_sum += loss
            self._loss_count += 1
            self._images += self.batch_size * self.backend.world_size
            self._done += 1
            self.batch += 1
            if pos % self.config.print_freq == 0 or self.batch == self.steps_per_epoch:
                self.backend.on_step_end(self._report, loss, *self._watch.state(), self.step, self.epoch, pos,
                                         self._lr_now, self._images, self._done)
            self.backend.mark_step()  # XLA: runs this step's graph, then the closure registered above
            if update_now:
                self.step += 1
                if self.batch == self.steps_per_epoch:
                    self.epoch, self.batch = self.epoch + 1, 0
                self._after_update(task)
            if self.batch == 0 or self.step >= self.total_steps:
                return

    def _report(self, loss: torch.Tensor, ok: torch.Tensor, finite: torch.Tensor, bad: torch.Tensor, step: int,
                epoch: int, pos: int, lr: float, images: int, done: int) -> None:
        """Divergence check, progress line and record of one batch, once its tensors are computed
        (on XLA in a step closure): the only host syncs between evaluations. The loss logged is the
        mean over all processes: the loss of the global batch."""
        loss = self.backend.all_reduce_mean(loss)
        self._watch.check(ok, finite, bad)
        if not self._logger.enabled:
            return
        value = loss.item()
        elapsed = time.time() - self._t_start
        rate = images / max(elapsed, 1e-9)
        eta = fmt_eta(elapsed / done * (self._todo - done))
        if self.config.epochs is not None:
            self.log.info("epoch %d/%d [%d/%d] loss %.4f lr %.3g %.1f img/s ETA %s", epoch + 1, self.config.epochs,
                          pos + 1, self.steps_per_epoch, value, lr, rate, eta)
        else:
            self.log.info("step %d/%d (epoch %d, batch %d/%d) loss %.4f lr %.3g %.1f img/s ETA %s", step + 1,
                          self.total_steps, epoch + 1, pos + 1, self.steps_per_epoch, value, lr, rate, eta)
        # "step" is the batch in the epoch (kept for older readers); "global_step" the optimizer updates done
        self._logger.write({"kind": "train", "epoch": epoch, "step": pos, "global_step": step, "loss": value,
                            "lr": lr, "images_per_s": rate, **self.backend.diagnostics()},
                           epoch * self.steps_per_epoch + pos)

    def _after_update(self, task: Task) -> None:
        end = self.step >= self.total_steps
        evaluate = self.step % self.eval_every == 0 or end
        save = self.step % self.ckpt_every == 0 or end
        if not (evaluate or save):
            return
        self._watch.check(*self._watch.state())  # neither evaluate nor save a diverged model
        at = self.progress
        if evaluate:
            train_loss = self.backend.all_reduce_mean(self._loss_sum / max(1, self._loss_count)).item()
            self._loss_sum, self._loss_count = torch.zeros_like(self._loss_sum), 0
            record = {**task.evaluate(at, train_loss), "lr": self._lr_now, "global_step": at.step}
            self._logger.write(record, at.epoch - 1 if self.config.epochs is not None else at.step)
            task.model.train()
        if save:
            path = task.checkpoint_path(at)
            state = {**task.checkpoint_extra(at), "run": self.identity, "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "epoch": at.epoch - 1, "progress": {"step": at.step, "epoch": at.epoch, "batch": at.batch}} \
                if self.backend.is_main else None
            self.backend.save(state, path)  # atomic: a temporary file, then a rename
            self.log.info("saved %s", path)
            if self.batch:  # a resumed run continues from here with generators seeded by the position
                self._seed(self.batch)
