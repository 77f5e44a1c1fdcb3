"""``--compile`` for ``lsmae finetune``, ``lsmae linprobe`` and ``lsmae segment`` on CPU: a run resumes
with or without it, its checkpoints and folders hold the eager run's keys, and it trains what the
eager run trains.

Each command compiles once: a run is interrupted after its first checkpoint, resumed ``--compile``d
(with gradient checkpointing where the command has it: the pair users of big models combine) up to
its second, finished uncompiled, and compared with the same run made uncompiled in one go.
Randomness inside the model (drop path, head dropout) is off: compiled code draws its own random
numbers. Classification compiles with inductor, as users do; segmentation with AOTAutograd's eager
backend (``aot_eager``: the same graph capture, no code generation), because inductor's C++ code
for the UperNet head takes 45-60 s on two cores, and it is the bridge that is tested here: which
module is compiled, the keys, resuming, training. Inductor on that model runs in the CUDA test
(``tests/pretrain/test_no_sync.py``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from bridges.cli import main
from bridges.demo.sample_data import write_digits
from pretrain.engine import trainer as trainer_module
from tests.conftest import tiny_checkpoint_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
STOPS = (1, 2)  # a run stops after these checkpoints, uncompiled then compiled; a third part ends it


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def run_in_parts(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, every: int,
                 compiled: list[str]) -> list[int]:
    """``lsmae ARGV`` stopped after the checkpoint at update ``STOPS[i] x every`` (the second part with
    the options ``compiled``, which its first log line says), then run to its end; returns how many
    graphs each part compiled."""
    after_update = trainer_module.Trainer._after_update
    graphs = []
    for part, stop in enumerate((*STOPS, None)):
        def stopping(self, task, stop=stop):
            after_update(self, task)
            if stop is not None and self.step == stop * every:
                raise KeyboardInterrupt
        monkeypatch.setattr(trainer_module.Trainer, "_after_update", stopping)
        before = compiled_graphs()
        capsys.readouterr()
        assert main([*argv, *(compiled if part == 1 else [])]) == (0 if stop is None else 130)
        graphs.append(compiled_graphs() - before)
        assert ("(torch.compile'd steps)" in capsys.readouterr().err) == (part == 1)
    monkeypatch.setattr(trainer_module.Trainer, "_after_update", after_update)
    return graphs


def assert_same_weights(reference: dict[str, torch.Tensor], parts: dict[str, torch.Tensor]) -> None:
    """The same keys in the same order (the plain modules': no ``_orig_mod.``) and the same weights to
    float32 rounding, over the whole state: Adam turns the rounding noise of a gradient that should be
    zero (a bias a BatchNorm cancels) into a step of the lr, so single values may differ by that much."""
    assert list(parts) == list(reference)
    floats = [k for k, v in reference.items() if v.is_floating_point()]
    assert all(torch.equal(parts[k], v) for k, v in reference.items() if k not in floats)
    difference = sum(float((parts[k] - reference[k]).square().sum()) for k in floats) ** 0.5
    norm = sum(float(reference[k].square().sum()) for k in floats) ** 0.5
    assert difference < 1e-3 * norm, difference / norm  # measured: ~4e-5 (segmentation)


def logged(out: Path, kind: str) -> list[dict]:
    return [r for line in (out / "log.jsonl").read_text().splitlines() if (r := json.loads(line))["kind"] == kind]


def assert_same_losses(reference: list[dict], parts: list[dict], at: str, keys: tuple[str, ...]) -> None:
    assert [r[at] for r in parts] == [r[at] for r in reference]  # each point once: the parts resumed
    for key in keys:
        torch.testing.assert_close([r[key] for r in parts], [r[key] for r in reference], rtol=1e-4, atol=0)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("mode", ["finetune", "linprobe"])
def test_classification_resumes_across_compile_and_trains_as_uncompiled(mode, tmp_path, lsmae_home, monkeypatch,
                                                                         capsys):
    data = write_digits(tmp_path / "digits", 4, 2, size=32)  # 40 training images: 5 updates of 8 per epoch
    source = tmp_path / "tiny.pth"
    source.write_bytes(tiny_checkpoint_bytes(tmp_path, seed=0))
    options = ["--data-path", str(data), "--input-size", "32", "--num-workers", "0", "--device", "cpu",
               "--precision", "fp32", "--print-freq", "1000", "--epochs", "3", "--warmup-epochs", "1",
               "--effective-batch-size", "8", "--batch-size", "4", "--lr", "2e-3" if mode == "finetune" else "5"]
    compiled = ["--compile"]
    if mode == "finetune":
        options += ["--drop-path", "0"]
        compiled += ["--grad-checkpointing"]

    def argv(out: Path) -> list[str]:
        return [mode, str(source), *options, "--output-dir", str(out)]

    before = compiled_graphs()
    assert main(argv(tmp_path / "whole")) == 0
    assert compiled_graphs() == before
    uncompiled, compiling, finishing = run_in_parts(argv(tmp_path / "parts"), monkeypatch, capsys, 5, compiled)
    assert uncompiled == finishing == 0 and compiling > 0  # the option compiles, and only where it is given
    assert_same_losses(logged(tmp_path / "whole", "epoch"), logged(tmp_path / "parts", "epoch"), "epoch",
                       ("train_loss", "val_loss"))
    for name in ("last.pth", "best.pth"):
        reference, parts = load(tmp_path / "whole" / name), load(tmp_path / "parts" / name)
        assert parts["epoch"] == reference["epoch"]
        assert_same_weights(reference["model"], parts["model"])


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    pytest.importorskip("skimage")
    pytest.importorskip("transformers")
    from bridges.demo.sample_data import write_textures_ade20k

    return write_textures_ade20k(tmp_path_factory.mktemp("ade"), train_images=8, val_images=2)


def segment_argv(data: Path, out: Path) -> list[str]:
    return ["segment", "demo", "--data-path", str(data), "--output-dir", str(out), "--device", "cpu",
            "--num-workers", "0", "--precision", "fp32", "--max-iter", "6", "--eval-period", "2",
            "--checkpoint-period", "2", "--print-freq", "1000", "drop_path=0", "head_dropout=0"]


def test_segmentation_resumes_across_compile_and_trains_as_uncompiled(textures, tmp_path, lsmae_home, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    before = compiled_graphs()
    assert main(segment_argv(textures, tmp_path / "whole")) == 0
    assert compiled_graphs() == before
    uncompiled, compiling, finishing = run_in_parts(segment_argv(textures, tmp_path / "parts"), monkeypatch, capsys, 2,
                                                    ["--compile", "--grad-checkpointing"])
    assert uncompiled == finishing == 0 and compiling > 0
    assert_same_losses(logged(tmp_path / "whole", "eval"), logged(tmp_path / "parts", "eval"), "step",
                       ("train_loss",))
    assert_same_weights(load(tmp_path / "whole" / "last.pth")["model"], load(tmp_path / "parts" / "last.pth")["model"])
    for folder in ("model_final", "model_best"):
        assert_same_weights(load_file(tmp_path / "whole" / folder / "model.safetensors"),
                            load_file(tmp_path / "parts" / folder / "model.safetensors"))


def test_segmentation_plan_shows_compile_and_eval_only_refuses_it(tmp_path, lsmae_home, capsys):
    line = "      training steps torch.compile'd (compilation before the first step); evaluation uncompiled"
    assert main(["segment", "vit_base/coco/4000", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compile"] is False
    assert main(["segment", "vit_base/coco/4000", "--dry-run", "--json", "--compile"]) == 0
    assert json.loads(capsys.readouterr().out)["compile"] is True
    assert main(["segment", "vit_base/coco/4000", "--dry-run"]) == 0
    assert line not in capsys.readouterr().out.splitlines()
    assert main(["segment", "vit_base/coco/4000", "--dry-run", "--compile"]) == 0
    assert line in capsys.readouterr().out.splitlines()
    assert main(["segment", "--eval-only", str(tmp_path), "--data-path", str(tmp_path), "--compile"]) == 1
    assert capsys.readouterr().err.strip() == (
        "lsmae segment: error: --compile compiles training steps: --eval-only runs the model uncompiled (its "
        "windows take other sizes, each one a compilation)")
