"""The zoo's downloader and cache against the fault-injecting local HTTP server.

Every fault must end in either a verified file whose bytes are exactly the served ones, or a
clear ``LsmaeError`` with nothing corrupt left in the cache. Retries never sleep for real: the
``sleeps`` fixture replaces ``time`` inside ``zoo.download`` and records the waits.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time as _time
from pathlib import Path
from urllib.parse import unquote

import pytest

import zoo
import zoo.cache
import zoo.download
import zoo.retry
from bridges import cli
from pretrain.errors import LsmaeError
from tests.conftest import REPO
from zoo.cache import CacheError, entry_path
from zoo.checkpoint import CheckpointError
from zoo.download import CHUNK_SIZE, DownloadError, partial_path

COCO = "vit_micro/coco/4000"
IN1K = "vit_micro/in1k/800"
NOBODY = 65534


# --------------------------------------------------------------------------- helpers
class _SleepRecorder:
    """Stands in for the ``time`` module inside ``zoo.download``: sleeps are recorded, not slept."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.hooks: list = []

    @staticmethod
    def time() -> float:
        return _time.time()

    def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        for hook in self.hooks:
            hook()


@pytest.fixture(autouse=True)
def sleeps(monkeypatch) -> _SleepRecorder:
    recorder = _SleepRecorder()
    monkeypatch.setattr(zoo.retry, "time", recorder)
    return recorder


def cache_file(entry_id: str) -> Path:
    return entry_path(zoo.get_entry(entry_id))


def part_file(entry_id: str) -> Path:
    return partial_path(cache_file(entry_id))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gets(tiny_zoo, entry_id: str) -> list:
    """The GET requests the server saw for an entry, in order."""
    key = unquote(tiny_zoo.paths[entry_id])
    return [r for r in tiny_zoo.server.requests if r.method == "GET" and r.path == key]


def assert_verified(tiny_zoo, entry_id: str, path: Path) -> None:
    assert path == cache_file(entry_id)
    assert path.read_bytes() == tiny_zoo.files[entry_id]
    assert not part_file(entry_id).exists()
    assert pins()[entry_id]["sha256"] == sha256(tiny_zoo.files[entry_id])


def assert_nothing_cached(entry_id: str) -> None:
    assert not cache_file(entry_id).exists()
    assert not part_file(entry_id).exists()


def pins() -> dict:
    return json.loads((zoo.cache_root() / "pinned-digests.json").read_text())


def lsmae_command() -> list[str]:
    script = Path(sys.executable).with_name("lsmae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridges"]


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(lsmae_command() + list(args), env=dict(os.environ) if env is None else env,
                          cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------- 1. plain fetch
def test_plain_fetch_pins_digest_and_second_fetch_is_local(tiny_zoo, monkeypatch):
    data = tiny_zoo.files[COCO]
    seen_during_verification = []

    def verify_file(entry, path, digest, sha256=None):
        seen_during_verification.append((path, cache_file(COCO).exists()))
        return original(entry, path, digest, sha256)

    original = zoo.cache.verify_file
    monkeypatch.setattr(zoo.cache, "verify_file", verify_file)
    path = zoo.fetch(COCO, quiet=True)
    assert_verified(tiny_zoo, COCO, path)
    # verified as <file>.part: no reader can see the final name before verification ends
    assert seen_during_verification == [(part_file(COCO), False)]
    pin = pins()[COCO]
    assert pin["sha256"] == sha256(data) and pin["size"] == len(data)
    assert pin["url"] == tiny_zoo.server.base_url + tiny_zoo.paths[COCO]
    assert [(r.range, r.status, r.bytes_sent) for r in gets(tiny_zoo, COCO)] == [(None, 200, len(data))]

    assert zoo.fetch(COCO, quiet=True) == path
    assert tiny_zoo.server.count(tiny_zoo.paths[COCO]) == 1
    assert path.read_bytes() == data


# --------------------------------------------------------------------------- 2. drop mid-body
def test_dropped_connection_resumes_with_range_from_bytes_on_disk(tiny_zoo, sleeps):
    data = tiny_zoo.files[COCO]
    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], "drop")
    on_disk_at_retry: list[int] = []
    sleeps.hooks.append(lambda: on_disk_at_retry.append(part_file(COCO).stat().st_size))

    path = zoo.fetch(COCO, quiet=True)

    assert_verified(tiny_zoo, COCO, path)
    first, second = gets(tiny_zoo, COCO)
    assert (first.range, first.status) == (None, 200) and 0 < first.bytes_sent < len(data)
    [kept] = on_disk_at_retry
    # Everything but at most the read-chunk the error interrupted is kept and not asked for again.
    assert 0 < kept <= first.bytes_sent and first.bytes_sent - kept < CHUNK_SIZE
    assert (second.range, second.status, second.bytes_sent) == (f"bytes={kept}-", 206, len(data) - kept)
    assert tiny_zoo.server.bytes_sent(tiny_zoo.paths[COCO]) < 2 * len(data)
    assert sleeps.calls == [1.0]  # the default backoff, first retry


