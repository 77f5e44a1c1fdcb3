"""One configuration of ``lsmae bench pretrain`` in its own process (so that its peak memory is its
own): ``python -m pretrain.bench.step CONFIG [bench options]``.

The process builds the model and optimizer, runs the untimed warm-up steps (compilation included), prints their time and
then answers the bench over stdin/stdout (JSON lines): ``step`` times ``--steps`` training steps on
synthetic images, ``finish`` reports peak memory and the FLOP counter's view and ends. The bench
sends ``step`` to each configuration in turn, so that a machine shared with other work slows them
alike. With ``--e2e DIR`` it instead times steps fed by the data pipeline and exits.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from pretrain.engine.backends import make_backend
from pretrain.bench.args import build_parser
from pretrain.data import collate, list_images, normalize, pretrain_dataset
from pretrain.errors import LsmaeError
from pretrain.models.masking import block_mask_indices
from pretrain.models.mae import MaskedAutoencoderViT, model_config

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PREFETCH = 2  # batches each data-loader worker keeps ready


class ReleaseEquivalentMAE(MaskedAutoencoderViT):
    """Patch-embeds every patch, adds positions, then gathers the visible ones (the release's order)."""

    def _embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def parse_config(name: str) -> tuple[bool, torch.dtype | None, bool]:
    """``release``, or a precision (``fp32``, ``bf16``, ``fp16``) with ``+compile``: (release code,
    autocast dtype, compiled)."""
    base, _, extra = name.partition("+")
    if base not in ("release", *DTYPES) or extra not in ("", "compile") or (base == "release" and extra):
        raise LsmaeError(f"unknown config {name!r}: release, fp32, bf16 or fp16, the last three optionally +compile")
    return base == "release", DTYPES.get(base), extra == "compile"


class Stepper:
    """Model, optimizer and training step of one configuration. The release's: naive attention,
    fp32, all patches embedded, foreach AdamW, normalised float images in; ours: uint8 images in,
    normalised on the device, SDPA, visible patches embedded, fused AdamW, autocast."""

    def __init__(self, args: argparse.Namespace, config: str) -> None:
        self.release, self.dtype, compiled = parse_config(config)
        self.backend = make_backend(args.device)
        # --batch-size counts per device; on XLA the step is data parallel over every device (SPMD)
        self.device, self.devices = self.backend.device, self.backend.world_size
        self.batch = args.batch_size * self.devices
        torch.manual_seed(0)
        cls = ReleaseEquivalentMAE if self.release else MaskedAutoencoderViT
        model = cls(**{**model_config(args.model), "img_size": args.input_size, "norm_pix_loss": True})
        if self.release:
            for blk in [*model.blocks, *model.decoder_blocks]:
                blk.attn.fused_attn = False
        self.model = model.to(self.device)
        if compiled:
            self.model.compile()
        self.opt = create_optimizer_v2(self.model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95),
                                       **({"foreach": True} if self.release else self.backend.optimizer_options()))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.grid, self.mask_downsampling = args.input_size // model.patch_size, args.mask_downsampling
        self.gen = self.backend.generator(0)  # on XLA on the host
        shape = (self.batch, 3, args.input_size, args.input_size)
        self.synthetic = self.to_device(torch.randint(0, 256, shape, dtype=torch.uint8))
        self.normalized = normalize(self.synthetic)  # the release's batches arrive normalised

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the device; on XLA sharded by rows over the devices of this (one) host."""
        return self.backend.shard_rows(batch.to(self.device, non_blocking=True))

    def loss(self, imgs: torch.Tensor) -> torch.Tensor:
        ids_keep, ids_restore = block_mask_indices(imgs.shape[0], self.grid, 0.75, self.mask_downsampling,
                                                   generator=self.gen, device=self.gen.device)
        ids_keep, ids_restore = self.to_device(ids_keep), self.to_device(ids_restore)
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

    def timed(self, steps: int, batches: Iterator[torch.Tensor] | None = None) -> float:
        """Seconds per step over ``steps`` steps (on synthetic images unless ``batches`` given)."""
        self.backend.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(None if batches is None else self.to_device(next(batches)))
        self.backend.synchronize()
        return (time.perf_counter() - start) / steps

    def peak_memory_gb(self) -> float:
        """The device's peak where it reports one (CUDA, TPU), else this process's peak resident memory."""
        peak = self.backend.peak_memory_bytes()
        return peak / 2**30 if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def counted_flops(self) -> tuple[int, list[str]]:
        """FLOPs of one image's forward + backward as torch.utils.flop_counter counts them, and the
        attention operators it met without a formula (it counts those as 0)."""
        seen: set[Any] = set()

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.add(func.overloadpacket)
                return func(*args, **(kwargs or {}))

        counter = FlopCounterMode(display=False)
        with counter, Ops():
            self.loss(self.normalized[:1]).backward()
        self.opt.zero_grad(set_to_none=True)
        missing = sorted(str(op) for op in seen if "attention" in str(op) and op not in flop_registry)
        return counter.get_total_flops(), missing


def _batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        for imgs, _ in loader:
            yield imgs


def end_to_end(args: argparse.Namespace, stepper: Stepper) -> dict[str, Any]:
    """Steps fed by ``--e2e-workers`` loader processes reading ``--e2e`` images, next to synthetic
    steps in this process. The batches the workers prefetched meanwhile are consumed untimed first:
    the timed steps see the rate the workers sustain, not their queue."""
    dataset = pretrain_dataset([args.e2e], args.input_size, repeat=10**6 // len(list_images(args.e2e)) + 1)
    loader = DataLoader(dataset, batch_size=stepper.batch, shuffle=True, num_workers=args.e2e_workers,
                        collate_fn=collate, pin_memory=stepper.device.type == "cuda", drop_last=True,
                        prefetch_factor=PREFETCH if args.e2e_workers else None,
                        persistent_workers=args.e2e_workers > 0)
    batches = _batches(loader)
    stepper.timed(max(args.warmup, 1), batches)
    synthetic = stepper.timed(args.steps * args.rounds)
    stepper.timed(max(PREFETCH * args.e2e_workers, 1), batches)
    steps = max(args.steps * args.rounds, 2 * PREFETCH * args.e2e_workers)
    data = stepper.timed(steps, batches)
    return {"workers": args.e2e_workers, "steps": steps, "synthetic_images_per_s": stepper.batch / synthetic,
            "data_images_per_s": stepper.batch / data}


def serve(args: argparse.Namespace, config: str) -> None:
    """The bench's side of the protocol (see the module doc)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    stepper = Stepper(args, config)
    warmup = stepper.timed(args.warmup) * args.warmup
    if args.e2e:
        print(json.dumps(end_to_end(args, stepper)), flush=True)
        return
    print(json.dumps({"warmup_s": warmup, "devices": stepper.devices, **stepper.backend.diagnostics()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(json.dumps({"s_per_step": stepper.timed(args.steps)}), flush=True)
            continue
        # the counter's view of this code's model (the release's embeds every patch; compiled graphs hide ops)
        # (and none on XLA, whose lazy tensors the counter does not see run)
        flops, missing = (0, []) if stepper.release or config.endswith("+compile") or args.device == "xla" \
            else stepper.counted_flops()
        print(json.dumps({"peak_memory_gb": stepper.peak_memory_gb(), "counted_flops": flops,
                          "no_formula": missing, **stepper.backend.diagnostics()}), flush=True)
        return


if __name__ == "__main__":
    parser = build_parser()
    parser.add_argument("config")
    ns = parser.parse_args()
    serve(ns, ns.config)
