"""``tools/gpu_check.sh``: its CPU smoke run prints the one table (date, device and versions first, a row of
numbers for every part of the plan, the detection part skipped with its reason where detectron2 does not import);
a part over its budget is ended and fails the run; and the table read back from the parts' files
(:mod:`bridges.bench.table`) says what each measured."""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bridges.bench.detection_inputs import main as write_inputs
from bridges.bench.table import read_parts, render
from bridges.detection.source import prepare_source
from tests.conftest import COCO_PATH, REPO, _entry

SCRIPT = REPO / "tools" / "gpu_check.sh"
SMOKE_PARTS = {  # name -> its label in the table
    "nosync": "no-host-sync test (CUDA)",
    "detect": "lsmae detect: ViTDet demo config, CPU",
    "pretrain": "lsmae bench pretrain: demo architecture, 64 px, batch 4",
    "finetune": "lsmae bench finetune: demo architecture, 64 px, batch 4",
    "segment": "lsmae bench segment: demo architecture, 64 px crops, batch 2",
}
NUMBER = r"\d+\.\d+"


def run_check(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "WORK": str(work), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=900)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("gpu_check")
    return run_check(work, "--smoke"), work


def test_smoke_run_prints_the_environment_then_one_table(smoke):
    out, _ = smoke
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    date, device, cores, *versions = lines[0].split(" · ")
    assert date == datetime.date.today().isoformat() and device.startswith("CPU (") and device.endswith(")")
    assert cores == f"{os.cpu_count()} CPU cores" and versions[-1] == f"Python {sys.version.split()[0]}"
    assert f"torch {torch.__version__}" in lines[0] and "timm " in lines[0] and "transformers " in lines[0]
    detectron2 = "detectron2 not installed" if importlib.util.find_spec("detectron2") is None else "detectron2 0."
    assert detectron2 in lines[0]
    assert lines[2] == "| part | what | img/s | peak memory | TFLOP/s | MFU | notes | time |"
    table = [line for line in lines if line.startswith("|")]
    assert table == lines[2:2 + len(table)]  # one table, its rows together
    assert re.fullmatch(r"5 parts in \d+ s \(budget 720 s\): every part ran", lines[-1])


def test_smoke_run_has_every_part_with_numbers(smoke):
    out, work = smoke
    rows = [cells(line) for line in out.stdout.splitlines()[4:] if line.startswith("|")]
    labels = [row[0] for row in rows if row[0]]
    assert labels == list(SMOKE_PARTS.values())
    assert [p.name for p in read_parts(work)] == list(SMOKE_PARTS)
    for name in ("pretrain", "finetune", "segment"):
        step, pipeline, fed = _part_rows(rows, SMOKE_PARTS[name])
        assert step[1] == "fp32" and re.fullmatch(NUMBER, step[2]) and re.fullmatch(NUMBER + " GB", step[3])
        assert re.fullmatch(NUMBER, step[4]) and step[5] == ""  # no MFU on a CPU without --peak-tflops
        assert re.fullmatch(r"\d+/120 s", step[7])
        assert pipeline[1] == "input pipeline, one worker" and re.fullmatch(NUMBER, pipeline[2])
        assert fed[1] == "fp32 fed by 1 worker" and re.fullmatch(NUMBER, fed[2])
        assert re.match(r"\d+% of " + NUMBER + r" img/s synthetic; workers per device needed: \d+ \(ours\)", fed[6])
    (nosync,) = _part_rows(rows, SMOKE_PARTS["nosync"])
    assert re.fullmatch(r"\d+ tests", nosync[1]) and re.match(r"\d+ passed, 0 failed, \d+ skipped", nosync[6])
    detect = _part_rows(rows, SMOKE_PARTS["detect"])
    if importlib.util.find_spec("detectron2") is None:
        (row,) = detect
        assert row[1:6] == [""] * 5  # no numbers, the reason instead: lsmae detect's own one-line error
        assert row[6].startswith("skipped: lsmae detect: error: lsmae detect needs detectron2 (not installed): ")
    else:
        (row,) = detect
        assert row[1] == "mask_rcnn_vitdet_demo, 4 iterations" and re.fullmatch(NUMBER, row[2])
        assert re.match(NUMBER + r" s/iteration \(median of iterations 3-4\)", row[6])


def _part_rows(rows: list[list[str]], label: str) -> list[list[str]]:
    """The rows of the part labelled ``label``: its first and those after it with an empty first cell."""
    first = [row[0] for row in rows].index(label)
    end = next((i for i in range(first + 1, len(rows)) if rows[i][0]), len(rows))
    return rows[first:end]


