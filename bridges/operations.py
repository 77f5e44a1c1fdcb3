"""The library functions behind ``lsmae export``, ``visualize`` and ``convert``: each takes the command's
options as keywords (its config's fields: ``convert(**vars(config))`` runs a :class:`ConvertConfig`), does
the work and returns a result object that the command line and ``lsmae demo`` print from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.convert_targets import NAMES, convert_target
from pretrain.configs import check_choices, option, shared


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """``lsmae convert``'s options: the keywords of :func:`convert`."""

    source: str = option(positional="SOURCE")
    to: str = option("timm", choices=NAMES)
    output: str = option(flag="-o")
    img_size: int | None = None
    global_pool: str = option("avg", choices=("avg", "token"))
    num_labels: int | None = None

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """``lsmae export``'s options: the keywords of :func:`export`."""

    run: str = option(positional="RUN")
    output: str = option(flag="-o")


@dataclass(frozen=True, kw_only=True)
class VisualizeConfig:
    """``lsmae visualize``'s options: the keywords of :func:`visualize`."""

    checkpoint: str = option(positional="CHECKPOINT")
    images: tuple[str, ...] = option(positional="IMAGES")
    output: str = option("reconstruction.png", flag="-o")
    mask_ratio: float = 0.75
    mask_downsampling: int = 2
    seed: int = shared("visualize", "seed")
    norm_pix: bool = option(True, flag="--raw-pixels", negated=True)

    def __post_init__(self) -> None:
        check_choices(self)


# --------------------------------------------------------------------------- results
@dataclass
class Exported:
    """A run's weights written in the release format."""

    path: Path
    model: str
    grid_size: int
    has_decoder: bool

    def lines(self) -> list[str]:
        return [f"wrote {self.model} weights ({self.grid_size}x{self.grid_size} grid, "
                f"decoder {'kept' if self.has_decoder else 'absent'}) in the release format", str(self.path)]


@dataclass
class Reconstructions:
    """A picture of masked reconstructions and the loss on the masked patches."""

    path: Path
    loss: float
    losses: list[float]  # each image's, in the order of its row
    mask_ratio: float
    norm_pix: bool

    @property
    def num_images(self) -> int:
        return len(self.losses)

    @property
    def summary(self) -> str:
        baseline = " (1.0 = predicting each patch's mean colour)" if self.norm_pix else ""
        return f"loss on the masked patches of these {self.num_images} images: {self.loss:.3f}{baseline}"

    def lines(self) -> list[str]:
        return [f"columns: original | masked ({self.mask_ratio:.0%}) | reconstruction | reconstruction + visible",
                "per image: " + ", ".join(f"{v:.3f}" for v in self.losses), self.summary, str(self.path)]


@dataclass
class Conversion:
    """A converted checkpoint: where it is, what the conversion did, and how to load it."""

    path: Path
    target: str
    report: str
    load_hint: str = ""

    def lines(self) -> list[str]:
        return [*self.report.splitlines(), *([self.load_hint] if self.load_hint else []), str(self.path)]


# --------------------------------------------------------------------------- functions
def export(run: str | Path, output: str | Path) -> Exported:
    """Write the newest checkpoint of a run folder (or one checkpoint file) in the release format."""
    from pretrain.engine.checkpoints import export_release
    from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict

    out = export_release(Path(run), Path(output))
    info = check_structure(model_state_dict(load_checkpoint(out)))
    return Exported(out, info.model, info.grid_size, info.has_decoder)


def visualize(checkpoint: str, images: list[str | Path], output: str | Path, mask_ratio: float = 0.75,
              mask_downsampling: int = 2, seed: int = 0, norm_pix: bool = True) -> Reconstructions:
    """Save a titled page, a row of original | masked | reconstruction | reconstruction + visible for each
    of ``images`` with its masked-patch loss."""
    from pretrain.atomic import write_image
    from pretrain.visualize import load_images, reconstruction_grid
    from zoo.models import load_model

    model = load_model(checkpoint, require_decoder=True)
    batch = load_images(images, model.img_size)
    picture, losses, loss = reconstruction_grid(model, batch, mask_ratio, mask_downsampling, seed, norm_pix=norm_pix)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_image(output, picture)

    return Reconstructions(output, loss, losses, mask_ratio, norm_pix)


def convert(source: str | Path, to: str, output: str | Path, img_size: int | None = None,
            global_pool: str = "avg", num_labels: int | None = None) -> Conversion:
    """Convert a zoo id or local MAE source (checkpoint file, transformers ViTMAE/ViT folder) for the target
    ``to``, a row of :data:`bridges.convert_targets.TARGETS` (timm, vitdet, upernet, hf-mae, hf-vit, release):
    its converter, then its saver. ``img_size`` (None: the target's default), ``global_pool`` and
    ``num_labels`` (None: the converter's default, ADE20K's 150 classes) go to the targets that take them."""
    target = convert_target(to)
    given = {"img_size": img_size or target.img_size, "global_pool": global_pool, "num_labels": num_labels}
    options = {name: given[name] for name in target.options if given[name] is not None}
    converted = target.function("converter")(source, **options, **dict(target.fixed))
    path = target.function("saver")(converted, output)
    return Conversion(path, to, converted.report.text(), target.hint(path, converted))


# --------------------------------------------------------------------------- the release format
@dataclass(frozen=True)
class ReleaseReport:
    """What ``--to release`` did: the tensors written, from which source, as which model."""

    tensors: int
    source: str
    model: str
    k_bias: str

    def text(self) -> str:
        return (f"wrote {self.tensors} tensors of {self.source} as {self.model} weights in the release format "
                f"(attention: {self.k_bias})")


@dataclass
class ReleaseWeights:
    """The weights of any source (e.g. a transformers folder), verified, for the release format."""

    state_dict: dict[str, Any]
    report: ReleaseReport


def to_release(source: str | Path) -> ReleaseWeights:
    """The converter of ``--to release``: the source's weights as they load and verify."""
    from zoo.cache import load_verified

    sd, info = load_verified(source)
    return ReleaseWeights(sd, ReleaseReport(len(sd), str(source), info.model, info.k_bias))


def save_release(weights: ReleaseWeights, output: str | Path) -> Path:
    """The saver of ``--to release``: a release-format file ``{'model': state_dict}``."""
    from bridges.conversion import save_pth

    return save_pth({"model": weights.state_dict}, output)
