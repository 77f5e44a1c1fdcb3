"""Many processes fetching one entry (e.g. every DDP rank), and a lock holder that dies.

Children come from a ``forkserver`` that has imported this module (so zoo, torch and timm) once:
each is a clean process, like ``spawn``, without paying the multi-second torch import 8 times on
a small CI machine. They get the test's ``LSMAE_*`` settings explicitly, since the fork server
may have been started by an earlier test with other settings.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from urllib.parse import unquote

import filelock
import pytest

import zoo
from zoo.cache import entry_path
from zoo.download import partial_path

COCO = "vit_micro/coco/4000"
N_PROCS = 8


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # no effect if the fork server is already running
    return ctx


def _lsmae_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("LSMAE_")}


def _use_env(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith("LSMAE_")]:
        del os.environ[key]
    os.environ.update(env)


def _cache_file(entry_id: str) -> Path:
    return entry_path(zoo.get_entry(entry_id))


def _lock_file(entry_id: str) -> Path:
    path = _cache_file(entry_id)
    return path.with_name(path.name + ".lock")


# --------------------------------------------------------------------------- child processes
def _fetch_child(env, entry_id, barrier, results) -> None:
    started = time.time()
    try:
        _use_env(env)
        barrier.wait(timeout=60)
        started = time.time()
        path = zoo.fetch(entry_id, quiet=True)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        results.put(("ok", str(path), digest, started, time.time()))
    except BaseException as e:  # report, don't hang the parent
        results.put(("error", f"{type(e).__name__}: {e}", None, started, time.time()))


def _hold_lock_child(env, entry_id, part_bytes, ready) -> None:
    """Take the entry's lock as zoo does, write part of a download, then wait to be killed."""
    _use_env(env)
    path = _cache_file(entry_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(_lock_file(entry_id)))
    lock.acquire()
    partial_path(path).write_bytes(part_bytes)
    ready.set()
    time.sleep(300)


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(10)


# --------------------------------------------------------------------------- tests
def test_concurrent_fetches_download_once(tiny_zoo):
    data = tiny_zoo.files[COCO]
    server = tiny_zoo.server
    server.slow_delay = 0.03  # ~37 chunks of 64 KiB: the one download takes ~1 s
    server.add_faults(tiny_zoo.paths[COCO], "slow")
    ctx = _context()
    barrier, results = ctx.Barrier(N_PROCS), ctx.Queue()
    procs = [ctx.Process(target=_fetch_child, args=(_lsmae_env(), COCO, barrier, results))
             for _ in range(N_PROCS)]
    try:
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        _stop(procs)

    errors = [o[1] for o in outcomes if o[0] != "ok"]
    assert not errors, errors
    expected = _cache_file(COCO)
    assert {o[1] for o in outcomes} == {str(expected)}
    assert {o[2] for o in outcomes} == {hashlib.sha256(data).hexdigest()}
    # they really overlapped: everyone had called fetch before the first one got its file back
    assert max(o[3] for o in outcomes) < min(o[4] for o in outcomes)
    gets = [r for r in server.requests if r.path == unquote(tiny_zoo.paths[COCO])]
    assert [(r.method, r.range, r.status) for r in gets] == [("GET", None, 200)]
    assert server.count(tiny_zoo.paths[COCO]) == 1
    assert server.bytes_sent(tiny_zoo.paths[COCO]) == len(data)
    assert expected.read_bytes() == data
    assert not partial_path(expected).exists()


def test_lock_of_a_killed_process_is_released(tiny_zoo, monkeypatch):
    """A download killed (SIGKILL) while holding the lock: the kernel frees the lock, and the
    next fetch resumes the bytes it left behind."""
    data = tiny_zoo.files[COCO]
    half = len(data) // 2
    monkeypatch.setenv("LSMAE_LOCK_TIMEOUT", "10")  # fail rather than wait an hour if stale
    ctx = _context()
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock_child, args=(_lsmae_env(), COCO, data[:half], ready))
    try:
        holder.start()
        assert ready.wait(60), "the child never took the lock"
        with pytest.raises(filelock.Timeout):  # it really holds it
            filelock.FileLock(str(_lock_file(COCO)), timeout=0).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert holder.exitcode == -signal.SIGKILL
    finally:
        _stop([holder])

    started = time.monotonic()
    path = zoo.fetch(COCO, quiet=True)
    assert time.monotonic() - started < 10
    assert path.read_bytes() == data
    assert not partial_path(path).exists()
    [req] = [r for r in tiny_zoo.server.requests if r.path == unquote(tiny_zoo.paths[COCO])]
    assert (req.range, req.status, req.bytes_sent) == (f"bytes={half}-", 206, len(data) - half)
