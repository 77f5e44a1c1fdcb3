"""The look-up commands stay light (no torch), the architecture table is data, and a cached entry is
trusted by its fingerprint until it changes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from bridges.cli import COMMANDS, main
from pretrain.models.archs import list_models, num_weights
from zoo.cache import CacheError
from zoo.checkpoint import expected_shapes

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "numpy", "requests")

# each runs as the console script does, then reports which heavy packages it imported
_PROBE = """
import json, sys
from bridges.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _probe(argv: list[str], home: Path) -> dict:
    env = {**os.environ, "LSMAE_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], env=env, capture_output=True, text=True, timeout=120)
    if argv[-1] == "--help":  # argparse exits before the report: import the parser, ask sys.modules
        assert done.returncode == 0, done.stderr
        code = ("import json, sys, contextlib, io\nfrom bridges.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
                f"print(json.dumps({{'code': 0, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))")
        done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_look_up_commands_import_no_torch(tmp_path):
    home = tmp_path / "home"
    assert _probe(["fetch", "demo", "--quiet"], home)["code"] == 0  # fetched and pinned: torch is allowed here
    for argv in (["--help"], ["list"], ["list", "--json"], ["cache", "ls"], ["fetch", "demo"],
                 *([c.name, "--help"] for c in COMMANDS)):
        report = _probe(argv, home)
        assert report == {"code": 0, "heavy": []}, argv


def test_weight_counts_from_the_table_match_the_built_models():
    for name in list_models():
        patch = int(name.split("_patch")[1].split("_")[0])
        for img_size in (patch * 8, patch * 28):
            built = sum(s.numel() for s in expected_shapes(name, img_size=img_size).values())
            assert num_weights(name, img_size=img_size) == built, (name, img_size)


# --------------------------------------------------------------------------- fingerprints
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


# --------------------------------------------------------------------------- layering
PACKAGES = ("pretrain", "zoo", "bridges", "detection_configs")
LAYER = {"pretrain": 0, "zoo": 1, "bridges": 2, "detection_configs": 3}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at module level or inside functions."""
    import ast

    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    modules = {_module_name(p) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def test_one_way_layers_and_no_import_cycle():
    graph = {_module_name(p): _imports(p) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    for module, deps in graph.items():
        for dep in deps:
            if module.split(".")[0] != "detection_configs":
                assert LAYER[dep.split(".")[0]] <= LAYER[module.split(".")[0]], f"{module} imports {dep}"
    # packages' __init__ files hand names on lazily: drop parent-package edges, then look for cycles
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            if module.startswith(dep + ".") or "." not in dep:
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
