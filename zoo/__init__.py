"""The checkpoint zoo: registry of released weights, verified downloads, local cache."""
from .cache import cache_root, fetch, load_state_dict
from .checkpoint import CheckpointError, VerificationError, check_structure, describe, load_checkpoint
from .models import load_model
from .registry import Entry, entries, get_entry

__all__ = [
    "CheckpointError",
    "Entry",
    "VerificationError",
    "cache_root",
    "check_structure",
    "describe",
    "entries",
    "fetch",
    "get_entry",
    "load_checkpoint",
    "load_model",
    "load_state_dict",
]
