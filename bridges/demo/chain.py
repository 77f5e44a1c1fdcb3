"""``lsmae demo``: the whole chain, offline, on the embedded ``demo`` checkpoint, in a few minutes on a CPU.

fetch -> verify -> visualize reconstructions of held-out photographs -> export to transformers (the
same loss from ViTMAEForPreTraining, when transformers is installed) -> convert to timm ->
fine-tune on scikit-learn's digits next to the same model trained from scratch -> convert to
ViTDet -> ``lsmae detect`` on a generated COCO-format set when detectron2 is installed.

Each step calls the library function behind its ``lsmae`` command and prints one line from the
result it returns, after the equivalent command line (to copy). Output a step would print goes
to ``WORKDIR/logs/STEP.log``. Detection runs as a child ``lsmae detect`` process: detectron2's
launcher owns its processes and logging; its result is the ``eval_results.json`` it writes.

The steps are the rows of :data:`STEPS` (name, title, the modules they need beyond the demo extra,
the function that runs them); the step count and the ``[skip]`` lines come from that table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
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
from typing import Any

from pretrain.errors import DemoError, LsmaeError
from pretrain.optional import installed, missing, require

# digits: 1797 images, the smallest class has 174: 140 per class to train, 34 to measure
DIGITS_TRAIN, DIGITS_VAL = 140, 34
FINETUNE_SIZE = 64  # the pretraining's resolution and 8x8 grid
# flips and small crops change what a digit is: whole, unflipped digits, no mixing
FINETUNE_RECIPE = ("--input-size", str(FINETUNE_SIZE), "--warmup-epochs", "1", "--effective-batch-size", "64",
                   "--lr", "2e-3", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0",
                   "--hflip", "0", "--min-crop-scale", "0.7", "--drop-path", "0", "--print-freq", "1000")
DETECT_CONFIG = "mask_rcnn_vitdet_demo"
EPOCH_DONE = re.compile(r"epoch \d+/\d+ done")
EVALUATED = re.compile(r"iteration \d+/\d+: ")


@dataclass
class Demo:
    """What the steps of one demo run share: where things go, the options, and what earlier steps made."""

    workdir: Path
    options: argparse.Namespace
    artefacts: dict[str, Path] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)  # visualize's, for the transformers export to compare

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def heldout(self) -> list[Path]:
        return sorted((self.data / "photos" / "heldout").glob("*.png"))

    @property
    def outputs(self) -> dict[str, Path]:
        """Where the conversions write (the detection step reads the ViTDet weights from there)."""
        return {"reconstructions": self.workdir / "reconstructions.png", "hf": self.workdir / "hf" / "demo_vitmae",
                "timm": self.workdir / "timm" / f"demo_vit_micro_{FINETUNE_SIZE}.safetensors",
                "vitdet": self.workdir / "vitdet" / "demo_vitdet.pth",
                "upernet": self.workdir / "upernet" / "demo_upernet"}

    def device_option(self) -> list[str]:
        return ["--device", self.options.device] if self.options.device else []

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

    @contextlib.contextmanager
    def logged(self, name: str, argv: list[str], logger: logging.Logger | None = None,
               echo: re.Pattern[str] = EPOCH_DONE):
        """Print the command line a step stands for; send what the step prints (and ``logger``'s
        records, echoing those matching ``echo``) to the step's log. Yields the log's path."""
        print(f"      $ lsmae {shlex.join(argv)}", flush=True)
        log = self.log_path(name)
        console = sys.stdout
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            handler = _EchoingHandler(f, console, echo)
            if logger is not None:
                logger.addHandler(handler)
            try:
                yield log
            except SystemExit as e:  # argparse refused the options (usage is in the log)
                raise DemoError(f"`lsmae {shlex.join(argv)}` failed (exit {e.code}): {_last_error(log)} "
                                f"(log: {log})") from None
            except LsmaeError as e:
                raise type(e)(f"{e} (log: {log})") from None
            finally:
                if logger is not None:
                    logger.removeHandler(handler)

    def lsmae_child(self, name: str, argv: list[str], progress: str, env: dict[str, str] | None = None) -> None:
        """``lsmae ARGV`` as a child process; lines matching ``progress`` are echoed, all go to the step's log."""
        log = self.log_path(name)
        print(f"      $ lsmae {shlex.join(argv)}", flush=True)
        cmd = [sys.executable, "-m", "bridges", *argv]
        with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                   env={**os.environ, **(env or {})}) as child:
            for line in child.stdout or ():
                f.write(line)
                f.flush()
                if re.search(progress, line):
                    print(f"        {line.strip()}", flush=True)
        if child.returncode != 0:
            raise DemoError(f"`lsmae {shlex.join(argv)}` failed (exit {child.returncode}): {_last_error(log)} "
                            f"(log: {log})")


