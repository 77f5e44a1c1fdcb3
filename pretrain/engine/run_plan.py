"""What a run's options resolve to before it starts: the autocast dtype of ``--precision`` on this
backend, and the per-device batch and accumulation steps that give ``--effective-batch-size``."""
from __future__ import annotations

import torch

from pretrain.engine.backends import TorchBackend, bf16_supported_on_cpu
from pretrain.errors import OptionError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, backend: TorchBackend) -> torch.dtype | None:
    """``auto``: bf16 on XLA, on GPUs that have it and on CPUs with AVX512-BF16/AMX; else fp16 on
    GPUs and fp32 on CPUs."""
    if precision != "auto":
        return DTYPES[precision]
    if backend.name == "xla":
        return torch.bfloat16
    if backend.name == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if bf16_supported_on_cpu() else None


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


def resolve_batch(effective: int, batch: int | None, accum: int | None, world: int,
                  cap: int | None = None) -> tuple[int, int]:
    """Per-device batch and accumulation steps giving ``effective`` images per optimizer update.

    With neither given: one step per update, or, with ``cap``, the largest per-device batch up to
    ``cap`` that divides the per-device share (the rest is accumulation)."""
    if batch is None and accum is None and cap is not None:
        if effective % world:
            raise OptionError(f"{{effective_batch_size}} {effective} is not divisible by {world} devices")
        share = effective // world
        batch = max(d for d in range(1, min(cap, share) + 1) if share % d == 0)
        return batch, share // batch
    if batch is None:
        accum = accum or 1
        if effective % (world * accum):
            raise OptionError(f"{{effective_batch_size}} {effective} is not divisible by {world} devices x "
                              f"{accum} accumulation steps")
        return effective // (world * accum), accum
    if accum is None:
        if effective % (world * batch):
            raise OptionError(f"{{effective_batch_size}} {effective} is not divisible by {world} devices x "
                              f"batch {batch}")
        return batch, effective // (world * batch)
    if batch * accum * world != effective:
        raise OptionError(f"{{batch_size}} {batch} x {{accum_iter}} {accum} x {world} devices != "
                          f"{{effective_batch_size}} {effective}")
    return batch, accum
