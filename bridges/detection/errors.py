"""The errors of ``lsmae detect`` and the ViTDet conversion, beside the code that raises them. Standard library
only."""
from __future__ import annotations

from bridges.errors import ConversionError
from pretrain.errors import LsmaeError


class DetectError(LsmaeError):
    """A detection run that cannot start as asked (config, data, GPUs, source)."""


class LoadContractError(ConversionError):
    """Converted weights that would leave part of the Detectron2 backbone uninitialised, or go unused."""
