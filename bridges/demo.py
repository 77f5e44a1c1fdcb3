"""``lsmae demo``: the whole chain, offline, on the embedded ``demo`` checkpoint, in a few minutes on a CPU.

Every step is a real ``lsmae`` command line (printed, so it can be copied): fetch -> verify ->
visualize reconstructions of held-out photographs -> convert to timm -> fine-tune on
scikit-learn's digits next to the same model trained from scratch -> convert to ViTDet ->
``lsmae detect`` on a generated COCO-format set when detectron2 is installed. Quick steps run in
this process, training runs as child processes; each step's full output goes to
``WORKDIR/logs/STEP.log`` and the console gets one result line per step.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.errors import LsmaeError

from . import sample_data

DEFAULT_WORKDIR = "lsmae-demo"
# digits: 1797 images, the smallest class has 174: 140 per class to train, 34 to measure
DIGITS_TRAIN, DIGITS_VAL = 140, 34
FINETUNE_SIZE = 64  # the pretraining's resolution and 8x8 grid
# flips and small crops change what a digit is: whole, unflipped digits, no mixing
FINETUNE_RECIPE = ("--input-size", str(FINETUNE_SIZE), "--warmup-epochs", "1", "--effective-batch-size", "64",
                   "--lr", "2e-3", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0",
                   "--hflip", "0", "--min-crop-scale", "0.7", "--drop-path", "0", "--print-freq", "1000")
DETECT_CONFIG = "mask_rcnn_vitdet_demo"

DESCRIPTION = ("Run the whole chain on the embedded demo checkpoint (a micro long-seq MAE pretrained with `lsmae "
               "pretrain` on photographs scikit-image ships): fetch, verify, visualize reconstructions of held-out "
               "photographs, convert to timm, fine-tune on scikit-learn's digits next to a from-scratch baseline, "
               "convert to ViTDet, and (with detectron2) train and evaluate a detector on a generated COCO-format "
               "set. No network; a few minutes on a 2-core CPU. Needs the demo extra: "
               "pip install 'long-seq-mae[demo]'.")


class DemoError(LsmaeError):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="where data, logs and artefacts go (default ./%(default)s; rewritten on each run)")
    p.add_argument("--epochs", type=int, default=4,
                   help="fine-tuning epochs, for the pretrained and the from-scratch model alike (default %(default)s)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="fine-tuning device (default: cuda when available, else cpu; detection runs on the CPU)")
    p.add_argument("--data-only", action="store_true",
                   help="only write the data sets into WORKDIR/data (the first step of the demo checkpoint's recipe)")


@dataclass
class Demo:
    """The state of one demo run: where things go and what was made."""

    workdir: Path
    artefacts: dict[str, Path] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def log_path(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"

    def step(self, number: str, title: str, action: Callable[[], str]) -> None:
        """Run ``action`` (which returns its one-line result) and print the result with the time taken."""
        print(f"[{number}] {title}", flush=True)
        start = time.perf_counter()
        try:
            result = action()
        except (LsmaeError, OSError):  # the user's to fix: `lsmae` prints them as one line
            raise
        except Exception:  # a bug, not a user mistake: keep the traceback for the report, say where it is
            log = self.log_path("traceback")
            log.write_text(traceback.format_exc())
            raise DemoError(f"step {number} ({title}) broke: {sys.exc_info()[1]!r}; traceback in {log}") from None
        print(f"      {result} ({time.perf_counter() - start:.1f} s)", flush=True)

    def lsmae(self, name: str, argv: list[str]) -> list[str]:
        """``lsmae ARGV`` in this process, output to the step's log; returns the lines it printed."""
        from .cli import main

        log = self.log_path(name)
        print(f"      $ lsmae {shlex.join(argv)}", flush=True)
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            code = main(argv)
        lines = log.read_text().splitlines()
        if code != 0:
            raise DemoError(f"`lsmae {shlex.join(argv)}` failed: {_last_error(lines)} (log: {log})")
        return lines

    def lsmae_child(self, name: str, argv: list[str], progress: str, env: dict[str, str] | None = None) -> list[str]:
        """``lsmae ARGV`` as a child process (training: its own threads, logging and workers); lines
        matching ``progress`` are echoed, everything goes to the step's log."""
        log = self.log_path(name)
        print(f"      $ lsmae {shlex.join(argv)}", flush=True)
        cmd = [sys.executable, "-m", "bridges.cli", *argv]
        lines = []
        with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                   env={**os.environ, **(env or {})}) as child:
            assert child.stdout is not None
            for line in child.stdout:
                f.write(line)
                f.flush()
                lines.append(line.rstrip("\n"))
                if re.search(progress, line):
                    print(f"        {_strip_log_prefix(line.strip())}", flush=True)
        if child.returncode != 0:
            raise DemoError(f"`lsmae {shlex.join(argv)}` failed (exit {child.returncode}): {_last_error(lines)} "
                            f"(log: {log})")
        return lines


