"""Long-sequence MAE model definitions, masking and (later) the pretraining engine."""
from .errors import LsmaeError
from .masking import block_mask_indices
from .models_mae import MaskedAutoencoderViT, create_model, list_models, model_config, resolve_model_name

__all__ = [
    "LsmaeError",
    "MaskedAutoencoderViT",
    "block_mask_indices",
    "create_model",
    "list_models",
    "model_config",
    "resolve_model_name",
]
