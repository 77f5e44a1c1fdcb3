"""The TPU code path, run for real on XLA:CPU (PJRT_DEVICE=CPU) in a separate environment.

torch_xla pins its own torch, so it lives in its own virtual environment; `.ci/run` builds one
and names its interpreter in LSMAE_XLA_PYTHON. One replica only: collectives across several
XLA:CPU replicas hang upstream (pytorch/xla #9089).
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from pretrain.checkpoints import export_release

XLA_PYTHON = os.environ.get("LSMAE_XLA_PYTHON")
pytestmark = pytest.mark.skipif(
    not XLA_PYTHON, reason="set LSMAE_XLA_PYTHON to a Python with torch_xla (.ci/run does) to test the TPU path")
REPO = Path(__file__).resolve().parents[1]


def test_xla_cpu_training_steps_save_and_load_back(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        y, x = np.mgrid[0:72, 0:72]
        img = np.stack([(x * (i + 1)) % 256, (y * 3 + i * 10) % 256, ((x + y) * 2) % 256], -1)
        noise = rng.integers(0, 30, img.shape)
        Image.fromarray(((img + noise) % 256).astype("uint8")).save(data / f"{i}.png")
    out = tmp_path / "run"
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "1", "PYTHONPATH": str(REPO)}
    cmd = [XLA_PYTHON, "-m", "pretrain", "--device", "xla", "--model", "mae_vit_micro_patch8_dec64d4h2b",
           "--input-size", "64", "--data-path", str(data), "--epochs", "2", "--warmup-epochs", "1",
           "--effective-batch-size", "8", "--num-workers", "0", "--output-dir", str(out), "--print-freq", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) for r in steps)
    # the file xm.save wrote loads with plain torch on the CPU and exports to the release format
    ckpt = torch.load(out / "checkpoint-1.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["model"]["pos_embed"].device.type == "cpu"
    exported = export_release(out, tmp_path / "mine.pth")
    info = zoo.check_structure(zoo.checkpoint.model_state_dict(zoo.load_checkpoint(exported)))
    assert info.model == "mae_vit_micro_patch8_dec64d4h2b"

