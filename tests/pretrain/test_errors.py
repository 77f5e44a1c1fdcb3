"""One errors module (every error class, one-line messages, standard-library bases) and one message
shape for a missing optional package, whose install commands are setup.py's extras."""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import runpy
import sys

import pytest
import setuptools

from pretrain import errors, optional
from pretrain.errors import (ConversionError, LsmaeError, MissingDataError, MissingDependencyError, NotCachedError,
                             UnknownEntryError, report_errors)
from tests.conftest import REPO

PACKAGES = ("pretrain", "zoo", "bridges", "detection_configs")
# the extra of setup.py that installs each optional package (detectron2: from source, not an extra)
EXTRA_OF = {"transformers": "hf", "skimage": "demo", "sklearn": "demo", "tensorboard": "tensorboard",
            "torch_xla": "tpu", "fairscale": "detect", "matplotlib": "plot", "cv2": "detect"}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def test_every_error_class_is_defined_in_pretrain_errors():
    elsewhere = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path == REPO / "pretrain" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                        and any(_base_name(b).endswith(("Error", "Exception")) for b in node.bases)):
                    elsewhere.add((path.relative_to(REPO).as_posix(), node.name))
    assert not elsewhere, f"error classes outside pretrain/errors.py: {sorted(elsewhere)}"


def test_every_error_is_an_lsmae_error_with_its_message_as_one_line():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
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
