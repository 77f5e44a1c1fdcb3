"""``lsmae demo``: the whole chain, offline, on the embedded ``demo`` checkpoint, in a few minutes on a CPU.

fetch -> verify -> visualize reconstructions of held-out photographs -> export to transformers (the
same loss from ViTMAEForPreTraining, when transformers is installed) -> convert to timm ->
fine-tune on scikit-learn's digits next to the same model trained from scratch -> convert to
ViTDet -> ``lsmae detect`` on a generated COCO-format set when detectron2 is installed.

Each step calls the library function behind its ``lsmae`` command and prints one line from the
result it returns (how a step runs: :mod:`bridges.demo.runner`). Detection runs as a child
``lsmae detect`` process: detectron2's launcher owns its processes and logging; its result is the
``eval_results.json`` it writes.

The steps are the rows of :data:`STEPS` (name, title, the modules they need beyond the demo extra,
the function that runs them); the step count and the ``[skip]`` lines come from that table.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.demo.config import DemoConfig, DemoResult
from bridges.demo.runner import Demo
from pretrain.configs import command_line, configure
from pretrain.optional import installed, missing, require

# digits: 1797 images, the smallest class has 174: 140 per class to train, 34 to measure
DIGITS_TRAIN, DIGITS_VAL = 140, 34
FINETUNE_SIZE = 64  # the pretraining's resolution and 8x8 grid
# flips and small crops change what a digit is: whole, unflipped digits, no mixing
FINETUNE_RECIPE = dict(input_size=FINETUNE_SIZE, warmup_epochs=1, effective_batch_size=64, lr=2e-3, mixup=0.0,
                       cutmix=0.0, aa="none", reprob=0.0, hflip=0.0, min_crop_scale=0.7, drop_path=0.0, print_freq=1000)
DETECT_CONFIG = "mask_rcnn_vitdet_demo"
PICTURES = 2  # validation images drawn by each segmentation and detection run
EVALUATED = re.compile(r"iteration \d+/\d+: ")


# --------------------------------------------------------------------------- data
def write_data(data: Path) -> dict[str, Path]:
    """Photographs (pretraining set and held-out), digits, a COCO-format set of shapes and texture masks."""
    from bridges.demo import sample_data

    folders = {"pretrain photos": data / "photos" / "pretrain", "held-out photos": data / "photos" / "heldout",
               "digits": data / "digits"}
    sample_data.write_photos(folders["pretrain photos"], sample_data.PRETRAIN_PHOTOS)
    sample_data.write_photos(folders["held-out photos"], sample_data.HELDOUT_PHOTOS)
    sample_data.write_digits(folders["digits"], DIGITS_TRAIN, DIGITS_VAL, size=FINETUNE_SIZE)
    shapes = data / "shapes"  # a COCO-format set of one's own: 3 classes, ids 7, 12, 40
    sample_data.write_shapes_own_classes((shapes / "train.json", shapes / "train"),
                                         (shapes / "val.json", shapes / "val"))
    folders["COCO-format shapes (own classes)"] = shapes
    folders["texture masks (own classes)"] = sample_data.write_texture_masks(data / "textures")
    return folders


# --------------------------------------------------------------------------- steps
def outputs(demo: Demo) -> dict[str, Path]:
    """Where the conversions write (the detection step reads the ViTDet weights from there)."""
    return {"reconstructions": demo.workdir / "reconstructions.png", "hf": demo.workdir / "hf" / "demo_vitmae",
            "timm": demo.workdir / "timm" / f"demo_vit_micro_{FINETUNE_SIZE}.safetensors",
            "vitdet": demo.workdir / "vitdet" / "demo_vitdet.pth",
            "upernet": demo.workdir / "upernet" / "demo_upernet"}


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
    from bridges.operations import VisualizeConfig, visualize

    config = VisualizeConfig(checkpoint="demo", images=tuple(map(str, demo.heldout)),
                             output=str(outputs(demo)["reconstructions"]))
    with demo.logged("visualize", command_line("visualize", config)):
        result = visualize(**vars(config))
    demo.artefacts["reconstructions of held-out photographs"] = result.path
    demo.show(result.path, "held-out photographs, 75% of their patches masked: each row's loss beside it")
    demo.losses["lsmae"] = result.loss
    return result.summary


def hf_export_step(demo: Demo) -> str:
    from bridges.hf.export import hf_mae_loss
    from bridges.operations import ConvertConfig, convert

    config = ConvertConfig(source="demo", to="hf-mae", output=str(outputs(demo)["hf"]))
    with demo.logged("convert-hf", command_line("convert", config)):
        result = convert(**vars(config))
        loss = hf_mae_loss(result.path, demo.heldout)  # visualize's images, block masks and seed
    demo.artefacts["transformers ViTMAE folder"] = result.path
    return (f"transformers' ViTMAEForPreTraining, same images and masks: loss {loss:.6f} "
            f"(lsmae: {demo.losses['lsmae']:.6f})")


def timm_step(demo: Demo) -> str:
    from bridges.operations import ConvertConfig, convert

    config = ConvertConfig(source="demo", to="timm", output=str(outputs(demo)["timm"]), img_size=FINETUNE_SIZE)
    with demo.logged("convert-timm", command_line("convert", config)):
        result = convert(**vars(config))
    demo.artefacts["timm weights"] = result.path
    return result.report.splitlines()[0]


def finetune_step(demo: Demo) -> str:
    from bridges.classification import FinetuneConfig, finetune, training

    top1 = {}
    for init in ("pretrained", "scratch"):
        config = FinetuneConfig(source="demo", data_path=str(demo.data / "digits"), epochs=demo.options.epochs,
                                **FINETUNE_RECIPE, resume="", device=demo.options.device,
                                from_scratch=init == "scratch", output_dir=str(demo.workdir / "finetune" / init))
        with demo.logged(f"finetune-{init}", command_line("finetune", config), logger=training.log):
            result = finetune(config)
        top1[init] = 100 * result.top1  # the final model's
        demo.artefacts[f"digits classifier ({init})"] = result.last_path
    curves(demo, "finetune", [demo.workdir / "finetune" / init for init in top1],
           "digits: the pretrained run and its from-scratch twin")
    gain = top1["pretrained"] - top1["scratch"]
    return (f"digits val top-1 after {demo.options.epochs} epochs: pretrained {top1['pretrained']:.1f}% vs from "
            f"scratch {top1['scratch']:.1f}% ({gain:+.1f} points, {DIGITS_VAL * 10} images)")


def vitdet_step(demo: Demo) -> str:
    from bridges.operations import ConvertConfig, convert

    config = ConvertConfig(source="demo", to="vitdet", output=str(outputs(demo)["vitdet"]))
    with demo.logged("convert-vitdet", command_line("convert", config)):
        result = convert(**vars(config))
    demo.artefacts["ViTDet backbone weights"] = result.path
    return "; ".join(result.report.splitlines())


def segment_step(demo: Demo) -> str:
    from bridges.operations import ConvertConfig, convert
    from bridges.segmentation import SegmentConfig, segment
    from bridges.segmentation.recipes import get_recipe

    recipe = get_recipe("demo")
    upernet = ConvertConfig(source="demo", to="upernet", output=str(outputs(demo)["upernet"]),
                            img_size=recipe.crop_size, num_labels=recipe.num_labels)
    with demo.logged("convert-upernet", command_line("convert", upernet)):
        convert(**vars(upernet))
    demo.artefacts["UperNet folder (initialised)"] = Path(upernet.output)
    textures = demo.data / "textures"  # a set of one's own: mask value = class (0 is brick), 255 ignored
    miou = {}
    for init in ("pretrained", "scratch"):
        config = SegmentConfig(source="demo", train=f"{textures}/train/images:{textures}/train/masks",
                               val=f"{textures}/val/images:{textures}/val/masks", num_labels=recipe.num_labels,
                               class_names=str(textures / "classes.txt"),
                               output_dir=str(demo.workdir / "segment" / init), num_workers=0,
                               save_pictures=PICTURES, resume="", from_scratch=init == "scratch",
                               device=demo.options.device)
        with demo.logged(f"segment-{init}", command_line("segment", config),
                         logger=logging.getLogger("bridges.segmentation"), echo=EVALUATED):
            result = segment(config)
        miou[init] = 100 * result.mIoU  # the final model's, as the reference reports
        demo.artefacts[f"segmentation model ({init})"] = result.final
        for picture in result.pictures:
            demo.show(picture, f"{init}: {picture.stem} (image | ground truth | prediction; label PNG beside it)")
    curves(demo, "segment", [demo.workdir / "segment" / init for init in miou],
           "textures: the pretrained run and its from-scratch twin")
    return (f"texture val mIoU after {recipe.max_iter} iterations: pretrained {miou['pretrained']:.1f} vs from "
            f"scratch {miou['scratch']:.1f} ({miou['pretrained'] - miou['scratch']:+.1f} points)")


def detect_step(demo: Demo) -> str:
    from bridges.detection.config import DetectConfig

    run_dir = demo.workdir / "detect"
    shapes = demo.data / "shapes"
    config = DetectConfig(source=str(outputs(demo)["vitdet"]), config=DETECT_CONFIG,
                          train=f"{shapes / 'train.json'}:{shapes / 'train'}",
                          val=f"{shapes / 'val.json'}:{shapes / 'val'}", save_pictures=PICTURES,
                          overrides=(f"train.output_dir={run_dir}",))
    # a child process: detectron2's launcher owns its processes and logging
    demo.lsmae_child("detect", command_line("detect", config), progress=r"iter: \d+ |Total inference time")
    results = json.loads((run_dir / "eval_results.json").read_text())
    demo.artefacts["detector"] = run_dir / "model_final.pth"
    demo.artefacts["detection metrics"] = run_dir / "eval_results.json"
    for picture in sorted((run_dir / "pictures").glob("*.png")):
        demo.show(picture, f"{picture.stem}: predictions with score >= 0.5 (Detectron2's Visualizer; after a "
                           "few iterations, none may reach it: the picture then says so)")
    curves(demo, "detect", [run_dir], "ViTDet Mask R-CNN (detectron2's metrics.json)")
    return (f"box AP {_ap(results, 'bbox')}, mask AP {_ap(results, 'segm')} on the generated val set "
            f"(a few iterations: this checks the chain, not the accuracy)")


def _ap(results: dict, task: str) -> str:
    """AP of one task, then per class by name (detectron2's ``AP-NAME`` keys)."""
    def shown(ap: float | None) -> str:
        return "n/a" if ap is None or ap != ap else f"{ap:.1f}"

    by_class = {k[3:]: v for k, v in results.get(task, {}).items() if k.startswith("AP-")}
    return shown(results.get(task, {}).get("AP")) + f" ({', '.join(f'{k} {shown(v)}' for k, v in by_class.items())})"


def curves(demo: Demo, name: str, runs: list[Path], caption: str) -> None:
    """``lsmae plot RUNS -o WORKDIR/NAME/curves.png``, shown on the report under the running step."""
    from bridges.curves import plot_runs

    out = demo.workdir / name / "curves.png"
    with demo.logged(f"plot-{name}", ["plot", *map(str, runs), "-o", str(out)]):
        plotted = plot_runs(runs, out)
    demo.show(plotted.path, f"training curves, {caption}")


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
         detect_step, needs=("detectron2", "cv2")),
)


