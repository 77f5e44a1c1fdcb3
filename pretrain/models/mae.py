"""Long-sequence masked autoencoders (Hu et al. 2022) on timm 1.x layers.

The module and parameter names are those of the released checkpoints, so a release file's
``model`` dict loads with ``strict=True``. Architectures are rows of a table, not builders.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import PatchEmbed
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import nn

from pretrain.models.archs import model_config
from pretrain.models.pos_embed import sincos_2d_pos_embed


def create_model(name: str, **overrides: Any) -> "MaskedAutoencoderViT":
    """Build architecture ``name``; ``overrides`` replace table values or set options
    (``img_size=448``, ``norm_pix_loss=True``, ``decoder_downsampling``, ``no_k_bias``...)."""
    return MaskedAutoencoderViT(**{**model_config(name), **overrides})


class NoKBiasAttention(nn.Module):
    """Self-attention with learnable q and v biases and a key bias fixed at zero (BEiT/EVA style).

    Stored as ``attn.q_bias`` / ``attn.v_bias`` next to a bias-free ``attn.qkv``, as the
    release's ``--no_k_bias_in_vit`` checkpoints are. The zero key bias is a non-persistent
    buffer concatenated in :meth:`forward`, so the state dict holds exactly the release's keys.
    Takes timm's ``Block`` attention arguments (``attn_layer=``).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, qk_norm: bool = False, device: Any = None, dtype: Any = None,
                 **unused: Any) -> None:
        super().__init__()
        if qk_norm:
            raise ValueError("NoKBiasAttention has no q/k normalisation")
        factory = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **factory)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim, **factory))
            self.register_buffer("k_bias", torch.zeros(dim, **factory), persistent=False)
            self.v_bias = nn.Parameter(torch.zeros(dim, **factory))
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **unused: Any) -> torch.Tensor:
        b, n, c = x.shape
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class MaskedAutoencoderViT(nn.Module):
    """MAE encoder/decoder; ``forward(imgs, ids_keep, ids_restore) -> (loss, pred, mask)``.

    Only the visible patches are embedded (the release embeds all of them, then gathers);
    the parameters are the same, so are the numbers up to float rounding.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        decoder_downsampling: int = 1,
        pred_downsampling: int = 1,
        no_k_bias: bool = False,
    ) -> None:
        super().__init__()
        if decoder_downsampling < 1 or pred_downsampling < 1:
            raise ValueError(
                f"decoder_downsampling and pred_downsampling must be >= 1, "
                f"got {decoder_downsampling} and {pred_downsampling}"
            )
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.grid_size = img_size // patch_size
        if self.grid_size % decoder_downsampling:
            raise ValueError(f"grid {self.grid_size} is not divisible by decoder_downsampling {decoder_downsampling}")
        if decoder_downsampling % pred_downsampling:
            raise ValueError("decoder_downsampling must be a multiple of pred_downsampling")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.norm_pix_loss = norm_pix_loss
        self.decoder_downsampling, self.pred_downsampling = decoder_downsampling, pred_downsampling
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        block = partial(
            Block, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
            attn_layer=NoKBiasAttention if no_k_bias else Attention,
        )
        num_patches = self.grid_size**2

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_grid_size = self.grid_size // decoder_downsampling
        if decoder_downsampling > 1:
            self.decoder_downsample = nn.Conv2d(
                decoder_embed_dim, decoder_embed_dim, decoder_downsampling, stride=decoder_downsampling
            )
        self.decoder_out_upsampling = decoder_downsampling // pred_downsampling
        if self.decoder_out_upsampling > 1:
            up = self.decoder_out_upsampling
            self.decoder_upsample = nn.ConvTranspose2d(decoder_embed_dim, decoder_embed_dim, up, stride=up)
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.decoder_grid_size**2 + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [block(decoder_embed_dim, decoder_num_heads) for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, (patch_size * pred_downsampling) ** 2 * in_chans)
        self.grad_checkpointing = False
        if not self.pos_embed.is_meta:
            self.initialize_weights()

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay (timm's optimizer factory reads this)."""
        return {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (trades ~30% time for memory)."""
        self.grad_checkpointing = enable

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def initialize_weights(self) -> None:
        """The release's initialisation: fixed sin-cos positions, xavier linears, N(0, .02) tokens."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_pos_embed(self.pos_embed.shape[-1], self.grid_size)[None])
            self.decoder_pos_embed.copy_(
                sincos_2d_pos_embed(self.decoder_pos_embed.shape[-1], self.decoder_grid_size)[None]
            )
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, NoKBiasAttention) and m.q_bias is not None:
                nn.init.zeros_(m.q_bias)
                nn.init.zeros_(m.v_bias)

    # ------------------------------------------------------------------ pixels <-> patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L', q*q*C] with q the prediction patch size, channels last."""
        q = self.patch_size * self.pred_downsampling
        b, c, h, w = imgs.shape
        x = imgs.reshape(b, c, h // q, q, w // q, q).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // q) * (w // q), q * q * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        q = self.patch_size * self.pred_downsampling
        g = int(x.shape[1] ** 0.5)
        c = x.shape[2] // (q * q)
        x = x.reshape(x.shape[0], g, g, q, q, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, g * q, g * q)

    def _check_input(self, imgs: torch.Tensor) -> None:
        if imgs.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}x{self.img_size} images, got {tuple(imgs.shape[-2:])}; "
                f"build the model with img_size={imgs.shape[-1]}"
            )

    # ------------------------------------------------------------------ encoder / decoder
    def _embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Patch-embed only the patches in ``ids_keep`` (the conv as a matmul on gathered pixels)."""
        b, c = imgs.shape[:2]
        p, g = self.patch_size, self.grid_size
        patches = imgs.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        idx = ids_keep.unsqueeze(-1)
        visible = torch.gather(patches, 1, idx.expand(-1, -1, patches.shape[-1]))
        proj = self.patch_embed.proj
        x = F.linear(visible, proj.weight.flatten(1), proj.bias)
        pos = self.pos_embed[:, 1:].expand(b, -1, -1)
        return x + torch.gather(pos, 1, idx.expand(-1, -1, x.shape[-1]))

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the visible patches (all of them when ``ids_keep`` is None): [B, 1 + n, D]."""
        self._check_input(imgs)
        if ids_keep is None:
            x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        else:
            x = self._embed_visible(imgs, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return self.norm(self._run_blocks(self.blocks, x))

    def _to_grid(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        return x.reshape(x.shape[0], grid, grid, x.shape[-1]).permute(0, 3, 1, 2)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict pixels of every (prediction) patch: [B, L', q*q*C]."""
        x = self.decoder_embed(latent)
        n_masked = ids_restore.shape[1] + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], n_masked, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if self.decoder_downsampling > 1:
            tokens = self.decoder_downsample(self._to_grid(tokens, self.grid_size)).flatten(2).transpose(1, 2)
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        x = self._run_blocks(self.decoder_blocks, x)[:, 1:]
        if self.decoder_out_upsampling > 1:
            x = self.decoder_upsample(self._to_grid(x, self.decoder_grid_size)).flatten(2).transpose(1, 2)
        return self.decoder_pred(self.decoder_norm(x))

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches (per-patch normalised targets if norm_pix_loss)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        if self.pred_downsampling > 1:
            mask = F.avg_pool2d(
                mask.reshape(mask.shape[0], 1, self.grid_size, self.grid_size), self.pred_downsampling
            ).flatten(1)
        return (loss * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, ids_keep: torch.Tensor, ids_restore: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mask`` is [B, L] with 1 on masked patches, as in the release."""
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        mask = torch.ones(ids_restore.shape, device=imgs.device)
        mask.scatter_(1, ids_keep, 0.0)
        return self.forward_loss(imgs, pred, mask), pred, mask
