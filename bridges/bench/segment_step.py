"""One configuration of ``lsmae bench segment`` in its own process (:mod:`pretrain.bench.process`):
``python -m bridges.bench.segment_step [bench options] CONFIG``. The step is ``lsmae segment``'s
(:class:`bridges.segmentation.training.SegmentationTask`'s loss, its optimizer) on our model or, for
``stock``, on the same model and weights built from transformers' unmodified BEiT modules."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bridges.bench.segment import SegmentBench, build_parser, segment_recipe, training_crops
from bridges.bench.training_bench import flops_record, mae_weights
from bridges.segmentation.flops import upernet_flops
from bridges.segmentation.training import SegmentationTask, build_model, param_groups
from pretrain.bench.process import BenchStep, main, precision_text, repeating_loader
from pretrain.engine.backends import make_backend
from pretrain.engine.run_plan import resolve_precision

FLOP_PROBE_IMAGES = 2  # the pyramid pooling's 1x1 BatchNorm needs two


class SegmentStep(BenchStep):
    """The model on this device, its optimizer and the step (see :mod:`bridges.bench.segment`)."""

    def __init__(self, args: argparse.Namespace, config: str) -> None:
        super().__init__(make_backend(args.device), config, SegmentBench.baseline)
        self.batch = args.batch_size
        self.recipe = segment_recipe(args.model, args.config, args.batch_size)
        torch.manual_seed(0)
        model, _ = build_model(mae_weights(args.model), self.recipe)
        if self.baseline:  # today's model, at the command's default precision
            from bridges.segmentation.model import stock_upernet

            model = stock_upernet(model)
            self.dtype = resolve_precision("auto", self.backend)
            self.precision = precision_text(self.dtype) + " (lsmae segment's auto)"
        model.to(self.device)
        self.flops = upernet_flops(model.config)
        self.opt = torch.optim.AdamW(param_groups(model, self.recipe.weight_decay, self.recipe.layer_decay),
                                     lr=self.recipe.lr, betas=self.recipe.betas, **self.backend.optimizer_options())
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None  # the Trainer's
        wrapped = torch.compile(model) if self.compiled else model  # as lsmae segment --compile
        self.task = SegmentationTask(model, wrapped, None, self.recipe, self.backend, self.dtype, Path(),
                                     logging.getLogger(__name__))
        crop, b = self.recipe.crop_size, self.batch
        self.synthetic = [torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, device=self.device),
                          torch.randint(0, self.recipe.num_labels, (b, crop, crop), device=self.device),
                          torch.tensor([[crop, crop]] * b, device=self.device)]

    def step(self, batch: list[torch.Tensor] | None = None) -> None:
        loss = self.task.forward_loss(self.synthetic if batch is None else batch, None)
        self.backend.backward_and_step(loss, self.opt, self.scaler, 1, True)

    def flop_probe(self) -> tuple[torch.Tensor, int]:
        return self.task.forward_loss([t[:FLOP_PROBE_IMAGES] for t in self.synthetic], None), FLOP_PROBE_IMAGES

    def data_loader(self, folder: Path, workers: int) -> DataLoader:
        return repeating_loader(training_crops(self.recipe, folder), self.batch, workers, self.device)

    def facts(self) -> dict:
        return {**super().facts(), "flops": flops_record(self.flops)}


if __name__ == "__main__":
    main(build_parser(), SegmentStep)
