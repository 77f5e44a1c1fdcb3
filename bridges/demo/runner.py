"""How one step of ``lsmae demo`` runs: numbered and timed, its command line printed (to copy), what
it prints sent to ``WORKDIR/logs/STEP.log`` with the progress lines echoed, a bug turned into a
one-line error with the traceback kept; detection as a child ``lsmae detect`` process. Each step's
commands, result line and pictures are kept in :attr:`Demo.steps` for the report page."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridges.demo.config import DemoConfig
from bridges.demo.errors import DemoError
from pretrain.errors import LsmaeError, OptionError

EPOCH_DONE = re.compile(r"epoch \d+/\d+ done")


@dataclass
class StepRecord:
    """What one step did, for the report: its commands, its one-line result and the pictures it made."""

    number: str
    title: str
    commands: list[str] = field(default_factory=list)
    result: str = ""
    seconds: float = 0.0
    pictures: list[tuple[Path, str]] = field(default_factory=list)  # (file, caption)


@dataclass
class Demo:
    """What the steps of one demo run share: where things go, the options, and what earlier steps made."""

    workdir: Path
    options: DemoConfig
    artefacts: dict[str, Path] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)  # visualize's, for the transformers export to compare
    steps: list[StepRecord] = field(default_factory=list)  # in the order they ran, the running one last

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def heldout(self) -> list[Path]:
        return sorted((self.data / "photos" / "heldout").glob("*.png"))

    def log_path(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"

    def step(self, number: str, title: str, action: Callable[[], str]) -> None:
        """Run ``action`` (which returns its one-line result) and print the result with the time taken."""
        print(f"[{number}] {title}", flush=True)
        record = StepRecord(number, title)
        self.steps.append(record)
        start = time.perf_counter()
        try:
            result = action()
        except (LsmaeError, OSError):  # the user's to fix: `lsmae` prints them as one line
            raise
        except Exception:  # a bug, not a user mistake: keep the traceback for the report, say where it is
            log = self.log_path("traceback")
            log.write_text(traceback.format_exc())
            raise DemoError(f"step {number} ({title}) broke: {sys.exc_info()[1]!r}; traceback in {log}") from None
        record.result, record.seconds = result, time.perf_counter() - start
        print(f"      {result} ({record.seconds:.1f} s)", flush=True)

    def show(self, picture: Path, caption: str) -> None:
        """Put ``picture`` on the report page under the running step."""
        self.steps[-1].pictures.append((picture, caption))

    def _command(self, argv: list[str]) -> None:
        line = f"lsmae {shlex.join(argv)}"
        self.steps[-1].commands.append(line)
        print(f"      $ {line}", flush=True)

    @contextlib.contextmanager
    def logged(self, name: str, argv: list[str], logger: logging.Logger | None = None,
               echo: re.Pattern[str] | None = None):
        """Print the command line a step stands for; send what the step prints (and ``logger``'s
        records, echoing those matching ``echo``) to the step's log. Yields the log's path."""
        self._command(argv)
        log = self.log_path(name)
        console = sys.stdout
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            handler = _EchoingHandler(f, console, echo or EPOCH_DONE)
            if logger is not None:
                logger.addHandler(handler)
            try:
                yield log
            except LsmaeError as e:  # the same error, the log named (an option's keeps its field placeholders)
                raise type(e)(f"{e.template if isinstance(e, OptionError) else e} (log: {log})") from None
            finally:
                if logger is not None:
                    logger.removeHandler(handler)

    def lsmae_child(self, name: str, argv: list[str], progress: str, env: dict[str, str] | None = None) -> None:
        """``lsmae ARGV`` as a child process; lines matching ``progress`` are echoed, all go to the step's log."""
        log = self.log_path(name)
        self._command(argv)
        cmd = [sys.executable, "-m", "bridges", *argv]
        with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                   env={**os.environ, **(env or {})}) as child:
            for line in child.stdout or ():
                f.write(line)
                f.flush()
                if re.search(progress, line):
                    print(f"        {line.strip()}", flush=True)
        if child.returncode != 0:
            raise DemoError(f"`lsmae {shlex.join(argv)}` failed (exit {child.returncode}): {_last_error(log)} "
                            f"(log: {log})")


class _EchoingHandler(logging.StreamHandler):
    """Writes every record to the step's log; prints those matching ``pattern`` on the console."""

    def __init__(self, stream: Any, console: Any, pattern: re.Pattern[str]) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        self.console = console
        self.pattern = pattern

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        message = record.getMessage()
        if self.pattern.search(message):
            print(f"        {message}", file=self.console, flush=True)


def _last_error(log: Path) -> str:
    lines = log.read_text().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()
