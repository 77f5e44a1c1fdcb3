"""Which images and masks a segmentation run reads, and what the mask values mean (standard library only:
``lsmae segment --dry-run`` resolves and counts them without importing torch).

Two ways in: ``--data-path DIR`` with the ADE20K split layout (``DIR/images/{training,validation}``,
``DIR/annotations/{training,validation}``), or ``--train IMAGES:MASKS --val IMAGES:MASKS``. A mask is a
PNG beside each image (same file stem) holding one class per pixel. Without ``--num-labels`` the
recipe's benchmark rules apply (ADE20K: 150 classes, ``reduce_zero_label``); with it, the data is
the user's, and the reduction is off unless asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.errors import DataError, MissingDataError, OptionError

IGNORE_INDEX = 255  # the label the loss, the padding and the metrics skip, whatever the mask files use
SPLITS = {"train": "training", "val": "validation"}
LAYOUT = "ROOT/images/{training,validation}/*.jpg and ROOT/annotations/{training,validation}/*.png"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class LabelRule:
    """What a mask value means: ``ignore_index`` is not scored; with ``reduce_zero_label`` (mmsegmentation's
    rule for ADE20K) 0 is ignored too and k becomes class k - 1; every other value must be a class."""

    num_labels: int
    ignore_index: int = IGNORE_INDEX
    reduce_zero_label: bool = True
    class_names: tuple[str, ...] = ()

    def class_values(self) -> str:
        """The mask values that are classes, for messages."""
        return f"1..{self.num_labels}" if self.reduce_zero_label else f"0..{self.num_labels - 1}"

    def names(self) -> list[str]:
        return list(self.class_names) or [f"class {k}" for k in range(self.num_labels)]


@dataclass(frozen=True)
class SplitFolders:
    """The images folder and the masks folder of one split."""

    images: Path
    masks: Path

    def describe(self) -> str:
        return f"{self.images}:{self.masks}"


def layout_split(root: str | Path, split: str) -> SplitFolders:
    """One split of the ADE20K layout under ``root``."""
    root = Path(root).expanduser()
    return SplitFolders(root / "images" / SPLITS[split], root / "annotations" / SPLITS[split])


def parse_split(field: str, value: str) -> SplitFolders:
    """``IMAGES:MASKS`` of ``train`` / ``val``."""
    images, sep, masks = value.rpartition(":")
    if not sep or not images or not masks:
        raise OptionError(f"{{{field}}} {value}: expected IMAGES:MASKS (an images folder and its masks folder)")
    return SplitFolders(Path(images).expanduser(), Path(masks).expanduser())


def data_splits(data_path: str | None, train: str | None = None, val: str | None = None) -> dict[str, SplitFolders]:
    """The splits this run reads: ``train``/``val`` (``IMAGES:MASKS``) or the layout of ``data_path`` (empty
    when neither is given, as for a plan)."""
    if train or val:
        if data_path is not None:
            raise OptionError("give {data_path} DIR or {train} IMAGES:MASKS {val} IMAGES:MASKS, not both")
        splits = {name: parse_split(name, value) for name, value in (("train", train), ("val", val)) if value}
        if "val" not in splits:
            raise OptionError("{train} needs {val} IMAGES:MASKS (the evaluation set)")
        return splits
    if data_path is None:
        return {}
    return {split: layout_split(data_path, split) for split in SPLITS}


def listing(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """The files of ``folder`` with these suffixes, by stem."""
    if not folder.is_dir():
        expected = f" (expected IMAGES:MASKS folders or the ADE20K layout {LAYOUT})"
        if folder.exists():
            raise DataError(f"{folder} is not a folder{expected}")
        raise MissingDataError(f"{folder} does not exist{expected}")
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in suffixes}


def _few(names: set[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


def pairs(split: SplitFolders) -> list[tuple[Path, Path]]:
    """(image, mask) paths paired by file stem; one-line errors for unpaired files or an empty folder."""
    images = listing(split.images, IMAGE_SUFFIXES)
    masks = listing(split.masks, (".png",))
    problems = []
    if images.keys() - masks.keys():
        problems.append(f"images without a mask: {_few(images.keys() - masks.keys())}")
    if masks.keys() - images.keys():
        problems.append(f"masks without an image: {_few(masks.keys() - images.keys())}")
    if problems:
        raise DataError(f"{split.describe()}: " + "; ".join(problems))
    if not images:
        raise DataError(f"{split.images} holds no images (.jpg, .jpeg or .png)")
    return [(images[k], masks[k]) for k in sorted(images)]


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """One class name a line (blank lines skipped)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise OptionError(f"{{class_names}} {path}: {e.strerror or e}") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def label_rule(config: Any, recipe_labels: int, overridden: int | None) -> LabelRule:
    """The labels of a run's config: ``num_labels`` (or the ``num_labels`` override, or the recipe's), the
    mask value ``ignore_index``, ``reduce_zero_label`` (default: on for the recipe's benchmark, i.e.
    without ``num_labels``; off for data of one's own) and ``class_names``."""
    given = {v for v in (config.num_labels, overridden) if v is not None}
    if len(given) > 1:
        raise OptionError(f"{{num_labels}} {config.num_labels} and num_labels={overridden} differ: give the number "
                          "once")
    num_labels = given.pop() if given else recipe_labels
    if not 1 <= num_labels <= IGNORE_INDEX:
        raise OptionError(f"{{num_labels}} {num_labels}: must be 1..{IGNORE_INDEX} ({IGNORE_INDEX} marks ignored "
                          "pixels)")
    ignore = IGNORE_INDEX if config.ignore_index is None else config.ignore_index
    if not 0 <= ignore <= 255:
        raise OptionError(f"{{ignore_index}} {ignore}: must be a mask value, 0..255")
    reduce = config.reduce_zero_label if config.reduce_zero_label is not None else config.num_labels is None
    names = read_class_names(config.class_names) if config.class_names else ()
    if names and len(names) != num_labels:
        raise OptionError(f"{{class_names}} {config.class_names}: {len(names)} names for {num_labels} classes")
    rule = LabelRule(num_labels, ignore, reduce, names)
    if ignore in range(1 if reduce else 0, num_labels + (1 if reduce else 0)):
        raise OptionError(f"{{ignore_index}} {ignore} is one of the class values {rule.class_values()}")
    return rule


def describe_data(splits: dict[str, SplitFolders], rule: LabelRule, max_iter: int, batch_size: int
                  ) -> dict[str, Any]:
    """The plan's data record: the folders, their image counts, the classes and the passes over the
    training images that the recipe's iterations make."""
    record: dict[str, Any] = {"num_labels": rule.num_labels, "ignore_index": rule.ignore_index,
                              "reduce_zero_label": rule.reduce_zero_label, "class_names": list(rule.class_names)}
    for name, split in splits.items():
        record[name] = {"images": str(split.images), "masks": str(split.masks), "count": len(pairs(split))}
    if "train" in record:
        record["passes"] = max_iter * batch_size / record["train"]["count"]
    return record
