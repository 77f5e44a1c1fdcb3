"""The local checkpoint cache: paths keyed by entry id, locks, pinned digests, ``fetch``.

Trust model (no digests are published for the release): a download is accepted when its
structure matches the entry's architecture and, if the registry (or the caller) gives a
SHA-256, when the digest matches. The digest of the first accepted download is pinned in
``<LSMAE_HOME>/pinned-digests.json``. When a file is hashed against its pin, its fingerprint
(size, mtime_ns, inode) is recorded beside it (``.fingerprint.json``, per machine); a later use
whose fingerprint still matches trusts the pin without reading the file. A changed fingerprint,
``lsmae verify`` or ``fetch(..., verify=True)`` hashes it again.

Only the fetch path is imported up front: torch (structure checks) and requests (downloads)
are imported when a file has to be checked or downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from pretrain.atomic import write_json
from pretrain.errors import LsmaeError

from . import settings
from .errors import CacheError, NotCachedError
from .registry import Entry, entries, get_entry, license_url, resolve_source
from .settings import CHUNK_SIZE, FINGERPRINT_FILE, PINS_FILE, cache_root


def entry_path(entry: Entry) -> Path:
    """Cached file of an entry; keyed by id because the COCO and IN-1k 800-epoch basenames collide."""
    return cache_root() / "checkpoints" / entry.id / entry.filename


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- pinned digests
def _pins_path() -> Path:
    return cache_root() / PINS_FILE


def read_pins() -> dict[str, dict[str, Any]]:
    try:
        with open(_pins_path(), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"{_pins_path()}: unreadable pinned-digest file ({e}); fix or delete it") from None


def _update_pins(entry_id: str, record: dict[str, Any] | None) -> None:
    with _locked(_pins_path().with_suffix(".lock"), "the pinned-digest file"):
        pins = read_pins()
        if record is None:
            pins.pop(entry_id, None)
        else:
            pins[entry_id] = record
        write_json(_pins_path(), pins, indent=1, sort_keys=True)


def unpin(entry_id: str) -> None:
    _update_pins(entry_id, None)


def expected_digest(entry: Entry, sha256: str | None = None) -> tuple[str | None, str]:
    """The digest a file must have, and where it comes from (registry first, then caller, then pin)."""
    if entry.sha256:
        return entry.sha256.lower(), "the registry"
    if sha256:
        return sha256.lower(), "--sha256"
    pin = read_pins().get(entry.id)
    return (pin["sha256"], f"the digest pinned on {pin.get('pinned', 'first download')}") if pin else (None, "")


# --------------------------------------------------------------------------- fingerprints
def _fingerprint_path(path: Path) -> Path:
    return path.with_name(FINGERPRINT_FILE)


def _stat_fingerprint(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _fingerprint_trusts(path: Path, digest: str) -> bool:
    """True when ``path`` was hashed to ``digest`` on this machine and has not changed since."""
    try:
        record = json.loads(_fingerprint_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("sha256") == digest and \
        {k: record.get(k) for k in ("size", "mtime_ns", "inode")} == _stat_fingerprint(path)


def _record_fingerprint(path: Path, digest: str) -> None:
    """Remember that ``path`` hashed to ``digest`` (best effort: a read-only cache re-hashes on each use)."""
    record = {"sha256": digest, **_stat_fingerprint(path)}
    try:
        write_json(_fingerprint_path(path), record)
    except OSError:
        pass


# --------------------------------------------------------------------------- locking
def _lock_timeout() -> float:
    try:
        return settings.lock_timeout()
    except ValueError as e:
        raise CacheError(str(e)) from None


@contextmanager
def _locked(path: Path, what: str, quiet: bool = False) -> Iterator[None]:
    """Hold an OS file lock: the kernel releases it when its holder dies, so it never goes stale."""
    lock = filelock.FileLock(str(path), timeout=_lock_timeout())
    try:
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            if not quiet:
                print(f"waiting for another process using {what} (lock {path})", file=sys.stderr)
            lock.acquire()
    except filelock.Timeout:
        raise CacheError(
            f"timed out after {lock.timeout:.0f}s waiting for {path}; if no other process is fetching, "
            "raise LSMAE_LOCK_TIMEOUT or check that this file system supports locks"
        ) from None
    except PermissionError:
        raise _not_writable(path.parent) from None
    try:
        yield
    finally:
        lock.release()


def _not_writable(path: Path) -> CacheError:
    return CacheError(f"cache directory {path} is not writable; set LSMAE_HOME to a writable folder")


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _not_writable(path) from e
    if not os.access(path, os.W_OK):
        raise _not_writable(path)


# --------------------------------------------------------------------------- fetch / verify
def verify_file(entry: Entry, path: Path, digest: str, sha256: str | None = None) -> None:
    """Accept ``path`` for ``entry``: digest (when one is known), then structure."""
    from .checkpoint import check_structure, load_checkpoint, model_state_dict

    want, source = expected_digest(entry, sha256)
    if want and digest != want:
        raise CacheError(
            f"{entry.id}: SHA-256 {digest[:16]}... of the download does not match {want[:16]}... from {source}"
        )
    check_structure(model_state_dict(load_checkpoint(path)), entry.model, entry.img_size)


def _check_cached(entry: Entry, path: Path, sha256: str | None, rehash: bool) -> None:
    want, source = expected_digest(entry, sha256)
    if want is not None and not rehash and _fingerprint_trusts(path, want):
        return  # hashed against this pin on this machine, unchanged since: not a byte read
    digest = sha256_file(path)
    if want is None:  # cached by hand or pins deleted: verify the structure, then pin
        verify_file(entry, path, digest)
        _pin(entry, path, digest)
    elif digest != want:
        raise CacheError(
            f"{path} does not match {source} (SHA-256 {digest[:16]}... vs {want[:16]}...); "
            f"remove it with `lsmae cache rm {entry.id}` and fetch again"
        )
    _record_fingerprint(path, digest)


def _pin(entry: Entry, path: Path, digest: str) -> None:
    _update_pins(entry.id, {
        "sha256": digest, "size": path.stat().st_size, "url": entry.url(),
        "pinned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def fetch(
    entry_id: str,
    *,
    mirror: str | None = None,
    offline: bool | None = None,
    quiet: bool = False,
    sha256: str | None = None,
    verify: bool = False,
) -> Path:
    """Return the local path of a verified copy of ``entry_id``, downloading it if needed.

    A cached file is trusted without being read while its fingerprint matches the one recorded
    when it was last hashed; ``verify=True`` hashes it anyway. Many processes may call this at
    once (e.g. every DDP rank): one downloads, the others wait on the entry's lock and then check
    the same file.
    """
    entry = get_entry(entry_id)
    path = entry_path(entry)
    offline = settings.offline() if offline is None else offline
    if path.exists():
        # Files only ever appear by a rename after verification: reading needs no lock, so a
        # read-only (e.g. cluster-shared) cache works and DDP ranks check the file in parallel.
        _check_cached(entry, path, sha256, verify)
        return path
    url = entry.url(mirror)
    if offline and not url.startswith("file:"):  # packaged files and file:// mirrors are no network
        raise NotCachedError(
            f"{entry.id} is not cached at {path} and offline mode is on (LSMAE_OFFLINE / --offline); "
            f"fetch it on a machine with network access and copy it there"
        )
    _ensure_dir(path.parent)
    with _locked(path.with_name(path.name + ".lock"), entry.id, quiet):
        if path.exists():
            _check_cached(entry, path, sha256, verify)
            return path
        from .download import download, partial_path

        if not quiet and partial_path(path).exists():
            print(f"resuming {entry.id} from {partial_path(path).stat().st_size} bytes", file=sys.stderr)
        digest = download(url, path, lambda part, d: _verify_download(entry, url, part, d, sha256),
                          quiet=quiet, desc=entry.id)
        _pin(entry, path, digest)
        _record_fingerprint(path, digest)
    if not quiet:
        print(f"{entry.id}: verified, SHA-256 {digest} pinned. Weights licensed {entry.license} "
              f"({license_url(entry.license)}).", file=sys.stderr)
    return path


def _verify_download(entry: Entry, url: str, part: Path, digest: str, sha256: str | None) -> None:
    try:
        verify_file(entry, part, digest, sha256)
    except LsmaeError as e:
        reason = str(e).replace(f"{part}: ", "")
        raise type(e)(f"download of {url} rejected, nothing was cached: {reason}") from None


def load_verified(id_or_path: str | Path, **fetch_kwargs: Any) -> tuple[dict[str, Any], Any]:
    """MAE weights of a zoo entry id or of a local source (checkpoint file, transformers folder) and their
    ``CheckpointInfo``, the structure checked once: here for a local source, when its digest was
    pinned for a zoo entry (``fetch`` only returns files whose digest matches that pin)."""
    from .checkpoint import check_structure, describe, load_checkpoint, model_state_dict, read_checkpoint

    src = resolve_source(id_or_path)
    if src.path is not None:
        sd = model_state_dict(read_checkpoint(src.path))
        return sd, check_structure(sd)
    entry = src.entry
    sd = model_state_dict(load_checkpoint(fetch(entry.id, **fetch_kwargs)))
    info = describe(sd)
    info.model = entry.model
    return sd, info


def load_state_dict(id_or_path: str | Path, **fetch_kwargs: Any) -> dict[str, Any]:
    """Verified MAE weights of a zoo entry id or of a local source (checkpoint file, transformers folder)."""
    return load_verified(id_or_path, **fetch_kwargs)[0]


def cached_entries() -> list[tuple[Entry, Path]]:
    return [(e, entry_path(e)) for e in entries() if entry_path(e).exists()]
