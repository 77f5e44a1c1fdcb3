"""Build the MAE model a verified checkpoint describes, with its weights loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.errors import CheckpointError
from pretrain.models.mae import MaskedAutoencoderViT, create_model

from .cache import load_verified


def load_model(id_or_path: str | Path, require_decoder: bool = False, **fetch_kwargs: Any) -> MaskedAutoencoderViT:
    """A zoo entry or local source (checkpoint file, transformers folder) as an MAE model in eval mode (strict load;
    encoder-only checkpoints leave the decoder at its initialisation unless ``require_decoder``)."""
    sd, info = load_verified(id_or_path, **fetch_kwargs)
    if require_decoder and not info.has_decoder:
        raise CheckpointError(f"{id_or_path}: encoder-only checkpoint, it has no decoder to reconstruct with")
    model = create_model(info.model, **info.model_overrides())
    # the structure was verified: only an encoder-only file leaves the decoder to its init
    model.load_state_dict(sd, strict=info.has_decoder)
    return model.eval()
