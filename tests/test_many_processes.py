"""The multi-process tier: every training command started as two CPU processes, as users start it
on GPUs (torchrun with gloo; detection: ``--num-gpus 2``, through Detectron2's own launch), on the
tiny data sets of the other tests.

Each run must finish, write each checkpoint and result file from one process and exactly as often
as the run saves it (``tests/write_journal`` records every write), and log once. A run whose whole
process tree (the launcher and its workers) is killed with SIGKILL after its first checkpoint and
started again with the same command must end with the weights of an uninterrupted run. Evaluation
counts every image of a validation set whose size 2 does not divide exactly once, with the metrics
of one process; fine-tuning with nothing drawn per process has the per-step losses of one process.
Micro models, a few steps, one thread per process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bridges.cli import main
from bridges.demo.sample_data import write_digits
from tests.conftest import REPO
from tests.pretrain.test_pretraining import argv as pretrain_argv
from tests.pretrain.test_pretraining import assert_same_state

JOURNAL_HOOK = REPO / "tests" / "write_journal"
TIMEOUT = 300

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- launching and killing
@dataclass
class Run:
    output: str  # stdout and stderr of the launcher and its workers
    writes: dict[str, list[tuple[int, str]]]  # file name (relative to the watched folder) -> (pid, event)

    def renames(self, name: str) -> int:
        return sum(event == "os.rename" for _, event in self.writes.get(name, []))

    def lines(self, text: str) -> int:
        """The output lines holding ``text``."""
        return sum(text in line for line in self.output.splitlines())

    def starting(self, text: str) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith(text)]


def torchrun(nproc: int, *argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]


def lsmae(*argv: str) -> list[str]:
    return [sys.executable, "-m", "bridges", *argv]


def child_env(home: Path, watch: Path | None = None, journal: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "LSMAE_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(JOURNAL_HOOK), str(REPO)]), **extra}
    for var in ("LSMAE_MIRROR", "LSMAE_OFFLINE", "LSMAE_REGISTRY"):
        env.pop(var, None)
    if watch is not None and journal is not None:
        env.update(LSMAE_TEST_WATCH_DIR=str(watch), LSMAE_TEST_WRITE_JOURNAL=str(journal))
    return env


def _journal(journal: Path, watch: Path) -> dict[str, list[tuple[int, str]]]:
    """Writes of files whose path has no hidden part (temporary files and folders start with '.')."""
    writes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    root = Path(os.path.realpath(watch))
    for line in journal.read_text().splitlines() if journal.exists() else []:
        pid, event, path = line.split("\t")
        name = Path(path).relative_to(root).as_posix()
        if not any(part.startswith(".") for part in name.split("/")):
            writes[name].append((int(pid), event))
    return dict(writes)


def launch(cmd: list[str], home: Path, watch: Path, **env: str) -> Run:
    """Run ``cmd`` to its end (it must succeed), recording the writes under ``watch``."""
    journal = watch.parent / f".{watch.name}.journal"
    journal.unlink(missing_ok=True)
    done = subprocess.run(cmd, cwd=REPO, env=child_env(home, watch, journal, **env), capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return Run(output, _journal(journal, watch))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun starts its workers in sessions of
    their own, so its process group is not enough); returns once they are gone."""
    tree = [pid, *_descendants(pid)]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in tree[1:]):
        assert time.monotonic() < deadline, "killed workers are still running"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def launch_and_kill(cmd: list[str], home: Path, first_checkpoint: Path, **env: str) -> None:
    """Start ``cmd``, SIGKILL its whole process tree as soon as ``first_checkpoint`` exists."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(home, **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not first_checkpoint.exists():
        assert proc.poll() is None, f"ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    kill_tree(proc.pid)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished


def assert_one_writer(run: Run) -> None:
    """No file is written by two processes."""
    shared = {name: sorted({pid for pid, _ in events}) for name, events in run.writes.items()
              if len({pid for pid, _ in events}) > 1}
    assert not shared, f"written by several processes: {shared}"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsmae_home")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- pretraining
PRETRAIN_EPOCHS = 3


def test_pretraining_in_two_processes_writes_once_and_resumes_after_sigkill(photos, home, tmp_path):
    def command(out: Path) -> list[str]:
        return torchrun(2, "-m", "bridges", "pretrain", *pretrain_argv(photos, out, PRETRAIN_EPOCHS))

    whole = launch(command(tmp_path / "whole"), home, tmp_path / "whole")
    assert_one_writer(whole)
    for epoch in range(PRETRAIN_EPOCHS):
        assert whole.renames(f"checkpoint-{epoch}.pth") == 1
        assert whole.lines(f"saved {tmp_path / 'whole' / f'checkpoint-{epoch}.pth'}") == 1  # logged once
    assert "log.jsonl" in whole.writes
    assert whole.lines("2 devices") == 1  # the run's summary line, from one process

    killed = tmp_path / "killed"
    launch_and_kill(command(killed), home, killed / "checkpoint-0.pth")
    assert not (killed / f"checkpoint-{PRETRAIN_EPOCHS - 1}.pth").exists()
    launch(command(killed), home, killed)
    last = f"checkpoint-{PRETRAIN_EPOCHS - 1}.pth"
    assert_same_state(load(tmp_path / "whole" / last), load(killed / last))


# --------------------------------------------------------------------------- classification
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """10 classes x 8 training images, and a validation set of 29 (odd) images."""
    root = write_digits(tmp_path_factory.mktemp("digits"), 8, 3, size=32)
    next(iter(sorted((root / "val").rglob("*.png")))).unlink()
    return root


def classifier_argv(mode: str, data: Path, out: Path) -> list[str]:
    """Micro runs at 32 px from the demo checkpoint; fine-tuning draws nothing per process (no mixup,
    cutmix, RandAugment, random erasing, drop path; whole, unflipped crops)."""
    common = ["demo", "--data-path", str(data), "--input-size", "32", "--num-workers", "0", "--device", "cpu",
              "--precision", "fp32", "--output-dir", str(out), "--print-freq", "1", "--epochs", "3",
              "--warmup-epochs", "1", "--effective-batch-size", "8", "--hflip", "0", "--min-crop-scale", "1"]
    if mode == "finetune":
        return [*common, "--lr", "1e-3", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0",
                "--drop-path", "0"]
    return [*common, "--lr", "1"]


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if (r := json.loads(line))["kind"] == "train"]


@pytest.fixture(scope="module")
def finetuned_in_two(digits, home, tmp_path_factory) -> tuple[Path, Run]:
    out = tmp_path_factory.mktemp("finetune2")
    return out, launch(torchrun(2, "-m", "bridges", "finetune", *classifier_argv("finetune", digits, out)), home, out)


@pytest.mark.parametrize("mode", ["finetune", "linprobe"])
def test_classifier_in_two_processes_writes_once_and_resumes_after_sigkill(mode, digits, home, tmp_path, request):
    if mode == "finetune":
        out, whole = request.getfixturevalue("finetuned_in_two")
    else:
        out = tmp_path / "whole"
        whole = launch(torchrun(2, "-m", "bridges", mode, *classifier_argv(mode, digits, out)), home, out)
    assert_one_writer(whole)
    assert whole.renames("last.pth") == 3  # once an epoch
    assert 1 <= whole.renames("best.pth") <= 3
    summary = [line for line in whole.starting("top-1 ") if "; best top-1 " in line]  # the run's result line
    assert len(summary) == 1 and whole.lines("epoch 3/3 done") == 1
    assert len(train_losses(out)) == 3 * 10  # 80 images, 8 a step: 10 steps an epoch, each logged once

    killed = tmp_path / "killed"
    module = ["-m", "bridges", mode]
    launch_and_kill(torchrun(2, *module, *classifier_argv(mode, digits, killed)), home, killed / "last.pth")
    assert load(killed / "last.pth")["epoch"] < 2
    launch(torchrun(2, *module, *classifier_argv(mode, digits, killed)), home, killed)
    a, b = load(out / "last.pth"), load(killed / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert_same_weights(a["model"], b["model"])


def test_finetuning_losses_of_two_processes_equal_one_process(finetuned_in_two, digits, home, tmp_path, monkeypatch):
    out, _ = finetuned_in_two
    monkeypatch.setenv("LSMAE_HOME", str(home))
    assert main(["finetune", *classifier_argv("finetune", digits, tmp_path / "one")]) == 0
    one, two = train_losses(tmp_path / "one"), train_losses(out)
    assert len(one) == len(two) == 30
    assert max(abs(a - b) / abs(a) for a, b in zip(one, two)) < 1e-5


def test_eval_in_two_processes_counts_each_image_once(finetuned_in_two, digits, home, tmp_path):
    out, _ = finetuned_in_two
    results = {}
    for n in (1, 2):
        run = launch(torchrun(n, "-m", "bridges", "eval", str(out / "best.pth"), "--data-path", str(digits),
                              "--num-workers", "0", "--device", "cpu", "--precision", "fp32", "--batch-size", "4"),
                     home, tmp_path)
        [results[n]] = run.starting("top-1")
    assert "on 29 images" in results[2]
    assert results[1] == results[2]


# --------------------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    pytest.importorskip("skimage")
    from bridges.demo.sample_data import write_textures_ade20k

    return write_textures_ade20k(tmp_path_factory.mktemp("ade"), train_images=16, val_images=5)


def segment_argv(data: Path, out: Path) -> list[str]:
    return ["-m", "bridges", "segment", "demo", "--data-path", str(data), "--output-dir", str(out), "--device", "cpu",
            "--num-workers", "0", "--precision", "fp32", "--max-iter", "6", "--eval-period", "3",
            "--checkpoint-period", "3", "--print-freq", "1"]


def test_segmentation_in_two_processes_writes_once_resumes_and_evaluates_each_image_once(textures, home, tmp_path):
    pytest.importorskip("transformers")
    whole = launch(torchrun(2, *segment_argv(textures, tmp_path / "whole"), "--save-pictures", "2"), home,
                   tmp_path / "whole")
    assert_one_writer(whole)
    pictures = [f"pictures/ADE_validation_{i:08d}{kind}.png" for i in range(2) for kind in ("", "_pred")]
    assert sorted(name for name in whole.writes if name.startswith("pictures/")) == sorted(pictures)
    assert all(whole.renames(name) == 1 for name in pictures) and whole.lines(" pictures in ") == 1
    assert whole.renames("last.pth") == 2
    assert whole.renames("model_final/model.safetensors") == 1
    assert 1 <= whole.renames("model_best/model.safetensors") <= 2
    assert whole.lines("BatchNorm: per-process statistics") == 1
    assert len(whole.starting("final mIoU")) == len(whole.starting("best of 2 evaluations")) == 1
    evals = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [3, 6]
    assert all(r["images"] == 5 for r in evals if r["kind"] == "eval")

    killed = tmp_path / "killed"
    launch_and_kill(torchrun(2, *segment_argv(textures, killed)), home, killed / "last.pth")
    assert load(killed / "last.pth")["progress"]["step"] == 3
    launch(torchrun(2, *segment_argv(textures, killed)), home, killed)
    a, b = load(tmp_path / "whole" / "last.pth"), load(killed / "last.pth")
    assert_same_weights(a["model"], b["model"])
    assert a["best"] == b["best"]

    metrics = {}
    model_final = tmp_path / "whole" / "model_final"
    for n in (1, 2):
        pictures = ["--save-pictures", "2"] if n == 2 else []
        run = launch(torchrun(n, "-m", "bridges", "segment", "--eval-only", str(model_final), "--data-path",
                              str(textures), "--device", "cpu", "--precision", "fp32", *pictures), home, model_final)
        [metrics[n]] = run.starting("mIoU")
    assert metrics[1] == metrics[2] and metrics[2].endswith("on 5 images")
    assert_one_writer(run)  # the 2-process --eval-only: its pictures from one process, once each
    assert sorted(run.writes) == sorted(f"pictures/ADE_validation_{i:08d}{kind}.png" for i in range(2)
                                        for kind in ("", "_pred"))
    assert all(run.renames(name) == 1 for name in run.writes) and run.lines(" pictures in ") == 1


# --------------------------------------------------------------------------- detection
def test_detection_in_two_processes_resumes_at_its_iteration(home, tmp_path):
    pytest.importorskip("detectron2")
    from bridges.demo.sample_data import write_shapes_coco

    data = tmp_path / "data"
    write_shapes_coco(data)
    env = {"DETECTRON2_DATASETS": str(data)}

    def command(out: Path, *extra: str) -> list[str]:
        return lsmae("detect", "demo", "--config", "mask_rcnn_vitdet_demo", "--num-gpus", "2", *extra,
                     f"train.output_dir={out}", "train.checkpointer.period=2", "train.max_iter=6",
                     "train.eval_period=6")

    whole = launch(command(tmp_path / "whole"), home, tmp_path / "whole", **env)
    assert_one_writer(whole)
    # detectron2's checkpointer writes in place (no rename)
    assert all(len(whole.writes[name]) == 1 for name in ("model_0000001.pth", "model_0000003.pth",
                                                          "model_final.pth", "eval_results.json"))
    assert whole.lines("2 process(es), gloo") == 1
    assert training_iterations(tmp_path / "whole") == list(range(6))

    killed = tmp_path / "killed"
    launch_and_kill(command(killed), home, killed / "last_checkpoint", **env)  # written after the checkpoint
    last = (killed / "last_checkpoint").read_text().strip()  # the checkpoint the rerun must resume from
    done = int(last.removeprefix("model_").removesuffix(".pth")) + 1
    assert done < 6 and not (killed / "model_final.pth").exists()
    before = training_iterations(killed)
    resumed = launch(command(killed, "--resume"), home, killed, **env)
    assert resumed.lines("resuming from the last checkpoint") == 1
    assert resumed.lines(f"Starting training from iteration {done}") == 1
    assert training_iterations(killed)[len(before):] == list(range(done, 6))
    assert (killed / "model_final.pth").exists()


def test_detection_on_own_data_registers_the_sets_in_each_worker(home, tmp_path):
    pytest.importorskip("detectron2")
    from bridges.demo.sample_data import OWN_CLASSES, write_shapes_own_classes

    train, val = (tmp_path / "train.json", tmp_path / "train"), (tmp_path / "val.json", tmp_path / "val")
    write_shapes_own_classes(train, val)
    out = tmp_path / "out"
    run = launch(lsmae("detect", "demo", "--config", "mask_rcnn_vitdet_demo", "--num-gpus", "2",
                       "--train", f"{train[0]}:{train[1]}", "--val", f"{val[0]}:{val[1]}", f"train.output_dir={out}",
                       "train.max_iter=2", "train.eval_period=2", "--save-pictures", "2"),
                 home, out, DETECTRON2_DATASETS=str(tmp_path / "no_coco"))
    assert_one_writer(run)
    # drawn after the final evaluation by one process, each picture once (an atomic rename), logged once
    pictures = [f"pictures/00000000000{i}.png" for i in range(2)]
    assert sorted(n for n in run.writes if n.startswith("pictures/")) == pictures
    main_pid = run.writes["eval_results.json"][0][0]  # the process that evaluated
    assert all(run.writes[name] == [(main_pid, "os.rename")] for name in pictures)
    assert run.lines(f"2 pictures (score >= 0.5) in {out / 'pictures'}") == 1
    assert run.lines("2 process(es), gloo") == 1 and (out / "model_final.pth").is_file()
    # the worker of rank 1 (spawned: nothing registered in the launcher carries over) read both sets itself
    rank1 = (out / "log.txt.rank1").read_text()
    assert f"Loaded 8 images in COCO format from {train[0]}" in rank1
    assert f"Loaded 4 images in COCO format from {val[0]}" in rank1
    assert run.lines("Per-category bbox AP") == 1  # evaluated once, under the category names
    assert all(f"AP-{name}" in json.loads((out / "eval_results.json").read_text())["bbox"]
               for name in OWN_CLASSES.values())


def training_iterations(out: Path) -> list[int]:
    """The iterations of the training records in detectron2's metrics.json (evaluations excluded)."""
    return [r["iteration"] for line in (out / "metrics.json").read_text().splitlines()
            if "total_loss" in (r := json.loads(line))]
