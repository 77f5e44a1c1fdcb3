"""What ``lsmae bench finetune`` and ``lsmae bench segment`` share on top of the pretraining bench's
machinery (:mod:`pretrain.bench.driver`): the model named by architecture or zoo id and built with
random weights (a step's speed does not depend on them), their options' defaults by device, the
analytic FLOP count reported by each configuration's process (counted from the model it built), and
how the lines say a configuration's precision and one worker's rate."""
from __future__ import annotations

import argparse
from typing import Any

from pretrain.bench import driver
from pretrain.bench.args import add_common_options
from pretrain.errors import LsmaeError, UnknownNameError
from pretrain.models.archs import list_models, resolve_model_name
from pretrain.models.flops import ModelFlops

DEFAULT_MODEL = "mae_vit_base_patch16_dec384d12h8b"
GPU_STEPS, CPU_STEPS = 10, 1
MODEL_HELP = ("an MAE architecture (`lsmae list` shows them by zoo id: their `model` column) or a zoo id, whose "
              "architecture is taken from the registry (nothing is fetched); built with random weights, which do not "
              "change a step's speed (default %(default)s; the demo architecture: demo)")


def architecture(name: str) -> str:
    """The MAE architecture of ``name``: an architecture (or alias), or a zoo id's (read from the registry)."""
    try:
        return resolve_model_name(name)
    except UnknownNameError:
        pass
    from zoo.registry import get_entry

    try:
        return get_entry(name).model
    except UnknownNameError:
        raise LsmaeError(f"--model {name}: neither an MAE architecture ({', '.join(list_models())}) nor a zoo id "
                         "(`lsmae list`)") from None


def mae_weights(model: str) -> dict[str, Any]:
    """Seeded random weights of MAE architecture ``model``: the source the bench's models are converted from."""
    import torch

    from pretrain.models.mae import create_model

    torch.manual_seed(0)
    return create_model(model).state_dict()


def add_options(p: argparse.ArgumentParser, baseline: str, gpu_batch: int, cpu_batch: int, workers: str,
                data: str, images: int) -> None:
    """The common options (:func:`pretrain.bench.args.add_common_options`) with these defaults in their help."""
    add_common_options(p, {
        "batch-size": f"images per step (default: {gpu_batch} on a GPU, {cpu_batch} on a CPU)",
        "steps": f"timed steps per round (default: {GPU_STEPS} on a GPU, {CPU_STEPS} on a CPU)",
        "device": "cuda or cpu (default: cuda when available)",
        "configs": f"comma-separated, from {baseline}, fp32, bf16, fp16 (default: {baseline} and this device's fast "
                   "precision: bf16 on GPUs, fp32 and (on CPUs with AVX512-BF16/AMX) bf16 on CPUs)",
        "compile": f"also each configuration but {baseline} torch.compile'd, as the command's --compile",
        "data": data,
        "images": f"images for the one-worker pipeline rate: generated, or taken from --data (default {images})",
        "workers": f"data-loader workers end to end (default: {workers} on a GPU, 1 on a CPU)",
    }, images=images)


def resolve_defaults(args: argparse.Namespace, baseline: str, gpu_batch: int, cpu_batch: int,
                     gpu_workers: int) -> None:
    """The device and its peak (:func:`pretrain.bench.driver.device_facts`), then the options left unset:
    GPU sizes on a GPU, small ones on a CPU; the configurations expanded."""
    from pretrain.engine.backends import bf16_supported_on_cpu
    from pretrain.shared_options import check_compile

    if args.device not in (None, "cuda", "cpu"):
        raise LsmaeError(f"--device {args.device}: cuda or cpu (the fine-tuning commands run on GPUs and CPUs)")
    driver.device_facts(args)
    check_compile(args.device, args.compile)
    gpu = args.device == "cuda"
    args.batch_size = args.batch_size or (gpu_batch if gpu else cpu_batch)
    args.steps = args.steps or (GPU_STEPS if gpu else CPU_STEPS)
    args.workers = args.workers if args.workers is not None else (gpu_workers if gpu else 1)
    if args.configs is None:
        args.configs = f"{baseline},bf16" if gpu else f"{baseline},fp32" + (",bf16" if bf16_supported_on_cpu() else "")
    driver.expand_configs(args, baseline)


def worker_argv(args: argparse.Namespace, own: list[str]) -> list[str]:
    """The options every configuration's process gets: the bench's ``own`` and the resolved common ones."""
    return [*own, "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--rounds", str(args.rounds),
            "--warmup", str(args.warmup), "--device", args.device,
            *(["--threads", str(args.threads)] if args.threads else [])]


def flops_record(flops: ModelFlops) -> dict[str, Any]:
    """A count as a configuration's process reports it (JSON)."""
    return {"parts": [list(part) for part in flops.parts], "attention": flops.attention,
            "patch_embed": flops.patch_embed}


class TrainingBench:
    """The :class:`pretrain.bench.driver.Bench` parts the two benches share."""

    prog: str
    step_module: str
    baseline: str

    def flops(self, results: list[dict[str, Any]]) -> ModelFlops:
        record = results[0]["flops"]
        return ModelFlops(parts=tuple((name, flops) for name, flops in record["parts"]),
                          attention=record["attention"], patch_embed=record["patch_embed"])

    def flops_headline(self, flops: ModelFlops) -> str:
        g = 1e9
        return (f"FLOPs per image, training = 3 x forward: {flops.train / g:.1f} GFLOP analytic (forward "
                f"{flops.forward / g:.1f}: {flops.describe()}; attention products {flops.attention / g:.1f} of it); "
                "TFLOP/s and MFU use it")

    def describe(self, result: dict[str, Any]) -> str:
        return result["precision"]

    @staticmethod
    def one_worker(rates: dict[str, Any], what: str) -> driver.Pipeline:
        return driver.Pipeline(rates, f"input pipeline, one worker (one thread), {what}:\n"
                                      f"  {rates['ours_images_per_s']:.1f} img/s")
