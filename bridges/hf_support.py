"""What the transformers bridges (Hugging Face export, UperNet segmentation) share: the optional
import with its install hint, and this package's version for provenance records."""
from __future__ import annotations

from typing import Any

from pretrain.errors import LsmaeError

TRANSFORMERS_INSTALL = "pip install 'long-seq-mae[hf]'"


def require_transformers() -> Any:
    """The transformers module, or a one-line error that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise LsmaeError(f"this bridge needs transformers ({e}): {TRANSFORMERS_INSTALL}") from None
    return transformers


def package_version() -> str:
    """long-seq-mae's installed version ("unknown" in a bare source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("long-seq-mae")
    except PackageNotFoundError:
        return "unknown"
