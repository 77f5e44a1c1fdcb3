"""The pretraining recipe the README promises, checked where it takes effect: the masks the model
receives, the model built, the optimizer built and saved, the learning rate logged, the gradients,
the seeding of each epoch and the fp16 loss scaler in checkpoints (issue 22).

Runs are in-process on CPU with the micro model at 64 px (an 8 x 8 patch grid), one thread.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pretrain import data, pretraining
from pretrain.configs import from_namespace
from pretrain.engine.backends import TorchBackend
from pretrain.engine.resume import run_identity
from pretrain.engine.trainer import LoopConfig, Progress, Trainer
from pretrain.errors import LsmaeError
from pretrain.main_pretrain import build_parser, run
from pretrain.models.mae import MaskedAutoencoderViT
from pretrain.pretraining_config import PretrainConfig
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = 8  # 64 px / patch 8
# only what makes the run tiny; the recipe (mask, blr, warmup, weight decay, loss) is left at its defaults
TINY = ["--model", TINY_MODEL, "--input-size", "64", "--num-workers", "0", "--device", "cpu",
        "--precision", "fp32", "--print-freq", "1", "--effective-batch-size", "8"]


class Recorder:
    """What a run builds and draws: the models and optimizers built, the trainers, the masks each
    forward pass receives and the crop boxes the augmentation draws, in order."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.models, self.optimizers, self.trainers, self.masks, self.boxes = [], [], [], [], []
        self.resumed_scalers = []
        create_model, create_optimizer = pretraining.create_model, pretraining.create_optimizer_v2
        mp.setattr(pretraining, "create_model", lambda *a, **k: self._keep(self.models, create_model(*a, **k)))
        mp.setattr(pretraining, "create_optimizer_v2",
                   lambda *a, **k: self._keep(self.optimizers, create_optimizer(*a, **k)))
        forward = MaskedAutoencoderViT.forward

        def recording_forward(model, imgs, ids_keep, ids_restore):
            self.masks.append(ids_keep.clone())
            return forward(model, imgs, ids_keep, ids_restore)

        mp.setattr(MaskedAutoencoderViT, "forward", recording_forward)
        crop_box = data.crop_box
        mp.setattr(data, "crop_box", lambda *a: self._keep(self.boxes, crop_box(*a)))
        recorder = self

        class RecordingTrainer(Trainer):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                recorder.trainers.append(self)

            def resume(self, ckpt):
                super().resume(ckpt)
                recorder.resumed_scalers.append(None if self.scaler is None else self.scaler.state_dict())

        mp.setattr(pretraining, "Trainer", RecordingTrainer)

    @staticmethod
    def _keep(into: list, value):
        into.append(value)
        return value


def train(*argv: str, backend: TorchBackend | None = None) -> None:
    args = build_parser().parse_args(list(argv))
    if backend is None:
        run(args)
    else:
        pretraining.train(from_namespace(PretrainConfig, args), backend)


def records(out: Path, kind: str) -> list[dict]:
    return [r for line in (out / "log.jsonl").read_text().splitlines() if (r := json.loads(line))["kind"] == kind]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def default_run(photos, tmp_path_factory):
    """One epoch (4 updates of 8 images) of the release's recipe, nothing set but the size of the run."""
    out = tmp_path_factory.mktemp("default_recipe")
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        train("--data-path", str(photos), "--output-dir", str(out), "--epochs", "1", *TINY)
    return out, rec


# --- 1. the defaults are the release's recipe -------------------------------------------------------------

def test_parser_defaults_are_the_release_recipe():
    args = build_parser().parse_args(["--data-path", "DIR"])
    assert (args.mask_ratio, args.mask_downsampling, args.norm_pix_loss) == (0.75, 2, True)
    assert (args.blr, args.lr, args.effective_batch_size, args.weight_decay) == (1.5e-4, None, 4096, 0.05)
    assert (args.warmup_epochs, args.input_size, args.ckpt_interval) == (40, 448, 20)
    assert (args.model, args.min_crop_scale) == ("mae_vit_base_patch16_dec384d12h8b", 0.2)


