"""One configuration of ``lsmae bench finetune`` in its own process (:mod:`pretrain.bench.process`):
``python -m bridges.bench.finetune_step [bench options] CONFIG``. The step is ``lsmae finetune``'s
(its model, optimizer and loss, :class:`bridges.classification.training.Classification`) or, for
``release``, MAE's main_finetune.py step on the same model with the release's attention."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from bridges.bench.finetune import FinetuneBench, build_parser, finetune_run, training_images
from bridges.bench.training_bench import flops_record, mae_weights
from bridges.classification.model import build_model, make_optimizer
from bridges.classification.training import Classification
from pretrain.bench.process import BenchStep, main, repeating_loader
from pretrain.engine.backends import make_backend
from pretrain.models.flops import vit_flops

FLOP_PROBE_IMAGES = 2  # mixup pairs images: an even number


class FinetuneStep(BenchStep):
    """The model on this device, its optimizer and the step (see :mod:`bridges.bench.finetune`)."""

    def __init__(self, args: argparse.Namespace, config: str) -> None:
        super().__init__(make_backend(args.device), config, FinetuneBench.baseline)
        cuda = self.device.type == "cuda"
        self.batch, self.input_size = args.batch_size, args.input_size
        self.run = dataclasses.replace(finetune_run(args.model, args.input_size), source=mae_weights(args.model),
                                       compile=self.compiled)
        self.flops = vit_flops(args.model, args.input_size, args.num_classes)
        torch.manual_seed(0)
        model, _, _ = build_model(self.run, args.num_classes)
        if self.baseline:  # the release's attention; MAE's torch.cuda.amp.autocast: fp16, a no-op on CPUs
            for block in model.blocks:
                block.attn.fused_attn = False
            self.dtype = torch.float16 if cuda else None
            self.precision = "fp16 autocast, GradScaler" if cuda else "fp32 (MAE's autocast and GradScaler are CUDA's)"
        model.to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.baseline:  # MAE: torch's AdamW (foreach on GPUs) over its layer-decay groups, timm's here
            self.opt = create_optimizer_v2(model, "adamw", lr=self.run.lr, weight_decay=self.run.weight_decay,
                                           layer_decay=self.run.layer_decay, foreach=True)
        else:
            self.opt = make_optimizer(model, self.run, self.backend)
        # the Trainer's rule: a scaler for fp16 (MAE's NativeScaler: on GPUs)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.task = Classification(model, self.run, self.backend, self.dtype, None, {"num_classes": args.num_classes},
                                   {})
        self.gen = self.backend.generator(0)
        shape = (self.batch, 3, args.input_size, args.input_size)
        self.synthetic = [torch.randn(shape, device=self.device),
                          torch.randint(0, args.num_classes, (self.batch,), device=self.device)]

    def step(self, batch: list[torch.Tensor] | None = None) -> None:
        loss = self.task.forward_loss(self.synthetic if batch is None else batch, self.gen)
        if not self.baseline:
            self.backend.backward_and_step(loss, self.opt, self.scaler, 1, True)
            return
        loss.item()  # MAE reads the loss each step (to stop on a non-finite one)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in self.params]), 2.0)  # NativeScaler's
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad()
        self.backend.synchronize()  # engine_finetune.py: torch.cuda.synchronize() after each step

    def flop_probe(self) -> tuple[torch.Tensor, int]:
        images, target = (t[:FLOP_PROBE_IMAGES].clone() for t in self.synthetic)
        return self.task.forward_loss([images, target], self.gen), FLOP_PROBE_IMAGES

    def data_loader(self, folder: Path, workers: int) -> DataLoader:
        return repeating_loader(training_images(self.run, folder), self.batch, workers, self.device)

    def facts(self) -> dict:
        return {**super().facts(), "flops": flops_record(self.flops)}


if __name__ == "__main__":
    main(build_parser(), FinetuneStep)
