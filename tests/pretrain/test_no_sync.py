"""No host sync in a training step: between progress lines, evaluations and checkpoints the host
never waits for the device (on a GPU each wait stalls the kernel queue).

On the CPU nothing waits, so the test looks for what would: Python calls that read a tensor on
the host (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``float()``/``int()``/``bool()``
of a tensor) and operators whose output size or value the host must learn from the device
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``...). Each one seen while a run
trains is allowed only inside the loop's print/evaluation/checkpoint points, or where only host
tensors are read (the data loading, torch's optimizer step counters). Pretraining, fine-tuning,
linear probing and segmentation (all on the shared skeleton) are checked; on a CUDA machine
pretraining runs again under ``torch.cuda.set_sync_debug_mode("error")``.
"""
from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pretrain.engine import trainer as trainer_module
from pretrain.pretraining import MaskedPretraining
from pretrain.main_pretrain import build_parser, run
from pretrain.models.masking import block_mask_indices
from tests.conftest import TINY_MODEL

HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.is_nonzero.default,
            aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default, aten.equal.default,
            aten.repeat_interleave.Tensor}
# where reading on the host is the point: progress lines and the NaN check, evaluation and checkpoints;
# or reads host tensors only: the data pipeline (in the loader workers on a real run) and torch's optimizers'
# step counters (kept on the host unless the optimizer is fused or capturable, when they are never read)
ALLOWED = (("trainer.py", "_report"), ("trainer.py", "_after_update"), ("torch/utils/data/", None),
           ("torch/optim/optimizer.py", "_get_value"))

pytestmark = pytest.mark.usefixtures("one_thread")


def _where(stack: traceback.StackSummary) -> str:
    """The last frames before this test's hooks."""
    return "".join(traceback.format_list([f for f in stack if f.filename != __file__][-5:]))


def _allowed(stack: traceback.StackSummary) -> bool:
    return any(path in frame.filename and (func is None or frame.name == func)
               for frame in stack for path, func in ALLOWED)


def _is_sync(func, args) -> bool:
    if func in SYNC_OPS:
        return True
    if func is aten.index.Tensor:  # x[mask] with a boolean mask: the result's size is data
        return any(t is not None and t.dtype == torch.bool for t in args[1])
    return False


class _SyncOps(TorchDispatchMode):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_sync(func, args):
            stack = traceback.extract_stack()
            if not _allowed(stack):
                self.seen.append(f"{func} at\n{_where(stack)}")
        return func(*args, **(kwargs or {}))


@contextmanager
def host_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Collect, while a run trains (:meth:`Trainer.fit`), every host read of a tensor and every sync
    operator outside the allowed places."""
    seen: list[str] = []
    training = [False]

    def wrap(name: str):
        original = getattr(torch.Tensor, name)

        def recorded(self, *args, **kwargs):
            if training[0]:
                stack = traceback.extract_stack()
                if not _allowed(stack):
                    seen.append(f"Tensor.{name} at\n{_where(stack)}")
            return original(self, *args, **kwargs)
        return recorded

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name))
    fit = trainer_module.Trainer.fit

    def watched_fit(self, task):
        training[0] = True
        try:
            with _SyncOps(seen):
                return fit(self, task)
        finally:
            training[0] = False

    monkeypatch.setattr(trainer_module.Trainer, "fit", watched_fit)
    yield seen


def _train(data: Path, out: Path, *extra: str) -> None:
    run(build_parser().parse_args([
        "--model", TINY_MODEL, "--input-size", "64", "--data-path", str(data), "--epochs", "1", "--warmup-epochs", "1",
        "--effective-batch-size", "8", "--num-workers", "0", "--output-dir", str(out), "--ckpt-interval", "1",
        "--print-freq", "1000", "--lr", "1e-3", *extra]))


def test_training_steps_do_not_wait_for_the_device(photos, tmp_path, monkeypatch):
    """4 steps with --print-freq beyond the run: the host reads tensors at the first step's line, the
    epoch's last line, its evaluation and its checkpoint only."""
    with host_syncs(monkeypatch) as seen:
        _train(photos, tmp_path / "run", "--device", "cpu", "--precision", "fp32")
    assert not seen, "host syncs in the training step:\n" + "\n".join(seen)


