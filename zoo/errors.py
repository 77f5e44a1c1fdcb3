"""The errors the zoo raises (registry look-ups, the cache, downloads, checkpoint verification), beside the code
that raises them. Standard library only (on :mod:`pretrain.errors`' base classes): a look-up command catches them
without importing torch."""
from __future__ import annotations

from pretrain.errors import CheckpointError, LsmaeError, UnknownNameError


class VerificationError(CheckpointError):
    """A checkpoint whose keys or shapes differ from what its architecture defines."""


class HFFolderError(CheckpointError):
    """A transformers folder that is not readable as an MAE checkpoint."""


class UnknownEntryError(UnknownNameError):
    """A checkpoint id that names no zoo entry."""


class UnknownSourceError(UnknownEntryError):
    """A SOURCE that is neither an existing file or folder nor a zoo id."""


class CacheError(LsmaeError):
    """The checkpoint cache cannot provide an entry (digest mismatch, lock, unwritable folder, pin file)."""


class NotCachedError(CacheError, FileNotFoundError):
    """An entry that is not cached while offline mode forbids downloading it."""


class DownloadError(LsmaeError):
    """A download that failed for good (HTTP error, retries exhausted, size or digest wrong)."""
