"""``lsmae bench segment``: the UperNet's analytic FLOP count (from its config, against torch's counter
and by hand), the two steps it compares (today's stock BEiT modules and ``lsmae segment``'s), the
generated ADE20K-like set, and one short run of the whole bench on the demo architecture."""
from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bridges.bench.sample_sets import ADE20K_SIZE, write_ade20k_like
from bridges.bench.segment import SegmentBench, build_parser, main, training_crops
from bridges.bench.segment_step import SegmentStep
from bridges.bench.training_bench import mae_weights
from bridges.segmentation import model as segmentation_model
from bridges.segmentation.flops import upernet_flops
from bridges.segmentation.model import convert_to_upernet, model_class, upernet_config, upernet_taps
from bridges.segmentation.recipes import get_recipe
from bridges.segmentation.training import param_groups
from pretrain.engine.run_plan import resolve_precision
from pretrain.errors import LsmaeError
from tests.conftest import REPO, TINY_MODEL
from zoo.checkpoint import check_structure

pytestmark = pytest.mark.usefixtures("one_thread")
VIT_B = "mae_vit_base_patch16_dec384d12h8b"
DEMO_TAPS = [0, 1, 2, 3]


def _demo_model(labels: int = 4) -> torch.nn.Module:
    return convert_to_upernet(mae_weights(TINY_MODEL), img_size=64, num_labels=labels, block_taps=DEMO_TAPS).model


def _step(config: str) -> SegmentStep:
    args = build_parser().parse_args(["--model", TINY_MODEL, "--config", "demo", "--batch-size", "2",
                                      "--device", "cpu"])
    return SegmentStep(args, config)


def test_flop_count_equals_torchs_counter_on_the_demo_model():
    """Three forward passes less the patch embedding's (no input gradient) are what torch counts in a
    forward and backward pass with the loss: ViT, neck, both heads (attention as matmuls)."""
    model = _demo_model().train()
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(2, 3, 64, 64), labels=torch.randint(0, 4, (2, 64, 64))).loss.backward()
    flops = upernet_flops(model.config)
    assert counter.get_total_flops() == 2 * (flops.train - flops.patch_embed)
    assert [name for name, _ in flops.parts] == ["patch embedding", "4 blocks on 65 tokens", "neck", "UperNet head",
                                                 "FCN head"]


def test_flops_of_vit_b_at_512_by_hand():
    """The issue's hand count: the backbone ~213 GFLOP forward on 1025 tokens, the neck and heads ~1
    TFLOP (most of it the 3x3 fpn_bottleneck on 4 x 768 channels at 128x128), ~3.6 TFLOP to train."""
    info = check_structure(mae_weights(VIT_B))
    config = upernet_config(info, 512, 150, upernet_taps(info, None))  # the model's, as convert_to_upernet makes it
    flops = dict(upernet_flops(config).parts)
    d, g = 768, 1e9
    assert flops["patch embedding"] == 2 * 1024 * 16 * 16 * 3 * d
    assert flops["12 blocks on 1025 tokens"] == 12 * (2 * 1025 * d * d * 12 + 4 * 1025 * 1025 * d)
    assert flops["neck"] == 2 * d * d * (64 * 64 + 128 * 128 + 64 * 64)  # fpn1's two 2x2 transposed convs, fpn2's
    fpn_bottleneck = 2 * 9 * 4 * d * d * 128 * 128
    assert round(fpn_bottleneck / g, 1) == 695.8 and flops["UperNet head"] > fpn_bottleneck
    assert flops["FCN head"] == 2 * 9 * d * 256 * 32 * 32 + 2 * 256 * 150 * 32 * 32
    total = upernet_flops(config)
    assert round((flops["patch embedding"] + flops["12 blocks on 1025 tokens"]) / g) == 214
    assert round((flops["neck"] + flops["UperNet head"] + flops["FCN head"]) / g) == 1000
    assert round(total.train / 1e12, 2) == 3.64 and total.train == 3 * total.forward


def test_flops_follow_the_config():
    config = _demo_model().config
    base = dict(upernet_flops(config).parts)
    more = copy.deepcopy(config)
    more.num_labels = 14
    grown = dict(upernet_flops(more).parts)
    assert grown["UperNet head"] - base["UperNet head"] == 2 * 96 * 10 * 32 * 32  # the classifier at 4x the grid
    assert grown["FCN head"] - base["FCN head"] == 2 * 256 * 10 * 8 * 8
    more.intermediate_size = 2 * 96  # MLPs half as wide: 4 of each block's 12 N x d x d products fewer
    narrower = dict(upernet_flops(more).parts)["4 blocks on 65 tokens"]
    assert base["4 blocks on 65 tokens"] - narrower == 4 * 4 * 2 * 65 * 96 * 96
    more.use_auxiliary_head = False
    assert "FCN head" not in dict(upernet_flops(more).parts)
    more.use_auxiliary_head, more.auxiliary_num_convs, more.auxiliary_concat_input = True, 2, True
    fcn = dict(upernet_flops(more).parts)["FCN head"]
    assert fcn == 2 * 9 * 64 * (96 * 256 + 256 * 256 + (96 + 256) * 256) + 2 * 256 * 14 * 64