# --------------------------------------------------------------------------- 3. retryable statuses
@pytest.mark.parametrize("fault, wait", [("500", 1.0), ("429", 0.0), ("503", 0.0)])
def test_retryable_status_then_success(tiny_zoo, sleeps, fault, wait):
    """500 backs off; 429 and 503 carry Retry-After: 0, which is honoured."""
    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], fault)
    path = zoo.fetch(COCO, quiet=True)
    assert_verified(tiny_zoo, COCO, path)
    assert [(r.range, r.status) for r in gets(tiny_zoo, COCO)] == [(None, int(fault)), (None, 200)]
    assert sleeps.calls == [wait]


@pytest.mark.parametrize("header, wait", [
    (None, None), ("", None), ("0", 0.0), ("2.5", 2.5), ("86400", 120.0), ("-5", 0.0),
    ("soon", None), ("nan", None),  # unusable: the caller's backoff applies instead of crashing
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
])
def test_retry_after_header(header, wait):
    assert zoo.download._retry_after(header) == wait


def test_retry_after_http_date_in_the_future():
    when = email.utils.formatdate(_time.time() + 30, usegmt=True)
    assert 25 <= zoo.download._retry_after(when) <= 31


def test_persistent_5xx_gives_up_with_exponential_backoff(tiny_zoo, sleeps):
    tiny_zoo.server.set_persistent_fault(tiny_zoo.paths[COCO], "500")
    with pytest.raises(DownloadError, match=r"giving up after 6 retries \(HTTP 500\)") as info:
        zoo.fetch(COCO, quiet=True)
    assert tiny_zoo.server.base_url in str(info.value)
    assert sleeps.calls == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert tiny_zoo.server.count(tiny_zoo.paths[COCO]) == 7
    assert_nothing_cached(COCO)

    tiny_zoo.server.clear_faults(tiny_zoo.paths[COCO])
    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))


def test_persistent_drop_keeps_part_and_next_fetch_resumes(tiny_zoo, sleeps):
    data = tiny_zoo.files[COCO]
    tiny_zoo.server.set_persistent_fault(tiny_zoo.paths[COCO], "drop")
    with pytest.raises(DownloadError, match="giving up after 6 retries") as info:
        zoo.fetch(COCO, quiet=True)
    part = part_file(COCO)
    assert str(part) in str(info.value) and "resumes" in str(info.value)
    assert not cache_file(COCO).exists()
    kept = part.stat().st_size
    assert 0 < kept < len(data) and part.read_bytes() == data[:kept]

    tiny_zoo.server.clear_faults(tiny_zoo.paths[COCO])
    n = len(gets(tiny_zoo, COCO))
    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))
    [last] = gets(tiny_zoo, COCO)[n:]
    assert (last.range, last.status, last.bytes_sent) == (f"bytes={kept}-", 206, len(data) - kept)


# --------------------------------------------------------------------------- 4. 404
def test_404_is_a_clear_error_and_caches_nothing(tiny_zoo, sleeps):
    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], "404")
    with pytest.raises(LsmaeError) as info:
        zoo.fetch(COCO, quiet=True)
    message = str(info.value)
    assert isinstance(info.value, DownloadError)
    assert tiny_zoo.server.base_url + tiny_zoo.paths[COCO] in message
    assert "404" in message and "LSMAE_MIRROR" in message and "--mirror" in message
    assert sleeps.calls == []  # not retried
    assert tiny_zoo.server.count(tiny_zoo.paths[COCO]) == 1
    assert_nothing_cached(COCO)
    assert not (zoo.cache_root() / "pinned-digests.json").exists()


