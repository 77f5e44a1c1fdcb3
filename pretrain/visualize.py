"""Reconstruction pictures: original | masked input | reconstruction | reconstruction + visible, titled,
with each image's loss on its masked patches beside its row."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

from pretrain.models.mae import MaskedAutoencoderViT
from pretrain.models.masking import block_mask_indices
from pretrain.panels import labelled_grid

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def load_images(paths: Sequence[str | Path], size: int) -> torch.Tensor:
    """Resize (shorter side) + centre crop + ImageNet normalisation: [N, 3, size, size]."""
    tf = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])
    images = []
    for p in paths:
        with Image.open(p) as img:
            images.append(tf(img.convert("RGB")))
    return torch.stack(images)


COLUMNS = ("original", "masked input", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstruction_grid(
    model: MaskedAutoencoderViT, images: torch.Tensor, mask_ratio: float = 0.75, downsampling: int = 2,
    seed: int = 0, norm_pix: bool = True,
) -> tuple[Image.Image, list[float], float]:
    """A labelled page, one row per image (:data:`COLUMNS`, each row's masked-patch loss beside it),
    the per-image losses and the model's loss on the masked patches of all images. With
    ``norm_pix`` the per-patch normalised prediction is mapped back with the statistics of the
    original patch (for display only, as in MAE's demo)."""
    model.eval()
    model.norm_pix_loss = norm_pix  # checkpoints do not record their loss target: the caller says
    b = images.shape[0]
    ids_keep, ids_restore = block_mask_indices(b, model.grid_size, mask_ratio, downsampling,
                                               generator=torch.Generator().manual_seed(seed))
    loss, pred, mask = model(images, ids_keep, ids_restore)
    if model.pred_downsampling > 1:
        raise ValueError("visualisation supports pred_downsampling=1 checkpoints only")
    losses = [float(model.forward_loss(images[i:i + 1], pred[i:i + 1], mask[i:i + 1])) for i in range(b)]
    if norm_pix:
        target = model.patchify(images)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    p = model.patch_size
    mask_img = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * 3))
    recon = model.unpatchify(pred)
    columns = [images, images * (1 - mask_img), recon, images * (1 - mask_img) + recon * mask_img]
    rows = [[transforms.functional.to_pil_image((c[i:i + 1] * _STD + _MEAN)[0].clamp(0, 1)) for c in columns]
            for i in range(b)]
    titles = (COLUMNS[0], f"{COLUMNS[1]} ({mask_ratio:.0%} masked)", *COLUMNS[2:])
    page, _ = labelled_grid(rows, titles, notes=[f"loss {v:.3f}" for v in losses])
    return page, losses, float(loss)
