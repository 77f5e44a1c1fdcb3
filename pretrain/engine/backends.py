"""The few places where CUDA/CPU (torchrun, DDP) and TPU (torch_xla SPMD) training differ.

The training loop (:mod:`pretrain.engine.trainer`) calls these methods and nothing device-specific;
torch_xla is imported only when the XLA backend is built.

Counting: ``world_size`` is the number of data-parallel devices (the batch arithmetic counts
them), ``num_processes`` the processes that load data (the sampler splits the data set over them)
and ``local_devices`` the devices one process feeds (its loader batch is ``batch x local_devices``).
Under torchrun each process has one device; under SPMD one process per host feeds all of its
devices.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from pretrain.atomic import save_torch
from pretrain.engine.launch_env import launched_processes, launched_rank, local_rank
from pretrain.errors import LsmaeError, OptionError
from pretrain.optional import require


def bf16_supported_on_cpu() -> bool:
    return bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))


class EvalShardSampler(DistributedSampler):
    """Every ``num_replicas``-th index from ``rank``, in order: each item measured by exactly one
    process, none twice (torch's DistributedSampler pads the last round with repeats)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class TorchBackend:
    """CUDA or CPU, one process or many under torchrun (DDP over NCCL or gloo).

    The one place the training commands learn what running in several processes means: the
    process group, the DDP wrapping, BatchNorm's synchronisation, the samplers (training, and
    exactly-once evaluation) and the reductions."""

    name: str

    def __init__(self, device: str) -> None:
        self.name = device
        self.world_size = launched_processes()
        self.rank = launched_rank()
        self.num_processes, self.local_devices = self.world_size, 1
        if device == "cuda":
            if not torch.cuda.is_available():
                raise OptionError("{device} cuda: no CUDA device is available (use {device} cpu)")
            torch.cuda.set_device(local_rank())
            self.device = torch.device("cuda", local_rank())
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
        """DDP over the processes. Without ``find_unused_parameters`` (a graph walk every step): every
        trainable parameter of a model the commands build gets a gradient at each step (tested)."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sync_batchnorm(self, model: nn.Module, log: logging.Logger) -> nn.Module:
        """BatchNorm statistics over the whole batch of all processes: SyncBatchNorm on GPUs. On CPUs
        (several processes are for testing) torch has no SyncBatchNorm: each process keeps its own
        statistics, and the run says so in one line."""
        if self.num_processes == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return model
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log.info("BatchNorm: per-process statistics (SyncBatchNorm runs on GPUs only; %d CPU processes)",
                 self.num_processes)
        return model

    def train_sampler(self, dataset: Dataset, seed: int) -> DistributedSampler:
        """The data set split over the processes, reshuffled each epoch (``set_epoch``) from ``seed``;
        the last incomplete round is dropped, so every process runs the same number of steps."""
        return DistributedSampler(dataset, num_replicas=self.num_processes, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=True)

    def eval_sampler(self, dataset: Dataset) -> EvalShardSampler:
        """This process's share of an evaluation set: each item measured exactly once over all processes
        (sum the results with :meth:`all_reduce_sum`)."""
        return EvalShardSampler(dataset, self.num_processes, self.rank)

    def no_sync(self, model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on accumulation micro-steps."""
        return model.no_sync() if skip and isinstance(model, nn.parallel.DistributedDataParallel) \
            else contextlib.nullcontext()

    def device_loader(self, loader: Iterable) -> Iterator:
        for batch in loader:
            yield [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]

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
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def optimizer_options(self) -> dict[str, Any]:
        """Options for the AdamW of this backend (fused kernels where torch has them)."""
        return {"fused": True}

    def shard_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """A whole batch already on the device, split by rows over the devices (XLA only)."""
        return tensor

    def peak_memory_bytes(self) -> int | None:
        """The device's peak memory use, where it reports one."""
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def place_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """After the scheduler set this update's learning rates (floats): put them where the step reads them."""

    def mark_step(self) -> None:
        """End of a training step (XLA cuts its graph here)."""

    def on_step_end(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` once the step's tensors are computed (immediately here)."""
        fn(*args)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over processes of a per-process value."""
        if self.num_processes > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
        return value

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a per-process value (each process's mean over its batches)."""
        return self.all_reduce_sum(value) / self.num_processes if self.num_processes > 1 else value

    def diagnostics(self) -> dict[str, Any]:
        """Counters worth a place in each progress record (XLA: compilations so far)."""
        return {}

    def save(self, obj: Any, path: Path) -> None:
        if self.is_main:
            save_torch(path, obj)
        self.barrier()

    def barrier(self) -> None:
        if self.num_processes > 1:
            dist.barrier()

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def shutdown(self) -> None:
        """End the process group this run joined (torchrun), so that the process exits cleanly."""
        if self.num_processes > 1 and dist.is_initialized():
            dist.destroy_process_group()


MIN_LR_XLA = 1e-30  # smallest learning rate on XLA (see XLABackend.place_lr)


class XLABackend(TorchBackend):
    """TPU (or XLA:CPU) through torch_xla's PJRT runtime in SPMD mode: one process per host drives
    every device the runtime reports. Batches are sharded over the ``data`` axis of a device mesh,
    parameters and optimizer state are replicated, and the compiler inserts the gradient reduction,
    so the optimizer steps plainly. Values computed in the step (the loss, counters) are global."""

    def __init__(self) -> None:
        torch_xla = require("torch_xla", "--device xla")
        import numpy as np
        import torch_xla.core.xla_model as xm
        import torch_xla.debug.metrics as metrics
        import torch_xla.distributed.parallel_loader as pl
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        xr.use_spmd()  # before any tensor is placed on a device
        self._torch_xla, self._xm, self._pl, self._xs, self._metrics = torch_xla, xm, pl, xs, metrics
        self.name = "xla"
        self.device = torch_xla.device()
        self.world_size = xr.global_runtime_device_count()
        self.num_processes, self.rank = xr.process_count(), xr.process_index()
        self.local_devices = xr.addressable_runtime_device_count()
        # one axis: data parallelism only (a 1-D tensor cannot be sharded on a (n, 1) mesh in torch_xla 2.9)
        self.mesh = xs.Mesh(np.arange(self.world_size), (self.world_size,), ("data",))
        if self.num_processes > 1 and not dist.is_initialized():
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the xla:// rendezvous)

            # a CPU process group for barriers between hosts; the step's collectives are the compiler's
            dist.init_process_group("gloo", init_method="xla://")

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        return torch.autocast("xla", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model  # replicated parameters; the compiler reduces the gradients

    def no_sync(self, model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def _rows(ndim: int) -> tuple[str | None, ...]:
        """The partition spec of a batch tensor: dimension 0 split over the ``data`` axis."""
        return ("data",) + (None,) * (ndim - 1)

    def shard_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        # the tensor holds every row (one host: the bench); across hosts batches go through device_loader
        self._xs.mark_sharding(tensor, self.mesh, self._rows(tensor.dim()))
        return tensor

    def peak_memory_bytes(self) -> int | None:
        try:  # TPUs report it; XLA:CPU does not
            return int(self._xm.get_memory_info(self.device)["peak_bytes_used"])
        except (RuntimeError, KeyError, TypeError):
            return None

    def device_loader(self, loader: Iterable[Mapping[str, torch.Tensor]]) -> Iterator:
        """Batches are dicts of host-local tensors, rows first; each is sharded by its dimension 0
        over the devices of every host (torch_xla's MpDeviceLoader with an input sharding)."""
        batches = iter(loader)
        first = next(batches, None)
        if first is None:
            return iter(())
        if not isinstance(first, Mapping):
            raise LsmaeError("--device xla: this task's batches are not dicts of tensors (only pretraining "
                             "runs on XLA)")
        # minibatch: each host hands over only its own rows
        sharding = {key: self._xs.ShardingSpec(self.mesh, self._rows(t.dim()), minibatch=True)
                    for key, t in first.items()}
        return iter(self._pl.MpDeviceLoader(itertools.chain([first], batches), self.device, input_sharding=sharding))

    def optimizer_options(self) -> dict[str, Any]:
        # bias corrections computed on the device: as Python floats they change the graph once they round to 1
        return {"capturable": True}

    def place_lr(self, optimizer: torch.optim.Optimizer) -> None:
        # device data, not a constant of the graph: a float learning rate recompiles the step when it, or
        # 1 - lr * weight_decay in float32, reaches a value XLA folds (0, 1). Capturable AdamW divides by
        # the step size, so an lr of 0 (the warmup's start) would give NaN: MIN_LR_XLA moves nothing.
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(max(float(group["lr"]), MIN_LR_XLA)).to(self.device)

    def mark_step(self) -> None:
        self._torch_xla.sync()

    def on_step_end(self, fn: Callable[..., None], *args: Any) -> None:
        self._xm.add_step_closure(fn, args)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value  # already a sum over the global batch

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value  # already a mean over the global batch

    def diagnostics(self) -> dict[str, Any]:
        compiled = self._metrics.metric_data("CompileTime")
        return {"xla_compilations": compiled[0] if compiled else 0}

    def save(self, obj: Any, path: Path) -> None:
        """Process 0 writes a CPU copy of the (replicated) tensors."""
        if self.is_main:
            from torch.utils._pytree import tree_map_only

            save_torch(path, tree_map_only(torch.Tensor, lambda t: t.cpu(), obj))

        self.barrier()

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # torch_xla has no device generator

    def synchronize(self) -> None:
        self._xm.wait_device_ops()


def make_backend(device: str | None) -> TorchBackend:
    """``cuda``, ``cpu`` or ``xla``; None picks cuda when available, else cpu."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "xla":
        return XLABackend()
    if device not in ("cuda", "cpu"):
        raise OptionError(f"unknown {{device}} {device!r}: use cuda, cpu or xla")
    return TorchBackend(device)