def planned_steps() -> list[Step]:
    """The numbered steps this installation runs (those whose requirements are all installed)."""
    return [s for s in STEPS if not s.missing()]


def skip_line(step: Step) -> str:
    """The one line that says a step is skipped and how to install what it needs."""
    return f"[skip] {step.name}: " + "; ".join(str(missing(r, f"the {step.name} step")) for r in step.missing())


def demo(config: DemoConfig | None = None, /, **options: Any) -> DemoResult:
    """``lsmae demo``: run every step, then write the report page; raises :class:`DemoError` (or the
    failing step's own error) at the first failure."""
    from bridges.demo.report import write_report

    config = configure(DemoConfig, config, options)
    require("skimage.data", "lsmae demo")
    require("sklearn.datasets", "lsmae demo")
    total_start = time.perf_counter()
    chain = Demo(Path(config.workdir).expanduser().resolve(), config)
    chain.step("data", DATA_STEP.title, lambda: DATA_STEP.run(chain))
    if config.data_only:
        return DemoResult(None, results={"data": chain.steps[-1].result})
    heldout = ", ".join(p.stem for p in chain.heldout)
    planned = planned_steps()
    skipped = []
    for step in STEPS:
        if step not in planned:
            skipped.append(skip_line(step))
            print(skipped[-1])
            continue
        number = f"{planned.index(step) + 1}/{len(planned)}"
        chain.step(number, step.title.format(heldout=heldout), lambda: step.run(chain))
    seconds = time.perf_counter() - total_start
    artefacts = {**chain.artefacts, "logs": chain.logs}
    print(f"done in {seconds:.0f} s; artefacts:")
    for what, path in artefacts.items():
        print(f"  {what:40s} {path}")
    page = write_report(chain.workdir / "report.html", chain.steps, skipped, artefacts, seconds)
    print(f"report (steps, commands, results, pictures and curves): {page}")
    return DemoResult(page, artefacts, {step.number: step.result for step in chain.steps}, tuple(skipped), seconds)
