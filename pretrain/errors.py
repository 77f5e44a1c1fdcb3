"""The base of every error the ``lsmae`` entry points report as a one-line message (:class:`LsmaeError`), the
handler that does it (:func:`report_errors`), and the errors of this bottom layer (data, checkpoint files, the
architecture table, training, optional packages, the benches). The layers above define theirs beside the code
that raises them: ``zoo/errors.py``, ``bridges/errors.py`` (conversion), ``bridges/detection/errors.py`` and
``bridges/demo/errors.py``.

Standard library only, so that any module (and a command that only looks something up) can raise
or catch these without importing torch.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any


class LsmaeError(Exception):
    """A problem the user can fix (bad input, missing file, failed verification)."""


_FIELD = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_SPELLINGS: dict[str, str] = {}  # field name -> its command-line spelling, where the configs declare one


def register_spelling(field: str, spelling: str) -> None:
    """How the command line spells config field ``field`` (:mod:`pretrain.configs` registers each)."""
    _SPELLINGS.setdefault(field, spelling)


class OptionError(LsmaeError):
    """An option of the Python API (a config field) the command cannot run with. The message names fields
    as ``{name}``: ``str()`` shows the field's name, :meth:`command_line_message` its command-line spelling
    (``--name-with-dashes``, ``SOURCE``), which :func:`report_errors` prints."""

    def __init__(self, template: str) -> None:
        super().__init__(template)
        self.template = template

    def __str__(self) -> str:
        return _FIELD.sub(lambda m: m.group(1), self.template)

    def command_line_message(self) -> str:
        return _FIELD.sub(lambda m: _SPELLINGS.get(m.group(1), "--" + m.group(1).replace("_", "-")), self.template)


class DataError(LsmaeError):
    """A data folder that is missing, empty, damaged or laid out unexpectedly."""


class CheckpointError(LsmaeError):
    """A file that is not a usable MAE checkpoint (damaged, unsafe, or of another kind)."""


class UnknownNameError(LsmaeError, KeyError):
    """A name that none of the looked-up tables holds (architectures, zoo entries)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownModelError(UnknownNameError):
    """An architecture name that is not in :mod:`pretrain.models.archs`."""


class NonFiniteLossError(LsmaeError):
    """Training produced a NaN or infinite loss."""


class MissingDataError(DataError, FileNotFoundError):
    """A data folder that does not exist."""


class MissingDependencyError(LsmaeError, ImportError):
    """An optional package a command needs is not installed or fails to import (:mod:`pretrain.optional`)."""


class BenchWorkerError(LsmaeError):
    """A benchmark configuration's process ended without its answer (its error output went to stderr)."""


class ResumeError(LsmaeError):
    """A run folder that cannot be continued: none of its checkpoints loads, or the checkpoint belongs to
    another run (another model, data set or recipe)."""


INTERRUPTED_HINT = ("interrupted; running the same command again resumes (downloads from their partial file, "
                    "training runs from their last checkpoint)")


def _without_worker_traceback(message: str) -> str:
    """An error raised in a DataLoader worker comes back as 'Caught X in DataLoader worker process N.'
    with the worker's traceback, the original message on its last line: keep that line."""
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        return message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return message


def report_errors(prog: str, func: Callable[..., Any], *args: Any) -> int:
    """Run ``func(*args)`` and map what a user can fix to one line on stderr and an exit status:
    0 on success, 1 for :class:`LsmaeError` and OS errors, 130 on Ctrl-C. Bugs keep their traceback."""
    try:
        func(*args)
    except LsmaeError as e:
        message = e.command_line_message() if isinstance(e, OptionError) else str(e)
        print(f"{prog}: error: {_without_worker_traceback(message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {INTERRUPTED_HINT}", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"{prog}: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    return 0
