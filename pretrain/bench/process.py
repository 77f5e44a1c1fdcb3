"""One configuration of a benchmark (``lsmae bench pretrain``, ``finetune``, ``segment``) in its own process,
so that its peak memory is its own: what every bench's step shares, and the protocol the bench speaks to it.

The process builds its :class:`BenchStep` (model, optimizer, synthetic device tensors), runs the untimed
warm-up steps (compilation included), prints their time and then answers the bench over stdin/stdout (JSON
lines): ``step`` times ``--steps`` training steps on synthetic tensors; ``finish`` reports peak memory and
torch's FLOP counter's view; ``e2e DIR WORKERS`` (to the fastest configuration, after ``finish``) times
steps fed by the command's data loader reading DIR, next to synthetic steps, in this warm process (a
compiled model is not compiled twice). The bench sends ``step`` to each configuration in turn, so that a
machine shared with other work slows them alike. End of input ends the process.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from pretrain.engine.backends import TorchBackend
from pretrain.engine.run_plan import DTYPES
from pretrain.errors import LsmaeError

PREFETCH = 2  # batches each data-loader worker keeps ready
LOADER_ITEMS = 10**6  # a loader that does not run out during a bench


def parse_config(name: str, baseline: str) -> tuple[bool, torch.dtype | None, bool]:
    """``baseline`` (the code a user would otherwise run), or a precision (``fp32``, ``bf16``, ``fp16``)
    with ``+compile``: (baseline, autocast dtype, compiled). The baseline's own precision is its bench's."""
    base, _, extra = name.partition("+")
    if base not in (baseline, *DTYPES) or extra not in ("", "compile") or (base == baseline and extra):
        raise LsmaeError(f"unknown config {name!r}: {baseline}, fp32, bf16 or fp16, the last three optionally "
                         "+compile")
    return base == baseline, DTYPES.get(base), extra == "compile"


def precision_text(dtype: torch.dtype | None) -> str:
    """How the training commands run a precision: ``fp32``, ``bf16 autocast``, ``fp16 autocast, GradScaler``."""
    name = next(name for name, value in DTYPES.items() if value == dtype)
    return name if dtype is None else f"{name} autocast" + (", GradScaler" if dtype == torch.float16 else "")


def repeating_loader(dataset: Dataset, batch: int, workers: int, device: torch.device,
                     collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
    """The training commands' loader settings (``pin_memory`` on CUDA, ``drop_last``, the collate given)
    over ``dataset`` reshuffled again and again, with workers that persist."""
    return DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, num_samples=LOADER_ITEMS),
                      num_workers=workers, collate_fn=collate_fn, pin_memory=device.type == "cuda", drop_last=True,
                      prefetch_factor=PREFETCH if workers else None, persistent_workers=workers > 0)


class BenchStep:
    """A bench's training step on one backend: subclasses build the model and optimizer and define
    :meth:`step`, :meth:`flop_probe` and :meth:`data_loader`; this class times them, reads the peak
    memory and counts FLOPs. ``precision`` says what the step runs in (autocast dtype, grad scaler)."""

    backend: TorchBackend
    baseline: bool
    compiled: bool
    dtype: torch.dtype | None
    batch: int  # images per step over all devices
    opt: torch.optim.Optimizer

    def __init__(self, backend: TorchBackend, config: str, baseline: str) -> None:
        self.backend = backend
        self.baseline, self.dtype, self.compiled = parse_config(config, baseline)
        self.device, self.devices = backend.device, backend.world_size
        self.precision = precision_text(self.dtype)

    def step(self, batch: Any = None) -> None:
        """One training step on a batch already on the device (the synthetic tensors when None)."""
        raise NotImplementedError

    def flop_probe(self) -> tuple[torch.Tensor, int]:
        """The loss of a few images (forward only) and their number, for the FLOP counter."""
        raise NotImplementedError

    def data_loader(self, folder: Path, workers: int) -> DataLoader:
        """The command's training loader over ``folder``, ``workers`` processes (see :func:`repeating_loader`)."""
        raise NotImplementedError

    def to_device(self, batch: Any) -> Any:
        """A loader batch as :meth:`step` takes it: its tensors on the device."""
        return [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]

    def timed(self, steps: int, batches: Iterator[Any] | None = None) -> float:
        """Seconds per step over ``steps`` steps (on synthetic tensors unless ``batches`` given)."""
        self.backend.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(None if batches is None else self.to_device(next(batches)))
        self.backend.synchronize()
        return (time.perf_counter() - start) / steps

    def peak_memory_gb(self) -> float:
        """The device's peak where it reports one (CUDA, TPU), else this process's peak resident memory."""
        peak = self.backend.peak_memory_bytes()
        return peak / 2**30 if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def counted_flops(self) -> tuple[int, list[str]]:
        """FLOPs of one image's forward + backward as torch.utils.flop_counter counts them, and the
        attention operators it met without a formula (it counts those as 0)."""
        seen: set[Any] = set()

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.add(func.overloadpacket)
                return func(*args, **(kwargs or {}))

        counter = FlopCounterMode(display=False)
        with counter, Ops():
            loss, images = self.flop_probe()
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        missing = sorted(str(op) for op in seen if "attention" in str(op) and op not in flop_registry)
        return counter.get_total_flops() // images, missing

    def facts(self) -> dict[str, Any]:
        """What the warm-up record tells the bench besides its time: devices, precision, backend counters."""
        return {"devices": self.devices, "precision": self.precision, **self.backend.diagnostics()}


