"""Training checkpoints of a run folder: naming, finding the newest valid one, the arguments they
record, export."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pretrain.atomic import save_torch
from pretrain.errors import CheckpointError, LsmaeError
from pretrain.safe_load import load_checkpoint

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pth$")
log = logging.getLogger(__name__)


def checkpoint_path(output_dir: Path, epoch: int) -> Path:
    """``checkpoint-{epoch}.pth``, epoch counted from 0 as in the release (the last is ``epochs - 1``)."""
    return output_dir / f"checkpoint-{epoch}.pth"


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by the engine (plain tensors and numbers: ``weights_only`` suffices)."""
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "epoch" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint of this engine (needs 'model' and 'epoch')")
    return ckpt


def pretraining_checkpoints(output_dir: Path) -> list[Path]:
    """The folder's ``checkpoint-{epoch}.pth``, newest epoch first."""
    found = ((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*.pth")
             if (m := CHECKPOINT_RE.match(p.name)))
    return [p for _, p in sorted(found, reverse=True)]


def newest_loadable(newest_first: Iterable[Path], load: Callable[[Path], dict[str, Any]] = load_training_checkpoint
                    ) -> tuple[Path, dict[str, Any]] | None:
    """The first of ``newest_first`` that ``load`` reads: a torn or partial file (a process killed
    while writing it, a full disk) is logged and skipped. None when there is no file; when there are
    files and none loads, a :class:`CheckpointError` naming each (no silent fresh start)."""
    failures = []
    for path in newest_first:
        try:
            return path, load(path)
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint %s", e)
            failures.append(str(e))
    if failures:
        raise CheckpointError(f"no checkpoint loads ({'; '.join(failures)})")
    return None


def export_release(source: Path, out: Path) -> Path:
    """Write the weights of a run folder's newest checkpoint (or of one checkpoint file) in the
    release format ``{'model': state_dict}``: no optimizer, scaler or arguments."""
    source = Path(source)
    if source.is_dir():
        newest = newest_loadable(pretraining_checkpoints(source))
        if newest is None:
            raise LsmaeError(f"{source}: no loadable checkpoint-*.pth in this folder")
        ckpt = newest[1]
    else:
        ckpt = load_training_checkpoint(source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch(out, {"model": ckpt["model"]})

    return out