def _strip_log_prefix(line: str) -> str:
    return re.sub(r"^\d\d:\d\d:\d\d ", "", line)  # the time stamp of our own log lines


def _last_error(lines: list[str]) -> str:
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()


# --------------------------------------------------------------------------- data
def write_data(data: Path) -> dict[str, Path]:
    """Photographs (pretraining set and held-out), digits, and a COCO-format set when detectron2 is there."""
    folders = {"pretrain photos": data / "photos" / "pretrain", "held-out photos": data / "photos" / "heldout",
               "digits": data / "digits"}
    sample_data.write_photos(folders["pretrain photos"], sample_data.PRETRAIN_PHOTOS)
    sample_data.write_photos(folders["held-out photos"], sample_data.HELDOUT_PHOTOS)
    sample_data.write_digits(folders["digits"], DIGITS_TRAIN, DIGITS_VAL, size=FINETUNE_SIZE)
    if detectron2_available():
        sample_data.write_shapes_coco(data)
        folders["COCO-format set"] = data / "coco"
    return folders


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


# --------------------------------------------------------------------------- steps
def _best_top1(lines: list[str]) -> float:
    for line in reversed(lines):
        if m := re.search(r"best top-1 ([\d.]+)%", line):
            return float(m.group(1))
    raise DemoError("the fine-tuning run printed no best top-1")


