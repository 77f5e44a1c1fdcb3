"""The training skeleton (:mod:`pretrain.engine.trainer`) driven directly, counted in iterations as a
segmentation recipe is: a run stopped in mid-epoch and resumed from its last checkpoint ends with the
same weights and optimizer state, bit for bit, as a run that was not stopped.

The toy task draws randomness everywhere a real one does: the augmentation of each sample (global
RNG in the main process, or the loader workers'), dropout (global RNG) and the loop's generator.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pretrain.engine.backends import TorchBackend
from pretrain.engine.trainer import LoopConfig, Progress, Trainer

# 40 samples in batches of 4 with 2 accumulation steps: 10 batches, 5 optimizer updates per epoch
SAMPLES, BATCH, ACCUM, STEPS = 40, 4, 2, 12
CKPT_EVERY, EVAL_EVERY, STOP_AT = 3, 2, 8  # the run stopped at step 8 resumes from step 6: epoch 1, batch 2


class NoisySamples(Dataset):
    """Fixed random inputs and targets; each draw adds fresh noise (a random augmentation)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(SAMPLES, 6, generator=g), torch.randn(SAMPLES, 1, generator=g)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.1 * torch.randn(6), self.y[i]


class Stop(Exception):
    """The process dies."""


class ToyRegression:
    """A tiny MLP with dropout, its inputs masked at random by the loop's generator."""

    def __init__(self, model: nn.Module, output_dir: Path, stop_at: int | None = None) -> None:
        self.model, self.output_dir, self.stop_at = model, output_dir, stop_at

    def forward_loss(self, batch: Sequence[Any], generator: torch.Generator) -> torch.Tensor:
        x, y = batch
        keep = torch.rand(x.shape, generator=generator, device=generator.device) > 0.2
        return nn.functional.mse_loss(self.model(x * keep), y)

    def evaluate(self, at: Progress, train_loss: float) -> dict[str, Any]:
        if at.step == self.stop_at:
            raise Stop
        return {"kind": "eval", "step": at.step, "loss": train_loss}

    def checkpoint_path(self, at: Progress) -> Path:
        return self.output_dir / f"iter_{at.step}.pth"

    def checkpoint_extra(self, at: Progress) -> dict[str, Any]:
        return {"model": self.model.state_dict()}


def trainer_and_task(out: Path, workers: int, stop_at: int | None = None) -> tuple[Trainer, ToyRegression]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.05)
    config = LoopConfig(seed=7, min_lr=1e-4, print_freq=1, max_steps=STEPS, warmup=2, eval_every=EVAL_EVERY,
                        ckpt_every=CKPT_EVERY)
    trainer = Trainer(TorchBackend("cpu"), optimizer, NoisySamples(), batch=BATCH, accum=ACCUM, num_workers=workers,
                      dtype=None, config=config, output_dir=out, log=logging.getLogger("test_trainer"),
                      stop_hint="(toy)")
    return trainer, ToyRegression(model, out, stop_at)


def losses(out: Path) -> dict[tuple[int, int], float]:
    """Every batch's loss, by (epoch, batch); a batch trained twice keeps its last value."""
    lines = (out / "log.jsonl").read_text().splitlines()
    return {(r["epoch"], r["step"]): r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_mid_epoch_is_bit_identical(tmp_path, workers):
    reference, task = trainer_and_task(tmp_path / "reference", workers)
    reference.fit(task)
    assert reference.progress == Progress(step=STEPS, epoch=2, batch=4)

    out = tmp_path / "stopped"
    stopped, task = trainer_and_task(out, workers, stop_at=STOP_AT)
    with pytest.raises(Stop):
        stopped.fit(task)
    assert sorted(p.name for p in out.glob("*.pth")) == ["iter_3.pth", "iter_6.pth"]
    ckpt = torch.load(out / "iter_6.pth", weights_only=True)
    assert ckpt["progress"] == {"step": 6, "epoch": 1, "batch": 2} and ckpt["epoch"] == 0

    resumed, task = trainer_and_task(out, workers)
    task.model.load_state_dict(ckpt["model"])
    resumed.resume(ckpt)
    assert resumed.progress == Progress(step=6, epoch=1, batch=2)
    resumed.fit(task)

    a, b = (torch.load(d / f"iter_{STEPS}.pth", weights_only=True) for d in (tmp_path / "reference", out))
    assert a["progress"] == b["progress"] == {"step": STEPS, "epoch": 2, "batch": 4}
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights {k} differ"
    for i, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), f"optimizer state {i}/{k} differs"
    # every batch after the checkpoint saw the same data, noise and masks: the same losses
    assert losses(out) == losses(tmp_path / "reference")
    assert len(losses(out)) == STEPS * ACCUM


def test_resume_keeps_this_backends_optimizer_implementation(tmp_path):
    """A checkpoint written on XLA (capturable AdamW, the lr a tensor) resumes with this backend's
    AdamW options, and its moments and step count carry over."""
    reference, task = trainer_and_task(tmp_path / "reference", 0)
    reference.fit(task)
    ckpt = torch.load(tmp_path / "reference" / f"iter_{STEPS}.pth", weights_only=True)
    for group in ckpt["optimizer"]["param_groups"]:
        group.update(capturable=True, foreach=None, lr=torch.tensor(group["lr"]))

    trainer, task = trainer_and_task(tmp_path / "moved", 0)
    before = [{k: g[k] for k in ("fused", "foreach", "capturable")} for g in trainer.optimizer.param_groups]
    trainer.resume(ckpt)
    after = [{k: g[k] for k in ("fused", "foreach", "capturable")} for g in trainer.optimizer.param_groups]
    assert after == before and not after[0]["capturable"]
    state = trainer.optimizer.state_dict()["state"]
    for i, saved in ckpt["optimizer"]["state"].items():
        for k, v in saved.items():
            assert torch.equal(state[i][k], v), f"optimizer state {i}/{k} differs"
