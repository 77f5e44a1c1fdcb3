"""The options that the training and evaluation commands share (``--precision``, ``--device``,
``--num-workers``, ``--resume``, ``--seed``, ``--compile``), declared once so that each means the same in
every command; what a command sets for itself (its devices, its loader workers, its output folder) is
its row of :data:`TASKS`.

Standard library only: ``lsmae COMMAND --help`` registers these without importing torch. The module
lives in ``pretrain``, the bottom layer, because ``python -m pretrain`` declares them too.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from pretrain.errors import OptionError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto, then the keys of pretrain.engine.run_plan.DTYPES
XLA_NOTE = "xla: TPU (or XLA:CPU) through torch_xla, data parallel over every device the runtime reports (SPMD)"


@dataclass(frozen=True)
class Task:
    """One command's own values for the shared options."""

    devices: tuple[str, ...] = ("cuda", "cpu")  # --device's choices
    workers: int = 10  # --num-workers defaults to min(workers, CPUs)
    output_dir: str | None = None  # --output-dir of a training run
    bench: str | None = None  # the `lsmae bench` target that times its --compile
    resume_flag: bool = False  # --resume as Detectron2's on/off switch instead of auto | PATH | ''

    def default_workers(self) -> int:
        return min(self.workers, os.cpu_count() or 1)


TASKS = {
    "pretrain": Task(devices=("cuda", "cpu", "xla"), output_dir="runs/pretrain", bench="pretrain"),
    "finetune": Task(output_dir="runs/finetune", bench="finetune"),
    "linprobe": Task(output_dir="runs/linprobe", bench="finetune"),
    "eval": Task(),
    "segment": Task(workers=8, output_dir="runs/segment", bench="segment"),
    "detect": Task(resume_flag=True),
    "demo": Task(),
    "visualize": Task(),
}


def _declarations(task: Task) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each shared option's flag and ``add_argument`` keywords for ``task``."""
    device_notes = [XLA_NOTE] if "xla" in task.devices else ["on TPUs, through XLA, only pretraining runs"]
    resume = (dict(action="store_true", help="continue from the last checkpoint in the output folder when there is "
                                             "one (Detectron2's on/off resume; default: off)")
              if task.resume_flag else
              dict(default="auto", help="'auto' (the newest checkpoint of this run in the output folder, if there is "
                                        "one), a checkpoint path, or '' to start fresh (default %(default)s)"))
    return {
        "precision": ("--precision", dict(choices=PRECISIONS, default="auto", help=(
            "autocast dtype; auto = bf16 where supported (TPU, Ampere+ GPUs, AMX/AVX512-BF16 CPUs), else fp16 on "
            "GPUs (with a grad scaler) and fp32 on CPUs"))),
        "device": ("--device", dict(choices=task.devices, default=None,
                                    help="; ".join(["default: cuda when available, else cpu", *device_notes]))),
        "workers": ("--num-workers", dict(type=int, default=task.default_workers(), help=(
            f"data loader processes per device (default: min({task.workers}, CPUs) = %(default)s here)"))),
        "resume": ("--resume", resume),
        "seed": ("--seed", dict(type=int, default=0, help="random seed (default %(default)s)")),
        "compile": ("--compile", dict(action="store_true", help=(
            "torch.compile for the training steps (compilation first: a minute or more before the first step, in "
            "every run; evaluation, where the command has one, runs uncompiled); a run resumes with or without it"
            + (f"; `lsmae bench {task.bench} --compile` shows what it gains on this machine" if task.bench else "")))),
    }


def check_compile(device: str | None, compile_model: bool) -> None:
    """``compile`` is torch.compile, for CUDA and CPU: on XLA the whole step is compiled already."""
    if compile_model and device == "xla":
        raise OptionError("{compile} is for {device} cuda or cpu: on XLA the whole step is already compiled")


def declaration(task: str, name: str) -> tuple[str, dict[str, Any]]:
    """Shared option ``name``'s flag and ``add_argument`` keywords for ``task`` (the API's configs
    take their defaults and choices from here too: :func:`pretrain.configs.shared`)."""
    return _declarations(TASKS[task])[name]


def add_shared(group: argparse.ArgumentParser | argparse._ArgumentGroup, task: str, name: str,
               note: str = "") -> argparse.Action:
    """Declare shared option ``name`` (precision, device, workers, resume, seed or compile) with ``task``'s
    row of :data:`TASKS`; ``note`` is the command's own sentence after the shared help."""
    flag, keywords = declaration(task, name)
    if note:
        keywords["help"] = f"{keywords['help']}. {note}"
    return group.add_argument(flag, **keywords)