def test_default_masks_are_2x2_blocks_with_three_quarters_masked(default_run):
    _, rec = default_run
    assert len(rec.masks) == 4 and all(m.shape == (8, GRID * GRID // 4) for m in rec.masks)  # 16 of 64 visible
    for ids_keep in rec.masks:
        for row in ids_keep.tolist():
            assert len(set(row)) == 16
            blocks = {(p // GRID // 2, p % GRID // 2) for p in row}
            assert len(blocks) == 4, f"visible patches {sorted(row)} are not 4 whole 2x2 blocks"


def test_default_model_regresses_normalised_pixels(default_run):
    _, rec = default_run
    (model,) = rec.models
    assert model.norm_pix_loss is True


def test_default_lr_is_blr_1_5e_4_with_40_warmup_epochs(default_run):
    """lr = 1.5e-4 x 8 / 256 at the end of a warmup of 40 epochs x 4 updates: step s logs peak x s / 160."""
    out, _ = default_run
    peak = 1.5e-4 * 8 / 256
    lrs = [r["lr"] for r in records(out, "train")]
    assert lrs == pytest.approx([peak * s / 160 for s in range(4)], rel=1e-9, abs=1e-15)


def test_default_effective_batch_is_4096(photos, tmp_path):
    """With --batch-size 8 and no --effective-batch-size, an update needs 4096 / 8 = 512 batches."""
    with pytest.raises(LsmaeError, match=r"32 training images give 4 batches of 8 per device, fewer than one "
                                         r"optimizer update \(512 accumulation steps\)"):
        train("--data-path", str(photos), "--output-dir", str(tmp_path), "--batch-size", "8",
              *(a for a in TINY if a not in ("--effective-batch-size", "8")))


# --- 3, 4. weight decay exemptions and betas of the optimizer built -------------------------------------------

def test_no_weight_decay_on_norms_biases_and_tokens(default_run):
    out, rec = default_run
    (model,), (optimizer,) = rec.models, rec.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    no_decay = {names[id(p)] for g in optimizer.param_groups if not g["weight_decay"] for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trained and not decay & no_decay
    assert {"cls_token", "mask_token"} <= no_decay
    assert {n for n in trained if n.endswith(".bias") or "norm" in n or n.endswith(("q_bias", "v_bias"))} <= no_decay
    # everything else is a weight matrix (or the patch embedding's kernel), decayed
    assert no_decay == {n for n in trained if model.get_parameter(n).ndim <= 1} | {"cls_token", "mask_token"}
    assert all(model.get_parameter(n).ndim >= 2 and n.endswith("weight") for n in decay)
    assert {"patch_embed.proj.weight", "decoder_pred.weight", "blocks.0.attn.qkv.weight"} <= decay
    # the position embeddings are fixed 2-D sin-cos tables: not trained, so in no group at all
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    # the checkpoint saves the same groups
    saved = load(out / "checkpoint-0.pth")["optimizer"]["param_groups"]
    assert [(g["weight_decay"], len(g["params"])) for g in saved] == \
           [(g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]


def test_adamw_betas_0_9_0_95(default_run):
    out, rec = default_run
    (optimizer,) = rec.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)
    saved = load(out / "checkpoint-0.pth")["optimizer"]["param_groups"]
    assert all(tuple(g["betas"]) == (0.9, 0.95) for g in saved)


# --- 2. lr = blr x (per-device batch x accumulation x devices) / 256 -----------------------------------

class TwoDevices(TorchBackend):
    """The batch arithmetic of two data-parallel devices (world size 2) in one CPU process: no
    process group, no DDP; the loader still feeds one device's rows."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.world_size = 2

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model


def test_lr_counts_accumulation_and_devices(photos, tmp_path, monkeypatch):
    """Effective batch 8 = 2 per device x 2 accumulation x 2 devices, blr 0.032: lr 1e-3 (not 5e-4, as
    with accumulation or devices left out), the peak from the first update (no warmup)."""
    rec = Recorder(monkeypatch)
    train("--data-path", str(photos), "--output-dir", str(tmp_path), "--epochs", "1", "--warmup-epochs", "0",
          "--accum-iter", "2", "--blr", "0.032", *TINY, backend=TwoDevices())
    (trainer,) = rec.trainers
    assert (trainer.batch_size, trainer.accum) == (2, 2)
    lrs = [r["lr"] for r in records(tmp_path, "train")]
    assert lrs[0] == pytest.approx(1e-3, rel=1e-12) and max(lrs) == lrs[0]
    saved = load(tmp_path / "checkpoint-0.pth")["optimizer"]["param_groups"]
    assert all(g["initial_lr"] == pytest.approx(1e-3, rel=1e-12) for g in saved)


# --- 5. every epoch draws its own masks and crops; a rerun of an epoch draws the same -------------------------

def test_each_epoch_draws_new_masks_and_crops_and_a_resumed_epoch_the_same(photos, tmp_path, monkeypatch):
    out = tmp_path / "two_epochs"
    rec = Recorder(monkeypatch)
    train("--data-path", str(photos), "--output-dir", str(out), "--epochs", "2", "--ckpt-interval", "1",
          "--lr", "1e-3", *TINY)
    assert len(rec.masks) == 8 and len(rec.boxes) == 64  # 4 batches of 8 images per epoch
    masks = [torch.cat(rec.masks[:4]), torch.cat(rec.masks[4:])]
    boxes = [rec.boxes[:32], rec.boxes[32:]]
    assert not torch.equal(masks[0], masks[1]), "epoch 1 drew the masks of epoch 0"
    assert sum(a != b for a, b in zip(*boxes)) > 24, "epoch 1 drew (mostly) the crop boxes of epoch 0"

    # epoch 1 again, resumed from the checkpoint of epoch 0: the same masks and boxes
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(out / "checkpoint-0.pth", again)
    rec.masks.clear(), rec.boxes.clear()
    train("--data-path", str(photos), "--output-dir", str(again), "--epochs", "2", "--ckpt-interval", "1",
          "--lr", "1e-3", *TINY)
    assert len(rec.masks) == 4
    assert torch.equal(torch.cat(rec.masks), masks[1])
    assert rec.boxes == boxes[1]


# --- 6. gradient accumulation divides the loss ------------------------------------------------------------

class FixedSamples(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Regression:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward_loss(self, batch, generator):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def evaluate(self, at: Progress, train_loss: float) -> dict:
        return {"kind": "eval"}

    def checkpoint_path(self, at: Progress) -> Path:
        return self.out / "last.pth"

    def checkpoint_extra(self, at: Progress) -> dict:
        return {}


def first_update_gradients(out: Path, batch: int, accum: int) -> list[torch.Tensor]:
    """The gradients the optimizer steps with at the first update (the first batch x accum samples)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in model.parameters()]))
    trainer = Trainer(TorchBackend("cpu"), optimizer, FixedSamples(), batch=batch, accum=accum, num_workers=0,
                      dtype=None, config=LoopConfig(seed=0, min_lr=0.0, print_freq=100, max_steps=1), output_dir=out,
                      log=logging.getLogger("test_recipe"), stop_hint="", identity=run_identity(
                          "toy", model={}, input_size=6, source=None, recipe={}, data={}))
    task = Regression(model)
    task.out = out
    trainer.fit(task)
    assert len(grads) == 1
    return grads[0]


def test_accumulated_gradient_is_the_gradient_of_the_whole_batch(tmp_path):
    """2 accumulated batches of 4 step with the gradient of one batch of 8 (the loss divided by 2)."""
    whole = first_update_gradients(tmp_path / "whole", batch=8, accum=1)
    accumulated = first_update_gradients(tmp_path / "accumulated", batch=4, accum=2)
    assert any(g.abs().max() > 1e-3 for g in whole)
    for a, b in zip(accumulated, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --- 7. the fp16 loss scaler is saved and restored ----------------------------------------------------------

def test_fp16_grad_scaler_state_is_saved_and_restored(photos, tmp_path, monkeypatch):
    """fp16 autocast and torch.amp.GradScaler('cpu') run on a CPU: the checkpoint holds the scaler's state
    and a resumed run continues from it (here a scale and growth count set in the file)."""
    fp16 = [a if a != "fp32" else "fp16" for a in TINY]
    rec = Recorder(monkeypatch)
    train("--data-path", str(photos), "--output-dir", str(tmp_path), "--epochs", "1", "--lr", "1e-3", *fp16)
    (trainer,) = rec.trainers
    assert trainer.scaler is not None
    ckpt = load(tmp_path / "checkpoint-0.pth")
    assert ckpt["scaler"] == trainer.scaler.state_dict()
    assert ckpt["scaler"]["_growth_tracker"] > 0  # the state of this run, not a fresh scaler's

    ckpt["scaler"].update(scale=1024.0, _growth_tracker=7)
    torch.save(ckpt, tmp_path / "checkpoint-0.pth")
    train("--data-path", str(photos), "--output-dir", str(tmp_path), "--epochs", "2", "--lr", "1e-3", *fp16)
    assert len(rec.trainers) == 2
    assert rec.resumed_scalers == [ckpt["scaler"]]
    final = load(tmp_path / "checkpoint-1.pth")["scaler"]
    assert final == rec.trainers[1].scaler.state_dict() and final["scale"] <= 1024.0
