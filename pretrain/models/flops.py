"""Model FLOPs of MAE pretraining and of the fine-tuned ViT, counted from the architecture (2 FLOPs
per multiply-add).

One count per architecture for throughput and MFU: in pretraining the encoder on the visible tokens,
the decoder on all tokens; fine-tuned, the encoder on every token; attention products included,
training = 3 x forward (the backward pass computes two products per forward product). Layer norms,
softmax, GELU and the loss are not counted (a few per cent of memory-bound work, by convention).
Standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass

from pretrain.models.archs import MLP_RATIO, model_config


def blocks_flops(tokens: int, width: int, depth: int, mlp_ratio: float = MLP_RATIO) -> tuple[float, float]:
    """``(dense, attention)`` forward FLOPs of ``depth`` transformer blocks on ``tokens`` tokens:
    qkv, projection and MLP matmuls; then q @ k^T and attn @ v."""
    dense = 2 * tokens * width * width * (3 + 1 + 2 * mlp_ratio)
    attention = 2 * 2 * tokens * tokens * width
    return depth * dense, depth * attention


@dataclass(frozen=True)
class PretrainFlops:
    """Forward FLOPs per image, by part; ``attention`` is the part of encoder + decoder spent in
    attention products."""

    encoder: float
    decoder: float
    embed_predict: float
    attention: float
    encoder_tokens: int
    decoder_tokens: int

    @property
    def forward(self) -> float:
        return self.encoder + self.decoder + self.embed_predict

    @property
    def train(self) -> float:
        return 3 * self.forward


def pretrain_flops(model: str, img_size: int | None = None, mask_ratio: float = 0.75, decoder_downsampling: int = 1,
                   pred_downsampling: int = 1, in_chans: int = 3) -> PretrainFlops:
    """FLOPs of one image through ``create_model(model, img_size=...)``'s masked forward pass."""
    cfg = model_config(model)
    p, d, dd = cfg["patch_size"], cfg["embed_dim"], cfg["decoder_embed_dim"]
    grid = (img_size or cfg["img_size"]) // p
    visible = int(grid * grid * (1 - mask_ratio))
    enc_dense, enc_attn = blocks_flops(visible + 1, d, cfg["depth"])
    dec_grid, pred_grid = grid // decoder_downsampling, grid // pred_downsampling
    dec_dense, dec_attn = blocks_flops(dec_grid**2 + 1, dd, cfg["decoder_depth"])
    q = p * pred_downsampling
    embed_predict = (2 * visible * p * p * in_chans * d  # patch embedding of the visible patches
                     + 2 * (visible + 1) * d * dd  # decoder_embed
                     + 2 * pred_grid**2 * dd * q * q * in_chans)  # decoder_pred
    if decoder_downsampling > 1:  # strided conv over all tokens, and the transposed conv back up
        embed_predict += 2 * dec_grid**2 * decoder_downsampling**2 * dd * dd
        up = decoder_downsampling // pred_downsampling
        embed_predict += 2 * dec_grid**2 * up * up * dd * dd if up > 1 else 0
    return PretrainFlops(encoder=enc_dense + enc_attn, decoder=dec_dense + dec_attn, embed_predict=embed_predict,
                         attention=enc_attn + dec_attn, encoder_tokens=visible + 1, decoder_tokens=dec_grid**2 + 1)


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs per image of a fine-tuned model, by part (in the order of the forward pass); of
    them, ``attention`` in attention products and ``patch_embed`` in the patch embedding, whose backward
    computes no input gradient (the images need none): torch's counter counts 3 x forward less that."""

    parts: tuple[tuple[str, float], ...]
    attention: float
    patch_embed: float

    @property
    def forward(self) -> float:
        return sum(flops for _, flops in self.parts)

    @property
    def train(self) -> float:
        return 3 * self.forward

    def describe(self, unit: float = 1e9) -> str:
        """``part value, part value, ...`` in units of ``unit`` (GFLOP by default)."""
        return ", ".join(f"{name} {flops / unit:.1f}" for name, flops in self.parts)


def vit_parts(tokens: int, width: int, depth: int, patch_size: int, in_chans: int = 3,
              mlp_ratio: float = MLP_RATIO) -> tuple[tuple[tuple[str, float], ...], float, float]:
    """A ViT encoder on ``tokens`` tokens (one of them the cls token): its parts (patch embedding of
    ``tokens - 1`` patches, the blocks), their attention products and the patch embedding's FLOPs."""
    dense, attention = blocks_flops(tokens, width, depth, mlp_ratio)
    patch_embed = 2 * (tokens - 1) * patch_size * patch_size * in_chans * width
    return (("patch embedding", patch_embed), (f"{depth} blocks on {tokens} tokens", dense + attention)), \
        attention, patch_embed


def vit_flops(model: str, img_size: int, num_classes: int, in_chans: int = 3) -> ModelFlops:
    """FLOPs of one image through the timm ViT classifier of MAE architecture ``model`` at ``img_size``
    (``lsmae finetune``'s model): patch embedding, the blocks on every patch and the cls token, and the
    linear head on the pooled features. Not counted: layer norms, softmax, GELU, pooling, the loss."""
    cfg = model_config(model)
    width, grid = cfg["embed_dim"], img_size // cfg["patch_size"]
    parts, attention, patch_embed = vit_parts(grid * grid + 1, width, cfg["depth"], cfg["patch_size"], in_chans)
    return ModelFlops(parts=(*parts, ("head", 2 * width * num_classes)), attention=attention, patch_embed=patch_embed)