# --------------------------------------------------------------------------- 5. wrong length
def test_content_length_longer_than_body_is_resumed(tiny_zoo):
    data = tiny_zoo.files[COCO]
    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], "wrong_length")
    path = zoo.fetch(COCO, quiet=True)
    assert_verified(tiny_zoo, COCO, path)
    first, second = gets(tiny_zoo, COCO)
    assert first.bytes_sent == len(data)  # all bytes, but fewer than announced
    start = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= len(data)
    # 206 for the rest, or 416 if every byte was already on disk
    assert (second.status, second.bytes_sent) in {(206, len(data) - start), (416, 0)}


# --------------------------------------------------------------------------- 6. corruption
def test_flipped_bytes_rejected_against_pin_kept_by_cache_rm(tiny_zoo, capsys):
    data = tiny_zoo.files[COCO]
    zoo.fetch(COCO, quiet=True)
    assert cli.main(["cache", "rm", COCO]) == 0
    assert_nothing_cached(COCO)
    assert pins()[COCO]["sha256"] == sha256(data)  # `cache rm` keeps the pin

    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], "flip")
    with pytest.raises(CacheError, match="SHA-256") as info:
        zoo.fetch(COCO, quiet=True)
    assert "pinned" in str(info.value)
    assert_nothing_cached(COCO)

    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))  # a good download matches the pin


def test_flipped_bytes_rejected_against_given_sha256(tiny_zoo):
    data = tiny_zoo.files[COCO]
    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], "flip")
    with pytest.raises(CacheError, match="SHA-256.*--sha256"):
        zoo.fetch(COCO, quiet=True, sha256=sha256(data))
    assert_nothing_cached(COCO)
    assert not (zoo.cache_root() / "pinned-digests.json").exists()

    with pytest.raises(CacheError, match="SHA-256"):  # correct bytes, wrong expectation
        zoo.fetch(COCO, quiet=True, sha256="0" * 64)
    assert_nothing_cached(COCO)

    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True, sha256=sha256(data).upper()))


def test_unpinned_download_with_broken_zip_is_rejected(tiny_zoo):
    """No digest to compare with: the structure check must catch a consistently lying server."""
    tiny_zoo.server.set_persistent_fault(tiny_zoo.paths[COCO], "truncate_200")
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        zoo.fetch(COCO, quiet=True)
    assert_nothing_cached(COCO)
    assert not (zoo.cache_root() / "pinned-digests.json").exists()

    tiny_zoo.server.clear_faults(tiny_zoo.paths[COCO])
    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))



@pytest.fixture
def deeper_micro(monkeypatch) -> str:
    """A second known architecture: the micro MAE with 5 encoder blocks (entries are of the 4-block one)."""
    from pretrain.models import archs

    name = "mae_vit_micro_patch8_dec64d4h2b_depth5"
    monkeypatch.setitem(archs.ARCHITECTURES, name, {**archs.model_config(archs.list_models("mae_vit_micro*")[0]),
                                                    "depth": 5})
    return name


@pytest.mark.parametrize("other", ["architecture", "input_size"])
def test_download_of_another_architecture_or_input_size_is_refused(tiny_zoo, tmp_path, deeper_micro, other):
    """Without a digest, the structure check is against the entry's own architecture and image size:
    a valid checkpoint of another known architecture, or of the entry's at another size, is refused."""
    import torch

    import pretrain
    from zoo.checkpoint import VerificationError, check_structure

    torch.manual_seed(0)
    model = pretrain.create_model(deeper_micro) if other == "architecture" else \
        pretrain.create_model(zoo.get_entry(COCO).model, img_size=32)
    path = tmp_path / "other.pth"
    torch.save({"model": model.state_dict()}, path)
    check_structure(model.state_dict())  # a valid checkpoint of a known architecture...
    tiny_zoo.server.add_file(tiny_zoo.paths[COCO], path.read_bytes())
    expected = "does not match mae_vit_micro_patch8_dec64d4h2b" if other == "architecture" else \
        "position embeddings are for a 4x4 grid .* expected 64px"
    with pytest.raises(VerificationError, match=expected):  # ...but not of this entry
        zoo.fetch(COCO, quiet=True)
    assert_nothing_cached(COCO)
    assert not (zoo.cache_root() / "pinned-digests.json").exists()
    # the same file put into the cache by hand (no pin) is refused on its first use
    cache_file(COCO).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, cache_file(COCO))
    with pytest.raises(VerificationError, match=expected):
        zoo.fetch(COCO, quiet=True)
    assert not (zoo.cache_root() / "pinned-digests.json").exists()


