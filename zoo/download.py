"""Resumable, verified, atomic downloads over HTTP(S) (and ``file://`` for packaged files).

Bytes go to ``<dest>.part`` and are hashed as they arrive. A dropped connection, a 5xx or
429 answer is retried with backoff, resuming with an HTTP Range request from the bytes
already on disk; a new process resumes the same way. Only a complete file that passed
``verify`` is renamed to ``dest``, so readers never see a partial or unverified file.
"""
from __future__ import annotations

import datetime
import email.utils
import hashlib
import queue
import math
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from pretrain.errors import LsmaeError

from .settings import CHUNK_SIZE

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 120.0


class DownloadError(LsmaeError):
    pass


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


@dataclass
class _Response:
    """A body starting at ``start`` of a file of ``total`` bytes (None when unknown)."""

    start: int
    total: int | None
    length: int | None
    chunks: Iterator[bytes]


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


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


@contextmanager
def _open_http(session: requests.Session, url: str, start: int, timeout: float) -> Iterator[_Response]:
    headers = {"Range": f"bytes={start}-", "Accept-Encoding": "identity"} if start else {
        "Accept-Encoding": "identity"}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {r.status_code}", _retry_after(r.headers.get("Retry-After")))
        length = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        if r.status_code == 416 and start:
            total = r.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == start:  # the partial file is already complete
                yield _Response(start, start, 0, iter(()))
                return
            raise _Retryable("server refused the resume range; restarting", 0.0)  # caller restarts
        if r.status_code == 206:
            unit, _, spec = r.headers.get("Content-Range", "").partition(" ")
            first, _, total = spec.partition("/")
            range_start = int(first.split("-")[0]) if first[:1].isdigit() else -1
            if range_start != start:
                raise DownloadError(f"{url}: server answered range {spec!r} for a request from byte {start}")
            yield _Response(start, int(total) if total.isdigit() else None, length,
                            r.iter_content(CHUNK_SIZE))
            return
        if r.status_code != 200:
            hint = " (check the id, or LSMAE_MIRROR / --mirror)" if r.status_code == 404 else ""
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}{hint}")
        yield _Response(0, length, length, r.iter_content(CHUNK_SIZE))


@contextmanager
def _open_file(url: str, start: int) -> Iterator[_Response]:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DownloadError(f"{url}: {e.strerror}") from None
    with f:
        total = os.fstat(f.fileno()).st_size
        f.seek(min(start, total))
        yield _Response(min(start, total), total, total - min(start, total),
                        iter(lambda: f.read(CHUNK_SIZE), b""))


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
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()


def _hash_existing(part: Path, hasher: BackgroundSha256) -> int:
    with open(part, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            hasher.update(block)
    return part.stat().st_size


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
    part = partial_path(dest)
    hasher = BackgroundSha256()
    have = _hash_existing(part, hasher) if part.exists() else 0
    show = not quiet and sys.stderr.isatty()
    bar = tqdm(desc=desc or dest.name, unit="B", unit_scale=True, unit_divisor=1024,
               initial=have, disable=not show, file=sys.stderr, leave=False)
    session = requests.Session()
    attempt, total = 0, None
    try:
        while True:
            try:
                opener = _open_file(url, have) if url.startswith("file:") else _open_http(session, url, have, timeout)
                with opener as resp, open(part, "ab" if resp.start else "wb") as out:
                    if resp.start != have:  # the server ignored the Range header: start over
                        hasher.hexdigest()  # stop the old worker
                        hasher, have = BackgroundSha256(), 0
                        bar.reset()
                    total = resp.total
                    bar.total = total
                    expected_end = have + resp.length if resp.length is not None else None
                    for chunk in resp.chunks:
                        out.write(chunk)
                        hasher.update(chunk)
                        have += len(chunk)
                        bar.update(len(chunk))
                        if expected_end is not None and have > expected_end:
                            raise DownloadError(f"{url}: server sent more bytes than it announced")
                    # no fsync: it doubles the time of a download, and a file torn by a power cut
                    # cannot pass for a good one, since every use re-checks its pinned digest
                if expected_end is not None and have < expected_end:
                    raise _Retryable(f"connection closed after {have} of {expected_end} bytes")
                break
            except (_Retryable, requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                attempt += 1
                if isinstance(e, _Retryable) and "restarting" in str(e):
                    part.unlink(missing_ok=True)
                    hasher.hexdigest()
                    hasher, have = BackgroundSha256(), 0
                if attempt > retries:
                    raise DownloadError(
                        f"{url}: giving up after {retries} retries ({_reason(e)}); "
                        f"{have} bytes kept in {part}, the next fetch resumes from there"
                    ) from None
                wait = e.wait if isinstance(e, _Retryable) and e.wait is not None else backoff * 2 ** (attempt - 1)
                bar.write(f"download interrupted ({_reason(e)}); retry {attempt}/{retries} in {wait:.1f}s",
                          file=sys.stderr) if show else None
                time.sleep(wait)
    finally:
        bar.close()
        session.close()
        digest = hasher.hexdigest()  # also ends the worker thread when the download failed
    try:
        if verify is not None:
            verify(part, digest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]
