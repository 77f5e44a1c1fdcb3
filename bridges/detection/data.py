"""``--train`` / ``--val JSON:IMAGE_DIR``: a user's COCO-format instance sets, with their own classes.

Read with the json module and checked before anything is launched (``--dry-run`` included), so that a
mistake costs a line, not a launch: the COCO keys, every image the JSON names, every category an
annotation uses, and the same classes in both sets. Each set is registered with Detectron2's own
``register_coco_instances`` in every process that reads it (``launch`` spawns its workers: they inherit
no registration); its loader numbers the category ids, whatever they are, 0..N-1 in id order, and
COCOEvaluator maps them back and prints AP per category name. Standard library only, but :func:`register`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.detection.errors import DetectError
from pretrain.errors import DataError, MissingDataError, OptionError

NUM_CLASSES_KEY = "model.roi_heads.num_classes"
EVALUATOR_KEY = "dataloader.evaluator.dataset_name"
NAMES_KEYS = {"train": "dataloader.train.dataset.names", "val": "dataloader.test.dataset.names"}
COCO_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class CocoSet:
    """One ``--train`` or ``--val`` set: what the plan shows and each process registers."""

    option: str  # "train" or "val"
    json_file: str
    image_root: str
    images: int
    instances: int
    classes: tuple[tuple[int, str], ...]  # (category id, name) in id order: Detectron2's class order

    @property
    def name(self) -> str:
        """Its Detectron2 dataset name."""
        return f"lsmae_{self.option}"


# --------------------------------------------------------------------------- reading and checking
def read_sets(train: str | None, val: str | None, eval_only: bool) -> list[CocoSet]:
    """The sets of ``--train`` and ``--val`` (none: Detectron2's builtin COCO), checked against each other."""
    if train is None and val is None:
        return []
    if val is None:
        raise OptionError("{train} needs {val} JSON:IMAGE_DIR: the set to evaluate on, with the same classes")
    if train is None and not eval_only:
        raise OptionError("{val} without {train} would train on COCO's 80 classes: add {train} JSON:IMAGE_DIR "
                          "(or --eval-only)")
    sets = ([read_set("train", train)] if train is not None else []) + [read_set("val", val)]
    _check_same_classes(sets[0], sets[-1])
    return sets


def parse_option(option: str, value: str) -> tuple[Path, Path]:
    """``JSON:IMAGE_DIR`` -> (annotation file, image folder), absolute."""
    json_file, sep, image_root = value.partition(":")
    if not (sep and json_file and image_root):
        raise DetectError(f"--{option} {value}: expected JSON:IMAGE_DIR (a COCO-format annotation file and the "
                          "folder its images are in)")
    return Path(json_file).expanduser().resolve(), Path(image_root).expanduser().resolve()


def read_set(option: str, value: str) -> CocoSet:
    """The ``--OPTION JSON:IMAGE_DIR`` set, checked: COCO keys, its images, the categories it uses."""
    json_file, image_root = parse_option(option, value)
    if not json_file.is_file():
        raise MissingDataError(f"--{option}: annotation file {json_file} not found")
    if not image_root.is_dir():
        raise MissingDataError(f"--{option}: image folder {image_root} not found")
    coco = _load(json_file)
    classes = _classes(json_file, coco["categories"])
    _check_categories_used(json_file, coco["annotations"], {cid for cid, _ in classes})
    _check_images(json_file, coco["images"], image_root)
    return CocoSet(option, str(json_file), str(image_root), len(coco["images"]), len(coco["annotations"]), classes)


def _load(json_file: Path) -> dict[str, list[Any]]:
    try:
        coco = json.loads(json_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{json_file}: not JSON ({e})") from None
    absent = [k for k in COCO_KEYS if not isinstance(coco, dict) or not isinstance(coco.get(k), list)]
    if absent:
        lists = ", ".join(f'"{k}"' for k in absent)
        raise DataError(f"{json_file}: not COCO instances format: no {lists} list (needs images, annotations, "
                        "categories)")
    return coco


def _field(json_file: Path, section: str, index: int, entry: Any, key: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f'{json_file}: {section}[{index}] has no "{key}"')
    return entry[key]


def _classes(json_file: Path, categories: list[Any]) -> tuple[tuple[int, str], ...]:
    """(id, name) of each declared category, in id order."""
    if not categories:
        raise DataError(f'{json_file}: "categories" is empty: no classes to detect')
    classes = []
    for i, category in enumerate(categories):
        cid = _field(json_file, "categories", i, category, "id")
        if not isinstance(cid, int) or any(cid == c for c, _ in classes):
            raise DataError(f"{json_file}: categories[{i}] has id {cid!r}: not an integer, or declared twice")
        classes.append((cid, str(_field(json_file, "categories", i, category, "name"))))
    return tuple(sorted(classes))


def _check_categories_used(json_file: Path, annotations: list[Any], declared: set[int]) -> None:
    for i, annotation in enumerate(annotations):
        cid = _field(json_file, "annotations", i, annotation, "category_id")
        if cid not in declared:
            ids = ", ".join(map(str, sorted(declared)))
            raise DataError(f'{json_file}: annotations[{i}] (id {annotation.get("id")}) has category_id {cid!r}, '
                            f'which "categories" does not declare (ids {ids})')


def _check_images(json_file: Path, images: list[Any], image_root: Path) -> None:
    if not images:
        raise DataError(f'{json_file}: "images" is empty')
    names = [_field(json_file, "images", i, image, "file_name") for i, image in enumerate(images)]
    missing = [(i, name) for i, name in enumerate(names) if not (image_root / name).is_file()]
    if missing:
        i, name = missing[0]
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise MissingDataError(f'{json_file}: images[{i}] "{name}" is not in {image_root}{more}')


def _check_same_classes(train: CocoSet, val: CocoSet) -> None:
    if train.classes == val.classes:
        return

    def only(a: CocoSet, b: CocoSet) -> str:
        return ", ".join(f"{name} (id {cid})" for cid, name in a.classes if (cid, name) not in b.classes) or "none"

    raise DataError(f"--val {val.json_file} has other classes than --train {train.json_file}: only in val: "
                    f"{only(val, train)}; only in train: {only(train, val)}")


# --------------------------------------------------------------------------- the run's config and plan
def data_settings(sets: list[CocoSet]) -> dict[str, Any]:
    """The config settings that read ``sets`` and size the heads to their classes."""
    settings: dict[str, Any] = {NAMES_KEYS[s.option]: s.name for s in sets}
    settings[NUM_CLASSES_KEY] = len(sets[-1].classes)
    return settings


def data_report(sets: list[CocoSet], max_iter: int, batch_size: int) -> dict[str, Any]:
    """The plan's part about the data: the sets, their counts, the classes, the passes over the training images."""
    report: dict[str, Any] = {
        "datasets": {s.option: {"json": s.json_file, "image_dir": s.image_root, "images": s.images,
                                "instances": s.instances} for s in sets},
        "classes": [{"id": cid, "name": name} for cid, name in sets[-1].classes],
    }
    if sets[0].option == "train":
        report["passes"] = max_iter * batch_size / sets[0].images
    return report


def data_lines(report: dict[str, Any]) -> list[str]:
    """The plan's lines about the data (none for Detectron2's builtin COCO)."""
    if "datasets" not in report:
        return []
    lines = [f"  {option}: {s['json']} ({s['images']} images, {s['instances']} instances), images in "
             f"{s['image_dir']}" for option, s in report["datasets"].items()]
    classes = ", ".join(f"{c['name']} (id {c['id']})" for c in report["classes"])
    lines.append(f"  {len(report['classes'])} classes: {classes}")
    if "passes" in report:
        train = report["datasets"]["train"]["images"]
        passes = report["passes"]
        amount = f"{passes:,.0f}" if passes >= 100 else f"{passes:.3g}"
        lines.append(f"  {report['max_iter']} iterations x {report['batch_size']} images = {amount} "
                     f"{'pass' if passes == 1 else 'passes'} over the {train} training images")
    return lines


def register(sets: list[CocoSet]) -> None:
    """Register ``sets`` with Detectron2 in this process, replacing an earlier registration of their names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    for s in sets:
        if s.name in DatasetCatalog:
            DatasetCatalog.remove(s.name)
            MetadataCatalog.remove(s.name)
        register_coco_instances(s.name, {}, s.json_file, s.image_root)
