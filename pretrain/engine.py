"""Pretraining on every backend (see :mod:`pretrain.backends`): the masked-autoencoder task that
:class:`pretrain.trainer.Trainer` runs, and its checkpoints ``checkpoint-{epoch}.pth``."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2

from .backends import TorchBackend
from .checkpoints import checkpoint_path, json_safe_args, load_training_checkpoint, newest_checkpoint
from .data import collate, normalize, pretrain_dataset
from .masking import block_mask_indices
from .models_mae import MaskedAutoencoderViT, create_model
from .run_logging import setup_logging
from .trainer import LoopConfig, Progress, Trainer, precision_name, resolve_batch, resolve_precision

log = logging.getLogger("pretrain")


class MaskedPretraining:
    """Reconstruction loss of block-masked images; each epoch reports its mean loss and the
    unreadable images it skipped, and saves ``checkpoint-{epoch}.pth``. Batches arrive as uint8
    and are normalised on the device; nothing in a step waits for the device."""

    def __init__(self, model: MaskedAutoencoderViT, args: argparse.Namespace, backend: TorchBackend,
                 dtype: torch.dtype | None) -> None:
        self.raw, self.args, self.backend, self.dtype = model, args, backend, dtype
        self.model = backend.wrap_model(model)
        self.grid = args.input_size // model.patch_size
        self.skipped = torch.zeros((), dtype=torch.long, device=backend.device)

    def forward_loss(self, batch: Sequence[Any], generator: torch.Generator) -> torch.Tensor:
        imgs, n_bad = batch
        ids_keep, ids_restore = block_mask_indices(imgs.shape[0], self.grid, self.args.mask_ratio,
                                                   self.args.mask_downsampling, generator=generator,
                                                   device=generator.device)
        self.skipped += n_bad.sum()
        imgs = normalize(imgs)
        with self.backend.autocast(self.dtype):
            return self.model(imgs, ids_keep.to(self.backend.device), ids_restore.to(self.backend.device))[0]

    def evaluate(self, at: Progress, train_loss: float) -> dict[str, Any]:
        n_skipped = int(self.backend.all_reduce_mean(self.skipped.float()).item() * self.backend.world_size)
        self.skipped.zero_()
        log.info("epoch %d/%d done: mean loss %.4f%s", at.epoch, self.args.epochs, train_loss,
                 f", {n_skipped} unreadable images skipped (see warnings)" if n_skipped else "")
        return {"kind": "epoch", "epoch": at.epoch - 1, "loss": train_loss, "skipped_images": n_skipped}

    def checkpoint_path(self, at: Progress) -> Path:
        return checkpoint_path(Path(self.args.output_dir), at.epoch - 1)

    def checkpoint_extra(self, at: Progress) -> dict[str, Any]:
        return {"model": self.raw.state_dict(), "args": json_safe_args(self.args)}


def train(args: argparse.Namespace, backend: TorchBackend) -> Path:
    """Run (or resume) pretraining; returns the last checkpoint written."""
    output_dir = Path(args.output_dir)
    setup_logging(log, backend.is_main)
    dtype = resolve_precision(args.precision, backend)
    batch, accum = resolve_batch(args.effective_batch_size, args.batch_size, args.accum_iter, backend.world_size)
    lr = args.blr * args.effective_batch_size / 256 if args.lr is None else args.lr
    dataset = pretrain_dataset(args.data_path, args.input_size, args.min_crop_scale, args.repeat)

    torch.manual_seed(args.seed)
    model = create_model(args.model, img_size=args.input_size, norm_pix_loss=args.norm_pix_loss,
                         decoder_downsampling=args.decoder_downsampling, no_k_bias=args.no_k_bias)
    model.set_grad_checkpointing(args.grad_checkpointing)
    model.to(backend.device)
    if args.compile:
        model.compile()  # in place: the state dict keeps its keys
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=args.weight_decay, betas=(0.9, 0.95),
                                    **({"fused": True} if backend.name in ("cuda", "cpu") else {}))
    trainer = Trainer(
        backend, optimizer, dataset, batch=batch, accum=accum, num_workers=args.num_workers, dtype=dtype,
        collate_fn=collate,
        config=LoopConfig(seed=args.seed, min_lr=args.min_lr, print_freq=args.print_freq, epochs=args.epochs,
                          warmup=args.warmup_epochs, ckpt_every=args.ckpt_interval),
        output_dir=output_dir, log=log,
        stop_hint="Resume from the last checkpoint with --resume auto, after lowering --blr or switching "
                  "--precision (fp16 overflows most)")

    resume = newest_checkpoint(output_dir) if args.resume == "auto" else (
        (Path(args.resume), load_training_checkpoint(Path(args.resume))) if args.resume else None)
    if resume is not None:
        path, ckpt = resume
        model.load_state_dict(ckpt["model"])
        trainer.resume(ckpt)
        log.info("resumed from %s (epoch %d done)", path, ckpt["epoch"])
    log.info("%s: %d images x %d repeat, %d devices x batch %d x %d accumulation = %d per update, lr %.3g, "
             "precision %s, %d steps/epoch", args.model, len(dataset.files), args.repeat, backend.world_size, batch,
             accum, batch * accum * backend.world_size, lr, precision_name(dtype), trainer.steps_per_epoch)
    trainer.fit(MaskedPretraining(model, args, backend, dtype))
    return checkpoint_path(output_dir, trainer.progress.epoch - 1)
