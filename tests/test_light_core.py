"""The light core: the look-up commands import no torch, and the packages import one way
(``pretrain`` <- ``zoo`` <- ``bridges``) without cycles."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bridges.cli import COMMANDS
from tests.conftest import REPO

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


def test_plot_imports_no_torch(tmp_path):
    """``lsmae plot`` reads logs and draws with matplotlib (which brings numpy): no torch."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"kind": "train", "epoch": 0, "step": 0, "global_step": 0,
                                               "loss": 1.0, "lr": 0.1}) + "\n")
    report = _probe(["plot", str(run), "-o", str(tmp_path / "curves.png")], tmp_path / "home")
    assert report["code"] == 0 and not set(report["heavy"]) & {"torch", "timm", "torchvision"}, report
    assert (tmp_path / "curves.png").is_file()


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
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
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


def test_the_zoo_imports_nothing_of_the_training_engine():
    """Reading and verifying checkpoints shares safe unpickling with training (``pretrain.safe_load``), not the
    engine that trains."""
    engine = [(_module_name(path), dep) for path in sorted((REPO / "zoo").rglob("*.py")) for dep in _imports(path)
              if dep.split(".")[:2] == ["pretrain", "engine"]]
    assert not engine, engine



# --------------------------------------------------------------------------- bridges' sub-packages
TASK_PACKAGES = ("classification", "detection", "segmentation", "hf", "curves")  # one task (or tool) each
EDGE_PACKAGES = ("cli", "demo", "bench")  # what calls the task packages: the command line, the demo, the benches
# what the task packages share: bridges' own modules, and the transformers helpers of the hf package
SHARED = ("bridges.hf.support",)


def _bridges_edges() -> list[tuple[str, str]]:
    """(module, imported module) for every import between bridges' modules."""
    return [(_module_name(path), dep) for path in sorted((REPO / "bridges").rglob("*.py")) for dep in _imports(path)
            if dep.startswith("bridges.")]


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (REPO / "bridges" / parts[-1]).is_dir() else None


def test_the_task_packages_import_each_other_only_through_what_they_share():
    crossing = [(m, d) for m, d in _bridges_edges() if _subpackage(m) in TASK_PACKAGES
                and _subpackage(d) not in (None, _subpackage(m)) and not d.startswith(SHARED)]
    assert not crossing, crossing


def test_the_task_packages_never_reach_up_to_the_command_line_the_demo_or_the_benches():
    upward = [(m, d) for m, d in _bridges_edges()
              if _subpackage(m) in TASK_PACKAGES and _subpackage(d) in EDGE_PACKAGES]
    assert not upward, upward


def test_the_demo_calls_the_api_not_the_command_line():
    assert not [(m, d) for m, d in _bridges_edges() if _subpackage(m) == "demo" and _subpackage(d) == "cli"]


def test_bridges_own_modules_reach_the_task_packages_only_through_the_conversion_table():
    """``bridges/operations.py`` and the other modules directly under ``bridges/`` import no sub-package: the
    conversion table names converters and savers by dotted name, imported when a conversion runs
    (``bridges/__main__.py`` is ``python -m bridges``, the command line itself)."""
    reaching = [(m, d) for m, d in _bridges_edges() if _subpackage(m) is None and m != "bridges.__main__"
                and _subpackage(d) is not None]
    assert not reaching, reaching
    from bridges.convert_targets import TARGETS

    named = {getattr(t, part).partition(":")[0] for t in TARGETS for part in ("converter", "saver")}
    assert {_subpackage(n) for n in named} - {None} <= set(TASK_PACKAGES), named


# --------------------------------------------------------------------------- argparse at the edge
# the command line's own modules (`python -m pretrain`'s too), and the benches, which keep their argparse handling
ARGPARSE_EDGE = ("bridges/cli/", "pretrain/main_pretrain.py", "pretrain/bench/", "bridges/bench/")
EDGE_FUNCTIONS = {"pretrain/configs.py from_namespace"}  # what the command lines turn their options into configs with


def test_no_library_function_takes_an_argparse_namespace():
    import ast

    taking = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith(ARGPARSE_EDGE):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                    if f"{relative} {node.name}" in EDGE_FUNCTIONS:
                        continue
                    if any(a.annotation is not None and "Namespace" in ast.unparse(a.annotation) or a.arg == "args"
                           for a in arguments):
                        taking.append(f"{relative}:{node.lineno} {node.name}")
    assert not taking, taking


# --------------------------------------------------------------------------- sizes
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 80


def test_modules_and_functions_stay_small():
    """Package modules (not tests) at most 350 lines, functions at most 80, except the command line's tables of
    options (``add_*arguments``: one ``add_argument`` per option)."""
    import ast

    too_long = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            source = path.read_text()
            relative = path.relative_to(REPO).as_posix()
            if len(source.splitlines()) > MAX_MODULE_LINES:
                too_long.append(f"{relative}: {len(source.splitlines())} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    table = node.name.startswith("add_") and node.name.endswith("arguments")
                    if lines > MAX_FUNCTION_LINES and not table:
                        too_long.append(f"{relative}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, too_long
