"""``pretrain`` model definitions: the release's checkpoint format, sin-cos positions, masking
forward pass and loss, decoder down/upsampling, BEiT-style attention without a key bias."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pretrain
from pretrain.models.archs import list_models, num_weights
from tests.conftest import TINY_MODEL as MICRO  # 64x64 images, patch 8 -> 8x8 grid, width 96, decoder 64
from zoo.checkpoint import expected_shapes

# these models are tiny: one thread is several times faster than contended intra-op threads
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- helpers
def release_state_dict_shapes(
    *, embed: int, depth: int, dec_embed: int, dec_depth: int, patch: int, img: int,
    no_k_bias: bool = False, in_chans: int = 3, mlp_ratio: int = 4,
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a release checkpoint's ``model`` dict, from the release's module names."""
    num_patches = (img // patch) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, embed),
        "pos_embed": (1, num_patches + 1, embed),
        "mask_token": (1, 1, dec_embed),
        "decoder_pos_embed": (1, num_patches + 1, dec_embed),
        "patch_embed.proj.weight": (embed, in_chans, patch, patch),
        "patch_embed.proj.bias": (embed,),
        "norm.weight": (embed,),
        "norm.bias": (embed,),
        "decoder_embed.weight": (dec_embed, embed),
        "decoder_embed.bias": (dec_embed,),
        "decoder_norm.weight": (dec_embed,),
        "decoder_norm.bias": (dec_embed,),
        "decoder_pred.weight": (patch * patch * in_chans, dec_embed),
        "decoder_pred.bias": (patch * patch * in_chans,),
    }
    for prefix, n, w in (("blocks", depth, embed), ("decoder_blocks", dec_depth, dec_embed)):
        hidden = w * mlp_ratio
        for i in range(n):
            b = f"{prefix}.{i}."
            shapes[b + "norm1.weight"] = (w,)
            shapes[b + "norm1.bias"] = (w,)
            shapes[b + "attn.qkv.weight"] = (3 * w, w)
            if no_k_bias:
                shapes[b + "attn.q_bias"] = (w,)
                shapes[b + "attn.v_bias"] = (w,)
            else:
                shapes[b + "attn.qkv.bias"] = (3 * w,)
            shapes[b + "attn.proj.weight"] = (w, w)
            shapes[b + "attn.proj.bias"] = (w,)
            shapes[b + "norm2.weight"] = (w,)
            shapes[b + "norm2.bias"] = (w,)
            shapes[b + "mlp.fc1.weight"] = (hidden, w)
            shapes[b + "mlp.fc1.bias"] = (hidden,)
            shapes[b + "mlp.fc2.weight"] = (w, hidden)
            shapes[b + "mlp.fc2.bias"] = (w,)
    return shapes


def assert_state_dict_matches(sd: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    assert not missing and not extra, f"missing {missing[:8]}, unexpected {extra[:8]}"
    wrong = {k: (tuple(sd[k].shape), v) for k, v in expected.items() if tuple(sd[k].shape) != v}
    assert not wrong, f"wrong shapes (got, expected): {wrong}"


def mae_sincos_2d(embed_dim: int, grid_size: int, cls_token: bool) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed formula, written independently in numpy."""

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = one_d(embed_dim // 2, grid[0])
    emb_w = one_d(embed_dim // 2, grid[1])
    emb = np.concatenate([emb_h, emb_w], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def ref_patchify(imgs: torch.Tensor, q: int) -> torch.Tensor:
    """The release's patch layout, by explicit indexing: vector index (py * q + px) * C + c."""
    b, c, h, w = imgs.shape
    gh, gw = h // q, w // q
    out = torch.empty(b, gh * gw, q * q * c, dtype=imgs.dtype)
    for i in range(gh):
        for j in range(gw):
            patch = imgs[:, :, i * q:(i + 1) * q, j * q:(j + 1) * q]  # [b, c, py, px]
            out[:, i * gw + j] = patch.permute(0, 2, 3, 1).reshape(b, -1)
    return out


def ref_norm_pix_loss(imgs, pred, mask, q: int, norm_pix: bool = True) -> torch.Tensor:
    target = ref_patchify(imgs, q).double()
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True, unbiased=True)
        target = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred.double() - target) ** 2).mean(-1)
    return (per_patch * mask.double()).sum() / mask.double().sum()


