"""What every converter returns beside its state dict (timm's ``checkpoint_filter_fn`` shape:
MAE state dict in, target state dict and this report out), and the one writer of ``.pth`` files.

One report type so that ``lsmae convert`` prints every target's conversion the same way; the
phrasing of a target's first line and k-bias line is the converter's, since each says where the
tensors went.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridges.mae_weights import key_groups

MERGED_K_BIAS = "merged q_bias/v_bias into qkv.bias (zero key bias) in {n} blocks"


@dataclass
class ConversionReport:
    """What a conversion did to the MAE tensors: ``kept`` (as the converter counts them), ``dropped``
    source keys, ``new`` target keys left to their initialisation, blocks whose q/v biases got a zero
    key bias, the pos_embed resampling line ('' when none), and target-specific ``notes``."""

    kept: list[str]
    dropped: list[str]
    new: list[str] = field(default_factory=list)
    merged_k_bias: int = 0
    resampled: str = ""
    notes: list[str] = field(default_factory=list)
    kept_as: str = "kept {n} tensors"  # the first line's opening, ``{n}`` = len(kept)
    merged_as: str = MERGED_K_BIAS
    new_groups: str = ""  # how ``new`` is summarised (default: its top-level modules)

    def lines(self) -> list[str]:
        first = f"{self.kept_as.format(n=len(self.kept))}; dropped {len(self.dropped)} ({key_groups(self.dropped)})"
        if self.new:
            first += f"; new {len(self.new)} ({self.new_groups or key_groups(self.new)})"
        return [first, *self.notes, *([self.merged_as.format(n=self.merged_k_bias)] if self.merged_k_bias else []),
                *([self.resampled] if self.resampled else [])]

    def text(self) -> str:
        return "\n".join(self.lines())


def save_pth(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write a torch checkpoint (ViTDet, release format) atomically, creating its folder."""
    from pretrain.atomic import save_torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_torch(path, checkpoint)

