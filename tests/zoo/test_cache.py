"""The cache: a cached entry is trusted by its fingerprint (size, mtime, inode, digest) until it changes;
``verify`` always hashes again; fingerprints stay out of the shareable pin file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import zoo
from bridges.cli import main
from zoo.cache import CacheError


@pytest.fixture
def cached_demo(lsmae_home) -> Path:
    path = zoo.fetch("demo", quiet=True)
    assert (path.parent / ".fingerprint.json").is_file()
    return path


def _no_hashing(monkeypatch) -> None:
    def refuse(*_):
        raise AssertionError("the cached file was read")

    monkeypatch.setattr(zoo.cache, "sha256_file", refuse)
    monkeypatch.setattr(zoo.cache, "verify_file", refuse)


def test_unchanged_cached_entry_is_not_read_again(cached_demo, monkeypatch):
    _no_hashing(monkeypatch)
    assert zoo.fetch("demo", quiet=True) == cached_demo


def test_a_file_changed_in_place_is_caught_on_the_next_use(cached_demo):
    data = bytearray(cached_demo.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached_demo.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(CacheError, match="does not match"):
        zoo.fetch("demo", quiet=True)


def test_a_replaced_file_with_the_same_size_and_mtime_is_caught(cached_demo):
    stat = cached_demo.stat()
    data = bytearray(cached_demo.read_bytes())
    data[-100] ^= 0xFF
    other = cached_demo.with_name("other")
    other.write_bytes(bytes(data))
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, cached_demo)  # another inode
    with pytest.raises(CacheError, match="does not match"):
        zoo.fetch("demo", quiet=True)


def test_bit_rot_keeping_size_and_mtime_is_caught_by_verify_only(cached_demo, capsys):
    """The documented limit of the trust model: what keeps size, mtime and inode is found by
    `lsmae verify` (or fetch(verify=True)), which always hashes."""
    stat = cached_demo.stat()
    with open(cached_demo, "r+b") as f:
        f.seek(stat.st_size // 2)
        byte = f.read(1)
        f.seek(stat.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(cached_demo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert zoo.fetch("demo", quiet=True) == cached_demo
    with pytest.raises(CacheError, match="does not match"):
        zoo.fetch("demo", quiet=True, verify=True)
    assert main(["verify", "demo"]) == 1
    assert "does not match" in capsys.readouterr().err


def test_fingerprints_stay_out_of_the_shareable_pin_file(cached_demo):
    pins = json.loads((zoo.cache_root() / "pinned-digests.json").read_text())
    assert set(pins["demo"]) == {"sha256", "size", "url", "pinned"}
    record = json.loads((cached_demo.parent / ".fingerprint.json").read_text())
    assert record["sha256"] == pins["demo"]["sha256"] and record["inode"] == cached_demo.stat().st_ino
    assert torch.load(cached_demo, weights_only=True)  # the cached file itself is untouched
