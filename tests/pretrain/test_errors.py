"""Errors where they are raised (each layer's ``errors.py``, on the one base class and its one-line report, standard
library only) and one message shape for a missing optional package, whose install commands are setup.py's extras."""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import os
import runpy
import sys
from collections import defaultdict

import pytest
import setuptools

from bridges.errors import ConversionError
from pretrain import optional
from pretrain.errors import LsmaeError, MissingDataError, MissingDependencyError, report_errors
from tests.conftest import REPO
from zoo.errors import NotCachedError, UnknownEntryError

PACKAGES = ("pretrain", "zoo", "bridges", "detection_configs")
# the extra of setup.py that installs each optional package (detectron2: from source, not an extra)
EXTRA_OF = {"transformers": "hf", "skimage": "demo", "sklearn": "demo", "tensorboard": "tensorboard",
            "torch_xla": "tpu", "fairscale": "detect", "matplotlib": "plot", "cv2": "detect"}


LAYERS = ("pretrain", "zoo", "bridges")  # bottom first


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _raised_name(node: ast.Raise) -> str:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return _base_name(exc) if exc is not None else ""


def _package_files() -> dict[str, ast.Module]:
    return {path.relative_to(REPO).as_posix(): ast.parse(path.read_text())
            for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def _home_of(raisers: set[str]) -> str:
    """The errors module an error raised in ``raisers`` belongs in: one raised by several layers, in the lowest;
    otherwise in the nearest ``errors.py`` at or above the folder that holds every raiser."""
    layers = {path.split("/")[0] for path in raisers}
    if len(layers) > 1:
        folder = min(layers, key=LAYERS.index)
    else:
        folder = os.path.commonpath([os.path.dirname(path) for path in raisers])
    while not (REPO / folder / "errors.py").is_file():
        folder = os.path.dirname(folder)
    return f"{folder}/errors.py"


def _error_classes() -> list[type]:
    modules = [importlib.import_module(path.removesuffix(".py").replace("/", "."))
               for path in _package_files() if path.endswith("/errors.py")]
    return [c for module in modules for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__]


def test_every_error_class_lives_in_the_errors_module_of_the_layer_that_raises_it():
    files = _package_files()
    defined, raisers = {}, defaultdict(set)
    for path, tree in files.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                    and any(_base_name(b).endswith(("Error", "Exception")) for b in node.bases)):
                defined[node.name] = path
            elif isinstance(node, ast.Raise):
                raisers[_raised_name(node)].add(path)
    assert all(path.endswith("/errors.py") for path in defined.values()), defined
    assert {"zoo/errors.py", "bridges/errors.py"} <= set(defined.values())
    misplaced = {name: (path, _home_of(raisers[name])) for name, path in defined.items()
                 if raisers[name] and path != _home_of(raisers[name])}
    assert not misplaced, f"error classes away from where they are raised (name: (defined, belongs)): {misplaced}"
    for path, tree in files.items():  # standard library only: each imports no project module but an errors module
        if path.endswith("/errors.py"):
            imported = {"." * node.level + (node.module or "") for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom)}
            project = {m for m in imported if m.startswith(".") or m.split(".")[0] in PACKAGES}
            assert all(m.endswith("errors") for m in project), (path, imported)


def test_every_error_is_an_lsmae_error_with_its_message_as_one_line():
    classes = _error_classes()
    assert len(classes) >= 16
    for cls in classes:
        assert issubclass(cls, LsmaeError), cls
        assert str(cls("what went wrong")) == "what went wrong", cls  # KeyError's quotes, OSError's errno: none


def test_standard_library_bases_catch_what_they_name(lsmae_home, tmp_path, capsys):
    from pretrain.data import list_images
    from zoo.cache import fetch
    from zoo.registry import get_entry

    with pytest.raises(KeyError) as unknown:
        get_entry("vit_huge/in1k/9999")
    assert isinstance(unknown.value, UnknownEntryError) and str(unknown.value).startswith("unknown checkpoint id")
    with pytest.raises(FileNotFoundError) as no_folder:
        list_images(tmp_path / "nowhere")
    assert isinstance(no_folder.value, MissingDataError)
    with pytest.raises(FileNotFoundError) as not_cached:
        fetch("vit_base/in1k/800", offline=True)
    assert isinstance(not_cached.value, NotCachedError) and "offline" in str(not_cached.value)
    assert issubclass(ConversionError, ValueError) and issubclass(MissingDependencyError, ImportError)

    def fail() -> None:
        raise not_cached.value

    assert report_errors("lsmae", fail) == 1  # an LsmaeError first: its own message, not OSError's fields
    assert capsys.readouterr().err == f"lsmae: error: {not_cached.value}\n"


# --------------------------------------------------------------------------- optional packages
def test_a_missing_package_names_what_needs_it_and_the_extra(monkeypatch):
    for module, (package, install) in optional.PACKAGES.items():
        monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
        assert not optional.installed(module)
        with pytest.raises(MissingDependencyError) as info:
            optional.require(f"{module}.sub", "lsmae something")
        assert str(info.value) == f"lsmae something needs {package} (not installed): {install}"
        assert isinstance(info.value, ImportError) and info.value.name == module
        expected = optional.DETECTRON2_INSTALL if module == "detectron2" else f"pip install -e '.[{EXTRA_OF[module]}]'"
        assert install.startswith(expected)


def test_a_fake_module_in_the_table(monkeypatch):
    monkeypatch.setitem(optional.PACKAGES, "lsmae_no_such_module", ("no-such-dist", "pip install -e '.[fake]'"))
    assert not optional.installed("lsmae_no_such_module.part")
    with pytest.raises(MissingDependencyError, match=r"^x needs no-such-dist \(not installed\): pip install -e "
                                                     r"'\.\[fake\]'$"):
        optional.require("lsmae_no_such_module.part", "x")


def test_an_installed_package_whose_import_fails_says_why_in_one_line(monkeypatch):
    real = importlib.import_module

    def broken(name: str, *args):
        if name == "json.decoder":
            raise ImportError("numpy.core.multiarray failed to import\n(compiled against another numpy)")
        return real(name, *args)

    monkeypatch.setitem(optional.PACKAGES, "json", ("json-dist", "pip install json-dist"))
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(MissingDependencyError) as info:
        optional.require("json.decoder", "y")
    assert str(info.value) == ("y needs json-dist (installed, but its import fails: numpy.core.multiarray failed to "
                               "import (compiled against another numpy)): pip install json-dist")


def test_the_table_follows_setup_py_extras(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    extras = captured["extras_require"]
    for module, extra in EXTRA_OF.items():
        package = optional.PACKAGES[module][0]
        assert any(r.lower().startswith(package.lower()) for r in extras[extra]), (module, extra)
    assert set(EXTRA_OF) | {"detectron2"} == set(optional.PACKAGES)


def test_without_tensorboard_training_logs_warn_in_the_same_words(monkeypatch, tmp_path, caplog):
    from pretrain.engine.run_logging import RunLogger

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    logger = logging.getLogger("test_errors.run_logging")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        run = RunLogger(tmp_path, enabled=True, logger=logger)
    assert run.tb is None
    assert caplog.messages == [f"TensorBoard logging needs tensorboard (not installed): pip install -e "
                               f"'.[tensorboard]'; logging to {tmp_path / 'log.jsonl'} only"]