# --------------------------------------------------------------------------- 7. slow
def test_slow_server(tiny_zoo):
    tiny_zoo.server.slow_delay = 0.005
    tiny_zoo.server.add_faults(tiny_zoo.paths[COCO], "slow")
    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))
    assert tiny_zoo.server.count(tiny_zoo.paths[COCO]) == 1


# --------------------------------------------------------------------------- 8. resume after a crash
def test_resume_from_part_left_by_another_process(tiny_zoo, capsys):
    data = tiny_zoo.files[COCO]
    half = len(data) // 2
    part = part_file(COCO)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])

    path = zoo.fetch(COCO)

    err = capsys.readouterr().err
    assert f"resuming {COCO} from {half} bytes" in err
    assert f"SHA-256 {sha256(data)} pinned" in err and "CC-BY-NC-4.0" in err

    assert_verified(tiny_zoo, COCO, path)
    [req] = gets(tiny_zoo, COCO)
    assert (req.range, req.status, req.bytes_sent) == (f"bytes={half}-", 206, len(data) - half)
    assert pins()[COCO]["sha256"] == sha256(data)


def test_resume_from_garbage_part_fails_verification_then_starts_over(tiny_zoo):
    data = tiny_zoo.files[COCO]
    half = len(data) // 2
    part = part_file(COCO)
    part.parent.mkdir(parents=True)
    part.write_bytes(bytes(b ^ 0xFF for b in data[:half]))

    with pytest.raises(CheckpointError, match="damaged or truncated"):
        zoo.fetch(COCO, quiet=True)
    assert_nothing_cached(COCO)
    [req] = gets(tiny_zoo, COCO)
    assert req.range == f"bytes={half}-"

    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))
    last = gets(tiny_zoo, COCO)[-1]
    assert (last.range, last.status, last.bytes_sent) == (None, 200, len(data))


def test_part_holding_the_whole_file_is_verified_without_downloading(tiny_zoo):
    """A crash between the last byte and the rename: the server answers 416 for the range."""
    data = tiny_zoo.files[COCO]
    part = part_file(COCO)
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))
    assert [(r.range, r.status) for r in gets(tiny_zoo, COCO)] == [(f"bytes={len(data)}-", 416)]
    assert tiny_zoo.server.bytes_sent(tiny_zoo.paths[COCO]) == 0


def test_part_longer_than_the_file_starts_over(tiny_zoo):
    data = tiny_zoo.files[COCO]
    part = part_file(COCO)
    part.parent.mkdir(parents=True)
    part.write_bytes(data + b"junk")
    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))
    assert [(r.range, r.status) for r in gets(tiny_zoo, COCO)] == [
        (f"bytes={len(data) + 4}-", 416), (None, 200)]


# --------------------------------------------------------------------------- 9. Range ignored
def test_server_ignoring_range_restarts_from_scratch(tiny_zoo):
    data = tiny_zoo.files[COCO]
    half = len(data) // 2
    tiny_zoo.server.support_ranges = False
    part = part_file(COCO)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])

    assert_verified(tiny_zoo, COCO, zoo.fetch(COCO, quiet=True))
    [req] = gets(tiny_zoo, COCO)
    assert (req.range, req.status, req.bytes_sent) == (f"bytes={half}-", 200, len(data))


# --------------------------------------------------------------------------- 10. offline
def test_offline_without_cached_file(tiny_zoo, monkeypatch):
    monkeypatch.setenv("LSMAE_OFFLINE", "1")
    with pytest.raises(CacheError, match="offline") as info:
        zoo.fetch(COCO, quiet=True)
    assert str(cache_file(COCO)) in str(info.value)
    assert tiny_zoo.server.requests == []
    assert_nothing_cached(COCO)


def test_offline_with_cached_file(tiny_zoo, monkeypatch):
    path = zoo.fetch(COCO, quiet=True)
    n = len(tiny_zoo.server.requests)
    monkeypatch.setenv("LSMAE_OFFLINE", "1")
    assert zoo.fetch(COCO, quiet=True) == path
    monkeypatch.delenv("LSMAE_OFFLINE")
    assert zoo.fetch(COCO, quiet=True, offline=True) == path
    assert len(tiny_zoo.server.requests) == n
    assert_verified(tiny_zoo, COCO, path)


