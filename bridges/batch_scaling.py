"""A recipe at another batch size, detectron2's ``auto_scale_workers`` rule: the lr scales with the
batch, iteration counts (length, warmup, periods, lr steps) inversely. Shared by ``lsmae detect``
and ``lsmae segment``; standard library only (their plans are printed without torch)."""
from __future__ import annotations

from fractions import Fraction


def scale_iterations(iterations: int, recipe_batch: int, batch: int) -> int:
    """``iterations`` of the recipe's batch as iterations of ``batch`` images, rounded, at least 1;
    0 (never) stays 0."""
    return max(1, round(Fraction(iterations * recipe_batch, batch))) if iterations else 0
