"""The error every converter raises (classification, detection, transformers export, segmentation): here, in
what the task packages share, beside the conversion table that dispatches to them. Standard library only."""
from __future__ import annotations

from pretrain.errors import LsmaeError


class ConversionError(LsmaeError, ValueError):
    """Weights that cannot be converted as asked (target, sizes, layout)."""
