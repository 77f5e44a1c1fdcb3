"""Resumable, verified, atomic downloads over HTTP(S) (and ``file://`` for packaged files).

Bytes go to ``<dest>.part`` and are hashed as they arrive. A dropped connection, a 5xx or
429 answer is retried with backoff, resuming with an HTTP Range request from the bytes
already on disk; a new process resumes the same way. Only a complete file that passed
``verify`` is renamed to ``dest``, so readers never see a partial or unverified file.

Three layers, each knowing nothing of the others' control flow:

* sources (:func:`_open_http`, :func:`_open_file`): one request for the bytes from an offset,
  its answer validated (206 with a matching ``Content-Range``; 200 means the whole file again);
* the retry policy (:mod:`zoo.retry`): which failures are tried again, how often and after how long;
* the partial file (:class:`PartialFile`, :func:`_receive`, :func:`_finish`): append and hash
  while streaming, start over on :class:`_RestartFromZero`, check the size, verify, rename.
"""
from __future__ import annotations

import datetime
import email.utils
import functools
import hashlib
import math
import os
import queue
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from .errors import DownloadError
from .retry import RetryPolicy, _RetriesExhausted, _Retryable, reason, with_retries
from .settings import CHUNK_SIZE

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 120.0


class _RestartFromZero(Exception):
    """Not a failure: the server cannot continue from the partial file (it refused the range, or
    the file is longer than the source), so the bytes kept are dropped and the download starts over."""


@dataclass
class _Response:
    """A body starting at ``start`` of a file of ``total`` bytes (None when unknown)."""

    url: str
    start: int
    total: int | None
    length: int | None
    chunks: Iterator[bytes]


Opener = Callable[[int], AbstractContextManager[_Response]]  # the body from a byte offset


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------- sources
def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay or HTTP date), in [0, MAX_RETRY_AFTER_S];
    None when absent or unparsable, so that the caller's backoff applies."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": HTTP dates are GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total) of a ``Content-Range: bytes FIRST-LAST/TOTAL`` header; None for what is absent or '*'."""
    _, _, spec = value.partition(" ")  # "bytes", the unit
    first, _, total = spec.partition("/")
    start = first.split("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


@contextmanager
def _open_http(session: requests.Session, url: str, start: int, timeout: float) -> Iterator[_Response]:
    """GET ``url`` from byte ``start`` (a Range request when resuming) and check that the answer is
    what was asked for: raises _Retryable, _RestartFromZero or DownloadError otherwise."""
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={start}-"} if start else {})}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {r.status_code}", _retry_after(r.headers.get("Retry-After")))
        length = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        if r.status_code == 416 and start:
            if _content_range(r.headers.get("Content-Range", ""))[1] == start:  # the partial file is complete
                yield _Response(url, start, start, 0, iter(()))
                return
            raise _RestartFromZero(f"{url}: server refused the range from byte {start}")
        if r.status_code == 206:
            first, total = _content_range(r.headers.get("Content-Range", ""))
            if first != start:
                raise DownloadError(f"{url}: server answered range {r.headers.get('Content-Range', '')!r} "
                                    f"for a request from byte {start}")
            yield _Response(url, start, total, length, r.iter_content(CHUNK_SIZE))
            return
        if r.status_code != 200:
            hint = " (check the id, or LSMAE_MIRROR / --mirror)" if r.status_code == 404 else ""
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}{hint}")
        yield _Response(url, 0, length, length, r.iter_content(CHUNK_SIZE))  # 200: the whole file again


@contextmanager
def _open_file(url: str, start: int) -> Iterator[_Response]:
    """A ``file://`` URL read from byte ``start``: packaged files take the same path as downloads."""
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DownloadError(f"{url}: {e.strerror}") from None
    with f:
        total = os.fstat(f.fileno()).st_size
        if start > total:
            raise _RestartFromZero(f"{url}: the partial file is longer than the file")
        f.seek(start)
        yield _Response(url, start, total, total - start, iter(lambda: f.read(CHUNK_SIZE), b""))


def _opener(url: str, session: requests.Session, timeout: float) -> Opener:
    if url.startswith("file:"):
        return lambda start: _open_file(url, start)
    return lambda start: _open_http(session, url, start, timeout)


