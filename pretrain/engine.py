"""One pretraining loop for every backend (see :mod:`pretrain.backends`)."""
from __future__ import annotations

import argparse
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, DistributedSampler

from .backends import TorchBackend, bf16_supported_on_cpu
from .checkpoints import checkpoint_path, load_training_checkpoint, newest_checkpoint
from .data import PretrainImages, pretrain_transform
from .errors import LsmaeError, NonFiniteLossError
from .masking import block_mask_indices
from .models_mae import create_model
from .run_logging import RunLogger, fmt_eta, setup_logging

log = logging.getLogger("pretrain")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, backend: TorchBackend) -> torch.dtype | None:
    """``auto``: bf16 on XLA, on GPUs that have it and on CPUs with AVX512-BF16/AMX; else fp16 on
    GPUs and fp32 on CPUs."""
    if precision != "auto":
        return DTYPES[precision]
    if backend.name == "xla":
        return torch.bfloat16
    if backend.name == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if bf16_supported_on_cpu() else None


def resolve_batch(effective: int, batch: int | None, accum: int | None, world: int) -> tuple[int, int]:
    """Per-device batch and accumulation steps giving ``effective`` images per optimizer update."""
    if batch is None:
        accum = accum or 1
        if effective % (world * accum):
            raise LsmaeError(f"--effective-batch-size {effective} is not divisible by {world} devices x "
                             f"{accum} accumulation steps")
        return effective // (world * accum), accum
    if accum is None:
        if effective % (world * batch):
            raise LsmaeError(f"--effective-batch-size {effective} is not divisible by {world} devices x "
                             f"batch {batch}")
        return batch, effective // (world * batch)
    if batch * accum * world != effective:
        raise LsmaeError(f"--batch-size {batch} x --accum-iter {accum} x {world} devices != "
                         f"--effective-batch-size {effective}")
    return batch, accum


def _json_safe(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, list, tuple, Path, type(None)))}


