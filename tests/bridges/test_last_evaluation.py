"""A run whose last evaluation is worse than its best: what segmentation and fine-tuning report.

The last evaluation is made worse for real: just before it, the classifier of the trained model is
replaced by one that answers a single class, so the final model (the one saved and evaluated) is the
worse one. Segmentation reports the final model as its result, the best beside it, labelled;
fine-tuning reports the best epoch, named as such, and ``last.pth`` holds the final epoch's evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.bridges.test_segment import _segment, texture_set  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_class(classifier: torch.nn.Conv2d | torch.nn.Linear, answer: int) -> None:
    """Make ``classifier`` answer ``answer`` everywhere (zero weights, one positive bias)."""
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.bias[answer] = 1.0


def _records(out: Path, kind: str) -> list[dict]:
    return [r for line in (out / "log.jsonl").read_text().splitlines() if (r := json.loads(line))["kind"] == kind]


def test_segmentation_reports_the_final_model_when_it_is_worse_than_the_best(
        texture_set, tmp_path, lsmae_home, monkeypatch, capsys):  # noqa: F811 (the fixture)
    from bridges.segmentation import command, eval_only, training

    evaluate = training.SegmentationTask.evaluate

    def worse_at_the_end(self, at, train_loss):
        if at.step == self.recipe.max_iter:
            _one_class(self.plain.decode_head.classifier, answer=3)
        return evaluate(self, at, train_loss)

    monkeypatch.setattr(training.SegmentationTask, "evaluate", worse_at_the_end)
    results = []
    segment = command.segment
    monkeypatch.setattr(command, "segment", lambda *a, **k: results.append(segment(*a, **k)) or results[-1])
    out = tmp_path / "run"
    assert _segment(texture_set, out) == 0
    (result,) = results
    first, last = _records(out, "eval")
    assert (first["step"], last["step"]) == (3, 6) and last["mIoU"] < first["mIoU"]  # the premise
    assert result.mIoU == last["mIoU"] and (result.mAcc, result.aAcc) == (last["mAcc"], last["aAcc"])
    assert (result.best_mIoU, result.best_step, result.final) == (first["mIoU"], 3, out / "model_final")
    printed = capsys.readouterr().out.splitlines()
    assert f"final mIoU {100 * last['mIoU']:.2f} mAcc {100 * last['mAcc']:.2f} aAcc {100 * last['aAcc']:.2f} at " \
           f"iteration 6: the result ({out / 'model_final'})" in printed
    assert any(line.startswith(f"best of 2 evaluations: mIoU {100 * first['mIoU']:.2f} at iteration 3 ")
               for line in printed)
    assert torch.equal(eval_only.load_segmentation_model(out / "model_final").decode_head.classifier.bias,
                       torch.tensor([0.0, 0.0, 0.0, 1.0]))  # the result is the model that was evaluated last


def test_fine_tuning_reports_its_last_evaluation_as_the_result_and_its_best_epoch_beside_it(tmp_path, lsmae_home,
                                                                                           monkeypatch, capsys):
    from bridges.classification import finetune, training
    from bridges.demo.sample_data import write_digits

    digits = write_digits(tmp_path / "digits", 30, 10, size=64)
    evaluate = training.Classification.evaluate

    def worse_at_the_end(self, at, train_loss):
        if at.epoch == self.config.epochs:
            _one_class(self.classifier.head, answer=3)
        return evaluate(self, at, train_loss)

    monkeypatch.setattr(training.Classification, "evaluate", worse_at_the_end)
    out = tmp_path / "run"
    result = finetune(source="demo", data_path=str(digits), input_size=32, epochs=2, warmup_epochs=1,
                      effective_batch_size=16, lr=2e-3, mixup=0, cutmix=0, aa="none", reprob=0, hflip=0, drop_path=0,
                      num_workers=0, device="cpu", precision="fp32", output_dir=str(out), print_freq=1000)
    first, last = _records(out, "epoch")
    assert last["top1"] == 0.1 < first["top1"]  # the premise: one class of ten answered
    assert (result.top1, result.top5) == (last["top1"], last["top5"]) and result.last_path == out / "last.pth"
    assert (result.best.top1, result.best.epoch, result.best_path) == (first["top1"], 0, out / "best.pth")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"top-1 {100 * last['top1']:.2f}% top-5 {100 * last['top5']:.2f}% after epoch 2 " \
                         f"(last.pth); best top-1 {100 * first['top1']:.2f}% top-5 {100 * first['top5']:.2f}% " \
                         "(epoch 1, best.pth); weights load into plain timm, see " \
                         f"`lsmae eval {out / 'best.pth'} --data-path DATA`"
    best, final = (torch.load(out / name, weights_only=True) for name in ("best.pth", "last.pth"))
    assert (best["epoch"], best["top1"]) == (0, first["top1"])
    assert (final["epoch"], final["top1"], final["best"]["top1"]) == (1, last["top1"], first["top1"])
