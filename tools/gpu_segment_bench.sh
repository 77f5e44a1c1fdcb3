#!/usr/bin/env bash
# Segmentation numbers for the README, on one GPU, in a few minutes of device time and without a
# network: `lsmae segment --from-scratch` (UperNet) with ViT-B and ViT-L at 512 crops, batch 2 per
# GPU (the recipe's 16 on 8 GPUs), on a generated ADE20K-layout set; seconds per iteration after
# a warm-up, and peak GPU memory. The source is a randomly initialised release-format file of each
# architecture (--from-scratch reads only its architecture).
#
#   bash tools/gpu_segment_bench.sh            # uses .venv/bin/python
#   PYTHON=python3 ITERS=40 bash tools/gpu_segment_bench.sh
#   DEVICE=cpu ITERS=12 RUNS=demo:mae_vit_micro_patch8_dec64d4h2b bash tools/gpu_segment_bench.sh   # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

RUNS=${RUNS:-upernet_vit_b_ade20k_160k:mae_vit_base_patch16_dec384d12h8b upernet_vit_l_ade20k_160k:mae_vit_large_patch16_dec512d16h8b} \
    DEVICE=${DEVICE:-cuda} ITERS=${ITERS:-30} WORK=$work $py -W ignore - <<'PY'
import datetime, json, os, time
from pathlib import Path

import torch

import pretrain
from bridges.demo.sample_data import write_textures_ade20k
from bridges.segmentation.command import resolve_recipe, run
from bridges.cli.segmentation import build_parser

work, iters, warmup, device = Path(os.environ["WORK"]), int(os.environ["ITERS"]), 10, os.environ["DEVICE"]
cuda = device == "cuda"
print(f"{datetime.date.today()}  {torch.cuda.get_device_name() if cuda else 'CPU'}  torch {torch.__version__}",
      flush=True)
data = write_textures_ade20k(work, train_images=64, val_images=2)
for config, model in (run_spec.split(":") for run_spec in os.environ["RUNS"].split()):
    source = work / f"{model}.pth"
    torch.save({"model": pretrain.create_model(model).state_dict()}, source)
    out = work / config
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    args = build_parser().parse_args([
        str(source), "--from-scratch", "--config", config, "--batch-size", "2", "--data-path", str(data),
        "--output-dir", str(out), "--device", device, "--max-iter", str(iters), "--eval-period", str(iters),
        "--checkpoint-period", str(iters), "--print-freq", "1", "--num-workers", "4"])
    run(args)
    rates = [r["images_per_s"] for line in (out / "log.jsonl").read_text().splitlines()
             if (r := json.loads(line))["kind"] == "train"]
    elapsed = [2 * (k + 1) / rate for k, rate in enumerate(rates)]  # the trainer's rate counts since the start
    per_iter = (elapsed[-1] - elapsed[warmup - 1]) / (len(elapsed) - warmup)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "not measured on CPU"
    print(f"{config}: batch 2, {resolve_recipe(args)[0].crop_size} px crops, precision auto: "
          f"{per_iter:.3f} s/iteration (iterations {warmup + 1}-{len(elapsed)}), peak memory {peak}", flush=True)
PY
