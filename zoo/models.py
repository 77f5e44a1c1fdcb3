"""Build the MAE model a verified checkpoint describes, with its weights loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain import MaskedAutoencoderViT, create_model

from .cache import load_state_dict
from .checkpoint import CheckpointError, describe
from .registry import get_entry


def load_model(id_or_path: str | Path, require_decoder: bool = False, **fetch_kwargs: Any) -> MaskedAutoencoderViT:
    """A zoo entry or checkpoint file as an MAE model in eval mode (strict load; encoder-only
    checkpoints leave the decoder at its initialisation unless ``require_decoder``)."""
    sd = load_state_dict(id_or_path, **fetch_kwargs)
    info = describe(sd)
    if require_decoder and not info.has_decoder:
        raise CheckpointError(f"{id_or_path}: encoder-only checkpoint, it has no decoder to reconstruct with")
    name = get_entry(str(id_or_path)).model if not Path(id_or_path).is_file() else info.matching_models[0]
    model = create_model(name, **info.model_overrides())
    missing, unexpected = model.load_state_dict(sd, strict=info.has_decoder)
    assert not unexpected and all(k.startswith("decoder") or k == "mask_token" for k in missing)
    return model.eval()
