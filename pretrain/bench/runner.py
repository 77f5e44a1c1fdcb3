"""Pretraining benchmark: the training step, the input pipeline and both together.

    lsmae bench pretrain                       # ViT-B, 448px (L=784), mask 0.75, 2x2 blocks, generated JPEGs
    lsmae bench pretrain --data synthetic      # the step only
    lsmae bench pretrain --device cuda --model mae_vit_large_patch16_dec512d16h8b --configs bf16 --compile \\
        --data /data/coco/train2017 --workers 12

1. The step, on synthetic images: each configuration (``release``: naive attention, fp32, every
   patch embedded, foreach AdamW, as the release's code; ``fp32``/``bf16``/``fp16``: this code;
   ``+compile``: torch.compile'd) runs in its own process (its own peak memory); the processes
   take turns, one timed round each, so that a machine shared with other work slows all alike.
   TFLOP/s and MFU use the analytic FLOP count (:mod:`pretrain.models.flops`); torch's FLOP counter is
   printed beside it where it differs, with the reason.
2. The input pipeline alone: images per second of one data-loader worker (one thread), ours
   (uint8) and the release's (PIL, float32), alternating on the same files.
3. End to end: the fastest configuration fed by ``--workers`` loader processes, next to its
   synthetic rate in the same process; and how many workers per device its step rate needs.

Without ``--data`` the images are COCO-like JPEGs generated from scikit-image's photographs.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pretrain.bench import driver
from pretrain.bench.args import build_parser
from pretrain.models.archs import model_config
from pretrain.models.flops import PretrainFlops, pretrain_flops


class PretrainBench:
    """``lsmae bench pretrain`` for :func:`pretrain.bench.driver.run`."""

    prog, step_module, baseline = "lsmae bench pretrain", "pretrain.bench.step", "release"

    def __init__(self, args: argparse.Namespace) -> None:
        self.analytic = pretrain_flops(args.model, args.input_size)

    def flops(self, results: list[dict[str, Any]]) -> PretrainFlops:
        return self.analytic

    def flops_headline(self, flops: PretrainFlops) -> str:
        g = 1e9
        return (f"FLOPs per image, training = 3 x forward: {flops.train / g:.1f} GFLOP analytic "
                f"(forward {flops.forward / g:.1f}: encoder on {flops.encoder_tokens} tokens {flops.encoder / g:.1f}, "
                f"decoder on {flops.decoder_tokens} tokens {flops.decoder / g:.1f}, embeddings and prediction "
                f"{flops.embed_predict / g:.1f}; attention products {flops.attention / g:.1f} of it); TFLOP/s and MFU "
                "use it")

    def describe(self, result: dict[str, Any]) -> str:
        return ""

    def data(self, args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
        from pretrain.bench.data import write_coco_like_jpegs

        if args.data is None:
            write_coco_like_jpegs(tmp / "jpegs", args.images)
            return tmp / "jpegs", f"{args.images} generated COCO-like JPEGs (640x480 and 480x640)"
        return Path(args.data), f"up to {args.images} images from {args.data}"

    def pipeline(self, args: argparse.Namespace, folder: Path, what: str) -> driver.Pipeline:
        from pretrain.bench.data import pipeline_rates

        rates = pipeline_rates([folder], args.input_size, args.batch_size, args.rounds, limit=args.images)
        return driver.Pipeline(rates, f"input pipeline, one worker (one thread), {what} -> {args.input_size}px crops:\n"
                                      f"  ours {rates['ours_images_per_s']:.0f} img/s, "
                                      f"release {rates['release_images_per_s']:.0f} img/s: x{rates['ratio']:.2f}")


def _defaults(args: argparse.Namespace) -> None:
    from pretrain.engine.backends import bf16_supported_on_cpu
    from pretrain.optional import require
    from pretrain.shared_options import check_compile

    driver.device_facts(args)
    gpu = args.device == "cuda"
    xla = args.device == "xla"
    check_compile(args.device, args.compile)
    if xla:
        require("torch_xla", "--device xla")  # here, not in each configuration's process: one clear error
    accelerator = gpu or (xla and os.environ.get("PJRT_DEVICE", "TPU") != "CPU")
    args.batch_size = args.batch_size or (64 if accelerator else 4)
    args.steps = args.steps or (10 if accelerator else 1)
    args.workers = args.workers if args.workers is not None else (12 if accelerator else 1)
    if args.configs is None:
        args.configs = "bf16" if xla else "release,fp16,bf16" if gpu else \
            "release,fp32" + (",bf16" if bf16_supported_on_cpu() else "")


def main(argv: list[str] | None = None) -> None:
    args = build_parser(__doc__).parse_args(argv)
    _defaults(args)
    driver.expand_configs(args, PretrainBench.baseline)
    grid = args.input_size // model_config(args.model)["patch_size"]
    # the workers get the resolved values, so that every process agrees
    worker_argv = ["--model", args.model, "--input-size", str(args.input_size), "--mask-downsampling",
                   str(args.mask_downsampling), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--device", args.device,
                   *(["--threads", str(args.threads)] if args.threads else [])]
    header = (f"{args.model} at {args.input_size}px (L={grid * grid}), mask 0.75, blocks {args.mask_downsampling}x"
              f"{args.mask_downsampling}, batch {args.batch_size} per device, {args.device_name}; {args.rounds} rounds "
              f"of {args.steps} timed steps per configuration, in turns")
    driver.run(PretrainBench(args), args, worker_argv, header)