def run(args: argparse.Namespace) -> None:
    """Run every step; raises :class:`DemoError` at the first one that fails."""
    sample_data.require("skimage.data", "scikit-image")
    sample_data.require("sklearn.datasets", "scikit-learn")
    workdir = Path(args.workdir).expanduser().resolve()
    demo = Demo(workdir)
    total_start = time.perf_counter()
    data = workdir / "data"

    def data_step() -> str:
        folders = write_data(data)
        return ", ".join(f"{k}: {v}" for k, v in folders.items())

    demo.step("data", "write the data sets (scikit-image photographs, scikit-learn digits)", data_step)
    if args.data_only:
        return
    heldout = sorted((data / "photos" / "heldout").glob("*.png"))
    n = "7" if detectron2_available() else "6"
    out = {"reconstructions": workdir / "reconstructions.png",
           "timm": workdir / "timm" / f"demo_vit_micro_{FINETUNE_SIZE}.safetensors",
           "vitdet": workdir / "vitdet" / "demo_vitdet.pth"}

    demo.step(f"1/{n}", "fetch the demo checkpoint (package file, same download and verification as a release file)",
              lambda: f"cached at {demo.lsmae('fetch', ['fetch', 'demo'])[-1]}")
    demo.step(f"2/{n}", "verify it (pinned SHA-256 + keys and shapes of its architecture)",
              lambda: demo.lsmae("verify", ["verify", "demo"])[-1])

    def visualize() -> str:
        lines = demo.lsmae("visualize", ["visualize", "demo", *map(str, heldout), "-o", str(out["reconstructions"])])
        demo.artefacts["reconstructions of held-out photographs"] = out["reconstructions"]
        return next(line for line in lines if line.startswith("loss on the masked patches"))

    demo.step(f"3/{n}", f"reconstruct held-out photographs ({', '.join(p.stem for p in heldout)}) "
                        "with 75% of their patches masked", visualize)

    def to_timm() -> str:
        lines = demo.lsmae("convert-timm", ["convert", "demo", "--to", "timm", "--img-size", str(FINETUNE_SIZE),
                                            "-o", str(out["timm"])])
        demo.artefacts["timm weights"] = out["timm"]
        return lines[0]

    demo.step(f"4/{n}", "convert to a timm ViT classifier", to_timm)

    def finetune() -> str:
        common = ["--data-path", str(data / "digits"), "--epochs", str(args.epochs), *FINETUNE_RECIPE,
                  "--resume", ""] + (["--device", args.device] if args.device else [])
        top1 = {}
        for init, extra in (("pretrained", []), ("scratch", ["--from-scratch"])):
            run_dir = workdir / "finetune" / init
            lines = demo.lsmae_child(f"finetune-{init}", ["finetune", "demo", *common, *extra,
                                                          "--output-dir", str(run_dir)],
                                     progress=r"epoch \d+/\d+ done")
            top1[init] = _best_top1(lines)
            demo.artefacts[f"digits classifier ({init})"] = run_dir / "best.pth"
        gain = top1["pretrained"] - top1["scratch"]
        return (f"digits val top-1 after {args.epochs} epochs: pretrained {top1['pretrained']:.1f}% vs from scratch "
                f"{top1['scratch']:.1f}% ({gain:+.1f} points, {DIGITS_VAL * 10} images)")

    demo.step(f"5/{n}", f"fine-tune on scikit-learn's digits ({DIGITS_TRAIN * 10} train images, "
                        f"{FINETUNE_SIZE} px), and the same model from scratch", finetune)

    def to_vitdet() -> str:
        lines = demo.lsmae("convert-vitdet", ["convert", "demo", "--to", "vitdet", "-o", str(out["vitdet"])])
        demo.artefacts["ViTDet backbone weights"] = out["vitdet"]
        return "; ".join(lines[:-1])

    demo.step(f"6/{n}", "convert to a Detectron2 ViTDet backbone", to_vitdet)

    if detectron2_available():
        def detect() -> str:
            run_dir = workdir / "detect"
            demo.lsmae_child("detect", ["detect", str(out["vitdet"]), "--config", DETECT_CONFIG,
                                        f"train.output_dir={run_dir}"],
                             progress=r"iter: \d+ |Total inference time",
                             env={"DETECTRON2_DATASETS": str(data)})
            results = json.loads((run_dir / "eval_results.json").read_text())
            demo.artefacts["detector"] = run_dir / "model_final.pth"
            demo.artefacts["detection metrics"] = run_dir / "eval_results.json"
            return (f"box AP {_ap(results, 'bbox')}, mask AP {_ap(results, 'segm')} on the generated val set "
                    f"(a few iterations: this checks the chain, not the accuracy)")

        demo.step(f"7/{n}", f"train and evaluate ViTDet Mask R-CNN ({DETECT_CONFIG}) through `lsmae detect`", detect)
    else:
        from .detect import DETECTRON2_INSTALL

        print(f"[skip] detection: detectron2 is not installed; to add this step, {DETECTRON2_INSTALL}")

    print(f"done in {time.perf_counter() - total_start:.0f} s; artefacts:")
    for what, path in {**demo.artefacts, "logs": demo.logs}.items():
        print(f"  {what:40s} {path}")


def _ap(results: dict, task: str) -> str:
    ap = results.get(task, {}).get("AP")
    return "n/a" if ap is None or ap != ap else f"{ap:.1f}"
