"""``lsmae`` commands of the zoo: list, fetch, verify, inspect, cache (parsers and what they print).

``list``, ``cache ls`` and ``fetch`` of a cached entry answer without importing torch; the
commands that read weights (``verify``, ``inspect``) import the checkpoint module when they run.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from pretrain.errors import CheckpointError, LsmaeError
from pretrain.models.archs import num_weights
from zoo import cache
from zoo.registry import Entry, entries, get_entry
from zoo.verify import verify, with_path


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _weights_bytes(entry: Entry) -> int:
    """Size of the fp32 weights (the release publishes no file sizes)."""
    return 4 * num_weights(entry.model, img_size=entry.img_size)


def _entry_record(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id, "url": entry.url(), "arch": entry.arch, "model": entry.model,
        "dataset": entry.dataset, "dataset_name": entry.dataset_name, "epochs": entry.epochs,
        "file_epochs": entry.file_epochs, "img_size": entry.img_size, "patch_size": entry.patch_size,
        "mask_downsampling": entry.mask_downsampling, "decoder": entry.decoder,
        "size_bytes": _weights_bytes(entry), "license": entry.license, "sha256": entry.sha256,
        "recipe": list(entry.recipe),
        "cached": cache.entry_path(entry).exists(),
    }


def run_list(args: argparse.Namespace) -> None:
    records = [_entry_record(e) for e in entries()]
    if args.json:
        print(json.dumps(records, indent=1))
        return
    header = ("id", "model", "dataset", "epochs", "size", "license", "cached")
    rows = [(r["id"], r["model"], r["dataset_name"],
             f"{r['epochs']}" + (f" ({r['file_epochs']}ep file)" if r["epochs"] != r["file_epochs"] else ""),
             "~" + _human(r["size_bytes"]), r["license"], "yes" if r["cached"] else "")
            for r in records]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def run_fetch(args: argparse.Namespace) -> None:
    path = cache.fetch(args.id, mirror=args.mirror, offline=args.offline or None, quiet=args.quiet,
                       sha256=args.sha256, verify=args.verify)
    print(path)


def _print_info(path: Path, checkpoint: dict[str, Any], info: Any) -> None:
    print(f"file:          {path} ({_human(path.stat().st_size)})")
    print(f"top-level:     {', '.join(map(str, checkpoint))}")
    if "epoch" in checkpoint:
        print(f"epoch:         {checkpoint['epoch']}")
    print(f"architecture:  {', '.join(info.matching_models) or 'no known architecture'}")
    print(f"encoder:       width {info.embed_dim}, {info.depth} blocks, patch {info.patch_size}, "
          f"{info.in_chans} channels")
    print(f"grid:          {info.grid_size}x{info.grid_size} = {info.grid_size ** 2} tokens ({info.img_size}px)")
    decoder = (f"width {info.decoder_embed_dim}, {info.decoder_depth} blocks, downsampling "
               f"{info.decoder_downsampling}, prediction downsampling {info.pred_downsampling}"
               if info.has_decoder else "absent (encoder only)")
    print(f"decoder:       {decoder}")
    print(f"attention:     {info.k_bias}")
    print(f"tensors:       {info.num_tensors}, {info.num_params:,} values, {', '.join(info.dtypes)}, "
          f"{_human(info.num_bytes)}")


def run_inspect(args: argparse.Namespace) -> None:
    from zoo.checkpoint import describe, model_state_dict, read_checkpoint, weights_file

    path = Path(args.path)
    checkpoint = read_checkpoint(path)
    try:
        info = describe(model_state_dict(checkpoint))
    except CheckpointError as e:
        raise with_path(path, e) from None
    _print_info(weights_file(path), checkpoint, info)


def run_verify(args: argparse.Namespace) -> None:
    print(verify(args.target))


def run_cache(args: argparse.Namespace) -> None:
    root = cache.cache_root()
    if args.action == "ls":
        pins = cache.read_pins()
        print(f"cache: {root}")
        for entry, path in cache.cached_entries():
            pin = pins.get(entry.id, {}).get("sha256", "not pinned")
            print(f"{entry.id:22s} {_human(path.stat().st_size):>9s}  sha256 {pin}  {path}")
        return
    targets = entries() if args.all else [get_entry(i) for i in args.ids]
    if not targets:
        raise LsmaeError("name the entries to remove, or pass --all")
    for entry in targets:
        folder = cache.entry_path(entry).parent
        if folder.exists():
            shutil.rmtree(folder)
            print(f"removed {folder}")
        if args.unpin:
            cache.unpin(entry.id)


def _ids() -> str:
    return ", ".join(e.id for e in entries())


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "List the released checkpoints (and the project's demo entry)."
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"Download (resumably), verify and cache a checkpoint. IDs: {_ids()}. Aliases such as "
                     "vitb/imagenet/1600 work. The last line of output is the local path. A cached file that is "
                     "unchanged since it was last hashed is not read again (--verify reads it).")
    p.add_argument("id", help="ARCH/DATASET/EPOCHS, e.g. vit_large/coco/4000, or demo")
    p.add_argument("--mirror", help="URL replacing the release prefix (also LSMAE_MIRROR)")
    p.add_argument("--offline", action="store_true", help="never use the network (also LSMAE_OFFLINE=1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--sha256", help="expected SHA-256, if you have one from a trusted source")
    p.add_argument("--verify", action="store_true",
                   help="hash a cached file again even if it looks unchanged since it was last hashed")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Verify a cached entry (its SHA-256 read again and compared with the pin, then its structure) "
                     "or any checkpoint file or transformers ViTMAE/ViT folder (structure).")
    p.add_argument("target", help="an entry id, a checkpoint path or a transformers folder")


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Describe a checkpoint (loaded with weights_only: no code runs) or a transformers ViTMAE/ViT "
                     "folder (safetensors).")
    p.add_argument("path")


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "List or remove cached checkpoints under LSMAE_HOME (default ~/.cache/lsmae)."
    p.add_argument("action", choices=["ls", "rm"])
    p.add_argument("ids", nargs="*", help="entries to remove (rm)")
    p.add_argument("--all", action="store_true", help="remove every cached entry (rm)")
    p.add_argument("--unpin", action="store_true", help="also forget the pinned digests (rm)")
