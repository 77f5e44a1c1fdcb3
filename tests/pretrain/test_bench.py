"""``lsmae bench pretrain`` and what it rests on: the analytic FLOP count, the generated JPEGs, the
one-worker pipeline rates, and one short run of the whole benchmark on the micro model; and what the
fine-tuning benches share with it (the fine-tuned ViT's count, the configurations, the loader)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from pretrain.bench.data import pipeline_rates, write_coco_like_jpegs
from pretrain.bench.driver import end_to_end_line
from pretrain.bench.process import LOADER_ITEMS, PREFETCH, parse_config, precision_text, repeating_loader
from pretrain.data import collate, pretrain_dataset
from pretrain.errors import LsmaeError
from pretrain.models.flops import blocks_flops, pretrain_flops, vit_flops
from tests.conftest import REPO, TINY_MODEL

VIT_B, VIT_L = "mae_vit_base_patch16_dec384d12h8b", "mae_vit_large_patch16_dec512d16h8b"


def test_analytic_flops_of_the_release_architectures():
    """ViT-B at L=784, mask 0.75: encoder on 197 tokens 34.9 GFLOP, 8-block decoder on 785 tokens 29.8,
    embeddings and prediction 0.8: 65.5 forward, x3 for training; ViT-L 173.5."""
    b = pretrain_flops(VIT_B, 448)
    assert (b.encoder_tokens, b.decoder_tokens) == (197, 785)
    assert [round(x / 1e9, 1) for x in (b.encoder, b.decoder, b.embed_predict, b.forward)] == [34.9, 29.8, 0.8, 65.5]
    assert b.train == 3 * b.forward and round(b.attention / 1e9, 1) == 9.0
    assert round(pretrain_flops(VIT_L, 448).forward / 1e9, 1) == 173.5
    # one block by hand: qkv 3, projection 1, MLP 2 x 4 matmuls of N x d x d, and 2 of N x N x d
    assert blocks_flops(10, 8, 1) == (2 * 10 * 8 * 8 * 12, 2 * 2 * 10 * 10 * 8)
    # 224 px (L=196) and a downsampled decoder: fewer tokens, convolutions counted
    assert pretrain_flops(VIT_B, 224).encoder_tokens == 50
    ds = pretrain_flops(VIT_B, 448, decoder_downsampling=2)
    assert ds.decoder_tokens == 197 and ds.decoder < b.decoder and ds.embed_predict > b.embed_predict


def test_generated_jpegs_are_coco_sized(tmp_path):
    paths = write_coco_like_jpegs(tmp_path, 6)
    sizes = set()
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.add(img.size)
    assert sizes <= {(640, 480), (480, 640)}


def test_pipeline_rates_of_one_worker(photos):
    rates = pipeline_rates([photos], 64, batch_size=8, rounds=1)
    assert rates["images"] == 32 and rates["ours_images_per_s"] > 0 and rates["release_images_per_s"] > 0
    assert rates["ratio"] == pytest.approx(rates["ours_images_per_s"] / rates["release_images_per_s"])


def test_bench_runs_all_three_parts(tmp_path):
    """The micro model: two configurations taking turns, the pipeline, end to end (JSON lines)."""
    cmd = [sys.executable, "-W", "ignore", "-m", "pretrain.bench", "--model", TINY_MODEL,
           "--input-size", "64", "--batch-size", "4", "--rounds", "2", "--warmup", "1", "--configs", "release,fp32",
           "--images", "8", "--workers", "0", "--threads", "1", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines()]
    steps = [r for r in records if r["part"] == "step"]
    assert [r["config"] for r in steps] == ["release", "fp32"] and all(len(r["rounds"]) == 2 for r in steps)
    assert steps[0]["speed_up"] == 1.0 and all(r["images_per_s"] > 0 and r["tflops"] > 0 for r in steps)
    (flops,) = [r for r in records if r["part"] == "flops"]
    assert flops["analytic_train"] == pretrain_flops(TINY_MODEL, 64).train
    assert list(flops["counted"]) == ["fp32"]  # the counter runs on this code's model, not the release's
    (pipeline,) = [r for r in records if r["part"] == "pipeline"]
    assert pipeline["images"] == 8
    (e2e,) = [r for r in records if r["part"] == "end_to_end"]
    assert e2e["config"] == "fp32" and e2e["data_images_per_s"] > 0 and e2e["workers_needed"]["ours"] >= 1


def test_analytic_flops_of_the_fine_tuned_vit():
    """ViT-B at 224 px (197 tokens), 1000 classes: patch embedding 0.2, blocks 34.9 (1.4 of it attention
    products), head 0.0015 GFLOP: 35.1 forward, 105.4 to train (27% MFU at the issue's 2505 img/s)."""
    f = vit_flops(VIT_B, 224, 1000)
    parts = dict(f.parts)
    assert list(parts) == ["patch embedding", "12 blocks on 197 tokens", "head"]
    assert parts["patch embedding"] == f.patch_embed == 2 * 196 * 16 * 16 * 3 * 768
    assert parts["12 blocks on 197 tokens"] == sum(blocks_flops(197, 768, 12)) and parts["head"] == 2 * 768 * 1000
    assert round(f.attention / 1e9, 2) == 1.43 and round(f.forward / 1e9, 1) == 35.1 and f.train == 3 * f.forward
    assert round(2505 * f.train / 1e12 / 989, 2) == 0.27
    assert dict(vit_flops(VIT_L, 224, 1000).parts)["24 blocks on 197 tokens"] == sum(blocks_flops(197, 1024, 24))
    assert f.describe() == "patch embedding 0.2, 12 blocks on 197 tokens 34.9, head 0.0"


def test_configurations_and_their_precisions():
    """Each bench names its own baseline; the others are precisions, optionally compiled."""
    assert parse_config("release", "release") == (True, None, False)
    assert parse_config("bf16+compile", "stock") == (False, torch.bfloat16, True)
    for wrong, baseline in (("stock", "release"), ("release+compile", "release"), ("bf16+jit", "release")):
        with pytest.raises(LsmaeError, match=f"unknown config '{re.escape(wrong)}': {baseline}, fp32"):
            parse_config(wrong, baseline)
    assert [precision_text(d) for d in (None, torch.bfloat16, torch.float16)] == [
        "fp32", "bf16 autocast", "fp16 autocast, GradScaler"]


def test_the_end_to_end_loader_is_the_commands(photos):
    """Pinned memory on CUDA only, whole batches, the collate given, and it does not run out."""
    dataset = pretrain_dataset([photos], 32)
    loader = repeating_loader(dataset, 8, 0, torch.device("cpu"), collate)
    assert not loader.pin_memory and loader.drop_last and loader.collate_fn is collate
    assert len(loader) == LOADER_ITEMS // 8 > len(dataset)
    worker = repeating_loader(dataset, 8, 2, torch.device("cuda"))
    assert worker.pin_memory and worker.persistent_workers and worker.prefetch_factor == PREFETCH


def test_workers_needed_end_to_end():
    """Per device, the step's synthetic rate over one worker's rate, rounded up, for each pipeline."""
    rates = {"images": 64, "ours_images_per_s": 300.0, "release_images_per_s": 100.0, "ratio": 3.0}
    e2e = {"workers": 8, "steps": 30, "synthetic_images_per_s": 2000.0, "data_images_per_s": 1800.0}
    text, record = end_to_end_line({"config": "bf16", "devices": 2}, e2e, rates, 8)
    assert record == {"part": "end_to_end", "config": "bf16", **e2e, "workers_needed": {"ours": 4, "release": 10}}
    assert text == ("end to end, bf16, 8 workers: 1800.0 img/s, 90% of 2000.0 img/s on synthetic images (same process, "
                    "30 steps)\nworkers per device for 1000.0 img/s: 4 (ours), 10 (release)")
