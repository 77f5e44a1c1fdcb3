"""``lsmae`` subcommands of the zoo: list, fetch, verify, inspect, cache."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError

from . import cache
from .checkpoint import CheckpointError, check_structure, describe, expected_shapes, load_checkpoint, model_state_dict
from .registry import Entry, entries, get_entry


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _weights_bytes(entry: Entry) -> int:
    """Size of the fp32 weights (the release publishes no file sizes)."""
    shapes = expected_shapes(entry.model, img_size=entry.img_size)
    return 4 * sum(s.numel() for s in shapes.values())


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


def cmd_list(args: argparse.Namespace) -> None:
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


def cmd_fetch(args: argparse.Namespace) -> None:
    path = cache.fetch(args.id, mirror=args.mirror, offline=args.offline or None, quiet=args.quiet,
                       sha256=args.sha256)
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


def _with_path(path: Path, error: CheckpointError) -> CheckpointError:
    return error if str(path) in str(error) else type(error)(f"{path}: {error}")


def cmd_inspect(args: argparse.Namespace) -> None:
    path = Path(args.path)
    checkpoint = load_checkpoint(path)
    try:
        info = describe(model_state_dict(checkpoint))
    except CheckpointError as e:
        raise _with_path(path, e) from None
    _print_info(path, checkpoint, info)


def cmd_verify(args: argparse.Namespace) -> None:
    path = Path(args.target)
    if path.is_file():
        try:
            info = check_structure(model_state_dict(load_checkpoint(path)))
        except CheckpointError as e:
            raise _with_path(path, e) from None
        print(f"OK: {path} is a valid {info.matching_models[0]} checkpoint "
              f"({info.grid_size}x{info.grid_size} grid, decoder {'present' if info.has_decoder else 'absent'}); "
              f"SHA-256 {cache.sha256_file(path)}")
        return
    entry = get_entry(args.target)
    cached = cache.fetch(entry.id, offline=True, quiet=True)
    check_structure(model_state_dict(load_checkpoint(cached)), entry.model, entry.img_size)
    want, source = cache.expected_digest(entry)
    print(f"OK: {entry.id} at {cached} matches {source} and the structure of {entry.model}")


def cmd_cache(args: argparse.Namespace) -> None:
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the zoo's subcommands on the ``lsmae`` parser."""
    ids = ", ".join(e.id for e in entries())
    p = sub.add_parser("list", help="the released checkpoints", description="List the released checkpoints.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "fetch", help="download and verify a checkpoint; prints its local path",
        description=f"Download (resumably), verify and cache a checkpoint. IDs: {ids}. Aliases such as "
                    "vitb/imagenet/1600 work. The last line of output is the local path.",
    )
    p.add_argument("id", help="ARCH/DATASET/EPOCHS, e.g. vit_large/coco/4000, or demo")
    p.add_argument("--mirror", help="URL replacing the release prefix (also LSMAE_MIRROR)")
    p.add_argument("--offline", action="store_true", help="never use the network (also LSMAE_OFFLINE=1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--sha256", help="expected SHA-256, if you have one from a trusted source")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("verify", help="check a cached entry or a file against its architecture",
                       description="Verify a cached entry (digest + structure) or any checkpoint file (structure).")
    p.add_argument("target", help="an entry id or a checkpoint path")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="describe a checkpoint file without trusting it",
                       description="Describe a checkpoint (loaded with weights_only: no code runs).")
    p.add_argument("path")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("cache", help="list or remove cached checkpoints",
                       description="Cache under LSMAE_HOME (default ~/.cache/lsmae).")
    p.add_argument("action", choices=["ls", "rm"])
    p.add_argument("ids", nargs="*", help="entries to remove (rm)")
    p.add_argument("--all", action="store_true", help="remove every cached entry (rm)")
    p.add_argument("--unpin", action="store_true", help="also forget the pinned digests (rm)")
    p.set_defaults(func=cmd_cache)