def test_a_part_over_its_budget_is_ended_and_fails_the_run(tmp_path):
    out = run_check(tmp_path, "--smoke", PARTS="pretrain", PART_S="2")
    assert out.returncode == 1, out.stderr[-3000:]
    (part,) = read_parts(tmp_path)
    assert part.outcome == "124" and part.budget_s == 2
    assert part.seconds <= 2 + 10 + 1  # TERM, KILL 10 s later (bash counts whole seconds)
    assert f"| {SMOKE_PARTS['pretrain']} |  |  |  |  |  | TIMED OUT at its budget of 2 s | {part.seconds}/2 s |" \
        in out.stdout
    assert out.stdout.splitlines()[-1] == f"1 parts in {part.seconds} s (budget 2 s): did not finish: pretrain"


def test_an_unknown_part_is_refused(tmp_path):
    out = run_check(tmp_path, PARTS="detect pretrain-x")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("gpu_check: PARTS: no part pretrain-x (")
    assert set(out.stderr.strip()[:-1].split("(")[1].split()) == {
        "nosync", "detect", "pretrain-b", "pretrain-l", "finetune-b", "finetune-l", "segment-b", "segment-l"}


# --------------------------------------------------------------------------- the table, from given files
ENV = "2026-12-04 · 1 x NVIDIA H200 (140 GiB) · 16 CPU cores · torch 2.11.0"


def write_parts(work: Path, *lines: tuple) -> None:
    (work / "parts.tsv").write_text("".join("\t".join(map(str, line)) + "\n" for line in lines))


def table_rows(work: Path) -> list[str]:
    return [line for line in render(read_parts(work), work, ENV).splitlines()[4:] if line.startswith("|")]


def test_bench_rows_say_rate_memory_flops_mfu_and_the_baseline(tmp_path):
    records = [
        {"part": "step", "config": "release", "precision": "fp32", "images_per_s": 389.04, "peak_memory_gb": 37.51,
         "tflops": 76.44, "mfu": 0.0773, "speed_up": 1.0, "memory_ratio": 1.0, "vs": "release", "warmup_s": 4.2},
        {"part": "step", "config": "bf16+compile", "precision": "bf16 autocast", "images_per_s": 1359.0,
         "peak_memory_gb": 11.3, "tflops": 267.04, "mfu": 0.27, "speed_up": 3.493, "memory_ratio": 0.3013,
         "vs": "release", "warmup_s": 53.4},
        {"part": "flops", "analytic_train": 196.5e9, "analytic_forward": 65.5e9, "counted": {}},
        {"part": "pipeline", "images": 64, "ours_images_per_s": 326.2, "release_images_per_s": 101.4, "ratio": 3.2},
        {"part": "end_to_end", "config": "bf16+compile", "workers": 12, "steps": 48, "synthetic_images_per_s": 1359.0,
         "data_images_per_s": 1331.0, "workers_needed": {"ours": 5, "release": 14}},
    ]
    (tmp_path / "pretrain-b.out").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_parts(tmp_path, ("pretrain-b", "bench", "pretrain ViT-B", "-", 75, 0, 70))
    assert table_rows(tmp_path) == [
        "| pretrain ViT-B | release: fp32 | 389.0 | 37.5 GB | 76.44 | 7.7% | 4 s warm-up; 196.5 GFLOP per training "
        "image (analytic) | 70/75 s |",
        "|  | bf16+compile: bf16 autocast | 1359.0 | 11.3 GB | 267.04 | 27.0% | x3.49 speed, x0.30 memory vs release; "
        "53 s warm-up |  |",
        "|  | input pipeline, one worker | 326.2 |  |  |  | 64 generated images; release 101 img/s |  |",
        "|  | bf16+compile fed by 12 workers | 1331.0 |  |  |  | 98% of 1359.0 img/s synthetic; workers per device "
        "needed: 5 (ours), 14 (release) |  |",
    ]


