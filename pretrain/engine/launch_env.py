"""What the launcher (torchrun, srun + torchrun) told this process: its place among the processes
of a run. Standard library only, so that a plan (``--dry-run``) can print the process count
without importing torch; the backends (:mod:`pretrain.engine.backends`) read it here and nowhere else."""
from __future__ import annotations

import os


def launched_processes() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def launched_rank() -> int:
    """This process's rank among them (0 without a launcher)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its machine: the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", 0))
