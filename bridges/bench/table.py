"""The one table of ``tools/gpu_check.sh``: what each of its parts measured, read back from the files the parts
wrote (a bench's ``--json`` lines, ``lsmae detect``'s ``metrics.json`` and log, pytest's JUnit XML), in Markdown
under one line naming the date, the device and the versions, so that a GPU run goes into the README as printed.

    python -m bridges.bench.table WORK

``WORK/parts.tsv`` holds one line per part, in the order they ran: name, kind (bench, detect, pytest),
label, subject (the detection config's name; ``-`` for none), budget in seconds, outcome (the exit status,
or ``skipped: REASON``) and the seconds it took. A part's files are ``WORK/NAME.out`` and ``WORK/NAME.err``
(its output), ``WORK/NAME.xml`` (pytest) and the folder ``WORK/NAME`` (``lsmae detect``'s output).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError, report_errors

# detectron2's published training cost (projects/ViTDet README: 64 A100s, batch 64, so one image per GPU and
# iteration): seconds per image and GB of memory, by the shipped config that trains the same model
PUBLISHED = {"mask_rcnn_vitdet_b_100ep": (0.314, 10.9), "mask_rcnn_vitdet_l_100ep": (0.603, 20.9)}
TIMED_OUT = (124, 137)  # timeout(1): the budget ran out (TERM), or the part ignored it (KILL)
COLUMNS = ("part", "what", "img/s", "peak memory", "TFLOP/s", "MFU", "notes", "time")
MAX_MEM = re.compile(r"max_mem: (\d+)M")  # detectron2's CommonMetricPrinter: torch.cuda.max_memory_allocated, MiB


@dataclass(frozen=True)
class Part:
    """One line of ``parts.tsv`` (see the module doc)."""

    name: str
    kind: str
    label: str
    subject: str
    budget_s: int
    outcome: str
    seconds: int

    def ran(self) -> bool:
        return self.outcome == "0"

    def status(self, work: Path) -> str:
        """``ok``, ``skipped: ...``, ``TIMED OUT ...`` or ``FAILED (exit N): `` with the last line of its errors."""
        if self.ran() or self.outcome.startswith("skipped"):
            return "ok" if self.ran() else self.outcome
        if int(self.outcome) in TIMED_OUT:
            return f"TIMED OUT at its budget of {self.budget_s} s"
        err = work / f"{self.name}.err"
        lines = [line.strip() for line in err.read_text(errors="replace").splitlines() if line.strip()] \
            if err.is_file() else []
        return f"FAILED (exit {self.outcome})" + (f": {lines[-1]}" if lines else "")


Row = dict[str, str]  # column -> cell


def read_parts(work: Path) -> list[Part]:
    table = work / "parts.tsv"
    if not table.is_file():
        raise LsmaeError(f"{table} not found: the folder of a tools/gpu_check.sh run (WORK=...) holds it")
    parts = []
    for line in table.read_text().splitlines():
        name, kind, label, subject, budget, outcome, seconds = line.split("\t")
        parts.append(Part(name, kind, label, subject, int(budget), outcome, int(seconds)))
    return parts


def _number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- the parts' files
def bench_rows(part: Part, work: Path) -> Iterator[Row]:
    """A bench's ``--json`` lines: each configuration's step, the one-worker pipeline, end to end."""
    path = work / f"{part.name}.out"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] \
        if path.is_file() else []
    flops = next((r for r in records if r["part"] == "flops"), None)
    first_step = next((r for r in records if r["part"] == "step"), None)
    for r in records:
        if r["part"] == "step":
            notes = [f"x{r['speed_up']:.2f} speed, x{r['memory_ratio']:.2f} memory vs {r['vs']}"] \
                if r["config"] != r["vs"] else []
            notes.append(f"{r['warmup_s']:.0f} s warm-up")
            if flops and r is first_step:
                notes.append(f"{flops['analytic_train'] / 1e9:.1f} GFLOP per training image (analytic)")
            mfu = r.get("mfu")
            what = r["config"] if r["precision"] == r["config"] else f"{r['config']}: {r['precision']}"
            yield {"what": what, "img/s": _number(r["images_per_s"]),
                   "peak memory": f"{r['peak_memory_gb']:.1f} GB", "TFLOP/s": _number(r["tflops"], 2),
                   "MFU": "" if mfu is None else f"{mfu:.1%}", "notes": "; ".join(notes)}
        elif r["part"] == "pipeline":
            others = [f"{k.removesuffix('_images_per_s')} {v:.0f} img/s" for k, v in r.items()
                      if k.endswith("_images_per_s") and k != "ours_images_per_s"]
            yield {"what": "input pipeline, one worker", "img/s": _number(r["ours_images_per_s"]),
                   "notes": "; ".join([f"{r['images']} generated images", *others])}
        elif r["part"] == "end_to_end":
            needed = ", ".join(f"{n} ({k})" for k, n in r["workers_needed"].items())
            synthetic, fed = r["synthetic_images_per_s"], r["data_images_per_s"]
            workers = f"{r['workers']} worker" + ("s" if r["workers"] != 1 else "")
            yield {"what": f"{r['config']} fed by {workers}", "img/s": _number(fed),
                   "notes": f"{fed / synthetic:.0%} of {synthetic:.1f} img/s synthetic; workers per device "
                            f"needed: {needed}"}


def _metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def detect_rows(part: Part, work: Path) -> Iterator[Row]:
    """``lsmae detect``: detectron2's iteration time (IterationTimer, from the third iteration on; the
    median of the last 20 as its JSONWriter writes it), peak memory from its log, beside the published cost."""
    folder = work / part.name
    timed = [m for m in _metrics(folder) if "time" in m]
    if not timed:
        return
    last = timed[-1]
    log = folder / "log.txt"
    peaks = MAX_MEM.findall(log.read_text(errors="replace")) if log.is_file() else []
    peak_gb = int(peaks[-1]) / 1024 if peaks else None
    first = max(timed[0]["iteration"], last["iteration"] - 19) + 1  # the window of the JSONWriter's median
    window = f"median of iterations {first}-{last['iteration'] + 1}" if first <= last["iteration"] else \
        f"iteration {first}"
    notes = [f"{last['time']:.3f} s/iteration ({window}), {last.get('data_time', 0.0):.3f} s of it waiting for data"]
    published = PUBLISHED.get(part.subject)
    if published:
        seconds, gb = published
        memory = f", x{peak_gb / gb:.2f} its memory" if peak_gb else ""
        notes.append(f"detectron2's published: {seconds} s/image, {gb} GB (64 A100s, batch 64): "
                     f"x{seconds / last['time']:.2f} its speed{memory}")
    yield {"what": f"{part.subject}, {last['iteration'] + 1} iterations", "img/s": _number(1 / last["time"], 2),
           "peak memory": "not measured (CPU)" if peak_gb is None else f"{peak_gb:.1f} GB", "notes": "; ".join(notes)}


def pytest_rows(part: Part, work: Path) -> Iterator[Row]:
    """pytest's JUnit XML: how many tests passed, failed and were skipped (and why)."""
    path = work / f"{part.name}.xml"
    if not path.is_file():
        return
    suite = ElementTree.parse(path).getroot().find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
    skipped = f"{counts['skipped']} skipped" + (f" ({'; '.join(reasons)})" if reasons else "")
    yield {"what": f"{counts['tests']} tests",
           "notes": f"{passed} passed, {counts['failures'] + counts['errors']} failed, {skipped}"}