def micro(seed: int = 0, **overrides) -> pretrain.MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return pretrain.create_model(MICRO, **overrides)


def batch(seed: int = 0, n: int = 2, size: int = 64, ratio: float = 0.75, ds: int = 2):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(n, 3, size, size, generator=g)
    ids_keep, ids_restore = pretrain.block_mask_indices(n, size // 8, ratio, ds, generator=g)
    return imgs, ids_keep, ids_restore


# ---------------------------------------------------------------------------- 1. key contract
@pytest.mark.parametrize(
    "name, dims",
    [
        ("mae_vit_base_patch16_dec384d12h8b",
         dict(embed=768, depth=12, heads=12, dec_embed=384, dec_depth=8, dec_heads=12)),
        ("mae_vit_large_patch16_dec512d16h8b",
         dict(embed=1024, depth=24, heads=16, dec_embed=512, dec_depth=8, dec_heads=16)),
    ],
)
@pytest.mark.parametrize("no_k_bias", [False, True])
def test_release_key_contract_448(name, dims, no_k_bias):
    with torch.device("meta"):
        model = pretrain.create_model(name, img_size=448, no_k_bias=no_k_bias)
    expected = release_state_dict_shapes(
        embed=dims["embed"], depth=dims["depth"], dec_embed=dims["dec_embed"], dec_depth=dims["dec_depth"],
        patch=16, img=448, no_k_bias=no_k_bias,
    )
    sd = model.state_dict()
    assert_state_dict_matches(sd, expected)
    assert sd["pos_embed"].shape == (1, 785, dims["embed"])
    assert sd["decoder_pos_embed"].shape == (1, 785, dims["dec_embed"])
    assert sd["decoder_pred.weight"].shape == (768, dims["dec_embed"])
    # heads do not show in the shapes; pin them on the modules
    assert all(blk.attn.num_heads == dims["heads"] for blk in model.blocks)
    assert all(blk.attn.num_heads == dims["dec_heads"] for blk in model.decoder_blocks)


@pytest.mark.parametrize(
    "name, embed, depth, heads, dec_embed, dec_depth, dec_heads, patch",
    [
        ("mae_vit_base_patch16_dec512d8b", 768, 12, 12, 512, 8, 16, 16),
        ("mae_vit_large_patch16_dec512d8b", 1024, 24, 16, 512, 8, 16, 16),
        ("mae_vit_huge_patch14_dec512d8b", 1280, 32, 16, 512, 8, 16, 14),
        ("mae_vit_base_patch8_dec384d12h8b", 768, 12, 12, 384, 8, 12, 8),
        ("mae_vit_large_patch32_dec512d16h8b", 1024, 24, 16, 512, 8, 16, 32),
    ],
)
def test_other_architectures_key_contract(name, embed, depth, heads, dec_embed, dec_depth, dec_heads, patch):
    img = patch * 14
    with torch.device("meta"):
        model = pretrain.create_model(name, img_size=img)
    expected = release_state_dict_shapes(
        embed=embed, depth=depth, dec_embed=dec_embed, dec_depth=dec_depth, patch=patch, img=img
    )
    assert_state_dict_matches(model.state_dict(), expected)
    assert model.blocks[0].attn.num_heads == heads
    assert model.decoder_blocks[0].attn.num_heads == dec_heads


def test_micro_key_contract_and_default_size():
    model = micro()
    assert model.img_size == 64 and model.patch_size == 8
    expected = release_state_dict_shapes(embed=96, depth=4, dec_embed=64, dec_depth=2, patch=8, img=64)
    assert_state_dict_matches(model.state_dict(), expected)
    assert model.blocks[0].attn.num_heads == 3 and model.decoder_blocks[0].attn.num_heads == 4


# ---------------------------------------------------------------------------- 2. checkpoint round trip
@pytest.mark.parametrize("no_k_bias", [False, True])
def test_release_format_checkpoint_loads_strict_and_reproduces(tmp_path, no_k_bias):
    source = micro(seed=1, no_k_bias=no_k_bias).eval()
    with torch.no_grad():  # make every tensor non-trivial, biases included
        for p in source.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)

    fresh = micro(seed=2, no_k_bias=no_k_bias).eval()
    imgs, ids_keep, ids_restore = batch(3)
    with torch.no_grad():
        before = fresh(imgs, ids_keep, ids_restore)
        expected = source(imgs, ids_keep, ids_restore)
    assert not torch.allclose(before[1], expected[1])

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    result = fresh.load_state_dict(checkpoint["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        got = fresh(imgs, ids_keep, ids_restore)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_no_k_bias_checkpoint_equals_qkv_bias_checkpoint_with_zero_k():
    """A q_bias/v_bias model computes what a standard model with qkv.bias = cat(q, 0, v) computes."""
    beit = micro(seed=4, no_k_bias=True).eval()
    with torch.no_grad():
        for name, p in beit.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                p.normal_()
    sd = {}
    for k, v in beit.state_dict().items():
        if k.endswith("attn.q_bias"):
            stem = k[: -len("q_bias")]
            v_bias = beit.state_dict()[stem + "v_bias"]
            sd[stem + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), v_bias])
        elif not k.endswith("attn.v_bias"):
            sd[k] = v
    plain = micro(seed=5).eval()
    plain.load_state_dict(sd, strict=True)
    imgs, ids_keep, ids_restore = batch(6)
    with torch.no_grad():
        a = beit(imgs, ids_keep, ids_restore)
        b = plain(imgs, ids_keep, ids_restore)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- 3. positions
