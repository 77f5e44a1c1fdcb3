"""Resuming a run, one contract for every training command: which checkpoint it continues from
(``--resume``), whether that checkpoint belongs to this run, and restoring it.

Each checkpoint records its run's identity (:func:`run_identity`, saved by the
:class:`~pretrain.engine.trainer.Trainer`). Continuing another run's checkpoint would fail deep in
``load_state_dict`` or, worse, carry on silently with another model, data set or recipe; starting
over because no checkpoint loads would overwrite the run. Both are refused in one line that names
the way out.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.engine.checkpoints import newest_loadable
from pretrain.engine.trainer import Trainer
from pretrain.errors import CheckpointError, ResumeError

Checkpoint = dict[str, Any]
WAY_OUT = "use another --output-dir, or --resume '' to start over there"


def run_identity(task: str, *, model: Mapping[str, Any], input_size: int, source: str | None,
                 recipe: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a run this run: the ``task``, the architecture (``model``) at ``input_size``, the
    SHA-256 of the weights it starts from (``source``, None if none), the hyperparameters that shape
    the training (``recipe``: not its length, which a rerun may extend, nor cadence or hardware) and
    the ``data`` (resolved paths, image count). Plain values: a checkpoint loads with ``weights_only``."""
    return {"task": task, "model": dict(model), "input_size": input_size, "source": source,
            "recipe": dict(recipe), "data": dict(data)}


def find_checkpoint(resume: str, newest_first: Iterable[Path],
                    load: Callable[[Path], Checkpoint]) -> tuple[Path, Checkpoint] | None:
    """``--resume`` as every training command reads it: ``''`` starts over; ``'auto'`` takes the
    newest of the command's own checkpoints (``newest_first``) that ``load`` reads, skipping torn
    files; a path must load. When checkpoints exist and none loads, the run is refused rather than
    overwritten by a fresh start."""
    if not resume:
        return None
    if resume == "auto":
        candidates = [p for p in newest_first if p.exists()]
    elif Path(resume).is_file():
        candidates = [Path(resume)]
    else:
        raise ResumeError(f"--resume {resume}: no such file")
    try:
        return newest_loadable(candidates, load)
    except CheckpointError as e:
        raise ResumeError(f"cannot resume: {e}: move {'it' if len(candidates) == 1 else 'them'} away, or "
                          "--resume '' to start over") from None


def _fields(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested record as ``{'recipe.lr': value}``: the names a mismatch is reported by (an empty mapping is
    a value of its own, so that a field holding one is compared too)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping) and value:
            out.update(_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


ABSENT = object()  # a field one identity has and the other lacks: unequal to every value, None included


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    text = repr(value)  # a list of 1000 class names is cut short
    return text if len(text) <= 200 else text[:197] + "..."


def check_same_run(path: Path, saved: Mapping[str, Any] | None, identity: Mapping[str, Any],
                   log: logging.Logger) -> None:
    """Refuse the checkpoint at ``path`` if its run identity (``saved``) differs from this run's,
    naming the first differing field (old -> new); a field that only one of them has differs, whatever its
    value. One written before runs recorded an identity is resumed unchecked, so that runs begun with an
    earlier version go on."""
    if saved is None:
        log.info("%s records no run identity (written by an earlier version): resuming without checking it", path)
        return
    old, new = _fields(saved), _fields(identity)
    for field in [*new, *(k for k in old if k not in new)]:
        was, now = old.get(field, ABSENT), new.get(field, ABSENT)
        if was != now:
            raise ResumeError(f"{path} belongs to another run: {field} {_show(was)} -> {_show(now)}; {WAY_OUT}")


def resume_run(trainer: Trainer, model: nn.Module, resume: str, newest_first: Iterable[Path], *,
               load: Callable[[Path], Checkpoint], log: logging.Logger,
               weights: Callable[[Checkpoint], Mapping[str, torch.Tensor]] = lambda ckpt: ckpt["model"]
               ) -> tuple[Path, Checkpoint] | None:
    """Find the checkpoint (:func:`find_checkpoint`), check that it is this run's
    (:func:`check_same_run` against ``trainer.identity``), then restore the ``model``'s ``weights``
    (strictly) and the optimizer, scaler and position (:meth:`Trainer.resume`). Returns the path and
    checkpoint, for the task's own entries, or None when the run starts over."""
    found = find_checkpoint(resume, newest_first, load)
    if found is not None:
        path, ckpt = found
        check_same_run(path, ckpt.get("run"), trainer.identity, log)
        model.load_state_dict(weights(ckpt), strict=True)
        trainer.resume(ckpt)
    return found