class _EchoingHandler(logging.StreamHandler):
    """Writes every record to the step's log; prints those matching ``pattern`` on the console."""

    def __init__(self, stream: Any, console: Any, pattern: re.Pattern[str]) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        self.console = console
        self.pattern = pattern

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        message = record.getMessage()
        if self.pattern.search(message):
            print(f"        {message}", file=self.console, flush=True)


def _last_error(log: Path) -> str:
    lines = log.read_text().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()


# --------------------------------------------------------------------------- requirements
def detectron2_available() -> bool:
    return installed("detectron2")


# --------------------------------------------------------------------------- data
def write_data(data: Path) -> dict[str, Path]:
    """Photographs (pretraining set and held-out), digits, and a COCO-format set when detectron2 is there."""
    from bridges.demo import sample_data

    folders = {"pretrain photos": data / "photos" / "pretrain", "held-out photos": data / "photos" / "heldout",
               "digits": data / "digits"}
    sample_data.write_photos(folders["pretrain photos"], sample_data.PRETRAIN_PHOTOS)
    sample_data.write_photos(folders["held-out photos"], sample_data.HELDOUT_PHOTOS)
    sample_data.write_digits(folders["digits"], DIGITS_TRAIN, DIGITS_VAL, size=FINETUNE_SIZE)
    if detectron2_available():
        sample_data.write_shapes_coco(data)
        folders["COCO-format set"] = data / "coco"
    folders["ADE20K-layout textures"] = sample_data.write_textures_ade20k(data)
    return folders


# --------------------------------------------------------------------------- steps
# Each takes the run's Demo (workdir, data, options, what earlier steps made) and returns its one-line result.
def data_step(demo: Demo) -> str:
    folders = write_data(demo.data)
    return ", ".join(f"{k}: {v}" for k, v in folders.items())


def fetch_step(demo: Demo) -> str:
    from zoo.cache import fetch

    with demo.logged("fetch", ["fetch", "demo"]):
        return f"cached at {fetch('demo')}"


def verify_step(demo: Demo) -> str:
    from zoo.verify import verify

    with demo.logged("verify", ["verify", "demo"]):
        return verify("demo")


def visualize_step(demo: Demo) -> str:
    from bridges.operations import visualize

    out = demo.outputs["reconstructions"]
    with demo.logged("visualize", ["visualize", "demo", *map(str, demo.heldout), "-o", str(out)]):
        result = visualize("demo", demo.heldout, out)
    demo.artefacts["reconstructions of held-out photographs"] = result.path
    demo.losses["lsmae"] = result.loss
    return result.summary


def hf_export_step(demo: Demo) -> str:
    from bridges.hf.export import hf_mae_loss
    from bridges.operations import convert

    out = demo.outputs["hf"]
    with demo.logged("convert-hf", ["convert", "demo", "--to", "hf-mae", "-o", str(out)]):
        result = convert("demo", "hf-mae", out)
        loss = hf_mae_loss(result.path, demo.heldout)  # visualize's images, block masks and seed
    demo.artefacts["transformers ViTMAE folder"] = result.path
    return (f"transformers' ViTMAEForPreTraining, same images and masks: loss {loss:.6f} "
            f"(lsmae: {demo.losses['lsmae']:.6f})")


