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
from pretrain.engine.resume import resume_run, run_identity
from pretrain.engine.trainer import LoopConfig, Progress, Trainer
from pretrain.errors import ResumeError
from pretrain.safe_load import load_checkpoint

# 40 samples in batches of 4 with 2 accumulation steps: 10 batches, 5 optimizer updates per epoch
SAMPLES, BATCH, ACCUM, STEPS = 40, 4, 2, 12
CKPT_EVERY, EVAL_EVERY, STOP_AT = 3, 2, 8  # the run stopped at step 8 resumes from step 6: epoch 1, batch 2
LOG = logging.getLogger("test_trainer")
TOY_IDENTITY = run_identity("toy", model={"layers": [6, 16, 1]}, input_size=6, source=None,
                            recipe={"lr": 0.05, "seed": 7}, data={"images": SAMPLES})


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
                      dtype=None, config=config, output_dir=out, log=LOG,
                      stop_hint="(toy)", identity=TOY_IDENTITY)
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


# --- the resume contract (pretrain.engine.resume) on the toy run ------------------------------------------
def stopped_run(out: Path) -> list[Path]:
    """The run stopped at step 8: its checkpoints, newest first (iter_6, iter_3)."""
    stopped, task = trainer_and_task(out, 0, stop_at=STOP_AT)
    with pytest.raises(Stop):
        stopped.fit(task)
    return [out / "iter_6.pth", out / "iter_3.pth"]


def tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_run_skips_a_torn_newest_checkpoint_and_ends_bit_identical(tmp_path, caplog):
    reference, task = trainer_and_task(tmp_path / "reference", 0)
    reference.fit(task)
    out = tmp_path / "stopped"
    newest_first = stopped_run(out)
    tear(newest_first[0])

    resumed, task = trainer_and_task(out, 0)
    with caplog.at_level(logging.WARNING):
        path, _ = resume_run(resumed, task.model, "auto", newest_first, load=load_checkpoint, log=LOG)
    assert path == out / "iter_3.pth" and resumed.progress == Progress(step=3, epoch=0, batch=6)
    assert any(f"skipping unreadable checkpoint {newest_first[0]}" in r.getMessage() for r in caplog.records)
    resumed.fit(task)
    a, b = (torch.load(d / f"iter_{STEPS}.pth", weights_only=True) for d in (tmp_path / "reference", out))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights {k} differ"
    assert a["run"] == b["run"] == TOY_IDENTITY


def test_resume_run_refuses_when_no_checkpoint_loads(tmp_path):
    newest_first = stopped_run(tmp_path)
    for path in newest_first:
        tear(path)
    trainer, task = trainer_and_task(tmp_path, 0)
    with pytest.raises(ResumeError) as e:
        resume_run(trainer, task.model, "auto", newest_first, load=load_checkpoint, log=LOG)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.startswith("cannot resume: no checkpoint loads (")
    assert all(f"{p}: damaged or truncated checkpoint" in message for p in newest_first)
    assert message.endswith("move them away, or --resume '' to start over")
    assert trainer.progress == Progress(step=0, epoch=0, batch=0)
    with pytest.raises(ResumeError, match=r"^--resume nowhere.pth: no such file$"):
        resume_run(trainer, task.model, "nowhere.pth", newest_first, load=load_checkpoint, log=LOG)
    assert resume_run(trainer, task.model, "", newest_first, load=load_checkpoint, log=LOG) is None


def test_resume_run_refuses_another_runs_checkpoint_naming_the_field(tmp_path, caplog):
    newest_first = stopped_run(tmp_path)
    trainer, task = trainer_and_task(tmp_path, 0)
    trainer.identity = run_identity("toy", model={"layers": [6, 16, 1]}, input_size=6, source=None,
                                    recipe={"lr": 0.1, "seed": 7}, data={"images": SAMPLES})
    with pytest.raises(ResumeError) as e:
        resume_run(trainer, task.model, "auto", newest_first, load=load_checkpoint, log=LOG)
    assert str(e.value) == (f"{newest_first[0]} belongs to another run: recipe.lr 0.05 -> 0.1; use another "
                            "--output-dir, or --resume '' to start over there")
    assert trainer.progress == Progress(step=0, epoch=0, batch=0)

    # a checkpoint written before runs recorded their identity resumes unchecked
    ckpt = torch.load(newest_first[0], weights_only=True)
    del ckpt["run"]
    torch.save(ckpt, newest_first[0])
    with caplog.at_level(logging.INFO, logger=LOG.name):
        resume_run(trainer, task.model, "auto", newest_first, load=load_checkpoint, log=LOG)
    assert trainer.progress == Progress(step=6, epoch=1, batch=2)
    assert f"{newest_first[0]} records no run identity" in caplog.text


def test_run_logging_writes_to_the_stderr_of_the_moment(capsys):
    """A run started inside a redirection (the demo's step logs, a test's capture) must not leave the
    runs after it writing into the closed stream it had then."""
    import contextlib
    import io
    import logging

    from pretrain.engine.run_logging import setup_logging

    logger = logging.getLogger("tests.run_logging.redirected")
    logger.handlers.clear()
    redirected = io.StringIO()
    with contextlib.redirect_stderr(redirected):
        setup_logging(logger, is_main=True)
        logger.info("first run")
    redirected.close()
    logger.info("second run")
    err = capsys.readouterr().err
    assert err.endswith(" second run\n") and "Logging error" not in err and "first run" not in err
