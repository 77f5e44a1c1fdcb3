"""``lsmae``: one console script; each package registers its own subcommands."""
from __future__ import annotations

import argparse
import sys

from pretrain.errors import LsmaeError
from zoo import commands as zoo_commands

from . import commands as bridge_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsmae",
        description="Long-sequence MAE checkpoints: fetch and verify the released weights, convert them for timm "
                    "and Detectron2 ViTDet, fine-tune, linear-probe and detect, pretrain (GPU/DDP, TPU), export, "
                    "visualize. New here? `lsmae demo` runs the whole chain offline in a few CPU minutes.",
        epilog="Environment: LSMAE_HOME (cache folder), LSMAE_MIRROR (URL prefix), LSMAE_OFFLINE=1, "
               "LSMAE_REGISTRY (registry file), LSMAE_LOCK_TIMEOUT (seconds).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    zoo_commands.add_parsers(sub)
    bridge_commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LsmaeError as e:
        print(f"lsmae {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lsmae {args.command}: interrupted; running the same command again resumes "
              "(downloads from their partial file, training runs from their last checkpoint)", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"lsmae {args.command}: error: {e.strerror or e}"
              + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