# --------------------------------------------------------------------------- the partial file
class BackgroundSha256:
    """SHA-256 computed by a worker thread fed through a bounded queue.

    hashlib releases the GIL on large buffers, so hashing overlaps the socket reads and file
    writes instead of adding to them: the single pass runs at the speed of the slower of the
    two, not of their sum.
    """

    def __init__(self, max_pending: int = 32) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._hash.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def hexdigest(self) -> str:
        """Finish (the hasher takes no more data afterwards)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self._hash.hexdigest()


class PartialFile:
    """``<dest>.part``: the bytes received so far and their running SHA-256.

    Bytes already there (a retry, or a process that died) are hashed once on opening and then
    resumed from. The file is opened for each response only, so that between attempts its size
    on disk is ``size``, the offset the next request asks for. The caller holds the entry's lock:
    one process at a time appends.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = BackgroundSha256()
        self.size = self._hash_existing() if path.exists() else 0

    def _hash_existing(self) -> int:
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK_SIZE), b""):
                self.hasher.update(block)
        return self.path.stat().st_size

    def append(self, chunks: Iterator[bytes], limit: int | None, url: str) -> Iterator[int]:
        """Write and hash ``chunks``, yielding each one's size (for progress); more than ``limit``
        bytes in all is an error (the server sent more than it announced)."""
        with open(self.path, "ab" if self.size else "wb") as out:
            for chunk in chunks:
                if limit is not None and self.size + len(chunk) > limit:
                    raise DownloadError(f"{url}: server sent more bytes than it announced")
                out.write(chunk)
                self.hasher.update(chunk)
                self.size += len(chunk)
                yield len(chunk)
        # no fsync: it doubles the time of a download, and a file torn by a power cut
        # cannot pass for a good one, since every use re-checks its pinned digest

    def restart(self) -> None:
        """Drop the bytes kept: the next response starts at byte 0."""
        self.hasher.hexdigest()  # stop the old worker
        self.hasher = BackgroundSha256()
        self.size = 0
        self.path.unlink(missing_ok=True)

    def close(self) -> str:
        """The SHA-256 of the bytes written (also ends the worker thread, e.g. after a failure)."""
        return self.hasher.hexdigest()


def _receive(open_at: Opener, part: PartialFile, bar: tqdm) -> int | None:
    """One response appended to the partial file; returns the file's total size when the server
    told it. A body shorter than announced is retryable: the next try resumes after it."""
    with open_at(part.size) as resp:
        if resp.start != part.size:  # 200 for a range request: the server sends the whole file
            part.restart()
            bar.reset()
        bar.total = resp.total
        end = part.size + resp.length if resp.length is not None else None
        for n in part.append(resp.chunks, end, resp.url):
            bar.update(n)
    if end is not None and part.size < end:
        raise _Retryable(f"connection closed after {part.size} of {end} bytes")
    return resp.total


def _attempt(open_at: Opener, part: PartialFile, bar: tqdm) -> int | None:
    """One try at the rest of the file; a server that cannot resume makes it start over at once
    (from byte 0 there is no Range to refuse, so that happens once)."""
    try:
        return _receive(open_at, part, bar)
    except _RestartFromZero:
        part.restart()
        bar.reset()
        return _receive(open_at, part, bar)


def _finish(part: PartialFile, dest: Path, total: int | None, verify: Callable[[Path, str], None] | None) -> str:
    """Check the size the server announced and ``verify(part, sha256)``, then rename atomically; a
    file that fails is deleted (it is not a partial download to resume). Returns the SHA-256."""
    digest = part.close()
    try:
        if total is not None and part.size != total:
            raise DownloadError(f"{part.path}: {part.size} bytes, but the server announced {total}")
        if verify is not None:
            verify(part.path, digest)
    except BaseException:
        part.path.unlink(missing_ok=True)
        raise
    os.replace(part.path, dest)
    return digest


# --------------------------------------------------------------------------- download
def download(
    url: str,
    dest: Path,
    verify: Callable[[Path, str], None] | None = None,
    *,
    quiet: bool = False,
    retries: int = 6,
    backoff: float = 1.0,
    timeout: float = 60.0,
    desc: str | None = None,
) -> str:
    """Download ``url`` to ``dest`` and return its SHA-256 (hex).

    ``verify(partial_path, sha256)`` runs on the complete file before the atomic rename; if it
    raises, the partial file is deleted and the error propagates. The caller must hold the
    entry's lock so that one process at a time appends to ``<dest>.part``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = PartialFile(partial_path(dest))
    bar = tqdm(desc=desc or dest.name, unit="B", unit_scale=True, unit_divisor=1024,
               initial=part.size, disable=quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False)
    try:
        with requests.Session() as session:
            total = with_retries(RetryPolicy(retries, backoff),
                                 functools.partial(_attempt, _opener(url, session, timeout), part, bar),
                                 functools.partial(_note_retry, bar, retries))
    except _RetriesExhausted as e:
        raise DownloadError(f"{url}: giving up after {retries} retries ({e}); {part.size} bytes kept in "
                            f"{part.path}, the next fetch resumes from there") from None
    finally:
        bar.close()
        part.close()
    return _finish(part, dest, total, verify)


def _note_retry(bar: tqdm, retries: int, retry: int, wait: float, failure: BaseException) -> None:
    """Say on the terminal (when the progress bar shows) why the download pauses, and for how long."""
    if not bar.disable:
        bar.write(f"download interrupted ({reason(failure)}); retry {retry}/{retries} in {wait:.1f}s",
                  file=sys.stderr)
