"""Options of the benchmarks (``lsmae bench pretrain``, ``finetune``, ``segment``), shared with their
per-configuration processes (:mod:`pretrain.bench.process`): each bench adds its model's options, then
the common ones, whose help differs by bench where their defaults do. Standard library only."""
from __future__ import annotations

import argparse
from collections.abc import Mapping

# the help of the common options whose defaults differ by bench (see add_common_options)
PRETRAIN_HELP = {
    "batch-size": "per device and step (default: 64 on a GPU or TPU, 4 on a CPU or XLA:CPU)",
    "steps": "timed steps per round (default: 10 on a GPU, 1 on a CPU)",
    "device": "cuda, cpu or xla (default: cuda when available); xla: data parallel over every device "
              "torch_xla's runtime reports on this host (SPMD), timed in all and per device",
    "configs": "comma-separated, from release, fp32, bf16, fp16 (default: release and this device's fast "
               "precisions; bf16 on CPUs only with AVX512-BF16/AMX; bf16 alone on XLA)",
    "compile": "also each non-release configuration torch.compile'd",
    "data": "images for the pipeline and end-to-end parts (default: generated COCO-like JPEGs); "
            "'synthetic': the step only",
    "images": "images for the one-worker pipeline rates: generated, or taken from --data (default 64)",
    "workers": "data-loader workers end to end (default: 12 on a GPU, 1 on a CPU)",
}


def add_common_options(p: argparse.ArgumentParser, helps: Mapping[str, str], images: int = 64) -> None:
    """The options every bench has: the step's batch and timing, the device, the configurations, the
    peak for MFU, the data parts and ``--json``; ``helps`` holds the bench's texts of those in
    :data:`PRETRAIN_HELP`."""
    p.add_argument("--batch-size", type=int, default=None, help=helps["batch-size"])
    p.add_argument("--steps", type=int, default=None, help=helps["steps"])
    p.add_argument("--rounds", type=int, default=3, help="rounds of timed steps, configurations taking turns")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens there)")
    p.add_argument("--device", default=None, help=helps["device"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads per configuration (default: torch's)")
    p.add_argument("--configs", default=None, help=helps["configs"])
    p.add_argument("--compile", action="store_true", help=helps["compile"])
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak for MFU (default: known GPUs' bf16 peak; none on CPUs)")
    p.add_argument("--data", default=None, metavar="DIR|synthetic", help=helps["data"])
    p.add_argument("--images", type=int, default=images, help=helps["images"])
    p.add_argument("--workers", type=int, default=None, help=helps["workers"])
    p.add_argument("--json", action="store_true", help="print results as JSON lines")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """``lsmae bench pretrain``'s options; each configuration's process parses the same ones (and its CONFIG)."""
    p = argparse.ArgumentParser(prog="lsmae bench pretrain", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mae_vit_base_patch16_dec384d12h8b")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--mask-downsampling", type=int, default=2)
    add_common_options(p, PRETRAIN_HELP)
    return p