def timm_step(demo: Demo) -> str:
    from bridges.operations import convert

    out = demo.outputs["timm"]
    with demo.logged("convert-timm", ["convert", "demo", "--to", "timm", "--img-size", str(FINETUNE_SIZE),
                                      "-o", str(out)]):
        result = convert("demo", "timm", out, img_size=FINETUNE_SIZE)
    demo.artefacts["timm weights"] = result.path
    return result.report.splitlines()[0]


def finetune_step(demo: Demo) -> str:
    from . import finetune
    from bridges.cli.classification import build_parser as finetune_parser

    common = ["--data-path", str(demo.data / "digits"), "--epochs", str(demo.options.epochs), *FINETUNE_RECIPE,
              "--resume", "", *demo.device_option()]
    top1 = {}
    for init, extra in (("pretrained", []), ("scratch", ["--from-scratch"])):
        argv = ["demo", *common, *extra, "--output-dir", str(demo.workdir / "finetune" / init)]
        with demo.logged(f"finetune-{init}", ["finetune", *argv], logger=finetune.log):
            result = finetune.run(finetune_parser("finetune").parse_args(argv), "finetune")
        top1[init] = 100 * result["best_top1"]
        demo.artefacts[f"digits classifier ({init})"] = result["best"]
    gain = top1["pretrained"] - top1["scratch"]
    return (f"digits val top-1 after {demo.options.epochs} epochs: pretrained {top1['pretrained']:.1f}% vs from "
            f"scratch {top1['scratch']:.1f}% ({gain:+.1f} points, {DIGITS_VAL * 10} images)")


def vitdet_step(demo: Demo) -> str:
    from bridges.operations import convert

    out = demo.outputs["vitdet"]
    with demo.logged("convert-vitdet", ["convert", "demo", "--to", "vitdet", "-o", str(out)]):
        result = convert("demo", "vitdet", out)
    demo.artefacts["ViTDet backbone weights"] = result.path
    return "; ".join(result.report.splitlines())


def segment_step(demo: Demo) -> str:
    from . import segment
    from bridges.operations import convert
    from bridges.cli.segmentation import build_parser as segment_parser
    from bridges.segmentation.recipes import get_recipe

    recipe = get_recipe("demo")
    upernet = demo.outputs["upernet"]
    with demo.logged("convert-upernet", ["convert", "demo", "--to", "upernet", "--img-size", str(recipe.crop_size),
                                         "--num-labels", str(recipe.num_labels), "-o", str(upernet)]):
        convert("demo", "upernet", upernet, img_size=recipe.crop_size, num_labels=recipe.num_labels)
    demo.artefacts["UperNet folder (initialised)"] = upernet
    miou = {}
    for init, extra in (("pretrained", []), ("scratch", ["--from-scratch"])):
        argv = ["demo", "--data-path", str(demo.data / "ade"), "--output-dir", str(demo.workdir / "segment" / init),
                "--num-workers", "0", "--resume", "", *extra, *demo.device_option()]
        with demo.logged(f"segment-{init}", ["segment", *argv], logger=logging.getLogger("bridges.segmentation"),
                         echo=EVALUATED):
            result = segment.run(segment_parser().parse_args(argv))
        miou[init] = 100 * result["best_mIoU"]
        demo.artefacts[f"segmentation model ({init})"] = result["final"]
    return (f"texture val mIoU after {recipe.max_iter} iterations: pretrained {miou['pretrained']:.1f} vs from "
            f"scratch {miou['scratch']:.1f} ({miou['pretrained'] - miou['scratch']:+.1f} points)")


