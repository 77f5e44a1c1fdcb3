"""The one atomic writer: each kind of content lands whole under its name; a write that fails part-way (disk full,
an object that cannot be written) leaves the previous file or folder as it was and no temporary file; torch is
imported only to write a torch object."""
from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain import atomic
from tests.conftest import REPO

OLD = b"the previous, complete file"


def _old_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(OLD)
    return path


def _disk_full_after_half(monkeypatch) -> None:
    """Every open-for-write writes half of what it is given, then fails as a full disk does."""
    real_open = open

    class HalfFile:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def half_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        return HalfFile(opened) if any(c in mode for c in "wax") else opened

    monkeypatch.setattr("builtins.open", half_open)
    monkeypatch.setattr("io.open", half_open)


def _assert_untouched(path: Path) -> None:
    assert path.read_bytes() == OLD
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_each_kind_of_content_lands_whole(tmp_path):
    assert atomic.write_bytes(tmp_path / "a.bin", b"\x00\xffbytes") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xffbytes"
    atomic.write_text(tmp_path / "a.txt", "текст\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "текст\n"
    atomic.write_json(tmp_path / "a.json", {"b": 1.5, "a": [1]}, indent=1, sort_keys=True)
    assert (tmp_path / "a.json").read_text() == json.dumps({"a": [1], "b": 1.5}, indent=1)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    atomic.write_image(tmp_path / "a.png", Image.fromarray(pixels))
    with Image.open(tmp_path / "a.png") as png:
        assert png.format == "PNG" and np.array_equal(np.asarray(png), pixels)
    state = {"model": {"w": torch.randn(3, 2, generator=torch.Generator().manual_seed(0))}, "epoch": 4}
    atomic.save_torch(tmp_path / "a.pth", state)
    loaded = torch.load(tmp_path / "a.pth", weights_only=True)
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "a.png", "a.pth", "a.txt"]


def test_the_temporary_file_is_hidden_beside_the_target_where_the_trainer_sweeps(tmp_path):
    seen = []
    atomic.atomic_write(tmp_path / "checkpoint-3.pth", lambda tmp: seen.append(Path(tmp)) or Path(tmp).touch())
    [tmp] = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and fnmatch(tmp.name, ".*.pth.tmp*")
    assert not tmp.exists() and (tmp_path / "checkpoint-3.pth").is_file()


@pytest.mark.parametrize("write", [
    lambda path: atomic.write_bytes(path, b"new " * 1000),
    lambda path: atomic.write_text(path, "new " * 1000),
    lambda path: atomic.write_json(path, {"new": list(range(1000))}),
], ids=["bytes", "text", "json"])
def test_a_disk_that_fills_mid_write_leaves_the_previous_file(tmp_path, monkeypatch, write):
    path = _old_file(tmp_path, "result")
    _disk_full_after_half(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write(path)
    monkeypatch.undo()
    _assert_untouched(path)


@pytest.mark.parametrize("write, error", [
    (lambda path: atomic.save_torch(path, {"model": {"w": torch.zeros(4096)}, "hook": lambda: None}),
     (pickle.PicklingError, AttributeError)),  # which one depends on the Python version

    (lambda path: atomic.write_json(path, {"not json": object()}), TypeError),
    (lambda path: atomic.write_image(path, Image.new("I;16", (4, 4)), "JPEG"), OSError),
    (lambda path: atomic.atomic_write(path, lambda tmp: (Path(tmp).write_bytes(b"half"), 1 / 0)), ZeroDivisionError),
], ids=["torch", "json", "image", "callback"])
def test_content_that_cannot_be_written_leaves_the_previous_file(tmp_path, write, error):
    path = _old_file(tmp_path, "result")
    with pytest.raises(error):
        write(path)
    _assert_untouched(path)


def test_a_folder_gets_each_new_file_and_keeps_the_others(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "config.json").write_text("old config")
    (output / "notes.txt").write_text("the user's")

    def write(folder: Path) -> None:
        assert folder.parent == tmp_path and folder.name.startswith(".model.tmp")
        assert (output / "config.json").read_text() == "old config"  # nothing moves before the write is done
        (folder / "config.json").write_text("new config")
        (folder / "model.safetensors").write_bytes(b"weights")

    assert atomic.write_folder(output, write) == output
    assert {p.name: p.read_bytes() for p in output.iterdir()} == {
        "config.json": b"new config", "model.safetensors": b"weights", "notes.txt": b"the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the temporary folder is gone
    atomic.write_folder(tmp_path / "fresh" / "model", lambda folder: (folder / "a").write_text("a"))
    assert (tmp_path / "fresh" / "model" / "a").read_text() == "a"


def test_a_folder_write_that_fails_leaves_the_previous_folder(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "config.json").write_text("old config")

    def fail_half_way(folder: Path) -> None:
        (folder / "config.json").write_text("new config")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_folder(output, fail_half_way)
    assert {p.name: p.read_text() for p in output.iterdir()} == {"config.json": "old config"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(OSError):
        atomic.write_folder(tmp_path / "never", fail_half_way)
    assert not (tmp_path / "never").exists()


def test_only_a_torch_object_imports_torch(tmp_path):
    code = ("import sys\nfrom pathlib import Path\nfrom pretrain import atomic\nout = Path(sys.argv[1])\n"
            "atomic.write_bytes(out / 'a', b'a'); atomic.write_text(out / 'b', 'b')\n"
            "atomic.write_json(out / 'c', [1])\n"

            "atomic.write_folder(out / 'd', lambda f: (f / 'e').write_text('e'))\n"
            "before = 'torch' in sys.modules\natomic.save_torch(out / 'f.pth', {'a': 1})\n"
            "print(before, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
