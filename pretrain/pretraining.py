"""Pretraining on every backend (see :mod:`pretrain.engine.backends`): the masked-autoencoder task that
:class:`pretrain.engine.trainer.Trainer` runs, and its checkpoints ``checkpoint-{epoch}.pth``."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2

from pretrain.configs import as_dict, configure
from pretrain.data import collate, normalize, pretrain_dataset
from pretrain.engine.backends import TorchBackend, make_backend
from pretrain.engine.checkpoints import checkpoint_path, load_training_checkpoint, pretraining_checkpoints
from pretrain.engine.resume import resume_run, run_identity
from pretrain.engine.run_logging import setup_logging
from pretrain.engine.run_plan import precision_name, resolve_batch, resolve_precision
from pretrain.engine.trainer import LoopConfig, Progress, Trainer, position_seed
from pretrain.models.archs import resolve_model_name
from pretrain.models.mae import MaskedAutoencoderViT, create_model
from pretrain.models.masking import block_mask_indices, host_block_masks
from pretrain.pretraining_config import PretrainConfig, PretrainResult

log = logging.getLogger("pretrain")


MASK_STREAM = 0x6D61736B  # mixed into a position's seed for its masks: a stream apart from the augmentation's
# the options that shape the training (with the resolved lr): a checkpoint of other values is another run's
RECIPE = ("mask_ratio", "mask_downsampling", "norm_pix_loss", "min_crop_scale", "effective_batch_size",
          "warmup_epochs", "min_lr", "weight_decay", "seed")


class MaskedPretraining:
    """Reconstruction loss of block-masked images; each epoch reports its mean loss and the
    unreadable images it skipped, and saves ``checkpoint-{epoch}.pth``. Batches arrive as uint8
    and are normalised on the device; nothing in a step waits for the device.

    Masks are drawn on the device from the loop's generator, except on XLA (no device generator):
    there :meth:`host_inputs` draws them on the host, for the global batch, from the batch's
    position, so that they do not depend on the number of devices or hosts, and a resumed run
    draws the same ones."""

    def __init__(self, model: MaskedAutoencoderViT, config: PretrainConfig, backend: TorchBackend,
                 dtype: torch.dtype | None) -> None:
        self.raw, self.config, self.backend, self.dtype = model, config, backend, dtype
        self.loss: float | None = None  # the last epoch's mean
        self.model = backend.wrap_model(model)
        self.grid = config.input_size // model.patch_size
        self.skipped = torch.zeros((), dtype=torch.long, device=backend.device)

    def host_inputs(self, batch: Sequence[torch.Tensor], epoch: int, index: int) -> Any:
        if self.backend.name != "xla":
            return batch
        imgs, n_bad = batch
        seed = position_seed(self.config.seed, epoch, 0, index) ^ MASK_STREAM
        ids_keep, ids_restore = host_block_masks(imgs.shape[0], self.backend.num_processes, self.backend.rank,
                                                 self.grid, self.config.mask_ratio, self.config.mask_downsampling, seed)
        return {"images": imgs, "skipped": n_bad, "ids_keep": ids_keep, "ids_restore": ids_restore}

    def forward_loss(self, batch: Sequence[Any] | Mapping[str, torch.Tensor],
                     generator: torch.Generator) -> torch.Tensor:
        if isinstance(batch, Mapping):  # masks drawn by host_inputs
            imgs, n_bad, ids_keep, ids_restore = (batch[k] for k in ("images", "skipped", "ids_keep", "ids_restore"))
        else:
            imgs, n_bad = batch
            ids_keep, ids_restore = block_mask_indices(imgs.shape[0], self.grid, self.config.mask_ratio,
                                                       self.config.mask_downsampling, generator=generator,
                                                       device=generator.device)
        self.skipped += n_bad.sum()
        imgs = normalize(imgs)
        with self.backend.autocast(self.dtype):
            return self.model(imgs, ids_keep, ids_restore)[0]

    def evaluate(self, at: Progress, train_loss: float) -> dict[str, Any]:
        n_skipped = int(self.backend.all_reduce_sum(self.skipped).item())
        self.skipped.zero_()
        self.loss = train_loss
        log.info("epoch %d/%d done: mean loss %.4f%s", at.epoch, self.config.epochs, train_loss,
                 f", {n_skipped} unreadable images skipped (see warnings)" if n_skipped else "")
        return {"kind": "epoch", "epoch": at.epoch - 1, "loss": train_loss, "skipped_images": n_skipped}

    def checkpoint_path(self, at: Progress) -> Path:
        return checkpoint_path(Path(self.config.output_dir), at.epoch - 1)

    def checkpoint_extra(self, at: Progress) -> dict[str, Any]:
        return {"model": self.raw.state_dict(), "args": as_dict(self.config)}


def train(config: PretrainConfig, backend: TorchBackend) -> PretrainResult:
    """Run (or resume) pretraining to ``config.epochs``."""
    output_dir = Path(config.output_dir)
    setup_logging(log, backend.is_main)
    dtype = resolve_precision(config.precision, backend)
    batch, accum = resolve_batch(config.effective_batch_size, config.batch_size, config.accum_iter, backend.world_size)
    lr = config.blr * config.effective_batch_size / 256 if config.lr is None else config.lr
    dataset = pretrain_dataset(config.data_path, config.input_size, config.min_crop_scale, config.repeat)

    torch.manual_seed(config.seed)
    model = create_model(config.model, img_size=config.input_size, norm_pix_loss=config.norm_pix_loss,
                         decoder_downsampling=config.decoder_downsampling, no_k_bias=config.no_k_bias)
    model.set_grad_checkpointing(config.grad_checkpointing)
    model.to(backend.device)
    if config.compile:
        model.compile()  # in place: the state dict keeps its keys
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=config.weight_decay, betas=(0.9, 0.95),
                                    **backend.optimizer_options())
    # --num-workers counts per device; a process feeding several devices (SPMD) loads for all of them
    workers = min(config.num_workers * backend.local_devices, os.cpu_count() or 1) if backend.local_devices > 1 \
        else config.num_workers
    trainer = Trainer(
        backend, optimizer, dataset, batch=batch, accum=accum, num_workers=workers, dtype=dtype,
        collate_fn=collate,
        config=LoopConfig(seed=config.seed, min_lr=config.min_lr, print_freq=config.print_freq, epochs=config.epochs,
                          warmup=config.warmup_epochs, ckpt_every=config.ckpt_interval),
        output_dir=output_dir, log=log,
        stop_hint="Resume from the last checkpoint with --resume auto, after lowering --blr or switching "
                  "--precision (fp16 overflows most)",
        identity=run_identity(
            "pretrain", input_size=config.input_size, source=None,
            model={"name": resolve_model_name(config.model), "decoder_downsampling": config.decoder_downsampling,
                   "no_k_bias": config.no_k_bias},
            recipe={**{k: getattr(config, k) for k in RECIPE}, "lr": lr},
            data={"paths": [str(Path(p).expanduser().resolve()) for p in config.data_path], "repeat": config.repeat,
                  "images": len(dataset.files)}))

    resumed = resume_run(trainer, model, config.resume, pretraining_checkpoints(output_dir),
                         load=load_training_checkpoint, log=log)
    resumed_from = None
    if resumed is not None:
        resumed_from, ckpt = resumed
        log.info("resumed from %s (epoch %d done)", resumed_from, ckpt["epoch"])
    feeding = f" ({backend.num_processes} process{'es' if backend.num_processes > 1 else ''} x " \
              f"{backend.local_devices}, {workers} loader workers per process)" if backend.local_devices > 1 else ""
    log.info("%s: %d images x %d repeat, %d devices%s x batch %d x %d accumulation = %d per update, lr %.3g, "
             "precision %s, %d steps/epoch", config.model, len(dataset.files), config.repeat, backend.world_size,
             feeding, batch, accum, batch * accum * backend.world_size, lr, precision_name(dtype),
             trainer.steps_per_epoch)
    task = MaskedPretraining(model, config, backend, dtype)
    trainer.fit(task)
    return PretrainResult(checkpoint_path(output_dir, trainer.progress.epoch - 1), output_dir, trainer.progress.epoch,
                          task.loss, resumed_from)


def pretrain(config: PretrainConfig | None = None, /, **options: Any) -> PretrainResult:
    """``lsmae pretrain`` as a function: train (or resume) a long-seq MAE on the chosen backend (XLA: this
    process drives every device of its host, SPMD); :class:`PretrainConfig` holds the options."""
    config = configure(PretrainConfig, config, options)
    backend = make_backend(config.device)
    try:
        return train(config, backend)
    finally:
        backend.shutdown()