def test_the_baseline_is_todays_model_and_ours_the_commands(monkeypatch):
    """stock: the model of transformers' unmodified modules (``stock_upernet``) on the same weights, at the
    command's auto precision; ours: convert_to_upernet's model at the configuration's; both the command's
    optimizer."""
    built = []
    stock_upernet = segmentation_model.stock_upernet

    def recorded(model: torch.nn.Module) -> torch.nn.Module:
        built.append(stock_upernet(model))
        return built[-1]

    monkeypatch.setattr(segmentation_model, "stock_upernet", recorded)
    stock, ours = _step("stock"), _step("fp32")
    assert built == [stock.task.plain] and type(ours.task.plain) is model_class()
    ours_state, stock_state = ours.task.plain.state_dict(), stock.task.plain.state_dict()
    assert ours_state.keys() == stock_state.keys()
    assert all(torch.equal(ours_state[k], stock_state[k]) for k in ours_state)
    auto = resolve_precision("auto", stock.backend)
    assert stock.dtype == auto and stock.precision.endswith("(lsmae segment's auto)") and ours.dtype is None
    for step in (stock, ours):
        groups = param_groups(step.task.plain, step.recipe.weight_decay, step.recipe.layer_decay)
        assert [g["lr_scale"] for g in step.opt.param_groups] == [g["lr_scale"] for g in groups]
        assert step.opt.defaults["fused"] and step.task.model is step.task.plain
    compiled = _step("fp32+compile")
    assert compiled.task.model is not compiled.task.plain and compiled.task.model._orig_mod is compiled.task.plain


def test_one_line_errors():
    with pytest.raises(LsmaeError, match="BatchNorm needs 2 images"):
        main(["--model", "demo", "--batch-size", "1", "--device", "cpu"])
    with pytest.raises(LsmaeError, match="no recipe for a 32-block encoder"):
        main(["--model", "mae_vit_huge_patch14", "--device", "cpu"])


def test_generated_ade20k_like_set(tmp_path):
    images, masks = write_ade20k_like(tmp_path, 6, labels=150)
    for path in sorted(images.iterdir()):
        with Image.open(path) as img, Image.open(masks / f"{path.stem}.png") as mask:
            assert img.format == "JPEG" and img.size in (ADE20K_SIZE, ADE20K_SIZE[::-1]) and mask.size == img.size
            values = np.unique(np.asarray(mask))
        assert values[0] == 0 and values.max() <= 150 and len(values) >= 3  # borders "other", several classes


def test_one_workers_rate_is_through_the_commands_training_pipeline(tmp_path):
    """lsmae segment's TrainingCrops on the recipe's crop (uint8 crops and labels padded to it, valid sizes)."""
    write_ade20k_like(tmp_path, 4, labels=4)
    recipe = get_recipe("demo")
    random.seed(0)
    for image, labels, (height, width) in (training_crops(recipe, tmp_path)[i] for i in range(4)):
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and labels.shape == (64, 64)
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255} and height <= 64 and width <= 64
        assert (labels[height:] == 255).all() and (labels[:, width:] == 255).all() and not image[:, height:].any()
    args = build_parser().parse_args(["--model", TINY_MODEL, "--batch-size", "2", "--images", "2", "--rounds", "1"])
    pipeline = SegmentBench(recipe).pipeline(args, tmp_path, "4 JPEGs")
    assert pipeline.rates["images"] == 2 and pipeline.rates["ours_images_per_s"] > 0


def test_bench_runs_on_the_demo_architecture():
    """stock and ours in turns, TFLOP/s and MFU by the analytic count, one worker's rate through the
    command's pipeline, and end to end (JSON lines)."""
    peak, batch, images = 2.0, 4, 6
    cmd = [sys.executable, "-W", "ignore", "-m", "bridges.bench.segment", "--model", "demo", "--batch-size",
           str(batch), "--rounds", "2", "--warmup", "1", "--configs", "stock,fp32", "--images", str(images),
           "--workers", "0", "--threads", "1", "--peak-tflops", str(peak), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines()]
    flops = upernet_flops(_demo_model().config)
    steps = [r for r in records if r["part"] == "step"]
    assert [r["config"] for r in steps] == ["stock", "fp32"] and steps[1]["precision"] == "fp32"
    assert steps[0]["precision"].endswith("(lsmae segment's auto)")
    assert steps[0]["speed_up"] == 1.0 and all(len(r["rounds"]) == 2 for r in steps)
    for r in steps:
        assert r["images_per_s"] == pytest.approx(batch / r["s_per_step"])
        assert r["tflops"] == pytest.approx(flops.train * r["images_per_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / peak) and r["tflops"] > 0
    (counted,) = [r for r in records if r["part"] == "flops"]
    assert counted["analytic_train"] == flops.train and list(counted["counted"]) == ["fp32"]
    unseen = 3 * flops.attention if steps[1]["no_formula"] else 0  # a CPU attention kernel without a formula
    assert counted["counted"]["fp32"] == flops.train - flops.patch_embed - unseen
    (pipeline,) = [r for r in records if r["part"] == "pipeline"]
    assert pipeline["images"] == images and pipeline["ours_images_per_s"] > 0
    (e2e,) = [r for r in records if r["part"] == "end_to_end"]
    assert e2e["config"] == "fp32" and e2e["workers"] == 0 and e2e["data_images_per_s"] > 0
    assert e2e["workers_needed"] == {"ours": math.ceil(e2e["synthetic_images_per_s"] / pipeline["ours_images_per_s"])}
