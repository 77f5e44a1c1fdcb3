"""Optional packages: whether one is installed, and importing one with the same one-line error everywhere.

The error says what is missing, what needs it and how to install it:
``lsmae segment (UperNet) needs transformers (not installed): pip install -e '.[hf]'``. The install
commands are setup.py's extras (detectron2 is not on PyPI: it is built from source).

Standard library only: the ``lsmae`` parser and the look-up commands import this without torch.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from pretrain.errors import MissingDependencyError

DETECTRON2_INSTALL = ("install it from source: pip install --no-build-isolation "
                      "'git+https://github.com/facebookresearch/detectron2.git', then "
                      "pip install 'setuptools<81' shapely pycocotools")


def _extra(name: str) -> str:
    return f"pip install -e '.[{name}]'"


# top-level module -> (the distribution that provides it, how to install it), after setup.py's extras_require
PACKAGES: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", _extra("hf")),
    "skimage": ("scikit-image", _extra("demo")),
    "sklearn": ("scikit-learn", _extra("demo")),
    "tensorboard": ("tensorboard", _extra("tensorboard")),
    "matplotlib": ("matplotlib", _extra("plot")),
    "torch_xla": ("torch_xla", _extra("tpu") + " (torch_xla pins its own torch version)"),
    "fairscale": ("fairscale", _extra("detect")),
    "cv2": ("opencv-python-headless", _extra("detect")),
    "detectron2": ("detectron2", DETECTRON2_INSTALL),
}


def installed(module: str) -> bool:
    """Whether ``module``'s top-level package is installed, without importing it (to choose steps or defaults)."""
    return importlib.util.find_spec(module.partition(".")[0]) is not None


def missing(module: str, needed_by: str, error: ImportError | None = None) -> MissingDependencyError:
    """The error for ``module`` (in :data:`PACKAGES`, or below one) that ``needed_by`` cannot use; with the
    ``error`` of an import that failed although the package is installed, its one-line reason."""
    top = module.partition(".")[0]
    package, install = PACKAGES[top]
    if error is None or not installed(top):
        why = "not installed"
    else:
        why = "installed, but its import fails: " + " ".join(str(error).split())
    return MissingDependencyError(f"{needed_by} needs {package} ({why}): {install}", name=top)


def require(module: str, needed_by: str) -> ModuleType:
    """``module`` imported, or the :func:`missing` error that says how to install its package."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing(module, needed_by, e) from e