@pytest.mark.parametrize("name, img", [(MICRO, 64), ("mae_vit_base_patch16_dec384d12h8b", 448)])
def test_pos_embed_is_fixed_2d_sincos(name, img):
    torch.manual_seed(0)
    if name == MICRO:
        model = pretrain.create_model(name, img_size=img)
    else:  # real init of the two position tables only, without building 100M parameters
        from pretrain.models.pos_embed import sincos_2d_pos_embed

        with torch.device("meta"):
            model = pretrain.create_model(name, img_size=img)
        model.pos_embed = torch.nn.Parameter(sincos_2d_pos_embed(768, 28)[None], requires_grad=False)
        model.decoder_pos_embed = torch.nn.Parameter(sincos_2d_pos_embed(384, 28)[None], requires_grad=False)
    grid = img // model.patch_size
    for param in (model.pos_embed, model.decoder_pos_embed):
        width = param.shape[-1]
        assert param.requires_grad is False
        assert param.dtype == torch.float32
        assert param.shape == (1, grid * grid + 1, width)
        assert torch.count_nonzero(param[0, 0]) == 0
        expected = torch.from_numpy(mae_sincos_2d(width, grid, cls_token=True)).float()
        torch.testing.assert_close(param[0], expected, atol=1e-6, rtol=0)
    names = {n for n, _ in model.named_parameters() if _.requires_grad}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names