# --------------------------------------------------------------------------- 11. tampered cache
def test_cached_file_changed_on_disk_is_an_error(tiny_zoo):
    path = zoo.fetch(COCO, quiet=True)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(damaged)

    for offline in (False, True):
        with pytest.raises(CacheError) as info:
            zoo.fetch(COCO, quiet=True, offline=offline)
        message = str(info.value)
        assert str(path) in message and "pinned" in message
        assert f"lsmae cache rm {COCO}" in message
    assert path.read_bytes() == bytes(damaged)  # not silently replaced
    assert tiny_zoo.server.count(tiny_zoo.paths[COCO]) == 1


def test_unreadable_pin_file_is_a_clear_error(tiny_zoo):
    zoo.fetch(COCO, quiet=True)
    (zoo.cache_root() / "pinned-digests.json").write_text("{not json")
    with pytest.raises(CacheError, match="pinned-digests.json: unreadable pinned-digest file"):
        zoo.fetch(COCO, quiet=True)


def test_bad_lock_timeout_setting_is_a_clear_error(tiny_zoo, monkeypatch):
    monkeypatch.setenv("LSMAE_LOCK_TIMEOUT", "an hour")
    with pytest.raises(CacheError, match="LSMAE_LOCK_TIMEOUT='an hour'"):
        zoo.fetch(COCO, quiet=True)
    assert tiny_zoo.server.requests == []


# --------------------------------------------------------------------------- 12-14. CLI
def test_cli_unknown_id(tiny_zoo):
    result = run_cli("fetch", "vit_micro/coco/9999", "--quiet")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lsmae fetch: error:") and "vit_micro/coco/9999" in lines[0]
    assert COCO in lines[0] and IN1K in lines[0]
    assert result.stdout == ""
    assert tiny_zoo.server.requests == []


