"""The few places where CUDA/CPU (torchrun, DDP) and TPU (torch_xla, PJRT) training differ.

The training loop (:mod:`pretrain.trainer`) calls these methods and nothing device-specific;
torch_xla is imported only when the XLA backend is built.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import LsmaeError
from .serialization import atomic_save


def bf16_supported_on_cpu() -> bool:
    return bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))


def import_torch_xla() -> Any:
    """Import torch_xla (only ever when the XLA backend is asked for), or fail clearly."""
    try:
        import torch_xla
    except ImportError as e:
        raise LsmaeError(
            f"--device xla needs torch_xla, which failed to import ({e}); install it with "
            "`pip install -e '.[tpu]'` (torch_xla pins its own torch version)"
        ) from None
    return torch_xla


class TorchBackend:
    """CUDA or CPU, one process or many under torchrun (DDP over NCCL or gloo)."""

    name: str

    def __init__(self, device: str) -> None:
        self.name = device
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device == "cuda":
            if not torch.cuda.is_available():
                raise LsmaeError("--device cuda: no CUDA device is available (use --device cpu)")
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on accumulation micro-steps."""
        return model.no_sync() if skip and isinstance(model, nn.parallel.DistributedDataParallel) \
            else contextlib.nullcontext()

    def device_loader(self, loader: Iterable) -> Iterator:
        for batch in loader:
            yield [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler | None, accum: int, update_now: bool) -> None:
        """Backward of ``loss / accum`` (scaled for fp16) and, on an update step, the optimizer step."""
        scaled = loss / accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if update_now:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                self.optimizer_step(optimizer)
            optimizer.zero_grad(set_to_none=True)

    def mark_step(self) -> None:
        """End of a training step (XLA cuts its graph here)."""

    def on_step_end(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` once the step's tensors are computed (immediately here)."""
        fn(*args)

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def save(self, obj: Any, path: Path) -> None:
        if self.is_main:
            atomic_save(obj, path)
        self.barrier()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def shutdown(self) -> None:
        """End the process group this run joined (torchrun), so that the process exits cleanly."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class XLABackend(TorchBackend):
    """TPU (or XLA:CPU) through torch_xla's PJRT runtime; one process per device via torch_xla.launch."""

    def __init__(self) -> None:
        torch_xla = import_torch_xla()
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.parallel_loader as pl
        import torch_xla.runtime as xr

        self._torch_xla, self._xm, self._pl = torch_xla, xm, pl
        self.name = "xla"
        self.device = torch_xla.device()
        self.world_size = xr.world_size()
        self.rank = xr.global_ordinal()

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        return torch.autocast("xla", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model  # xm.optimizer_step all-reduces the gradients

    def no_sync(self, model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def device_loader(self, loader: Iterable) -> Iterator:
        return iter(self._pl.MpDeviceLoader(loader, self.device))

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._xm.optimizer_step(optimizer)

    def mark_step(self) -> None:
        self._torch_xla.sync()

    def on_step_end(self, fn: Callable[..., None], *args: Any) -> None:
        self._xm.add_step_closure(fn, args)

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return self._xm.all_reduce(self._xm.REDUCE_SUM, value, scale=1.0 / self.world_size) \
            if self.world_size > 1 else value

    def save(self, obj: Any, path: Path) -> None:
        # xm.save moves tensors to the CPU and writes on the master ordinal only
        tmp = path.with_name(f".{path.name}.tmp")
        self._xm.save(obj, str(tmp))
        if self.is_main:
            os.replace(tmp, path)
        self.barrier()

    def barrier(self) -> None:
        if self.world_size > 1:
            self._xm.rendezvous("lsmae-barrier")

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # masks are sampled on the host, then moved

    def synchronize(self) -> None:
        self._xm.wait_device_ops()


def make_backend(device: str | None) -> TorchBackend:
    """``cuda``, ``cpu`` or ``xla``; None picks cuda when available, else cpu."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "xla":
        return XLABackend()
    if device not in ("cuda", "cpu"):
        raise LsmaeError(f"unknown --device {device!r}: use cuda, cpu or xla")
    return TorchBackend(device)
