"""The checkpoint zoo: registry of released weights, verified downloads, local cache.

Names are handed on lazily: ``import zoo`` and the registry cost no torch import; loading or
checking weights imports it when it happens.
"""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "VerificationError": "checkpoint",
    "check_structure": "checkpoint",
    "describe": "checkpoint",
    "load_checkpoint": "checkpoint",
    "cache_root": "settings",
    "fetch": "cache",
    "load_state_dict": "cache",
    "load_model": "models",
    "Entry": "registry",
    "entries": "registry",
    "get_entry": "registry",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
