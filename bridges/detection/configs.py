"""The Detectron2 LazyConfig files shipped in ``detection_configs``: where they are, their names, and
``--config NAME|PATH`` resolved to a file. Standard library only."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pretrain.errors import OptionError

CONFIG_PACKAGE = "detection_configs"


def config_dir() -> Path:
    """The shipped LazyConfig folder: the installed ``detection_configs`` package, else the one
    beside ``bridges`` in a source checkout (editable installs made before it existed)."""
    try:
        spec = importlib.util.find_spec(CONFIG_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "common.py").is_file():
                return Path(location)
    return Path(__file__).resolve().parents[2] / CONFIG_PACKAGE


def config_names() -> list[str]:
    folder = config_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "common"))


def resolve_config(name_or_path: str) -> Path:
    """A shipped config by name (``mask_rcnn_vitdet_l_100ep``, with or without ``.py``) or a file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    name = name_or_path.removesuffix(".py")
    if "/" not in name and os.sep not in name:
        candidate = config_dir() / f"{name}.py"
        if candidate.is_file() and name in config_names():
            return candidate
    names = ", ".join(config_names()) or f"none found in {config_dir()}"
    raise OptionError(f"{{config}} {name_or_path}: neither a config file nor a shipped config name ({names})")