def _batches(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def end_to_end(stepper: BenchStep, folder: Path, workers: int, warmup: int, steps: int) -> dict[str, Any]:
    """Steps fed by ``workers`` loader processes reading ``folder``, next to synthetic steps in this
    process. The batches the workers prefetched meanwhile are consumed untimed first: the timed steps
    see the rate the workers sustain, not their queue."""
    batches = _batches(stepper.data_loader(folder, workers))
    stepper.timed(max(warmup, 1), batches)
    synthetic = stepper.timed(steps)
    stepper.timed(max(PREFETCH * workers, 1), batches)
    steps = max(steps, 2 * PREFETCH * workers)
    data = stepper.timed(steps, batches)
    return {"workers": workers, "steps": steps, "synthetic_images_per_s": stepper.batch / synthetic,
            "data_images_per_s": stepper.batch / data}


def serve(args: argparse.Namespace, make_step: Callable[[argparse.Namespace, str], BenchStep]) -> None:
    """The configuration's side of the protocol (see the module doc); ``args.configuration`` names it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    stepper = make_step(args, args.configuration)
    warmup = stepper.timed(args.warmup) * args.warmup
    print(json.dumps({"warmup_s": warmup, **stepper.facts()}), flush=True)
    for line in sys.stdin:
        command, _, operands = line.strip().partition(" ")
        if command == "step":
            print(json.dumps({"s_per_step": stepper.timed(args.steps)}), flush=True)
        elif command == "finish":
            # the counter's view of this code's model (not the baseline's; compiled graphs hide their operators),
            # and none on XLA, whose lazy tensors the counter does not see run
            counted = not (stepper.baseline or stepper.compiled or args.device == "xla")
            flops, missing = stepper.counted_flops() if counted else (0, [])
            print(json.dumps({"peak_memory_gb": stepper.peak_memory_gb(), "counted_flops": flops,
                              "no_formula": missing, **stepper.backend.diagnostics()}), flush=True)
        elif command == "e2e":
            folder, workers = operands.rsplit(" ", 1)  # the folder's name may hold spaces
            print(json.dumps(end_to_end(stepper, Path(folder), int(workers), args.warmup,
                                        args.steps * args.rounds)), flush=True)


def main(parser: argparse.ArgumentParser, make_step: Callable[[argparse.Namespace, str], BenchStep]) -> None:
    """``python -m MODULE [bench options] CONFIG``: one configuration's process."""
    parser.add_argument("configuration", metavar="CONFIG")
    serve(parser.parse_args(), make_step)