def detect_step(demo: Demo) -> str:
    run_dir = demo.workdir / "detect"
    demo.lsmae_child("detect", ["detect", str(demo.outputs["vitdet"]), "--config", DETECT_CONFIG,
                                f"train.output_dir={run_dir}"],
                     progress=r"iter: \d+ |Total inference time", env={"DETECTRON2_DATASETS": str(demo.data)})
    results = json.loads((run_dir / "eval_results.json").read_text())
    demo.artefacts["detector"] = run_dir / "model_final.pth"
    demo.artefacts["detection metrics"] = run_dir / "eval_results.json"
    return (f"box AP {_ap(results, 'bbox')}, mask AP {_ap(results, 'segm')} on the generated val set "
            f"(a few iterations: this checks the chain, not the accuracy)")


def _ap(results: dict, task: str) -> str:
    ap = results.get(task, {}).get("AP")
    return "n/a" if ap is None or ap != ap else f"{ap:.1f}"


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Step:
    """One row of the demo. ``name`` labels its ``[skip]`` line; ``title`` is printed after its number
    (``{heldout}``: the held-out photographs' names); ``needs``: modules beyond the demo extra."""

    name: str
    title: str
    run: Callable[[Demo], str]
    needs: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        return [r for r in self.needs if not installed(r)]


DATA_STEP = Step("data", "write the data sets (scikit-image photographs, scikit-learn digits)", data_step)
STEPS = (
    Step("fetch", "fetch the demo checkpoint (package file, same download and verification as a release file)",
         fetch_step),
    Step("verify", "verify it (SHA-256 read again against the pin + keys and shapes of its architecture)",
         verify_step),
    Step("visualize", "reconstruct held-out photographs ({heldout}) with 75% of their patches masked",
         visualize_step),
    Step("transformers export", "export to transformers (ViTMAEForPreTraining) and compute its loss there",
         hf_export_step, needs=("transformers",)),
    Step("timm", "convert to a timm ViT classifier", timm_step),
    Step("fine-tuning", f"fine-tune on scikit-learn's digits ({DIGITS_TRAIN * 10} train images, {FINETUNE_SIZE} "
                        "px), and the same model from scratch", finetune_step),
    Step("vitdet", "convert to a Detectron2 ViTDet backbone", vitdet_step),
    Step("segmentation", "segment textures: convert --to upernet, then lsmae segment (UperNet) from the demo "
                         "checkpoint and from scratch", segment_step, needs=("transformers",)),
    Step("detection", f"train and evaluate ViTDet Mask R-CNN ({DETECT_CONFIG}) through `lsmae detect`",
         detect_step, needs=("detectron2",)),
)


def planned_steps() -> list[Step]:
    """The numbered steps this installation runs (those whose requirements are all installed)."""
    return [s for s in STEPS if not s.missing()]


def skip_line(step: Step) -> str:
    """The one line that says a step is skipped and how to install what it needs."""
    return f"[skip] {step.name}: " + "; ".join(str(missing(r, f"the {step.name} step")) for r in step.missing())


def run(args: argparse.Namespace) -> None:
    """Run every step; raises :class:`DemoError` (or the failing step's own error) at the first failure."""
    require("skimage.data", "lsmae demo")
    require("sklearn.datasets", "lsmae demo")
    total_start = time.perf_counter()
    demo = Demo(Path(args.workdir).expanduser().resolve(), args)
    demo.step("data", DATA_STEP.title, lambda: DATA_STEP.run(demo))
    if args.data_only:
        return
    heldout = ", ".join(p.stem for p in demo.heldout)
    planned = planned_steps()
    for step in STEPS:
        if step not in planned:
            print(skip_line(step))
            continue
        number = f"{planned.index(step) + 1}/{len(planned)}"
        demo.step(number, step.title.format(heldout=heldout), lambda: step.run(demo))
    print(f"done in {time.perf_counter() - total_start:.0f} s; artefacts:")
    for what, path in {**demo.artefacts, "logs": demo.logs}.items():
        print(f"  {what:40s} {path}")
