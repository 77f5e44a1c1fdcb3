"""A run folder's training curves as named series of (global step, value), read from its log.

Standard library only: ``lsmae plot`` reads logs without torch, and tests read them without matplotlib.

Two logs are read. ``log.jsonl`` (``lsmae pretrain``, ``finetune``, ``linprobe``, ``segment``): train
records give the training loss and the learning rate, the other records (epochs, evaluations) the
metrics. Detectron2's ``metrics.json`` (``lsmae detect``): ``total_loss`` and ``lr`` at each logged
iteration, ``bbox/AP`` and ``segm/AP`` at each evaluation. A resumed run appends records again for
steps it had logged: the last value of a series at a step wins.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError

TRAIN_LOSS, LR = "train_loss", "lr"
RUN_LOG, DETECTRON2_LOG = "log.jsonl", "metrics.json"

Series = list[tuple[int, float]]


@dataclass(frozen=True)
class Metric:
    """A validation metric: its key in the records, the axis title, and the factor to its display unit."""

    key: str
    title: str
    scale: float = 1.0


METRICS = (
    Metric("top1", "validation top-1 (%)", 100.0),  # lsmae finetune, linprobe: a fraction in the log
    Metric("mIoU", "validation mIoU (%)", 100.0),  # lsmae segment
    Metric("bbox/AP", "validation box AP"),  # lsmae detect: Detectron2 logs AP in percent
    Metric("segm/AP", "validation mask AP"),
    Metric("loss", "pretraining loss (epoch mean)"),  # lsmae pretrain's epoch records
)

STEP_RULE = ("Logs written before records carried global_step: a segmentation evaluation's `step` is its global "
             "step; other records are placed by batches, epoch x B + batch for train records and (epoch + 1) x B "
             "for epoch records, B being the batches per epoch the train records show (an epoch's last batch is "
             "always logged): with gradient accumulation, batches rather than updates. Detectron2's iteration i "
             "is step i + 1, its evaluation after training is at the last training step.")


@dataclass(frozen=True)
class Run:
    """One run's curves: ``series`` maps ``train_loss``, ``lr`` and each metric key present to its
    (global step, value) points in step order, values as logged."""

    path: Path
    log: Path
    series: dict[str, Series]
    skipped_lines: int = 0

    @property
    def metrics(self) -> list[Metric]:
        return [m for m in METRICS if self.series.get(m.key)]

    @property
    def evaluations(self) -> int:
        return len({step for m in self.metrics for step, _ in self.series[m.key]})

    def summary(self, label: str) -> str:
        """``label: 10 train records, 5 evaluations, last top1 90.6 at step 120``."""
        parts = [f"{len(self.series.get(TRAIN_LOSS, []))} train records", f"{self.evaluations} evaluations"]
        for m in self.metrics:
            step, value = self.series[m.key][-1]
            parts.append(f"last {m.key} {value * m.scale:.4g} at step {step}")
        if self.skipped_lines:
            parts.append(f"{self.skipped_lines} unreadable lines of {self.log.name} skipped")
        return f"{label}: " + ", ".join(parts)


def read_run(path: str | Path) -> Run:
    """The curves of a run folder: its ``log.jsonl``, else its Detectron2 ``metrics.json``."""
    path = Path(path)
    if not path.is_dir():
        raise LsmaeError(f"{path}: no such run folder")
    for name, points in ((RUN_LOG, _log_points), (DETECTRON2_LOG, _detectron2_points)):
        log = path / name
        if log.is_file():
            records, skipped = _read_lines(log)
            return Run(path, log, _series(points(records)), skipped)
    raise LsmaeError(f"{path}: no {RUN_LOG} (lsmae pretrain, finetune, linprobe, segment) nor {DETECTRON2_LOG} "
                     "(lsmae detect) in this folder")


def run_labels(paths: list[Path]) -> list[str]:
    """Each run's folder name; ``parent/name`` where two runs share a name (``finetune/pretrained`` vs
    ``finetune/scratch`` stay short, ``pretrained/finetune`` vs ``scratch/finetune`` become unique)."""
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _read_lines(log: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file, and how many lines were not one (a line torn by a killed
    process, which a resumed run then appends to)."""
    records, skipped = [], 0
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            skipped += 1
    return records, skipped


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric_points(record: dict[str, Any], step: int) -> Iterator[tuple[str, int, float]]:
    for m in METRICS:
        if _number(record.get(m.key)):
            yield m.key, step, float(record[m.key])


def _log_points(records: list[dict[str, Any]]) -> Iterator[tuple[str, int, float]]:
    """``log.jsonl``: train records -> training loss and lr; other records -> metrics (:data:`STEP_RULE`)."""
    batches = 1 + max((r["step"] for r in records if r.get("kind") == "train" and "global_step" not in r
                       and _number(r.get("step"))), default=0)
    for r in records:
        train = r.get("kind") == "train"
        if _number(r.get("global_step")):
            step = int(r["global_step"])
        elif train and _number(r.get("epoch")) and _number(r.get("step")):
            step = int(r["epoch"]) * batches + int(r["step"])
        elif not train and _number(r.get("step")):
            step = int(r["step"])
        elif not train and _number(r.get("epoch")):
            step = (int(r["epoch"]) + 1) * batches
        else:
            continue
        if train:
            yield from ((key, step, float(r[name])) for key, name in ((TRAIN_LOSS, "loss"), (LR, "lr"))
                        if _number(r.get(name)))
        else:
            yield from _metric_points(r, step)


def _detectron2_points(records: list[dict[str, Any]]) -> Iterator[tuple[str, int, float]]:
    """``metrics.json``: iteration i has done i + 1 updates; Detectron2 records its evaluation after
    training at iteration max_iter, capped here to the last training step."""
    iterations = [r for r in records if _number(r.get("iteration"))]
    last = max((int(r["iteration"]) + 1 for r in iterations if _number(r.get("total_loss"))), default=None)
    for r in iterations:
        step = int(r["iteration"]) + 1
        yield from ((key, step, float(r[name])) for key, name in ((TRAIN_LOSS, "total_loss"), (LR, "lr"))
                    if _number(r.get(name)))
        yield from _metric_points(r, step if last is None else min(step, last))


def _series(points: Iterable[tuple[str, int, float]]) -> dict[str, Series]:
    """Points by series in step order; a step seen again (a resumed run) keeps its last value."""
    by_name: dict[str, dict[int, float]] = {}
    for name, step, value in points:
        by_name.setdefault(name, {})[step] = value
    return {name: sorted(steps.items()) for name, steps in by_name.items()}