def test_pos_embed_not_trained_and_decoder_pos_embed_follows_decoder_grid():
    model = micro(decoder_downsampling=2)
    expected = torch.from_numpy(mae_sincos_2d(64, 4, cls_token=True)).float()
    torch.testing.assert_close(model.decoder_pos_embed[0], expected, atol=1e-6, rtol=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    before = model.pos_embed.detach().clone()
    imgs, ids_keep, ids_restore = batch(0)
    model(imgs, ids_keep, ids_restore)[0].backward()
    opt.step()
    assert model.pos_embed.grad is None
    assert torch.equal(model.pos_embed, before)


# ---------------------------------------------------------------------------- 4. forward and loss
@pytest.mark.parametrize("q", [8, 16])
def test_patchify_layout_and_unpatchify(q):
    model = micro(pred_downsampling=q // 8, decoder_downsampling=2)
    imgs = torch.randn(2, 3, 64, 64)
    patches = model.patchify(imgs)
    assert torch.equal(patches, ref_patchify(imgs, q))
    assert torch.equal(model.unpatchify(patches), imgs)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_forward_outputs_mask_and_loss(norm_pix):
    model = micro(norm_pix_loss=norm_pix).eval()
    imgs, ids_keep, ids_restore = batch(1, n=3)
    n_vis = ids_keep.shape[1]
    num = 64
    loss, pred, mask = model(imgs, ids_keep, ids_restore)
    assert loss.shape == () and torch.isfinite(loss)
    assert pred.shape == (3, num, 8 * 8 * 3)
    assert mask.shape == (3, num)
    assert torch.all(mask.sum(1) == num - n_vis)
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
    expected_mask = torch.ones(3, num)
    expected_mask.scatter_(1, ids_keep, 0.0)
    assert torch.equal(mask, expected_mask)
    ref = ref_norm_pix_loss(imgs, pred, mask, 8, norm_pix=norm_pix)
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)


def test_masked_patch_pixels_change_loss_but_not_prediction():
    model = micro(norm_pix_loss=True).eval()
    imgs, ids_keep, ids_restore = batch(2, n=1)
    masked = sorted(set(range(64)) - set(ids_keep[0].tolist()))
    visible = ids_keep[0, 0].item()
    with torch.no_grad():
        loss0, pred0, _ = model(imgs, ids_keep, ids_restore)

        changed = imgs.clone()
        r, c = divmod(masked[0], 8)
        changed[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 3.0 * torch.randn(3, 8, 8)
        loss1, pred1, _ = model(changed, ids_keep, ids_restore)
        assert torch.equal(pred0, pred1)  # the encoder never sees a masked patch
        assert not torch.isclose(loss0, loss1)

        changed = imgs.clone()
        r, c = divmod(visible, 8)
        changed[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 3.0 * torch.randn(3, 8, 8)
        _, pred2, _ = model(changed, ids_keep, ids_restore)
        assert not torch.allclose(pred0, pred2)


# ---------------------------------------------------------------------------- 5, 6. encoder
def release_style_encoder(model, imgs, ids_keep):
    """The release's encoder: conv-embed every patch, add positions, then gather the visible ones."""
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:]
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    return model.norm(x)


@pytest.mark.parametrize("ds", [1, 2])
def test_visible_only_embedding_matches_release_gather(ds):
    model = micro(seed=3).eval()
    with torch.no_grad():
        model.patch_embed.proj.bias.normal_()
        model.cls_token.normal_()
    imgs, ids_keep, _ = batch(4, n=3, ds=ds)
    with torch.no_grad():
        got = model.forward_encoder(imgs, ids_keep)
        ref = release_style_encoder(model, imgs, ids_keep)
    assert got.shape == (3, 1 + ids_keep.shape[1], 96)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_forward_encoder_without_mask_sees_all_patches():
    model = micro().eval()
    imgs = torch.randn(2, 3, 64, 64)
    all_ids = torch.arange(64).expand(2, -1)
    with torch.no_grad():
        full = model.forward_encoder(imgs)
        gathered = model.forward_encoder(imgs, all_ids)
    assert full.shape == (2, 1 + 64, 96)
    torch.testing.assert_close(full, gathered, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- 7. decoder down/upsampling
@pytest.mark.parametrize("pred_ds", [1, 2])
def test_decoder_downsampling(pred_ds):
    model = micro(decoder_downsampling=2, pred_downsampling=pred_ds, norm_pix_loss=True)
    sd = model.state_dict()
    assert sd["decoder_downsample.weight"].shape == (64, 64, 2, 2)
    assert sd["decoder_downsample.bias"].shape == (64,)
    if pred_ds == 1:
        assert sd["decoder_upsample.weight"].shape == (64, 64, 2, 2)
        assert sd["decoder_upsample.bias"].shape == (64,)
    else:
        assert not any(k.startswith("decoder_upsample.") for k in sd)
    assert sd["decoder_pos_embed"].shape == (1, (8 // 2) ** 2 + 1, 64)
    q = 8 * pred_ds
    assert sd["decoder_pred.weight"].shape == (q * q * 3, 64)

    imgs, ids_keep, ids_restore = batch(5, n=2)
    loss, pred, mask = model(imgs, ids_keep, ids_restore)
    assert pred.shape == (2, (64 // q) ** 2, q * q * 3)
    assert mask.shape == (2, 64)
    assert torch.isfinite(loss)
    pooled = F.avg_pool2d(mask.reshape(2, 1, 8, 8), pred_ds).flatten(1)
    torch.testing.assert_close(loss.double(), ref_norm_pix_loss(imgs, pred, pooled, q), atol=1e-5, rtol=1e-5)
    loss.backward()
    for name in ("decoder_downsample.weight", "decoder_pred.weight", "blocks.0.attn.qkv.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    if pred_ds == 1:
        assert model.decoder_upsample.weight.grad.abs().sum() > 0


def release_style_decoder(model, latent, ids_restore, ds: int, up: int):
    """The release's decoder, step by step from the model's modules (NHWC <-> NCHW by view)."""
    x = model.decoder_embed(latent)
    n_masked = ids_restore.shape[1] + 1 - x.shape[1]
    x_ = torch.cat([x[:, 1:], model.mask_token.repeat(x.shape[0], n_masked, 1)], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    g = model.grid_size
    if ds > 1:
        x_ = model.decoder_downsample(x_.view(x_.size(0), g, g, -1).permute(0, 3, 1, 2))
        x_ = x_.flatten(2).permute(0, 2, 1)
    x = torch.cat([x[:, :1], x_], dim=1) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = blk(x)
    x = x[:, 1:]
    if up > 1:
        x = model.decoder_upsample(x.reshape(x.size(0), g // ds, g // ds, -1).permute(0, 3, 1, 2))
        x = x.flatten(2).permute(0, 2, 1)
    return model.decoder_pred(model.decoder_norm(x))


@pytest.mark.parametrize("ds, pred_ds", [(1, 1), (2, 1), (2, 2)])
def test_decoder_matches_release_computation(ds, pred_ds):
    model = micro(seed=9, decoder_downsampling=ds, pred_downsampling=pred_ds).eval()
    with torch.no_grad():
        model.mask_token.normal_()
    imgs, ids_keep, ids_restore = batch(9, n=2)
    with torch.no_grad():
        latent = model.forward_encoder(imgs, ids_keep)
        got = model.forward_decoder(latent, ids_restore)
        ref = release_style_decoder(model, latent, ids_restore, ds, ds // pred_ds)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_no_decoder_resampling_modules_by_default():
    sd = micro().state_dict()
    assert not any(k.startswith(("decoder_downsample.", "decoder_upsample.")) for k in sd)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(decoder_downsampling=3),  # grid 8 not divisible by 3
        dict(decoder_downsampling=2, pred_downsampling=4),  # ds % pred != 0
        dict(decoder_downsampling=4, pred_downsampling=3),
        dict(img_size=60),  # not a multiple of patch 8
        dict(decoder_downsampling=0),
        dict(pred_downsampling=0),
    ],
)
def test_invalid_configurations_raise_value_error(overrides):
    with pytest.raises(ValueError):
        pretrain.create_model(MICRO, **overrides)


def test_decoder_downsampling_4_pred_2():
    model = micro(img_size=64, decoder_downsampling=4, pred_downsampling=2)
    imgs, ids_keep, ids_restore = batch(6, n=1, ds=4)
    loss, pred, _ = model(imgs, ids_keep, ids_restore)
    assert pred.shape == (1, 16, 16 * 16 * 3)
    assert model.decoder_upsample.weight.shape == (64, 64, 2, 2)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------- 8. attention without k bias
def test_no_k_bias_attention_math_and_gradients():
    model = micro(seed=7, no_k_bias=True).eval()
    attn = model.blocks[1].attn
    assert attn.qkv.bias is None
    width, heads = 96, 3
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
        attn.proj.bias.normal_()
    x = torch.randn(2, 10, width)

    # the key bias is a zero buffer outside the state dict: the release's keys, no hooks
    assert set(attn.state_dict()) == {"qkv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias"}
    assert torch.equal(attn.k_bias, torch.zeros(width)) and not attn.k_bias.requires_grad
    assert not attn._forward_hooks and not attn.qkv._forward_hooks
    with torch.no_grad():
        got = attn(x)
    bias = torch.cat([attn.q_bias, torch.zeros(width), attn.v_bias]).detach()
    qkv = F.linear(x, attn.qkv.weight, bias)

    q, k, v = qkv.reshape(2, 10, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(-1)
    ref = F.linear((weights @ v).transpose(1, 2).reshape(2, 10, width), attn.proj.weight, attn.proj.bias)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

    # the decoder blocks use the same attention (the release's monkey-patch reached both)
    assert type(model.decoder_blocks[0].attn) is type(attn)
    model.train()
    imgs, ids_keep, ids_restore = batch(7)
    model(imgs, ids_keep, ids_restore)[0].backward()
    for blocks in (model.blocks, model.decoder_blocks):
        for blk in blocks:
            assert blk.attn.q_bias.grad is not None and blk.attn.q_bias.grad.abs().sum() > 0
            assert blk.attn.v_bias.grad is not None and blk.attn.v_bias.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- 9. names
def test_unknown_model_name():
    with pytest.raises(pretrain.LsmaeError) as info:
        pretrain.create_model("mae_vit_giant_patch16")
    message = str(info.value)
    assert "mae_vit_giant_patch16" in message
    assert "mae_vit_base_patch16_dec384d12h8b" in message and MICRO in message
    assert type(info.value) is not pretrain.LsmaeError  # a dedicated subclass
    with pytest.raises(pretrain.LsmaeError):
        pretrain.model_config("nope")


def test_aliases_and_list_models():
    assert pretrain.resolve_model_name("mae_vit_base_patch16") == "mae_vit_base_patch16_dec512d8b"
    assert pretrain.resolve_model_name("mae_vit_large_patch16") == "mae_vit_large_patch16_dec512d8b"
    assert pretrain.resolve_model_name("mae_vit_huge_patch14") == "mae_vit_huge_patch14_dec512d8b"
    assert pretrain.model_config("mae_vit_base_patch16") == pretrain.model_config("mae_vit_base_patch16_dec512d8b")
    with torch.device("meta"):
        model = pretrain.create_model("mae_vit_base_patch16")
    assert model.decoder_embed.weight.shape == (512, 768) and len(model.decoder_blocks) == 8

    names = set(pretrain.list_models())
    for patch in (4, 8, 16, 24, 32, 64):
        assert f"mae_vit_base_patch{patch}_dec384d12h8b" in names
        assert f"mae_vit_large_patch{patch}_dec512d16h8b" in names
    assert {
        "mae_vit_base_patch16_dec512d8b", "mae_vit_large_patch16_dec512d8b",
        "mae_vit_huge_patch14_dec512d8b", MICRO,
    } <= names
    assert pretrain.list_models("*huge*") == ["mae_vit_huge_patch14_dec512d8b"]
    cfg = pretrain.model_config("mae_vit_large_patch24_dec512d16h8b")
    assert cfg["patch_size"] == 24 and cfg["embed_dim"] == 1024 and cfg["decoder_num_heads"] == 16


# ---------------------------------------------------------------------------- 10. input checks
def test_wrong_image_size_raises():
    model = micro()
    imgs = torch.randn(1, 3, 48, 48)
    ids_keep, ids_restore = pretrain.block_mask_indices(1, 6, 0.75, 2)
    with pytest.raises(ValueError, match="img_size"):
        model(imgs, ids_keep, ids_restore)
    with pytest.raises(ValueError, match="img_size"):
        model.forward_encoder(torch.randn(1, 3, 64, 32))


# ---------------------------------------------------------------------------- 11. it learns
def test_a_few_adam_steps_reduce_the_loss():
    model = micro(seed=0, norm_pix_loss=True)
    imgs, ids_keep, ids_restore = batch(8, n=4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        loss = model(imgs, ids_keep, ids_restore)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_weight_counts_from_the_table_match_the_built_models():
    for name in list_models():
        patch = int(name.split("_patch")[1].split("_")[0])
        for img_size in (patch * 8, patch * 28):
            built = sum(s.numel() for s in expected_shapes(name, img_size=img_size).values())
            assert num_weights(name, img_size=img_size) == built, (name, img_size)
