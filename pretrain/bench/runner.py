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
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from pretrain.models.archs import model_config
from pretrain.bench.args import build_parser
from pretrain.errors import BenchWorkerError, LsmaeError
from pretrain.models.flops import PretrainFlops, pretrain_flops

# dense (not sparse) bf16 tensor-core peaks, TFLOP/s, by device name (the first name contained wins)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def _defaults(args: argparse.Namespace) -> None:
    import torch

    from pretrain.engine.backends import bf16_supported_on_cpu, check_compile
    from pretrain.optional import require

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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
    if args.peak_tflops is None and gpu:
        name = torch.cuda.get_device_name()
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    threads = args.threads or torch.get_num_threads()
    args.device_name = torch.cuda.get_device_name() if gpu else \
        f"xla ({os.environ.get('PJRT_DEVICE', 'TPU')})" if xla else f"cpu, {threads} threads"


class _Worker:
    """One configuration's process (:mod:`pretrain.bench.step`)."""

    def __init__(self, config: str, argv: list[str]) -> None:
        self.config = config
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "pretrain.bench.step", *argv, config],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=os.environ.copy())

    def ask(self, command: str | None = None) -> dict[str, Any]:
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            print(self.stderr.read()[-3000:], file=sys.stderr)
            raise BenchWorkerError(f"{self.config} failed (exit {self.proc.returncode}; its last output is above)")
        return json.loads(line)