def test_detect_row_is_detectron2s_iteration_time_and_peak_beside_the_published(tmp_path):
    folder = tmp_path / "detect"
    folder.mkdir()
    metrics = [{"iteration": i, "data_time": 0.01, "loss_cls": 1.0} for i in range(2)]
    metrics += [{"iteration": i, "data_time": 0.002, "time": 0.3 + i / 1000} for i in range(2, 30)]
    metrics.append({"iteration": 30, "bbox/AP": 0.0})  # the evaluation at the end
    (folder / "metrics.json").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "log.txt").write_text("iter: 28  time: 0.3280  max_mem: 9000M\niter: 29  time: 0.3290  max_mem: 11162M\n")
    write_parts(tmp_path, ("detect", "detect", "ViTDet-B", "mask_rcnn_vitdet_b_100ep", 75, 0, 61))
    assert table_rows(tmp_path) == [
        "| ViTDet-B | mask_rcnn_vitdet_b_100ep, 30 iterations | 3.04 | 10.9 GB |  |  | 0.329 s/iteration (median "
        "of iterations 11-30), 0.002 s of it waiting for data; detectron2's published: 0.314 s/image, 10.9 GB (64 "
        "A100s, batch 64): x0.95 its speed, x1.00 its memory | 61/75 s |"]


def test_pytest_row_counts_and_a_failed_part_says_its_last_error(tmp_path):
    (tmp_path / "nosync.xml").write_text(
        '<testsuites><testsuite tests="8" failures="1" errors="1" skipped="2"><testcase name="a"><skipped '
        'message="needs a CUDA device"/></testcase><testcase name="b"><skipped message="needs a CUDA device"/>'
        "</testcase></testsuite></testsuites>")
    (tmp_path / "nosync.err").write_text("Traceback ...\nE   RuntimeError: called a synchronizing CUDA operation\n\n")
    write_parts(tmp_path, ("nosync", "pytest", "no-host-sync test (CUDA)", "-", 75, 1, 40),
                ("segment-l", "bench", "segment ViT-L", "-", 30, 124, 31),
                ("detect", "detect", "ViTDet-B", "mask_rcnn_vitdet_b_100ep", 75, "skipped: no detectron2", 3))
    text = render(read_parts(tmp_path), tmp_path, ENV)
    assert table_rows(tmp_path) == [
        "| no-host-sync test (CUDA) | 8 tests |  |  |  |  | 4 passed, 2 failed, 2 skipped (needs a CUDA device) "
        "| 40/75 s |",
        "|  |  |  |  |  |  | FAILED (exit 1): E   RuntimeError: called a synchronizing CUDA operation |  |",
        "| segment ViT-L |  |  |  |  |  | TIMED OUT at its budget of 30 s | 31/30 s |",
        "| ViTDet-B |  |  |  |  |  | skipped: no detectron2 | 3/75 s |",
    ]
    assert text.splitlines()[0] == ENV
    assert text.splitlines()[-1] == "3 parts in 74 s (budget 180 s): did not finish: nosync, segment-l"


# --------------------------------------------------------------------------- the detection run's inputs
def test_detection_inputs_are_a_coco_set_and_a_source_shaped_as_the_entry(tmp_path, lsmae_home, monkeypatch):
    """The set --train/--val read, and a SOURCE ``lsmae detect`` takes with the entry's grid (here an entry at
    128 px, not the architecture's 64), without fetching anything."""
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"url_prefix": "http://127.0.0.1:9/no-network-in-tests/", "licenses": {},
                                    "entries": [{**_entry("vit_micro/coco/4000", "coco", 4000, 800, 5, COCO_PATH),
                                                 "img_size": 128}]}))
    monkeypatch.setenv("LSMAE_REGISTRY", str(registry))
    folder = tmp_path / "inputs"
    write_inputs([str(folder), "--checkpoint-like", "vit_micro/coco/4000", "--width", "96", "--height", "64",
                  "--train-images", "3", "--val-images", "1"])
    for split, count in (("train", 3), ("val", 1)):
        coco = json.loads((folder / f"{split}.json").read_text())
        assert [(i["width"], i["height"]) for i in coco["images"]] == [(96, 64)] * count
        assert sorted(p.name for p in (folder / split).iterdir()) == [i["file_name"] for i in coco["images"]]
    init = prepare_source(str(folder / "source.pth"), str(tmp_path / "out"), convert=False)
    assert (init.pretrain_img_size, init.grid_size) == (128, 16)
    assert not (tmp_path / "out").exists() and not lsmae_home.exists()  # nothing converted, nothing fetched
    write_inputs([str(tmp_path / "again"), "--checkpoint-like", "vit_micro/coco/4000", "--train-images", "1",
                  "--val-images", "1"])
    first, again = (torch.load(f / "source.pth", weights_only=True)["model"] for f in (folder, tmp_path / "again"))
    assert all(torch.equal(first[k], again[k]) for k in first)  # seeded
