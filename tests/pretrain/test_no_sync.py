"""No host sync in a training step: between progress lines, evaluations and checkpoints the host
never waits for the device (on a GPU each wait stalls the kernel queue).

On the CPU nothing waits, so the test looks for what would: Python calls that read a tensor on
the host (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``float()``/``int()``/``bool()``
of a tensor) and operators whose output size or value the host must learn from the device
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``...). Each one seen while a run
trains is allowed only inside the loop's print/evaluation/checkpoint points, or where only host
tensors are read (the data loading, torch's optimizer step counters). Pretraining, fine-tuning,
linear probing and segmentation (all on the shared skeleton) are checked; on a CUDA machine each
of them runs again under ``torch.cuda.set_sync_debug_mode("error")``, which also catches what the
CPU cannot show: a synchronous host-to-device copy, such as a tensor made on the host in the step
and used on the device (``-k cuda``; ``-k "cuda and not compile"`` leaves out the compiled steps,
each a compilation).
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
from pretrain.main_pretrain import build_parser, run
from pretrain.models.masking import block_mask_indices
from pretrain.pretraining import MaskedPretraining
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


def _fine_tune(tmp_path: Path, mode: str, *options: str) -> None:
    """``lsmae finetune``/``linprobe`` of the tiny checkpoint at 32 px: 40 digits, batches of 4 with 2
    accumulation steps (mixup/cutmix and label smoothing as the recipe has them)."""
    from bridges.cli import main
    from bridges.demo.sample_data import write_digits
    from tests.conftest import tiny_checkpoint_bytes

    data = write_digits(tmp_path / "digits", 4, 1, size=32)
    ckpt = tmp_path / "tiny.pth"
    ckpt.write_bytes(tiny_checkpoint_bytes(tmp_path, seed=0))
    assert main([mode, str(ckpt), "--data-path", str(data), "--input-size", "32", "--num-workers", "0", "--output-dir",
                 str(tmp_path / "out"), "--print-freq", "1000", "--warmup-epochs", "0", "--effective-batch-size", "8",
                 "--batch-size", "4", *options]) == 0


def _segment(tmp_path: Path, *options: str) -> None:
    """``lsmae segment`` of the demo checkpoint (UperNet; transformers' loss) on 8 generated textures,
    4 batches of 2 per epoch."""
    pytest.importorskip("skimage")
    pytest.importorskip("transformers")
    from bridges.cli import main
    from bridges.demo.sample_data import write_textures_ade20k

    data = write_textures_ade20k(tmp_path / "ade", train_images=8, val_images=2)
    assert main(["segment", "demo", "--data-path", str(data), "--output-dir", str(tmp_path / "out"),
                 "--num-workers", "0", "--batch-size", "2", "--print-freq", "1000", *options]) == 0


@pytest.mark.parametrize("mode", ["finetune", "linprobe"])
def test_fine_tuning_steps_do_not_wait_for_the_device(tmp_path, monkeypatch, lsmae_home, mode):
    """The same skeleton under the classification bridge (mixup/cutmix, label smoothing; frozen encoder)."""
    with host_syncs(monkeypatch) as seen:
        _fine_tune(tmp_path, mode, "--device", "cpu", "--precision", "fp32", "--epochs", "1")
    assert not seen, "host syncs in the training step:\n" + "\n".join(seen)


def test_segmentation_steps_do_not_wait_for_the_device(tmp_path, monkeypatch, lsmae_home):
    """And under the segmentation bridge (UperNet from the demo checkpoint; transformers' loss)."""
    with host_syncs(monkeypatch) as seen:
        _segment(tmp_path, "--device", "cpu", "--precision", "fp32", "--max-iter", "4", "--eval-period", "4",
                 "--checkpoint-period", "4")
    assert not seen, "host syncs in the training step:\n" + "\n".join(seen)


# --------------------------------------------------------------------------- on a GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@contextmanager
def cuda_syncs_fail(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CUDA itself raises on a synchronising call (a device-to-host read, a synchronous host-to-device
    copy such as indexing a device tensor with a host index) while a run trains
    (:meth:`Trainer.fit`): from the end of the first step's progress line on (the first step fills the
    caches of constants on the device, and compiles), except inside the loop's print, evaluation and
    checkpoint points. What runs after training (folders, pictures) may wait."""
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
    fit = trainer_module.Trainer.fit

    def fitting(self, task):
        try:
            return fit(self, task)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(trainer_module.Trainer, "fit", fitting)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_cuda_check_covers_every_step_but_the_first(photos, tmp_path, monkeypatch):
    """The CUDA tests' switch, on the CPU with the mode recorded instead of set: every step after the
    first runs checked, the evaluations and checkpoints unchecked, and so does what follows training."""
    mode, seen = ["default"], []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda value: mode.__setitem__(0, value))
    for name in ("forward_loss", "evaluate", "checkpoint_extra"):
        def recorded(self, *args, method=getattr(MaskedPretraining, name), name=name):
            seen.append(f"{name} {mode[0]}")
            return method(self, *args)
        monkeypatch.setattr(MaskedPretraining, name, recorded)
    with cuda_syncs_fail(monkeypatch):
        _train(photos, tmp_path / "run", "--device", "cpu", "--precision", "fp32", "--epochs", "2")
        seen.append(f"after {mode[0]}")
    assert mode == ["default"]
    epoch = ["forward_loss error"] * 4 + ["evaluate default", "checkpoint_extra default"]
    assert seen == ["forward_loss default", *epoch[1:], *epoch, "after default"]


@needs_cuda
def test_cuda_steps_do_not_sync(photos, tmp_path, monkeypatch):
    """Pretraining: two epochs, the second begun in the checked state."""
    with cuda_syncs_fail(monkeypatch):
        _train(photos, tmp_path / "run", "--device", "cuda", "--precision", "bf16", "--epochs", "2")


@needs_cuda
@pytest.mark.parametrize("mode, compiled", [("finetune", False), ("linprobe", False), ("finetune", True)],
                         ids=["finetune", "linprobe", "finetune-compile"])
def test_cuda_fine_tuning_steps_do_not_sync(tmp_path, monkeypatch, lsmae_home, mode, compiled):
    """Fine-tuning (AdamW, mixup/cutmix) and linear probing (LARS), accumulating two batches per update,
    over two epochs with an evaluation between them; and fine-tuning's compiled step."""
    with cuda_syncs_fail(monkeypatch):
        _fine_tune(tmp_path, mode, "--device", "cuda", "--precision", "bf16", "--epochs", "2",
                   *(["--compile"] if compiled else []))


@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
def test_cuda_segmentation_steps_do_not_sync(tmp_path, monkeypatch, lsmae_home, compiled):
    """Segmentation: UperNet's step (each layer's relative position bias gathered with its index, the
    loss's upsampling), with an evaluation and a checkpoint between steps."""
    with cuda_syncs_fail(monkeypatch):
        _segment(tmp_path, "--device", "cuda", "--precision", "bf16", "--max-iter", "6", "--eval-period", "3",
                 "--checkpoint-period", "3", *(["--compile"] if compiled else []))
