"""The checkpoint zoo: registry of released weights, verified downloads, local cache.

Names are handed on lazily: ``import zoo`` and the registry cost no torch import; loading or
checking weights imports it when it happens.
"""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {
    "errors": ("CheckpointError", "VerificationError"),
    "checkpoint": ("check_structure", "describe", "load_checkpoint"),
    "settings": ("cache_root",),
    "cache": ("fetch", "load_state_dict"),
    "models": ("load_model",),
    "registry": ("Entry", "entries", "get_entry"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
