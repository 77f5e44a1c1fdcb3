"""One configuration of ``lsmae bench pretrain`` in its own process (:mod:`pretrain.bench.process`):
``python -m pretrain.bench.step [bench options] CONFIG``."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from pretrain.bench.args import build_parser
from pretrain.bench.process import BenchStep, main, repeating_loader
from pretrain.data import collate, normalize, pretrain_dataset
from pretrain.engine.backends import make_backend
from pretrain.models.mae import MaskedAutoencoderViT, model_config
from pretrain.models.masking import block_mask_indices

BASELINE = "release"


class ReleaseEquivalentMAE(MaskedAutoencoderViT):
    """Patch-embeds every patch, adds positions, then gathers the visible ones (the release's order)."""

    def _embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Stepper(BenchStep):
    """Model, optimizer and training step of one configuration. The release's: naive attention,
    fp32, all patches embedded, foreach AdamW, normalised float images in; ours: uint8 images in,
    normalised on the device, SDPA, visible patches embedded, fused AdamW, autocast."""

    def __init__(self, args: argparse.Namespace, config: str) -> None:
        super().__init__(make_backend(args.device), config, BASELINE)
        self.release = self.baseline
        # --batch-size counts per device; on XLA the step is data parallel over every device (SPMD)
        self.batch = args.batch_size * self.devices
        self.input_size = args.input_size
        torch.manual_seed(0)
        cls = ReleaseEquivalentMAE if self.release else MaskedAutoencoderViT
        model = cls(**{**model_config(args.model), "img_size": args.input_size, "norm_pix_loss": True})
        if self.release:
            for blk in [*model.blocks, *model.decoder_blocks]:
                blk.attn.fused_attn = False
        self.model = model.to(self.device)
        if self.compiled:
            self.model.compile()
        self.opt = create_optimizer_v2(self.model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95),
                                       **({"foreach": True} if self.release else self.backend.optimizer_options()))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.grid, self.mask_downsampling = args.input_size // model.patch_size, args.mask_downsampling
        self.gen = self.backend.generator(0)  # on XLA on the host
        shape = (self.batch, 3, args.input_size, args.input_size)
        self.synthetic = self._on_device(torch.randint(0, 256, shape, dtype=torch.uint8))
        self.normalized = normalize(self.synthetic)  # the release's batches arrive normalised

    def _on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the device; on XLA sharded by rows over the devices of this (one) host."""
        return self.backend.shard_rows(batch.to(self.device, non_blocking=True))

    def to_device(self, batch: list[torch.Tensor]) -> torch.Tensor:
        return self._on_device(batch[0])  # (uint8 images, skipped-file counts)

    def loss(self, imgs: torch.Tensor) -> torch.Tensor:
        ids_keep, ids_restore = block_mask_indices(imgs.shape[0], self.grid, 0.75, self.mask_downsampling,
                                                   generator=self.gen, device=self.gen.device)
        ids_keep, ids_restore = self._on_device(ids_keep), self._on_device(ids_restore)
        with self.backend.autocast(self.dtype):
            return self.model(imgs, ids_keep, ids_restore)[0]

    def step(self, batch: torch.Tensor | None = None) -> None:
        """One training step on a uint8 batch (synthetic images when None)."""
        if batch is None:
            imgs = self.normalized if self.release else normalize(self.synthetic)
        else:
            imgs = normalize(batch)
        loss = self.loss(imgs)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.backend.mark_step()

    def flop_probe(self) -> tuple[torch.Tensor, int]:
        return self.loss(self.normalized[:1]), 1

    def data_loader(self, folder: Path, workers: int) -> DataLoader:
        return repeating_loader(pretrain_dataset([folder], self.input_size), self.batch, workers, self.device, collate)


if __name__ == "__main__":
    main(build_parser(), Stepper)
