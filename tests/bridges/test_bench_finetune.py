"""``lsmae bench finetune``: the analytic FLOP count of the fine-tuned ViT against torch's counter, the
two steps it compares (MAE's and ``lsmae finetune``'s), the generated ImageNet-like set, and one short
run of the whole bench on the demo architecture."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from bridges.bench.finetune import FinetuneBench, build_parser, finetune_run, main, training_images
from bridges.bench.finetune_step import FinetuneStep
from bridges.bench.sample_sets import CLASS_FOLDERS, IMAGENET_SIZE, write_imagenet_like
from bridges.bench.training_bench import architecture, mae_weights
from bridges.classification.model import build_model
from pretrain.errors import LsmaeError
from pretrain.models.flops import vit_flops
from tests.conftest import REPO, TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = 10


def _step(config: str, batch: int = 4) -> FinetuneStep:
    args = build_parser().parse_args(["--model", TINY_MODEL, "--input-size", "64", "--num-classes", str(CLASSES),
                                      "--batch-size", str(batch), "--device", "cpu"])
    return FinetuneStep(args, config)


class _Calls(TorchFunctionMode):
    """The torch functions a piece of code calls, with their counts; ``loss_reads``: ``.item()`` of a
    tensor autograd made (the loss), not of the optimizer's step counters."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.loss_reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.counts[name] = self.counts.get(name, 0) + 1
        self.loss_reads += name == "item" and args[0].grad_fn is not None
        return func(*args, **(kwargs or {}))


def _calls_of_a_step(step: FinetuneStep) -> _Calls:
    step.step()  # the first step's lazy set-up (optimizer state) is not what is measured
    with _Calls() as calls:
        step.step()
    return calls


def test_flop_count_equals_torchs_counter_on_the_demo_model():
    """Three forward passes' FLOPs less the patch embedding's (its backward computes no input gradient)
    are what torch counts in a forward and backward pass, attention products included (naive attention:
    matmuls the counter sees)."""
    run = dataclasses.replace(finetune_run(TINY_MODEL, 64), source=mae_weights(TINY_MODEL))
    model, _, _ = build_model(run, CLASSES)
    for block in model.blocks:
        block.attn.fused_attn = False
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    flops = vit_flops(TINY_MODEL, 64, CLASSES)
    assert counter.get_total_flops() == 2 * (flops.train - flops.patch_embed)
    assert flops.attention > 0 and dict(flops.parts)["head"] == 2 * 96 * CLASSES


def test_the_baseline_is_maes_step_and_ours_the_commands():
    """MAE's step: naive attention, the loss read on the host and the gradient norm each step, foreach
    AdamW (fp32 on a CPU); lsmae finetune's: SDPA, no host read, fused AdamW; both with the recipe's
    mixup/cutmix and soft-target loss."""
    release, ours = _step("release"), _step("fp32")
    assert release.precision == "fp32 (MAE's autocast and GradScaler are CUDA's)" and release.dtype is None
    assert ours.precision == "fp32" and _step("bf16").precision == "bf16 autocast"
    assert release.opt.defaults["foreach"] and not release.opt.defaults.get("fused")
    assert ours.opt.defaults["fused"]
    for step in (release, ours):
        assert step.task.mixup is not None and type(step.task.criterion).__name__ == "SoftTargetCrossEntropy"
    assert [g["lr_scale"] for g in release.opt.param_groups] == [g["lr_scale"] for g in ours.opt.param_groups]
    theirs, mine = _calls_of_a_step(release), _calls_of_a_step(ours)
    assert all(p.grad is None for p in release.params) and all(p.grad is None for p in ours.params)  # zero_grad
    assert (theirs.loss_reads, mine.loss_reads) == (1, 0)
    assert theirs.counts.get("norm") == len(release.params) + 1 and "norm" not in mine.counts
    assert "scaled_dot_product_attention" not in theirs.counts and theirs.counts["softmax"] == 4  # one a block
    assert mine.counts["scaled_dot_product_attention"] == 4 and "softmax" not in mine.counts


def test_fp16_scales_the_loss_and_compile_compiles_the_commands_model():
    fp16, fp32 = _step("fp16"), _step("fp32")
    assert fp16.scaler is not None and fp16.precision == "fp16 autocast, GradScaler"
    assert fp32.scaler is None and fp32.task.model is fp32.task.classifier
    compiled = _step("fp32+compile").task
    assert compiled.model is not compiled.classifier and compiled.model._orig_mod is compiled.classifier


