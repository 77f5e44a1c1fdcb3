"""The library functions behind ``lsmae export``, ``visualize`` and ``convert``: each does the work
and returns a result object that the command line and ``lsmae demo`` print from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bridges.segmentation.recipes import ADE20K_CLASSES


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
    from pretrain.atomic import atomic_write
    from pretrain.visualize import load_images, reconstruction_grid
    from zoo.models import load_model

    model = load_model(checkpoint, require_decoder=True)
    batch = load_images(images, model.img_size)
    picture, losses, loss = reconstruction_grid(model, batch, mask_ratio, mask_downsampling, seed, norm_pix=norm_pix)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda tmp: picture.save(tmp, format="PNG"))
    return Reconstructions(output, loss, losses, mask_ratio, norm_pix)


def convert(source: str | Path, to: str, output: str | Path, img_size: int | None = None,
            global_pool: str = "avg", num_labels: int = ADE20K_CLASSES) -> Conversion:
    """Convert a zoo id or local MAE source (checkpoint file, transformers ViTMAE/ViT folder) for timm
    (``to='timm'``), ViTDet (``'vitdet'``), UperNet segmentation (``'upernet'``, a transformers folder),
    transformers (``'hf-mae'``, ``'hf-vit'``: a folder), or into the release format (``'release'``)."""
    if to in ("hf-mae", "hf-vit"):
        from bridges.hf.export import export_hf

        exported = export_hf(source, to, output)
        return Conversion(exported.path, to, exported.report.text(), exported.load_hint)
    if to == "release":
        return _to_release(source, Path(output))
    if to == "upernet":
        from bridges.segmentation.model import convert_to_upernet, save_upernet

        converted = convert_to_upernet(source, img_size=img_size or 512, num_labels=num_labels)
        folder = save_upernet(converted.model, output, "initialised here (train them with lsmae segment)")
        return Conversion(folder, to, converted.report.text(),
                          f"load with: bridges.segmentation.model.model_class().from_pretrained('{folder}')")
    if to == "vitdet":
        from bridges.detection.convert import convert_to_vitdet, save_vitdet

        converted = convert_to_vitdet(source)
        return Conversion(save_vitdet(converted, output), to, converted.report.text())
    from bridges.classification.convert import convert_to_timm, save_safetensors

    img_size = img_size or 224
    converted = convert_to_timm(source, img_size=img_size, global_pool=global_pool)
    out = save_safetensors(converted, output)
    extra = "".join(f", {k}={v!r}" for k, v in converted.timm_kwargs.items())
    hint = (f"load with: timm.create_model('{converted.timm_model}', pretrained=True, img_size={img_size}, "
            f"global_pool='{global_pool}', num_classes=N{extra}, "
            f"pretrained_cfg_overlay=dict(file='{out}', num_classes=0))")
    return Conversion(out, to, converted.report.text(), hint)


def _to_release(source: str | Path, output: Path) -> Conversion:
    """The weights of any source (e.g. a transformers folder) as a release-format file ``{'model': ...}``."""
    from bridges.conversion import save_pth
    from zoo.cache import load_verified

    sd, info = load_verified(source)
    save_pth({"model": sd}, output)
    return Conversion(output, "release", f"wrote {len(sd)} tensors of {source} as {info.model} weights "
                                         f"in the release format (attention: {info.k_bias})")
