"""Run logging shared by the training engines: a console handler, progress/JSON-lines/TensorBoard
records and ETA formatting."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from pretrain.optional import missing

log = logging.getLogger(__name__)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when the handler was made: a
    run started inside a redirection (``lsmae demo``'s step logs, pytest's capture, a notebook cell)
    must not leave later runs of the same process writing into a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the property always wins
        pass


def setup_logging(logger: logging.Logger, is_main: bool) -> None:
    """Our own handler: root logging may already be configured (torch_xla does) or not at all."""
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)


class RunLogger:
    """Progress lines, JSON lines and TensorBoard scalars, written by the main process."""

    def __init__(self, output_dir: Path, enabled: bool, logger: logging.Logger = log) -> None:
        self.enabled = enabled
        self.jsonl = output_dir / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # torch's module raises it when tensorboard is missing or too old
                logger.warning("%s; logging to %s only", missing("tensorboard", "TensorBoard logging", e), self.jsonl)
            else:
                self.tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, float) and key not in ("epoch",):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h{seconds % 3600 // 60:02d}m" if seconds >= 86400 \
        else f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