def test_model_names_and_one_line_errors():
    assert architecture("demo") == TINY_MODEL and architecture("mae_vit_base_patch16") == \
        "mae_vit_base_patch16_dec512d8b"
    with pytest.raises(LsmaeError, match="neither an MAE architecture .* nor a zoo id"):
        architecture("vit_tiny")
    with pytest.raises(LsmaeError, match="need an even batch"):
        main(["--model", "demo", "--batch-size", "3", "--device", "cpu"])
    with pytest.raises(LsmaeError, match="cuda or cpu"):
        main(["--model", "demo", "--device", "xla"])


def test_generated_imagenet_like_folder(tmp_path):
    root = write_imagenet_like(tmp_path, 10)
    folders = sorted((root / "train").iterdir())
    assert [f.name for f in folders] == [f"class_{k}" for k in range(CLASS_FOLDERS)]
    assert sum(len(list(f.iterdir())) for f in folders) == 10
    sizes = set()
    for path in (root / "train").rglob("*.jpg"):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.add(img.size)
    assert sizes <= {IMAGENET_SIZE, IMAGENET_SIZE[::-1]}


def test_one_workers_rate_is_through_the_commands_training_transform(tmp_path):
    """RandAugment, random erasing, random crops at the input size; at most --images items, spread."""
    root = write_imagenet_like(tmp_path, 8)
    images = training_images(finetune_run(TINY_MODEL, 64), root)
    assert {"RandAugment", "RandomErasing", "RandomResizedCropAndInterpolation"} <= {
        type(t).__name__ for t in images.transform.transforms}
    random.seed(0)
    torch.manual_seed(0)
    first, again = images[0][0], images[0][0]
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32 and not torch.equal(first, again)
    args = build_parser().parse_args(["--model", TINY_MODEL, "--input-size", "64", "--batch-size", "2",
                                      "--images", "3", "--rounds", "1"])
    pipeline = FinetuneBench().pipeline(args, root, "8 JPEGs")
    assert pipeline.rates["images"] == 3 and pipeline.rates["ours_images_per_s"] > 0
    assert pipeline.text == f"input pipeline, one worker (one thread), 8 JPEGs -> 64px crops (RandAugment, random " \
                            f"erasing):\n  {pipeline.rates['ours_images_per_s']:.1f} img/s"


def test_bench_runs_on_the_demo_architecture():
    """MAE's step and ours in turns, TFLOP/s and MFU by the analytic count, the counter beside it, one
    worker's rate through the command's transform, and end to end (JSON lines)."""
    peak, batch, images = 2.0, 4, 8
    cmd = [sys.executable, "-W", "ignore", "-m", "bridges.bench.finetune", "--model", "demo", "--input-size", "64",
           "--batch-size", str(batch), "--rounds", "2", "--warmup", "1", "--configs", "release,fp32", "--images",
           str(images), "--workers", "0", "--threads", "1", "--peak-tflops", str(peak), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines()]
    flops = vit_flops(TINY_MODEL, 64, 1000)
    steps = [r for r in records if r["part"] == "step"]
    assert [(r["config"], r["precision"]) for r in steps] == [
        ("release", "fp32 (MAE's autocast and GradScaler are CUDA's)"), ("fp32", "fp32")]
    assert steps[0]["speed_up"] == 1.0 and all(len(r["rounds"]) == 2 for r in steps)
    per_round = [b / t for b, t in zip(steps[0]["rounds"], steps[1]["rounds"])]
    assert steps[1]["speed_up"] == pytest.approx(statistics.median(per_round)) and steps[1]["vs"] == "release"
    assert steps[1]["memory_ratio"] == pytest.approx(steps[1]["peak_memory_gb"] / steps[0]["peak_memory_gb"])
    for r in steps:
        assert r["images_per_s"] == pytest.approx(batch / r["s_per_step"])
        assert r["tflops"] == pytest.approx(flops.train * r["images_per_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / peak) and r["tflops"] > 0
    (counted,) = [r for r in records if r["part"] == "flops"]
    assert counted["analytic_train"] == flops.train and list(counted["counted"]) == ["fp32"]
    unseen = 3 * flops.attention if steps[1]["no_formula"] else 0  # the CPU's fused attention kernel
    assert counted["counted"]["fp32"] == flops.train - flops.patch_embed - unseen
    (pipeline,) = [r for r in records if r["part"] == "pipeline"]
    assert pipeline["images"] == images and pipeline["ours_images_per_s"] > 0
    (e2e,) = [r for r in records if r["part"] == "end_to_end"]
    assert e2e["config"] == "fp32" and e2e["workers"] == 0 and e2e["data_images_per_s"] > 0
    assert e2e["workers_needed"] == {"ours": math.ceil(e2e["synthetic_images_per_s"] / pipeline["ours_images_per_s"])}