def run_steps(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Time the configurations in turns; per configuration the median over rounds."""
    workers = [_Worker(c, argv) for c in args.configs]
    ready, warmup = [], {}
    for w in workers:
        try:
            warmup[w.config] = w.ask()
            ready.append(w)
        except BenchWorkerError as e:
            print(f"lsmae bench pretrain: {e}", file=sys.stderr)
    times: dict[str, list[float]] = {w.config: [] for w in ready}
    for _ in range(args.rounds):
        for w in ready:
            times[w.config].append(w.ask("step")["s_per_step"])
    results = []
    for w in ready:
        results.append({"config": w.config, "s_per_step": statistics.median(times[w.config]),
                        "rounds": times[w.config], "warmup_s": warmup[w.config]["warmup_s"],
                        "devices": warmup[w.config]["devices"],
                        "warmup_compilations": warmup[w.config].get("xla_compilations", 0), **w.ask("finish")})
        w.proc.wait()
    return results


def _speed_ups(results: list[dict[str, Any]]) -> None:
    base = results[0]
    for r in results:
        r["vs"] = base["config"]
        r["speed_up"] = statistics.median(b / t for b, t in zip(base["rounds"], r["rounds"]))
        r["memory_ratio"] = r["peak_memory_gb"] / base["peak_memory_gb"]


def _flops_lines(flops: PretrainFlops, results: list[dict[str, Any]]) -> list[str]:
    g = 1e9
    lines = [f"FLOPs per image, training = 3 x forward: {flops.train / g:.1f} GFLOP analytic "
             f"(forward {flops.forward / g:.1f}: encoder on {flops.encoder_tokens} tokens {flops.encoder / g:.1f}, "
             f"decoder on {flops.decoder_tokens} tokens {flops.decoder / g:.1f}, embeddings and prediction "
             f"{flops.embed_predict / g:.1f}; attention products {flops.attention / g:.1f} of it); TFLOP/s and MFU "
             "use it"]
    counted = next((r for r in results if r["counted_flops"]), None)
    if counted is not None:
        c = counted["counted_flops"] / g
        diff = c - flops.train / g
        if abs(diff) > 0.005 * flops.train / g:
            why = (f"it has no formula for {', '.join(counted['no_formula'])} (the attention products, "
                   f"{3 * flops.attention / g:.1f} for training)" if counted["no_formula"] else
                   "the backward of the patch embedding computes no input gradient")
            lines.append(f"  torch.utils.flop_counter counts {c:.1f} ({diff:+.1f}) in {counted['config']}: {why}")
    return lines


def _step_line(args: argparse.Namespace, r: dict[str, Any], flops: PretrainFlops) -> str:
    devices = r["devices"]
    ips = args.batch_size * devices / r["s_per_step"]
    tflops = flops.train * ips / 1e12
    line = (f"  {r['config']:13s} {r['s_per_step']:8.3f} s/step {ips:8.1f} img/s {r['peak_memory_gb']:6.1f} GB peak "
            f"{tflops:7.2f} TFLOP/s  x{r['speed_up']:.2f} speed x{r['memory_ratio']:.2f} memory vs {r['vs']}, "
            f"{r['warmup_s']:.0f} s warm-up")
    r.update(images_per_s=ips, images_per_s_per_device=ips / devices, tflops=tflops)
    if args.peak_tflops:
        r["mfu"] = tflops / devices / args.peak_tflops  # the peak is one device's
        line += f"  MFU {r['mfu']:.1%}"
    if args.device == "xla":
        compiled = r.get("xla_compilations", 0)
        line += (f"\n  {'':13s} {devices} device{'s' if devices > 1 else ''} (SPMD): {ips / devices:.1f} img/s per "
                 f"device, {ips:.1f} in all; {compiled} XLA compilations, {compiled - r['warmup_compilations']} of "
                 "them after the warm-up")
    return line


def _emit(args: argparse.Namespace, text: str, record: dict[str, Any] | None = None) -> None:
    if args.json and record is not None:
        print(json.dumps(record), flush=True)
    elif not args.json:
        print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(__doc__).parse_args(argv)
    _defaults(args)
    configs = args.configs.split(",")
    args.configs = configs + [f"{c}+compile" for c in configs if args.compile and c != "release"]
    from pretrain.bench.step import parse_config

    for config in args.configs:
        parse_config(config)  # a misspelt name fails here, not in a worker
    grid = args.input_size // model_config(args.model)["patch_size"]
    flops = pretrain_flops(args.model, args.input_size)
    # the workers get the resolved values, so that every process agrees
    worker_argv = ["--model", args.model, "--input-size", str(args.input_size), "--mask-downsampling",
                   str(args.mask_downsampling), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--device", args.device,
                   *(["--threads", str(args.threads)] if args.threads else [])]
    _emit(args, f"{args.model} at {args.input_size}px (L={grid * grid}), mask 0.75, blocks {args.mask_downsampling}x"
                f"{args.mask_downsampling}, batch {args.batch_size} per device, {args.device_name}; {args.rounds} rounds of "
                f"{args.steps} timed steps per configuration, in turns\nstep (synthetic images):")
    results = run_steps(args, worker_argv)
    if not results:
        raise LsmaeError("every configuration failed (see above)")
    _speed_ups(results)
    for r in results:
        _emit(args, _step_line(args, r, flops), {"part": "step", **r})
    for line in _flops_lines(flops, results):
        _emit(args, line)
    _emit(args, "", {"part": "flops", "analytic_train": flops.train, "analytic_forward": flops.forward,
                     "counted": {r["config"]: r["counted_flops"] for r in results if r["counted_flops"]}})
    if args.data != "synthetic":
        _data_parts(args, worker_argv, max((r for r in results if r["config"] != "release"),
                                            key=lambda r: r["images_per_s"], default=results[0]))


def _data_parts(args: argparse.Namespace, worker_argv: list[str], best: dict[str, Any]) -> None:
    from pretrain.bench.data import pipeline_rates, write_coco_like_jpegs

    with tempfile.TemporaryDirectory(prefix="lsmae-bench-") as tmp:
        if args.data is None:
            folder = Path(tmp) / "jpegs"
            write_coco_like_jpegs(folder, args.images)
            what = f"{args.images} generated COCO-like JPEGs (640x480 and 480x640)"
        else:
            folder = Path(args.data)
            what = f"up to {args.images} images from {folder}"
        rates = pipeline_rates([folder], args.input_size, args.batch_size, args.rounds, limit=args.images)
        _emit(args, f"input pipeline, one worker (one thread), {what} -> {args.input_size}px crops:\n"
                    f"  ours {rates['ours_images_per_s']:.0f} img/s, "
                    f"release {rates['release_images_per_s']:.0f} img/s: "
                    f"x{rates['ratio']:.2f}", {"part": "pipeline", **rates})
        if best["config"] == "release":
            return
        e2e = _Worker(best["config"], [*worker_argv, "--e2e", str(folder), "--e2e-workers", str(args.workers)]).ask()
    synthetic, data = e2e["synthetic_images_per_s"], e2e["data_images_per_s"]
    per_device = synthetic / best["devices"]
    need = {k: math.ceil(per_device / rates[f"{k}_images_per_s"]) for k in ("ours", "release")}
    _emit(args, f"end to end, {best['config']}, {args.workers} workers: {data:.1f} img/s, {data / synthetic:.0%} of "
                f"{synthetic:.1f} img/s on synthetic images (same process, {e2e['steps']} steps)\n"
                f"workers per device for {per_device:.1f} img/s: {need['ours']} (ours), {need['release']} (release)",
          {"part": "end_to_end", "config": best["config"], **e2e, "workers_needed": need})
