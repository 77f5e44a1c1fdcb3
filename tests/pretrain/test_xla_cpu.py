"""The TPU code path, run for real on XLA:CPU (PJRT_DEVICE=CPU) in a separate environment.

torch_xla pins its own torch, so it lives in its own virtual environment; `.ci/run` builds one
and names its interpreter in LSMAE_XLA_PYTHON. ``CPU_NUM_DEVICES`` gives the runtime 1 or 2
devices in one process: the SPMD path a TPU host runs, with the batch sharded over them.
"""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from pretrain.engine.checkpoints import export_release
from tests.conftest import REPO

XLA_PYTHON = os.environ.get("LSMAE_XLA_PYTHON")
pytestmark = pytest.mark.skipif(
    not XLA_PYTHON, reason="set LSMAE_XLA_PYTHON to a Python with torch_xla (.ci/run does) to test the TPU path")
MODEL = "mae_vit_micro_patch8_dec64d4h2b"
EPOCHS = 10  # 2 updates each: long enough that a run killed after its first checkpoint is still running


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    data = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(16):
        y, x = np.mgrid[0:72, 0:72]
        img = np.stack([(x * (i + 1)) % 256, (y * 3 + i * 10) % 256, ((x + y) * 2) % 256], -1)
        noise = rng.integers(0, 30, img.shape)
        Image.fromarray(((img + noise) % 256).astype("uint8")).save(data / f"{i}.png")
    return data


def command(images, out, *extra):
    """Pretraining on XLA: 8 images per update (per device: 8 / devices), every step logged. In fp32:
    bf16's rounding depends on the per-device batch (5e-5 relative between 1 and 2 devices here),
    fp32's is ~1e-7, so the comparison can be tight. The bench runs bf16."""
    return [XLA_PYTHON, "-m", "pretrain", "--device", "xla", "--model", MODEL, "--input-size", "64",
            "--precision", "fp32", "--data-path", str(images), "--epochs", str(EPOCHS), "--warmup-epochs", "1",
            "--blr", "0.05",
            "--effective-batch-size", "8", "--num-workers", "0", "--ckpt-interval", "1", "--print-freq", "1",
            "--output-dir", str(out), *extra]


def xla_env(devices):
    return {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices), "PYTHONPATH": str(REPO)}


def run(images, out, devices, *extra):
    result = subprocess.run(command(images, out, *extra), capture_output=True, text=True, env=xla_env(devices),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def steps(out):
    """The last record of each training step (a resumed run writes the steps after its checkpoint again)."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {(r["epoch"], r["step"]): r for r in records if r["kind"] == "train"}


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory):
    """The same run on 1 and on 2 XLA:CPU devices."""
    outs = {n: tmp_path_factory.mktemp(f"devices{n}") / "run" for n in (1, 2)}
    logs = {n: run(images, out, n).stderr for n, out in outs.items()}
    return outs, logs


def test_two_devices_train_as_one(runs):
    outs, logs = runs
    assert "2 devices (1 process x 2, 0 loader workers per process) x batch 4 x 1 accumulation = 8" in logs[2]
    assert "1 devices x batch 8 x 1 accumulation = 8" in logs[1]
    one, two = steps(outs[1]), steps(outs[2])
    assert len(one) == len(two) == 2 * EPOCHS
    losses = np.array([[one[k]["loss"], two[k]["loss"]] for k in sorted(one)])
    assert losses[-1, 0] < losses[0, 0] - 0.05  # it learns: the comparison is not of two untrained models
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=1e-5)


def test_no_recompilation_after_the_first_epoch(runs):
    outs, _ = runs
    for out in outs.values():
        compiled = [r["xla_compilations"] for _, r in sorted(steps(out).items())]
        assert compiled[0] > 0 and len(set(compiled[2:])) == 1, compiled  # steps 0 and 1 differ: state is created


def test_one_checkpoint_file_per_save_and_export(runs, tmp_path):
    out = runs[0][2]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["log.jsonl", *(f"checkpoint-{e}.pth" for e in range(EPOCHS))])
    # a CPU copy, loadable with plain torch
    ckpt = torch.load(out / f"checkpoint-{EPOCHS - 1}.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == EPOCHS - 1 and ckpt["progress"] == {"step": 2 * EPOCHS, "epoch": EPOCHS, "batch": 0}
    tensors = [*ckpt["model"].values(), *(t for s in ckpt["optimizer"]["state"].values() for t in s.values())]
    assert all(t.device.type == "cpu" for t in tensors)
    exported = export_release(out, tmp_path / "mine.pth")
    info = zoo.check_structure(zoo.checkpoint.model_state_dict(zoo.load_checkpoint(exported)))
    assert info.model == MODEL


def test_resume_after_kill_continues_the_run(images, runs, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(images, out), env=xla_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not (out / "checkpoint-0.pth").exists() and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / f"checkpoint-{EPOCHS - 1}.pth").exists(), "the run finished before it was killed"
    result = run(images, out, 2)  # the same command: --resume auto
    assert "resumed from" in result.stderr
    reference, resumed = steps(runs[0][2]), steps(out)
    assert sorted(resumed) == sorted(reference)
    for key in reference:
        assert resumed[key]["loss"] == pytest.approx(reference[key]["loss"], rel=1e-6), key
    last = f"checkpoint-{EPOCHS - 1}.pth"
    a = torch.load(out / last, weights_only=True)["model"]
    b = torch.load(runs[0][2] / last, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_effective_batch_not_divisible_by_the_devices(images, tmp_path):
    cmd = [c if c != "8" else "9" for c in command(images, tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=xla_env(2), timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "pretrain: error: --effective-batch-size 9 is not divisible by 2 devices x 1 accumulation steps")


def test_bench_reports_per_device_and_total_rates():
    cmd = [XLA_PYTHON, "-m", "pretrain.bench", "--device", "xla", "--data", "synthetic", "--model", MODEL,
           "--input-size", "64", "--batch-size", "4", "--steps", "2", "--rounds", "2", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=xla_env(2), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    step = next(r for r in map(json.loads, result.stdout.splitlines()) if r.get("part") == "step")
    assert step["devices"] == 2 and step["config"] == "bf16"
    assert step["images_per_s"] == pytest.approx(8 / step["s_per_step"])
    assert step["images_per_s_per_device"] == pytest.approx(step["images_per_s"] / 2)
    assert step["xla_compilations"] == step["warmup_compilations"]  # the timed steps compiled nothing new


def test_a_cpu_run_continues_on_xla(images, tmp_path):
    """A checkpoint of fused AdamW (GPU/CPU) resumes on XLA, where AdamW runs capturable."""
    out = tmp_path / "moved"
    cpu = subprocess.run(command(images, out, "--epochs", "2", "--device", "cpu"), capture_output=True, text=True,
                         env=xla_env(1), timeout=300)
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    result = run(images, out, 2, "--epochs", "3")
    assert f"resumed from {out / 'checkpoint-1.pth'}" in result.stderr
    after = [r for (epoch, _), r in sorted(steps(out).items()) if epoch == 2]
    assert len(after) == 2 and all(np.isfinite(r["loss"]) and r["loss"] < 1.3 for r in after)
    ckpt = torch.load(out / "checkpoint-2.pth", weights_only=True)
    assert all(g["capturable"] for g in ckpt["optimizer"]["param_groups"])