def test_cli_fetch_quiet_prints_path_with_env_or_flag_mirror(tiny_zoo):
    """Both forms at once (the CLI's start-up dominates): LSMAE_MIRROR for one id, --mirror for the other."""
    env_mirror = dict(os.environ)
    env_flag = {k: v for k, v in os.environ.items() if k != "LSMAE_MIRROR"}
    cmd = lsmae_command()
    procs = [
        subprocess.Popen(cmd + ["fetch", COCO, "--quiet"], env=env_mirror, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(cmd + ["fetch", IN1K, "--quiet", "--mirror", tiny_zoo.server.base_url],
                         env=env_flag, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append((*p.communicate(timeout=120), p.returncode))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for entry_id, (stdout, stderr, rc) in zip((COCO, IN1K), outputs):
        assert rc == 0, stderr
        assert "Traceback" not in stderr
        assert Path(stdout.strip().splitlines()[-1]) == cache_file(entry_id)
        assert_verified(tiny_zoo, entry_id, cache_file(entry_id))
        assert tiny_zoo.server.count(tiny_zoo.paths[entry_id]) == 1
    assert set(pins()) == {COCO, IN1K}


def _drop_privileges() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


# Used when the unprivileged user cannot reach the interpreter (e.g. python under /root): start
# as root, import the CLI and what `fetch` imports lazily (it could not be read as nobody), then
# drop to nobody before running it; 77 = cannot switch users.
_DROP_THEN_RUN = f"""
import gettext, locale, os, sys
import zoo.cache, zoo.checkpoint, zoo.download, zoo.verify
from bridges.cli import build_parser, main
build_parser()
try:
    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
except PermissionError:
    sys.exit(77)
sys.exit(main(sys.argv[1:]))
"""


def _unprivileged_cli(env: dict[str, str]) -> list[str] | None:
    """How to run the CLI as a user who cannot write a 0o555 folder: a command prefix for
    ``_start``, None when the current user already is one."""
    if os.geteuid() != 0:
        return None
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import importlib.util as u; "
             "assert u.find_spec('torch') and u.find_spec('bridges') and u.find_spec('zoo')"],
            cwd=REPO, env=env, capture_output=True, preexec_fn=_drop_privileges, timeout=60)
        if probe.returncode == 0:
            return ["preexec"] + lsmae_command()
    except (OSError, subprocess.SubprocessError):
        pass
    return [sys.executable, "-c", _DROP_THEN_RUN]


def _start(prefix: list[str] | None, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    preexec = None
    if prefix is None:
        prefix = lsmae_command()
    elif prefix[0] == "preexec":
        prefix, preexec = prefix[1:], _drop_privileges
    return subprocess.Popen(prefix + args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def _make_read_only(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def test_cli_read_only_cache_dir(tiny_zoo, monkeypatch):
    """As a user who cannot write LSMAE_HOME: an empty cache is a one-line error naming the
    folder and LSMAE_HOME; a cache filled (and pinned) by someone else is usable as it is."""
    base = Path(tempfile.mkdtemp(prefix="lsmae-ro-"))
    try:
        base.chmod(0o755)  # traversable by the unprivileged user, unlike pytest's tmp_path
        registry = base / "registry.json"
        shutil.copy(tiny_zoo.registry, registry)
        registry.chmod(0o644)
        empty, filled = base / "empty", base / "filled"
        empty.mkdir()
        monkeypatch.setenv("LSMAE_HOME", str(filled))
        cached = zoo.fetch(COCO, quiet=True)
        n_requests = len(tiny_zoo.server.requests)
        for home in (empty, filled):
            _make_read_only(home)
        envs = [{**os.environ, "LSMAE_HOME": str(home), "LSMAE_REGISTRY": str(registry)}
                for home in (empty, filled)]
        prefix = _unprivileged_cli(envs[0])
        if prefix is None and os.access(empty, os.W_OK):
            pytest.skip("this user can write into a 0o555 folder, and is not root to switch users")
        procs = [_start(prefix, ["fetch", COCO, "--quiet"], env) for env in envs]
        results = []
        try:
            for p in procs:
                results.append((*p.communicate(timeout=120), p.returncode))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if any(rc == 77 for *_, rc in results):
            pytest.skip("cannot switch to an unprivileged user here")

        (out, err, rc), (filled_out, filled_err, filled_rc) = results
        assert rc == 1, (out, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert "not writable" in err and "LSMAE_HOME" in err and str(empty) in err
        assert list(empty.iterdir()) == []

        assert filled_rc == 0, filled_err
        assert "Traceback" not in filled_err
        assert Path(filled_out.strip().splitlines()[-1]) == cached
        assert cached.read_bytes() == tiny_zoo.files[COCO]
        assert len(tiny_zoo.server.requests) == n_requests
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- cache keyed by entry id
def test_same_basename_entries_are_cached_side_by_side(tiny_zoo):
    coco = zoo.fetch("vit_micro/coco/4000", quiet=True)
    in1k = zoo.fetch("vit_micro/in1k/800", quiet=True)
    assert coco.name == in1k.name and coco != in1k
    assert coco.read_bytes() == tiny_zoo.files["vit_micro/coco/4000"]
    assert in1k.read_bytes() == tiny_zoo.files["vit_micro/in1k/800"]
    assert zoo.fetch("tiny/imagenet/800", quiet=True) == in1k  # aliases resolve to the same cache path


# --------------------------------------------------------------------------- the layers on their own
def test_retry_policy_backs_off_honours_the_server_and_gives_up(sleeps):
    import requests

    from zoo.retry import RetryPolicy, _RetriesExhausted, _Retryable, with_retries

    failures = [_Retryable("HTTP 500"), _Retryable("HTTP 503", wait=0.5), requests.ConnectionError("reset")]

    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    notes = []
    assert with_retries(RetryPolicy(retries=3, backoff=1.0), attempt, lambda *a: notes.append(a[:2])) == "done"
    assert sleeps.calls == [1.0, 0.5, 4.0] and notes == [(1, 1.0), (2, 0.5), (3, 4.0)]

    def never() -> None:
        raise _Retryable("HTTP 502")

    with pytest.raises(_RetriesExhausted, match="HTTP 502") as info:
        with_retries(RetryPolicy(retries=2, backoff=0.25), never)
    assert isinstance(info.value.failure, _Retryable)
    assert sleeps.calls[3:] == [0.25, 0.5]

    def broken() -> None:  # not a network failure: asking again would not cure it
        raise DownloadError("HTTP 404")

    with pytest.raises(DownloadError):
        with_retries(RetryPolicy(), broken)
    assert len(sleeps.calls) == 5


def test_file_url_resumes_and_a_part_longer_than_the_file_starts_over(tmp_path):
    data = bytes(range(256)) * 3000
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    dest = tmp_path / "cache" / "dest.bin"
    dest.parent.mkdir()
    for kept in (data[:1000], data + b"junk"):
        partial_path(dest).write_bytes(kept)
        assert zoo.download.download(source.as_uri(), dest, quiet=True) == sha256(data)
        assert dest.read_bytes() == data and not partial_path(dest).exists()
        dest.unlink()
