"""``lsmae plot``: reading run logs into series by global step (resumed runs, older logs, Detectron2's
metrics.json), the trainer's global_step, the figure of several runs, the PNG, the command line, and
the one-line error without matplotlib."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from bridges.cli import main as cli_main
from bridges.curves import plot_runs
from bridges.curves.records import read_run, run_labels
from pretrain.errors import LsmaeError
from tests.pretrain.test_trainer import ACCUM, BATCH, EVAL_EVERY, SAMPLES, STEPS, trainer_and_task


def write_log(folder: Path, records: list[dict | str], name: str = "log.jsonl") -> Path:
    """A run folder whose log holds ``records`` (a string: a line as is, e.g. one torn by a kill)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return folder


def train(step: int, loss: float, lr: float = 0.1) -> dict:
    return {"kind": "train", "epoch": step // 4, "step": step % 4, "global_step": step, "loss": loss, "lr": lr}


def epoch(step: int, top1: float) -> dict:
    return {"kind": "epoch", "epoch": step // 4 - 1, "train_loss": 1.0, "top1": top1, "lr": 0.1, "global_step": step}


def finetune_log(folder: Path, top1: list[float]) -> Path:
    """A fine-tuning run of len(top1) epochs of 4 updates."""
    records: list[dict] = []
    for e, acc in enumerate(top1):
        records += [train(4 * e + i, 2.0 - 0.1 * (4 * e + i), 0.01 * (i + 1)) for i in range(4)]
        records.append(epoch(4 * (e + 1), acc))
    return write_log(folder, records)


# --------------------------------------------------------------------------- reading
def test_a_resumed_log_keeps_the_last_record_of_each_step(tmp_path):
    first = [train(s, 1.0 + s) for s in range(6)] + [epoch(4, 0.5)]
    torn = '{"kind": "train", "epoch": 1, "st'  # the write a kill cut short; the resumed run appends after it
    resumed = [train(s, 10.0 + s, lr=0.2) for s in range(4, 8)] + [epoch(4, 0.6), epoch(8, 0.7)]
    run = read_run(write_log(tmp_path / "run", first + [torn] + resumed))
    assert run.series["train_loss"] == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (4, 14.0), (5, 15.0), (6, 16.0),
                                        (7, 17.0)]
    assert run.series["lr"] == [(s, 0.1) for s in range(4)] + [(s, 0.2) for s in range(4, 8)]
    assert run.series["top1"] == [(4, 0.6), (8, 0.7)]
    assert run.skipped_lines == 1 and run.evaluations == 2
    assert run.summary("ft") == ("ft: 8 train records, 2 evaluations, last top1 70 at step 8, 1 unreadable lines "
                                 "of log.jsonl skipped")


def test_logs_without_global_step_place_records_by_batches(tmp_path):
    # 3 batches per epoch (the last batch of each epoch is always logged), print_freq 2
    old = [{"kind": "train", "epoch": e, "step": b, "loss": 1.0, "lr": 0.1} for e in range(2) for b in (0, 2)]
    old += [{"kind": "epoch", "epoch": 0, "loss": 0.9}, {"kind": "epoch", "epoch": 1, "loss": 0.8}]
    run = read_run(write_log(tmp_path / "pretrain", old))
    assert [s for s, _ in run.series["train_loss"]] == [0, 2, 3, 5]
    assert run.series["loss"] == [(3, 0.9), (6, 0.8)]  # the pretraining loss of each epoch, at its end
    segment = [{"kind": "train", "epoch": 0, "step": 0, "loss": 3.0, "lr": 0.1},
               {"kind": "eval", "step": 40, "train_loss": 2.0, "mIoU": 0.25}]
    assert read_run(write_log(tmp_path / "segment", segment)).series["mIoU"] == [(40, 0.25)]


def test_detectron2_metrics_json(tmp_path):
    # max_iter 6, log_period 2, eval_period 4: Detectron2 writes iterations 1, 3 (with the evaluation after
    # iteration 3) and 5, then the evaluation after training at iteration 6; a resume rewrote iteration 5
    lines = [{"iteration": 1, "total_loss": 3.0, "lr": 0.001, "loss_cls": 1.0},
             {"iteration": 3, "total_loss": 2.5, "lr": 0.002, "bbox/AP": 1.5, "segm/AP": 1.0},
             {"iteration": 5, "total_loss": 2.2, "lr": 0.002},
             {"iteration": 5, "total_loss": 2.0, "lr": 0.002},
             {"iteration": 6, "bbox/AP": 4.5, "bbox/AP50": 9.0, "segm/AP": 3.0}]
    run = read_run(write_log(tmp_path / "detect", lines, "metrics.json"))
    assert run.log.name == "metrics.json"
    assert run.series["train_loss"] == [(2, 3.0), (4, 2.5), (6, 2.0)]
    assert run.series["lr"] == [(2, 0.001), (4, 0.002), (6, 0.002)]
    assert run.series["bbox/AP"] == [(4, 1.5), (6, 4.5)] and run.series["segm/AP"] == [(4, 1.0), (6, 3.0)]
    assert [m.key for m in run.metrics] == ["bbox/AP", "segm/AP"] and run.evaluations == 2


def test_a_folder_without_a_log_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LsmaeError, match=r"empty: no log\.jsonl \(lsmae pretrain, finetune, linprobe, segment\) "
                                         r"nor metrics\.json \(lsmae detect\) in this folder$"):
        read_run(tmp_path / "empty")
    assert cli_main(["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lsmae plot: error: ") and "log.jsonl" in err
    assert not (tmp_path / "c.png").exists()


def test_labels_are_folder_names_made_unique_by_the_parent(tmp_path):
    paths = [tmp_path / "pretrained" / "finetune", tmp_path / "scratch" / "finetune", tmp_path / "x" / "segment"]
    assert run_labels(paths) == ["pretrained/finetune", "scratch/finetune", "segment"]


# --------------------------------------------------------------------------- the trainer's global_step
def test_the_trainer_logs_global_step_as_updates_done(tmp_path):
    """The toy run: 10 batches per epoch, 2 per update, a record per batch, an evaluation every 2 updates."""
    trainer, task = trainer_and_task(tmp_path / "toy", workers=0)
    trainer.fit(task)
    records = [json.loads(line) for line in (tmp_path / "toy" / "log.jsonl").read_text().splitlines()]
    batches = SAMPLES // BATCH
    trains = [r for r in records if r["kind"] == "train"]
    assert len(trains) == STEPS * ACCUM
    # a batch's record is written before its update: the updates of the whole epochs and of this one so far
    assert [r["global_step"] for r in trains] == [r["epoch"] * batches // ACCUM + r["step"] // ACCUM
                                                  for r in trains]
    assert [r["global_step"] for r in trains] == [i // ACCUM for i in range(STEPS * ACCUM)]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["global_step"] for r in evals] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    run = read_run(tmp_path / "toy")
    assert [s for s, _ in run.series["train_loss"]] == list(range(STEPS))  # one point per update
    assert [s for s, _ in run.series["loss"]] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))


