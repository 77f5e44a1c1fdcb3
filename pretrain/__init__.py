"""Long-sequence MAE: architectures (:mod:`.models.archs`), models, block masking, and the pretraining
engine (GPU/CPU DDP and TPU) with the training skeleton the fine-tuning bridges share.

Names are handed on lazily: ``import pretrain`` (or ``pretrain.errors``) costs no torch import. The Python
API of ``lsmae pretrain``: ``pretrain.pretrain(data_path=[...], ...)`` with :class:`PretrainConfig`.
"""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {
    "errors": ("LsmaeError",),
    "models.archs": ("list_models", "model_config", "resolve_model_name"),
    "models.mae": ("MaskedAutoencoderViT", "create_model"),
    "models.masking": ("block_mask_indices",),
    "pretraining": ("pretrain",),
    "pretraining_config": ("PretrainConfig", "PretrainResult"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