ROWS: dict[str, Callable[[Part, Path], Iterator[Row]]] = {"bench": bench_rows, "detect": detect_rows,
                                                          "pytest": pytest_rows}


# --------------------------------------------------------------------------- the table
def environment() -> str:
    """Date, device, versions: the line above the table."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        device = f"CPU ({platform.processor() or platform.machine()})"
    versions = [f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")]
    for package in ("torchvision", "timm", "transformers"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    versions.append(_detectron2())
    return " · ".join([datetime.date.today().isoformat(), device, f"{os.cpu_count()} CPU cores", *versions,
                       f"Python {platform.python_version()}"])


def _detectron2() -> str:
    import importlib.util

    if importlib.util.find_spec("detectron2") is None:
        return "detectron2 not installed"
    import detectron2

    built = importlib.util.find_spec("detectron2._C") is not None
    return f"detectron2 {detectron2.__version__}" + ("" if built else " (Python sources, no _C)")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(parts: list[Part], work: Path, environment_line: str) -> str:
    """The line above the table, the table (a part's status and time on its first row) and the line below."""
    lines = [environment_line, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for part in parts:
        status = part.status(work)
        rows = list(ROWS[part.kind](part, work)) if not part.outcome.startswith("skipped") else []
        if not part.ran():
            rows.append({"notes": status})
        for i, row in enumerate(rows):
            row = {**row, "part": part.label if i == 0 else "",
                   "time": f"{part.seconds}/{part.budget_s} s" if i == 0 else ""}
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in COLUMNS) + " |")
    failed = [p.name for p in parts if not p.ran() and not p.outcome.startswith("skipped")]
    total, budget = sum(p.seconds for p in parts), sum(p.budget_s for p in parts)
    lines += ["", f"{len(parts)} parts in {total} s (budget {budget} s): "
                  + ("every part ran" if not failed else f"did not finish: {', '.join(failed)}")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bridges.bench.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="the folder of a tools/gpu_check.sh run")
    args = p.parse_args(argv)
    print(render(read_parts(args.work), args.work, environment()))


if __name__ == "__main__":
    raise SystemExit(report_errors("python -m bridges.bench.table", main))