def test_the_check_catches_an_item_in_the_step(photos, tmp_path, monkeypatch):
    """The test above fails when someone reads the loss in the step (as the release's loop did)."""
    forward_loss = MaskedPretraining.forward_loss

    def reading(self, batch, generator):
        loss = forward_loss(self, batch, generator)
        if not torch.isfinite(loss).item():
            raise AssertionError("unreachable")
        return loss

    monkeypatch.setattr(MaskedPretraining, "forward_loss", reading)
    with host_syncs(monkeypatch) as seen:
        _train(photos, tmp_path / "run", "--device", "cpu", "--precision", "fp32")
    assert all("forward_loss" in s for s in seen), seen
    assert sum("Tensor.item" in s for s in seen) == 4, seen  # one per step


@pytest.mark.parametrize("grid, ds", [(28, 2), (7, 2), (9, 4)])
def test_block_masking_has_no_sync_operator(grid, ds):
    """Fixed-size gathers only: boolean-mask indexing would make every step wait on a GPU."""
    seen: list[str] = []
    with _SyncOps(seen):
        block_mask_indices(4, grid, 0.75, ds, generator=torch.Generator().manual_seed(0))
    assert not seen, seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_do_not_sync(photos, tmp_path, monkeypatch):
    """On a GPU, CUDA itself reports a synchronising call as an error: from the end of the first step
    (which fills the caches of constants on the device) on, except at the loop's print, evaluation
    and checkpoint points."""
    def points(method):
        def wrapped(self, *args, **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return method(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return wrapped

    for name in ("_report", "_after_update"):
        monkeypatch.setattr(trainer_module.Trainer, name, points(getattr(trainer_module.Trainer, name)))
    try:
        _train(photos, tmp_path / "run", "--device", "cuda", "--precision", "bf16", "--epochs", "2")
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("mode", ["finetune", "linprobe"])
def test_fine_tuning_steps_do_not_wait_for_the_device(tmp_path, monkeypatch, lsmae_home, mode):
    """The same skeleton under the classification bridge (mixup/cutmix, label smoothing; frozen encoder)."""
    import argparse

    from bridges.classification import finetune
    from bridges.cli.classification import add_arguments
    from bridges.demo.sample_data import write_digits
    from tests.conftest import tiny_checkpoint_bytes

    data = write_digits(tmp_path / "digits", 4, 1, size=32)
    ckpt = tmp_path / "tiny.pth"
    ckpt.write_bytes(tiny_checkpoint_bytes(tmp_path, seed=0))
    parser = argparse.ArgumentParser()
    add_arguments(parser, mode)
    args = parser.parse_args([str(ckpt), "--data-path", str(data), "--input-size", "32", "--num-workers", "0",
                              "--device", "cpu", "--precision", "fp32", "--output-dir", str(tmp_path / "out"),
                              "--print-freq", "1000", "--epochs", "1", "--warmup-epochs", "0",
                              "--effective-batch-size", "8", "--batch-size", "4"])
    with host_syncs(monkeypatch) as seen:
        finetune.run(args, mode)
    assert not seen, "host syncs in the training step:\n" + "\n".join(seen)


def test_segmentation_steps_do_not_wait_for_the_device(tmp_path, monkeypatch, lsmae_home):
    """And under the segmentation bridge (UperNet from the demo checkpoint; transformers' loss)."""
    pytest.importorskip("skimage")
    pytest.importorskip("transformers")
    from bridges.cli import main
    from bridges.demo.sample_data import write_textures_ade20k

    data = write_textures_ade20k(tmp_path / "ade", train_images=8, val_images=2)
    with host_syncs(monkeypatch) as seen:
        assert main(["segment", "demo", "--data-path", str(data), "--output-dir", str(tmp_path / "out"),
                     "--device", "cpu", "--num-workers", "0", "--precision", "fp32", "--max-iter", "4",
                     "--eval-period", "4", "--checkpoint-period", "4", "--print-freq", "1000"]) == 0
    assert not seen, "host syncs in the training step:\n" + "\n".join(seen)
