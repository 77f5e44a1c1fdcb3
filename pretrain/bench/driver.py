"""What every benchmark (``lsmae bench pretrain``, ``finetune``, ``segment``) does in one run, and how it
says it: the step of each configuration on synthetic tensors, in turns (:mod:`pretrain.bench.turns`),
with TFLOP/s and MFU by an analytic FLOP count and torch's counter beside it; then the input pipeline
alone (one worker); then the fastest configuration fed by ``--workers`` loader processes, and how many
workers per device its step rate needs. A :class:`Bench` supplies what differs."""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pretrain.bench.turns import Turns, speed_ups
from pretrain.errors import LsmaeError

# dense (not sparse) bf16 tensor-core peaks, TFLOP/s, by device name (the first name contained wins)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


class Flops(Protocol):
    """An analytic count per image (:mod:`pretrain.models.flops`): what the lines need of it."""

    attention: float

    @property
    def forward(self) -> float: ...

    @property
    def train(self) -> float: ...


@dataclass(frozen=True)
class Pipeline:
    """One data-loader worker's rates (``{name}_images_per_s`` per pipeline, ``images``) and their line."""

    rates: dict[str, Any]
    text: str


class Bench(Protocol):
    """What a benchmark brings to :func:`run`."""

    prog: str  # "lsmae bench NAME"
    step_module: str  # its per-configuration process (:mod:`pretrain.bench.process`)
    baseline: str  # the configuration it compares with (first, never compiled, not fed end to end)

    def flops(self, results: list[dict[str, Any]]) -> Flops:
        """The analytic count (the configurations' records may carry it, counted from their model)."""

    def flops_headline(self, flops: Flops) -> str: ...

    def describe(self, result: dict[str, Any]) -> str:
        """What a configuration runs (precision, code), appended to its step line ("" for nothing)."""

    def data(self, args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
        """The folder the pipeline and end-to-end parts read (generated into ``tmp`` without ``--data``)
        and what it holds, in words."""

    def pipeline(self, args: argparse.Namespace, folder: Path, what: str) -> Pipeline: ...


def device_facts(args: argparse.Namespace) -> None:
    """``args.device`` (default cuda when available), ``args.peak_tflops`` (known GPUs' unless given)
    and ``args.device_name`` for the header."""
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    if args.peak_tflops is None and gpu:
        name = torch.cuda.get_device_name()
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    threads = args.threads or torch.get_num_threads()
    args.device_name = torch.cuda.get_device_name() if gpu else \
        f"xla ({os.environ.get('PJRT_DEVICE', 'TPU')})" if args.device == "xla" else f"cpu, {threads} threads"


def expand_configs(args: argparse.Namespace, baseline: str) -> None:
    """``args.configs`` as a list, each non-baseline one also ``+compile`` with ``--compile``; a misspelt
    name fails here, not in a process."""
    from pretrain.bench.process import parse_config

    configs = args.configs.split(",")
    args.configs = configs + [f"{c}+compile" for c in configs if args.compile and c != baseline]
    for config in args.configs:
        parse_config(config, baseline)


def emit(args: argparse.Namespace, text: str, record: dict[str, Any] | None = None) -> None:
    """A line of text, or with ``--json`` its record (lines without one are left out)."""
    if args.json and record is not None:
        print(json.dumps(record), flush=True)
    elif not args.json:
        print(text, flush=True)


def step_line(args: argparse.Namespace, r: dict[str, Any], train_flops: float, what: str = "") -> str:
    """A configuration's step: time, rate, memory, TFLOP/s, speed-up, warm-up (and MFU given a peak);
    its rates are added to ``r``."""
    devices = r["devices"]
    ips = args.batch_size * devices / r["s_per_step"]
    tflops = train_flops * ips / 1e12
    line = (f"  {r['config']:13s} {r['s_per_step']:8.3f} s/step {ips:8.1f} img/s {r['peak_memory_gb']:6.1f} GB peak "
            f"{tflops:7.2f} TFLOP/s  x{r['speed_up']:.2f} speed x{r['memory_ratio']:.2f} memory vs {r['vs']}, "
            f"{r['warmup_s']:.0f} s warm-up")
    r.update(images_per_s=ips, images_per_s_per_device=ips / devices, tflops=tflops)
    if args.peak_tflops:
        r["mfu"] = tflops / devices / args.peak_tflops  # the peak is one device's
        line += f"  MFU {r['mfu']:.1%}"
    if what:
        line += f"  ({what})"
    if args.device == "xla":
        compiled = r.get("xla_compilations", 0)
        line += (f"\n  {'':13s} {devices} device{'s' if devices > 1 else ''} (SPMD): {ips / devices:.1f} img/s per "
                 f"device, {ips:.1f} in all; {compiled} XLA compilations, {compiled - r['warmup_compilations']} of "
                 "them after the warm-up")
    return line


def counter_lines(flops: Flops, results: list[dict[str, Any]]) -> list[str]:
    """torch.utils.flop_counter's count beside the analytic one, where they differ by more than 0.5%, and why."""
    g = 1e9
    counted = next((r for r in results if r["counted_flops"]), None)
    if counted is None:
        return []
    c = counted["counted_flops"] / g
    diff = c - flops.train / g
    if abs(diff) <= 0.005 * flops.train / g:
        return []
    why = (f"it has no formula for {', '.join(counted['no_formula'])} (the attention products, "
           f"{3 * flops.attention / g:.1f} for training)" if counted["no_formula"] else
           "the backward of the patch embedding computes no input gradient")
    return [f"  torch.utils.flop_counter counts {c:.1f} ({diff:+.1f}) in {counted['config']}: {why}"]


def _fastest(results: list[dict[str, Any]], baseline: str) -> dict[str, Any] | None:
    return max((r for r in results if r["config"] != baseline), key=lambda r: r["images_per_s"], default=None)


def run(bench: Bench, args: argparse.Namespace, worker_argv: list[str], header: str) -> None:
    """The three parts (see the module doc); ``args`` resolved (configs expanded), ``worker_argv`` the
    options every configuration's process gets, ``header`` the run's first line."""
    emit(args, header + "\nstep (synthetic images):")
    with Turns(bench.prog, bench.step_module, args.configs, worker_argv) as turns:
        results = turns.run(args.rounds)
        if not results:
            raise LsmaeError("every configuration failed (see above)")
        speed_ups(results)
        flops = bench.flops(results)
        for r in results:
            emit(args, step_line(args, r, flops.train, bench.describe(r)), {"part": "step", **r})
        for line in [bench.flops_headline(flops), *counter_lines(flops, results)]:
            emit(args, line)
        emit(args, "", {"part": "flops", "analytic_train": flops.train, "analytic_forward": flops.forward,
                        "counted": {r["config"]: r["counted_flops"] for r in results if r["counted_flops"]}})
        best = _fastest(results, bench.baseline)
        turns.keep_only(best["config"] if best and args.data != "synthetic" else None)
        if args.data == "synthetic":
            return
        with tempfile.TemporaryDirectory(prefix="lsmae-bench-") as tmp:
            folder, what = bench.data(args, Path(tmp))
            pipeline = bench.pipeline(args, folder, what)
            emit(args, pipeline.text, {"part": "pipeline", **pipeline.rates})
            if best is None:
                return
            e2e = turns.end_to_end(best["config"], folder, args.workers)
    emit(args, *end_to_end_line(best, e2e, pipeline.rates, args.workers))


def end_to_end_line(best: dict[str, Any], e2e: dict[str, Any], rates: dict[str, Any], workers: int
                    ) -> tuple[str, dict[str, Any]]:
    """The end-to-end rate next to the synthetic one, and the workers per device the step rate needs with
    each pipeline's one-worker rate (``{name}_images_per_s`` in ``rates``); and its record."""
    synthetic, data = e2e["synthetic_images_per_s"], e2e["data_images_per_s"]
    per_device = synthetic / best["devices"]
    need = {k.removesuffix("_images_per_s"): math.ceil(per_device / v) for k, v in rates.items()
            if k.endswith("_images_per_s")}
    text = (f"end to end, {best['config']}, {workers} workers: {data:.1f} img/s, {data / synthetic:.0%} of "
            f"{synthetic:.1f} img/s on synthetic images (same process, {e2e['steps']} steps)\n"
            f"workers per device for {per_device:.1f} img/s: " + ", ".join(f"{n} ({k})" for k, n in need.items()))
    return text, {"part": "end_to_end", "config": best["config"], **e2e, "workers_needed": need}
