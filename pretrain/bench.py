"""Pretraining step benchmark: this implementation vs a release-equivalent configuration.

    python -m pretrain.bench            # ViT-B, 448px (L=784), mask 0.75, 2x2 blocks, batch 8
    lsmae bench pretrain --device cuda --batch-size 64

Each configuration runs in its own process so that its peak memory is its own. The
release-equivalent baseline uses naive (unfused) attention, fp32, embeds all 784 patches
before dropping the masked ones, and a non-fused AdamW, as the release's code does.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode

from .backends import bf16_supported_on_cpu
from .masking import block_mask_indices
from .models_mae import MaskedAutoencoderViT, model_config

CONFIGS = {
    # name: (release-equivalent model, autocast dtype name or None, fused AdamW)
    "release": (True, None, False),
    "fp32": (False, None, True),
    "bf16": (False, "bf16", True),
    "fp16": (False, "fp16", True),
}


class ReleaseEquivalentMAE(MaskedAutoencoderViT):
    """Patch-embeds every patch, adds positions, then gathers the visible ones (the release's order)."""

    def _embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _build(args: argparse.Namespace, release: bool, device: torch.device) -> MaskedAutoencoderViT:
    cls = ReleaseEquivalentMAE if release else MaskedAutoencoderViT
    model = cls(**{**model_config(args.model), "img_size": args.input_size, "norm_pix_loss": True})
    if release:
        for blk in [*model.blocks, *model.decoder_blocks]:
            blk.attn.fused_attn = False
    return model.to(device)


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def run_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Time ``args.steps`` training steps of one configuration in this process."""
    release, dtype_name, fused = CONFIGS[name]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[dtype_name]
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = _build(args, release, device)
    opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95),
                              **({"fused": True} if fused else {"foreach": True}))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    grid = args.input_size // model.patch_size
    gen = torch.Generator(device).manual_seed(0)
    imgs = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)

    def step() -> None:
        ids_keep, ids_restore = block_mask_indices(args.batch_size, grid, 0.75, args.mask_downsampling,
                                                   generator=gen, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(imgs, ids_keep, ids_restore)[0]
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    peak = _peak_memory_gb(device)
    # model FLOPs of one image's forward + backward (counted, not estimated)
    ids_keep, ids_restore = block_mask_indices(1, grid, 0.75, args.mask_downsampling, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(imgs[:1], ids_keep, ids_restore)[0].backward()
    flops = counter.get_total_flops()
    return {"config": name, "s_per_step": seconds, "images_per_s": args.batch_size / seconds,
            "peak_memory_gb": peak, "train_flops_per_image": flops,
            "achieved_tflops": flops * args.batch_size / seconds / 1e12}


def _default_configs(device: str) -> list[str]:
    if device == "cuda":
        return ["release", "fp16", "bf16"]
    return ["release", "fp32"] + (["bf16"] if bf16_supported_on_cpu() else [])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pretrain.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mae_vit_base_patch16_dec384d12h8b")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--mask-downsampling", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--configs", default=None,
                   help=f"comma-separated, from {', '.join(CONFIGS)} (default: release + this device's "
                        "fast precisions; bf16 on CPUs only with AVX512-BF16/AMX)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, to print MFU")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_config(args, args.worker)))
        return
    configs = args.configs.split(",") if args.configs else _default_configs(args.device)
    grid = args.input_size // model_config(args.model)["patch_size"]
    print(f"{args.model} at {args.input_size}px (L={grid * grid}), mask 0.75, "
          f"blocks {args.mask_downsampling}x{args.mask_downsampling}, batch {args.batch_size}, device "
          f"{args.device}, {args.steps} timed steps", flush=True)
    worker_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    results = []
    for name in configs:
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}")
        out = subprocess.run([sys.executable, "-m", "pretrain.bench", *worker_argv, "--worker", name],
                             capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        base = results[0]
        line = (f"{name:8s} {r['s_per_step']:7.2f} s/step {r['images_per_s']:7.2f} img/s "
                f"{r['peak_memory_gb']:6.2f} GB peak  {r['train_flops_per_image'] / 1e9:6.1f} GFLOP/img (fwd+bwd) "
                f"{r['achieved_tflops']:6.2f} TFLOP/s  x{r['images_per_s'] / base['images_per_s']:.2f} speed "
                f"x{r['peak_memory_gb'] / base['peak_memory_gb']:.2f} memory vs {base['config']}")
        if args.peak_tflops:
            line += f"  MFU {r['achieved_tflops'] / args.peak_tflops:.1%}"
        print(json.dumps(r) if args.json else line, flush=True)


if __name__ == "__main__":
    main()
