#!/usr/bin/env bash
# The pretraining-throughput numbers for the README's performance table, on one GPU, in a few
# minutes of device time: ViT-B and ViT-L at 448px (L=784), bf16 eager and torch.compile'd, each on
# synthetic images and fed by 12 data-loader workers decoding generated COCO-like JPEGs; img/s,
# peak memory, MFU by the analytic FLOP count. First the no-host-sync test under
# torch.cuda.set_sync_debug_mode("error").
#
#   bash tools/gpu_bench.sh                 # uses .venv/bin/python
#   PYTHON=python3 WORKERS=8 bash tools/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
workers=${WORKERS:-12}

$py - <<'PY'
import datetime, torch, torchvision, timm
print(f"{datetime.date.today()}  {torch.cuda.get_device_name()}  torch {torch.__version__} (CUDA {torch.version.cuda})"
      f"  torchvision {torchvision.__version__}  timm {timm.__version__}", flush=True)
PY
$py -m pytest -q -p no:cacheprovider tests/pretrain/test_no_sync.py -k cuda
for model in mae_vit_base_patch16_dec384d12h8b mae_vit_large_patch16_dec512d16h8b; do
    $py -W ignore -m pretrain.bench --device cuda --model "$model" --input-size 448 --batch-size 64 \
        --configs bf16 --compile --steps 10 --rounds 3 --workers "$workers"
done
