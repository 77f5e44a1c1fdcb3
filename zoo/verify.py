"""Verification on demand (``lsmae verify``, the demo): a cached entry hashed again and compared with
its pin, then its structure; a local checkpoint file or transformers folder, its structure."""
from __future__ import annotations

from pathlib import Path

from pretrain.errors import CheckpointError
from zoo import cache
from zoo.registry import resolve_source


def with_path(path: Path, error: CheckpointError) -> CheckpointError:
    return error if str(path) in str(error) else type(error)(f"{path}: {error}")


def verify(target: str) -> str:
    """Check a cached entry (hashed again, then its structure) or a local source: a checkpoint file or
    transformers folder (structure); returns the one-line verdict, raises on a problem."""
    from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict, read_checkpoint, weights_file

    src = resolve_source(target)
    path = src.path
    if path is not None:
        try:
            info = check_structure(model_state_dict(read_checkpoint(path)))
        except CheckpointError as e:
            raise with_path(path, e) from None
        return (f"OK: {path} is a valid {info.model} checkpoint ({info.grid_size}x{info.grid_size} grid, decoder "
                f"{'present' if info.has_decoder else 'absent'}); SHA-256 {cache.sha256_file(weights_file(path))}")
    entry = src.entry
    cached = cache.fetch(entry.id, offline=True, quiet=True, verify=True)  # hashes the file again
    check_structure(model_state_dict(load_checkpoint(cached)), entry.model, entry.img_size)
    want, source = cache.expected_digest(entry)
    return f"OK: {entry.id} at {cached} matches {source} and the structure of {entry.model}"
