"""A tiny local HTTP/1.1 file server with scripted faults, for downloader tests.

Real mirrors misbehave in a handful of recurring ways (dropped connections,
rate limiting, lying Content-Length, corrupted bytes, servers that ignore
Range).  ``FaultServer`` reproduces each of them deterministically on
127.0.0.1 so retry/resume/verification logic can be tested offline and fast.

Usage::

    with FaultServer() as srv:
        srv.add_file("coco+unlabeled_dup5/x.pth", payload)
        srv.add_faults("coco+unlabeled_dup5/x.pth", "drop", "503")
        download(srv.base_url + "coco%2Bunlabeled_dup5/x.pth", ...)
        assert srv.count("coco+unlabeled_dup5/x.pth") == 3

Paths are matched after percent-decoding, so a file registered as
``"a%2Bb/x"`` or ``"a+b/x"`` answers both ``/a%2Bb/x`` and ``/a+b/x``; the
same normalisation applies to ``add_faults``, ``count`` and ``bytes_sent``.

Ranges: ``bytes=START-``, ``bytes=START-END`` and ``bytes=-SUFFIX`` give 206
with ``Content-Range``; START >= size gives 416 with ``Content-Range: bytes
*/SIZE``; anything else (multi-range, garbage) is ignored and served as 200.
``Accept-Ranges: bytes`` is always sent, even with ``support_ranges = False``:
that models a server which advertises ranges but answers 200 anyway, the case
a resuming downloader must survive.

Faults (strings).  Each request to a path pops ONE fault from that path's FIFO
queue (HEAD requests too, unless ``fault_methods`` is narrowed, e.g. to
``{"GET"}``); with an empty queue the persistent fault, if any, applies;
otherwise the request is served normally.

``"drop"``
    Correct headers (full Content-Length), about half of the body, then the
    socket is shut down: the client sees a short read / connection error.
``"500"``, ``"503"``, ``"429"``
    That status with a small text body; 503 and 429 carry ``Retry-After: 0``.
``"404"``
    Not Found, as if the file did not exist.
``"wrong_length"``
    Content-Length larger than the body actually sent; the real bytes are
    sent, then the connection is closed.
``"flip"``
    Normal status and length, but a few bytes in the middle of the sent body
    are XOR-ed with 0xFF (simulates silent corruption; checksum must catch it).
``"slow"``
    Correct content sent in ``slow_chunk``-byte chunks (64 KiB) with
    ``slow_delay`` seconds (0.05) of sleep before each chunk.
``"truncate_200"``
    Range ignored; 200 with Content-Length equal to half the file and exactly
    that half sent (a server that lies consistently, so only the size or
    checksum check can notice).

Every request is logged in ``srv.requests`` as a ``RequestRecord`` (path,
method, range, status, bytes_sent).  A record is appended before the response
headers are written and ``bytes_sent`` is bumped before each body write, so a
client that has read a response can assert on the bookkeeping without racing
the server thread.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import unquote

import pytest

FAULTS = frozenset(
    {"drop", "500", "503", "429", "404", "wrong_length", "flip", "slow", "truncate_200"}
)
_STATUS_FAULTS = {"500": 500, "503": 503, "429": 429, "404": 404}
_CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _norm(path: str) -> str:
    """Canonical key for a path: no leading slash, no query, percent-decoded."""
    return unquote(path.split("?", 1)[0].lstrip("/"))


@dataclasses.dataclass
class RequestRecord:
    """One served request; mutable only so the handler can count body bytes."""

    path: str
    method: str
    range: str | None
    status: int
    bytes_sent: int = 0

    def __iter__(self) -> Iterator[object]:
        """Allow ``path, method, rng, status, n = record``."""
        return iter((self.path, self.method, self.range, self.status, self.bytes_sent))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # --- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output clean."""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # --- request handling -------------------------------------------------

    def _serve(self, head: bool) -> None:
        srv = self.server.owner
        path = _norm(self.path)
        range_header = self.headers.get("Range")
        data = srv._files.get(path)
        fault = srv._next_fault(path, self.command)

        def start(status: int, headers: dict[str, str | int]) -> RequestRecord:
            rec = srv._record(path, self.command, range_header, status)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, str(value))
            self.end_headers()
            return rec

        if fault in _STATUS_FAULTS or data is None:
            status = _STATUS_FAULTS.get(fault or "", 404)
            body = f"{status} {self.responses[status][0]}\n".encode()
            headers: dict[str, str | int] = {"Content-Type": "text/plain", "Content-Length": len(body)}
            if status in (429, 503):
                headers["Retry-After"] = "0"
            rec = start(status, headers)
            if not head:
                self._write(rec, body)
            return

        total = len(data)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, start_at, end = 200, 0, total  # end is exclusive
        if fault == "truncate_200":
            end = total // 2
        elif srv.support_ranges and range_header:
            parsed = _parse_range(range_header, total)
            if parsed == "unsatisfiable":
                headers.update({"Content-Range": f"bytes */{total}", "Content-Length": 0})
                start(416, headers)
                return
            if parsed is not None:
                start_at, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start_at}-{end - 1}/{total}"

        body = data[start_at:end]
        headers["Content-Length"] = len(body) + (1024 if fault == "wrong_length" else 0)
        if fault == "flip" and body:
            mid, n = len(body) // 2, min(16, len(body))
            lo = max(0, mid - n // 2)
            flipped = bytes(b ^ 0xFF for b in body[lo : lo + n])
            body = body[:lo] + flipped + body[lo + n :]
        rec = start(status, headers)
        if head:  # body faults only change the headers of a HEAD answer
            return

        if fault == "drop":
            self._write(rec, body[: len(body) // 2])
            self._abort()
        elif fault == "wrong_length":
            self._write(rec, body)
            self._abort()
        elif fault == "slow":
            for i in range(0, len(body), srv.slow_chunk):
                if srv._closing.wait(srv.slow_delay):
                    self._abort()
                    return
                self._write(rec, body[i : i + srv.slow_chunk])
        else:
            self._write(rec, body)

    def _write(self, rec: RequestRecord, body: bytes) -> None:
        """Write in chunks, counting bytes *before* each write (see docstring)."""
        for i in range(0, len(body), _CHUNK):
            chunk = body[i : i + _CHUNK]
            rec.bytes_sent += len(chunk)
            try:
                self.wfile.write(chunk)
            except OSError:
                rec.bytes_sent -= len(chunk)
                self.close_connection = True
                raise

    def _abort(self) -> None:
        """Cut the connection mid-response so the client sees a short read."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _parse_range(header: str, total: int) -> tuple[int, int] | str | None:
    """Return (start, end_exclusive), "unsatisfiable", or None to ignore the header."""
    m = _RANGE_RE.match(header.strip())
    if not m or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":  # suffix range: last N bytes
        n = int(last)
        return (max(0, total - n), total) if n and total else "unsatisfiable"
    start = int(first)
    if start >= total:
        return "unsatisfiable"
    end = total if last == "" else min(int(last) + 1, total)
    return None if end <= start else (start, end)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FaultServer"

    def server_bind(self) -> None:
        """Skip HTTPServer's getfqdn(), which can stall on reverse DNS."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: object) -> None:
        """Client disconnects (and our own aborts) are expected; stay quiet."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FaultServer:
    """Threaded local file server with per-path scripted faults (see module doc)."""

    def __init__(self) -> None:
        self.support_ranges = True
        self.slow_delay = 0.05
        self.slow_chunk = _CHUNK
        self.fault_methods: set[str] = {"GET", "HEAD"}
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}
        self._queues: dict[str, collections.deque[str]] = {}
        self._persistent: dict[str, str] = {}
        self._records: list[RequestRecord] = []
        self._conns: set[socket.socket] = set()
        self._closing = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # --- configuration ----------------------------------------------------

    def add_file(self, path: str, data: bytes) -> None:
        """Serve ``data`` at GET/HEAD ``/<path>``."""
        with self._lock:
            self._files[_norm(path)] = bytes(data)

    def url(self, path: str) -> str:
        """Absolute URL for ``path`` (passed through verbatim, so quote it yourself)."""
        return self.base_url + path.lstrip("/")

    def add_faults(self, path: str, *faults: str) -> None:
        """Queue faults for the next requests to ``path``, one per request."""
        _check(faults)
        with self._lock:
            self._queues.setdefault(_norm(path), collections.deque()).extend(faults)

    def set_persistent_fault(self, path: str, fault: str) -> None:
        """Apply ``fault`` to every request to ``path`` once its queue is empty."""
        _check((fault,))
        with self._lock:
            self._persistent[_norm(path)] = fault

    def clear_faults(self, path: str) -> None:
        """Drop both queued and persistent faults for ``path``."""
        with self._lock:
            self._queues.pop(_norm(path), None)
            self._persistent.pop(_norm(path), None)

    # --- bookkeeping ------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request served so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def count(self, path: str, method: str | None = "GET") -> int:
        """Number of requests to ``path`` (any method if ``method`` is None)."""
        key = _norm(path)
        return sum(1 for r in self.requests if r.path == key and method in (None, r.method))

    def bytes_sent(self, path: str) -> int:
        """Total body bytes written for ``path`` across all requests."""
        key = _norm(path)
        return sum(r.bytes_sent for r in self.requests if r.path == key)

    # --- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Stop accepting, cut open connections (slow ones too) and join the loop."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join(timeout=2)

    def __enter__(self) -> "FaultServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- used by the handler ----------------------------------------------

    def _next_fault(self, path: str, method: str) -> str | None:
        if method not in self.fault_methods:
            return None
        with self._lock:
            queue = self._queues.get(path)
            if queue:
                return queue.popleft()
            return self._persistent.get(path)

    def _record(self, path: str, method: str, range_header: str | None, status: int) -> RequestRecord:
        rec = RequestRecord(path, method, range_header, status)
        with self._lock:
            self._records.append(rec)
        return rec

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)


def _check(faults: tuple[str, ...]) -> None:
    """Fail fast on typos: an unknown fault would otherwise be served normally."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(FAULTS)}")


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A running FaultServer, closed after the test."""
    with FaultServer() as srv:
        yield srv
