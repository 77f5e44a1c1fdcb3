"""Every error the ``lsmae`` entry points report as a one-line message, and the handler that does it.

Standard library only, so that any module (and a command that only looks something up) can raise
or catch these without importing torch.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class LsmaeError(Exception):
    """A problem the user can fix (bad input, missing file, failed verification)."""


class DataError(LsmaeError):
    """A data folder that is missing, empty, damaged or laid out unexpectedly."""


class CheckpointError(LsmaeError):
    """A file that is not a usable MAE checkpoint (damaged, unsafe, or of another kind)."""


class VerificationError(CheckpointError):
    """A checkpoint whose keys or shapes differ from what its architecture defines."""


class UnknownNameError(LsmaeError, KeyError):
    """A name that none of the looked-up tables holds (architectures, zoo entries)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownModelError(UnknownNameError):
    """An architecture name that is not in :mod:`pretrain.models.archs`."""


class NonFiniteLossError(LsmaeError):
    """Training produced a NaN or infinite loss."""


# --------------------------------------------------------------------------- raised by zoo, bridges and the benchmarks
class MissingDataError(DataError, FileNotFoundError):
    """A data folder that does not exist."""


class MissingDependencyError(LsmaeError, ImportError):
    """An optional package a command needs is not installed or fails to import (:mod:`pretrain.optional`)."""


class UnknownEntryError(UnknownNameError):
    """A checkpoint id that names no zoo entry."""


class UnknownSourceError(UnknownEntryError):
    """A SOURCE that is neither an existing file or folder nor a zoo id."""


class CacheError(LsmaeError):
    """The checkpoint cache cannot provide an entry (digest mismatch, lock, unwritable folder, pin file)."""


class NotCachedError(CacheError, FileNotFoundError):
    """An entry that is not cached while offline mode forbids downloading it."""


class HFFolderError(CheckpointError):
    """A transformers folder that is not readable as an MAE checkpoint."""


class ConversionError(LsmaeError, ValueError):
    """Weights that cannot be converted as asked (target, sizes, layout)."""


class LoadContractError(ConversionError):
    """Converted weights that would leave part of the Detectron2 backbone uninitialised, or go unused."""


class DetectError(LsmaeError):
    """A detection run that cannot start as asked (config, data, GPUs, source)."""


class BenchWorkerError(LsmaeError):
    """A benchmark configuration's process ended without its answer (its error output went to stderr)."""


class ResumeError(LsmaeError):
    """A run folder that cannot be continued: none of its checkpoints loads, or the checkpoint belongs to
    another run (another model, data set or recipe)."""


class DownloadError(LsmaeError):
    """A download that failed for good (HTTP error, retries exhausted, size or digest wrong)."""


class DemoError(LsmaeError):
    """A step of ``lsmae demo`` that failed (its log names the cause)."""


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
        print(f"{prog}: error: {_without_worker_traceback(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {INTERRUPTED_HINT}", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"{prog}: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    return 0