# --------------------------------------------------------------------------- the figure
def test_two_runs_share_each_panel_and_the_png_is_written(tmp_path):
    from bridges.curves.figure import DPI, PANEL_INCHES, draw

    a = finetune_log(tmp_path / "pretrained" / "finetune", [0.5, 0.8, 0.9])
    b = finetune_log(tmp_path / "scratch" / "finetune", [0.2, 0.3])
    runs = [read_run(a), read_run(b)]
    labels = run_labels([a, b])
    figure = draw(runs, labels)
    assert [ax.get_title() for ax in figure.axes] == ["training loss", "learning rate", "validation top-1 (%)"]
    for ax in figure.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["pretrained/finetune", "scratch/finetune"]
        assert ax.get_xlabel() == "global step (optimizer updates)"
    top1 = figure.axes[2].get_lines()[0]
    assert list(top1.get_xdata()) == [4, 8, 12] and list(top1.get_ydata()) == pytest.approx([50, 80, 90])

    done = plot_runs([a, b], tmp_path / "out" / "curves.png")
    assert done.path == tmp_path / "out" / "curves.png" and not list(done.path.parent.glob(".*"))
    with Image.open(done.path) as png:
        assert png.format == "PNG" and png.size == (round(3 * PANEL_INCHES[0] * DPI), round(PANEL_INCHES[1] * DPI))
    assert done.lines()[1] == "pretrained/finetune: 12 train records, 3 evaluations, last top1 90 at step 12"


def test_panels_follow_the_metrics_present(tmp_path):
    from bridges.curves.figure import draw

    ft = finetune_log(tmp_path / "ft", [0.5])
    det = write_log(tmp_path / "det", [{"iteration": 0, "total_loss": 3.0, "lr": 0.001},
                                       {"iteration": 1, "bbox/AP": 2.0, "segm/AP": 1.0}], "metrics.json")
    figure = draw([read_run(ft), read_run(det)], ["ft", "det"])
    lines = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in figure.axes}
    assert lines == {"training loss": ["ft", "det"], "learning rate": ["ft", "det"], "validation top-1 (%)": ["ft"],
                     "validation box AP": ["det"], "validation mask AP": ["det"]}


def test_the_command_line_end_to_end(tmp_path, capsys):
    a = finetune_log(tmp_path / "finetune" / "pretrained", [0.5, 0.906])
    b = finetune_log(tmp_path / "finetune" / "scratch", [0.1, 0.2])
    out = tmp_path / "curves.png"
    assert cli_main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(out), "pretrained: 8 train records, 2 evaluations, last top1 90.6 at step 8",
        "scratch: 8 train records, 2 evaluations, last top1 20 at step 8"]
    with Image.open(out) as png:
        assert png.size[0] > png.size[1] > 0


def test_without_matplotlib_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    run = finetune_log(tmp_path / "ft", [0.5])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "bridges.curves.figure", raising=False)
    assert cli_main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 1
    assert capsys.readouterr().err == ("lsmae plot: error: lsmae plot needs matplotlib (not installed): "
                                       "pip install -e '.[plot]'\n")
    assert not (tmp_path / "c.png").exists()