def seed_epoch(seed: int, epoch: int, rank: int) -> int:
    """Seed torch, numpy and random (timm's mixup uses numpy) from (seed, epoch, rank) only, so that
    a resumed run replays exactly; returns the seed for the epoch's generators."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    return s


def train(args: argparse.Namespace, backend: TorchBackend) -> Path:
    """Run (or resume) pretraining; returns the last checkpoint written."""
    output_dir = Path(args.output_dir)
    setup_logging(log, backend.is_main)
    dtype = resolve_precision(args.precision, backend)
    batch, accum = resolve_batch(args.effective_batch_size, args.batch_size, args.accum_iter, backend.world_size)
    lr = args.blr * args.effective_batch_size / 256 if args.lr is None else args.lr

    dataset = PretrainImages(args.data_path, pretrain_transform(args.input_size, args.min_crop_scale), args.repeat)
    sampler = DistributedSampler(dataset, num_replicas=backend.world_size, rank=backend.rank,
                                 shuffle=True, seed=args.seed, drop_last=True)
    loader_gen = torch.Generator()
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=backend.name == "cuda", drop_last=True, generator=loader_gen,
                        persistent_workers=False)
    batches_per_epoch = len(loader)
    if batches_per_epoch < accum:
        raise LsmaeError(f"{len(dataset)} images give {batches_per_epoch} batches of {batch} per device, fewer "
                         f"than one optimizer update ({accum} accumulation steps); lower the batch size")
    updates_per_epoch = batches_per_epoch // accum
    # batches left over after the last whole update are not used: they are no step of the epoch
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".checkpoint-*.tmp*") if backend.is_main else ():
        stale.unlink(missing_ok=True)  # left by a process killed while saving
    steps_per_epoch = updates_per_epoch * accum

    torch.manual_seed(args.seed)
    model = create_model(args.model, img_size=args.input_size, norm_pix_loss=args.norm_pix_loss,
                         decoder_downsampling=args.decoder_downsampling, no_k_bias=args.no_k_bias)
    model.set_grad_checkpointing(args.grad_checkpointing)
    model.to(backend.device)
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=args.weight_decay, betas=(0.9, 0.95),
                                    **({"fused": True} if backend.name in ("cuda", "cpu") else {}))
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(1, (args.epochs - args.warmup_epochs) * updates_per_epoch),
        lr_min=args.min_lr, warmup_t=args.warmup_epochs * updates_per_epoch, warmup_lr_init=0.0,
        warmup_prefix=True, t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(backend.device.type) if dtype == torch.float16 else None

    start_epoch = 0
    resume = newest_checkpoint(output_dir) if args.resume == "auto" else (
        (Path(args.resume), load_training_checkpoint(Path(args.resume))) if args.resume else None)
    if resume is not None:
        path, ckpt = resume
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        log.info("resumed from %s (epoch %d done)", path, ckpt["epoch"])
    ddp_model = backend.wrap_model(model)
    grid = args.input_size // model.patch_size
    logger = RunLogger(output_dir, backend.is_main, log)
    if backend.is_main:
        log.info("%s: %d images x %d repeat, %d devices x batch %d x %d accumulation = %d per update, "
                 "lr %.3g, precision %s, %d steps/epoch", args.model, len(dataset.files), args.repeat,
                 backend.world_size, batch, accum, batch * accum * backend.world_size, lr,
                 "fp32" if dtype is None else str(dtype).removeprefix("torch."), steps_per_epoch)

    last = checkpoint_path(output_dir, start_epoch - 1)
    t_start, images_done = time.time(), 0
    total_steps = (args.epochs - start_epoch) * steps_per_epoch
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        seed = seed_epoch(args.seed, epoch, backend.rank)
        loader_gen.manual_seed(seed)
        mask_gen = backend.generator(seed)
        ddp_model.train()
        epoch_loss = torch.zeros((), device=backend.device)
        skipped = torch.zeros((), dtype=torch.long, device=backend.device)
        for step, (imgs, n_bad) in enumerate(backend.device_loader(loader)):
            if step >= steps_per_epoch:
                break
            update_now = (step + 1) % accum == 0
            if step % accum == 0:
                scheduler.step_update(epoch * updates_per_epoch + step // accum)
            ids_keep, ids_restore = block_mask_indices(
                imgs.shape[0], grid, args.mask_ratio, args.mask_downsampling,
                generator=mask_gen, device=mask_gen.device)
            ids_keep, ids_restore = ids_keep.to(backend.device), ids_restore.to(backend.device)
            with backend.no_sync(ddp_model, not update_now), backend.autocast(dtype):
                loss = ddp_model(imgs, ids_keep, ids_restore)[0]
            backend.backward_and_step(loss, optimizer, scaler, accum, update_now)
            backend.mark_step()
            epoch_loss += loss.detach()
            skipped += n_bad.sum()
            images_done += imgs.shape[0] * backend.world_size
            done = (epoch - start_epoch) * steps_per_epoch + step + 1
            if backend.name != "xla" or step % args.print_freq == 0:
                backend.on_step_end(_after_step, loss.detach(), epoch, step, steps_per_epoch, done, total_steps,
                                    optimizer.param_groups[0]["lr"], images_done, t_start, args, logger,
                                    epoch * steps_per_epoch + step)
        mean_loss = backend.all_reduce_mean(epoch_loss / max(1, steps_per_epoch)).item()
        n_skipped = int(backend.all_reduce_mean(skipped.float()).item() * backend.world_size)
        if backend.is_main:
            log.info("epoch %d/%d done: mean loss %.4f%s", epoch + 1, args.epochs, mean_loss,
                     f", {n_skipped} unreadable images skipped (see warnings)" if n_skipped else "")
        logger.write({"kind": "epoch", "epoch": epoch, "loss": mean_loss, "skipped_images": n_skipped,
                      "lr": optimizer.param_groups[0]["lr"]}, epoch)
        if (epoch + 1) % args.ckpt_interval == 0 or epoch + 1 == args.epochs:
            last = checkpoint_path(output_dir, epoch)
            backend.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict() if scaler is not None else None,
                          "epoch": epoch, "args": _json_safe(args)}, last)
            if backend.is_main:
                log.info("saved %s", last)
    logger.close()
    return last


def _after_step(loss: torch.Tensor, epoch: int, step: int, steps: int, done: int, total: int, lr: float,
                images: int, t_start: float, args: argparse.Namespace, logger: RunLogger, global_step: int) -> None:
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss is {value} at epoch {epoch} step {step}; stopping. Resume from the last checkpoint "
            f"with --resume auto, after lowering --blr or switching --precision (fp16 overflows most)"
        )
    if step % args.print_freq and step + 1 != steps:
        return
    elapsed = time.time() - t_start
    rate = images / max(elapsed, 1e-9)
    eta = elapsed / done * (total - done)
    if logger.enabled:
        log.info("epoch %d/%d [%d/%d] loss %.4f lr %.3g %.1f img/s ETA %s", epoch + 1, args.epochs, step + 1,
                 steps, value, lr, rate, fmt_eta(eta))
    logger.write({"kind": "train", "epoch": epoch, "step": step, "loss": value, "lr": lr,
                  "images_per_s": rate}, global_step)
