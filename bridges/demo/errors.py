"""The error of ``lsmae demo``, beside the steps that raise it."""
from __future__ import annotations

from pretrain.errors import LsmaeError


class DemoError(LsmaeError):
    """A step of ``lsmae demo`` that failed (its log names the cause)."""
