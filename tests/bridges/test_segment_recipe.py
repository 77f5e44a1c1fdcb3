"""Segmentation settings pinned one by one: the recipe values and their sources, KEY=VALUE overrides, the
optimizer groups, the schedule, and the model's reference settings (head dropout, auxiliary weight,
relative position bias)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bridges.cli import main
from bridges.segmentation.recipes import (
    CITATIONS,
    RECIPES,
    apply_overrides,
    get_recipe,
    overridable_keys,
    scale_to_batch,
)
from pretrain.errors import LsmaeError

REFERENCE = dict(  # BEiT's UperNet ADE20K 512 configs / mmsegmentation, as the authors followed them
    batch_size=16, max_iter=160_000, warmup_iters=1500, warmup_ratio=1e-6, poly_power=1.0, min_lr=0.0,
    weight_decay=0.05, betas=(0.9, 0.999), head_dropout=0.1, auxiliary_weight=0.4, crop_size=512,
    scale=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio=0.75, eval_stride=341, eval_period=16_000,
    checkpoint_period=16_000, num_labels=150, aug_test_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))


def _values(name: str) -> dict:
    return {k: v for k, v in dataclasses.asdict(RECIPES[name]).items() if k not in ("name", "source")}


def test_vit_b_recipe_is_the_authors_and_the_references_value_by_value():
    assert _values("upernet_vit_b_ade20k_160k") == dict(
        REFERENCE, lr=8e-5, layer_decay=0.8, drop_path=0.1, out_indices=(3, 5, 7, 11), estimated=False)
    cited = CITATIONS["upernet_vit_b_ade20k_160k"]
    assert all("long_seq_mae#1" in cited[k] for k in ("lr", "layer_decay", "drop_path", "batch_size", "max_iter"))


def test_vit_l_recipe_is_an_estimate_with_a_source_for_each_chosen_value():
    assert _values("upernet_vit_l_ade20k_160k") == dict(
        REFERENCE, lr=8e-5, layer_decay=0.9, drop_path=0.2, out_indices=(7, 11, 15, 23), estimated=True)
    cited = CITATIONS["upernet_vit_l_ade20k_160k"]
    for key in ("lr", "layer_decay", "drop_path"):
        assert cited[key].startswith("estimate:"), key
    assert "0.8^13" in cited["layer_decay"] and "pt2ft" in cited["lr"]
    assert RECIPES["upernet_vit_l_ade20k_160k"].source.startswith("ESTIMATE")


def _plan_text(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["segment", *argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_dry_run_marks_the_estimate_and_shows_its_sources_and_the_overrides(lsmae_home, capsys):
    text = _plan_text(capsys, "vit_large/coco/4000", "lr=5e-5", "layer_decay=0.85")
    assert "upernet_vit_l_ade20k_160k (ESTIMATED: not published for this model" in text.splitlines()[0]
    assert "lr 5e-05 " in text and "layer decay 0.85," in text
    assert "overrides: lr=5e-05 layer_decay=0.85" in text
    assert "source of drop_path: estimate: ViT-B's 0.1 doubled" in text
    assert "source of lr (overridden above; the recipe's value): estimate: the authors' ViT-B lr" in text
    base = _plan_text(capsys, "vit_base/coco/4000")
    assert "ESTIMATED" not in base and "overrides" not in base
    assert "source of lr, layer_decay, drop_path, batch_size, max_iter, crop_size: long_seq_mae#1" in base


def _plan(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["segment", *argv, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_overrides_apply_last_after_the_batch_scaling_and_the_flags(lsmae_home, capsys):
    plan = _plan(capsys, "vit_base/coco/4000", "--batch-size", "8", "--max-iter", "10", "lr=1e-4", "max_iter=20",
                 "drop_path=0.3", "aug_test_scales=1,1.5", "betas=0.9,0.95")
    assert (plan["lr"], plan["max_iter"], plan["drop_path"], plan["aug_test_scales"], plan["betas"]) == (
        1e-4, 20, 0.3, [1.0, 1.5], [0.9, 0.95])
    assert plan["warmup_iters"] == 3000 and plan["batch_size"] == 8  # scaled, not overridden
    assert plan["overrides"] == {"lr": 1e-4, "max_iter": 20, "drop_path": 0.3, "aug_test_scales": [1.0, 1.5],
                                 "betas": [0.9, 0.95]}
    # options and overrides in any order
    assert _plan(capsys, "layer_decay=0.7", "vit_base/coco/4000", "--batch-size", "8")["layer_decay"] == 0.7


@pytest.mark.parametrize("override, message", [
    ("learning_rate=1", "segment override: unknown key 'learning_rate'; valid keys: lr, layer_decay, drop_path"),
    ("batch_size=8", "batch_size is not a key: use --batch-size; valid keys:"),
    ("name=x", "unknown key 'name'"),
    ("lr=fast", "segment override lr=fast: expected a number (float)"),
    ("max_iter=1e5", "expected a number (int)"),
    ("betas=0.9", "segment override betas=0.9: expected 2 comma-separated values"),
    ("layer_decay=1.5", "segment override layer_decay=1.5: must be in (0, 1]"),
    ("out_indices=1,2", "must be 4 zero-based blocks"),
])
def test_a_bad_override_is_one_line_naming_what_is_valid(lsmae_home, capsys, override, message):
    capsys.readouterr()
    assert main(["segment", "vit_base/coco/4000", "--dry-run", override]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_every_recipe_value_but_name_citation_batch_and_flag_is_overridable():
    recipe = get_recipe("upernet_vit_b_ade20k_160k")
    assert set(overridable_keys()) == {f.name for f in dataclasses.fields(recipe)} - {
        "name", "source", "batch_size", "estimated"}
    for key in overridable_keys():
        value = getattr(recipe, key)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert apply_overrides(recipe, [f"{key}={text}"]) == (recipe, {key: value})


# --------------------------------------------------------------------------- the model and the optimizer
@pytest.fixture(scope="module")
def upernet():
    pytest.importorskip("transformers")
    from bridges.segmentation.training import build_model
    from tests.conftest import perturbed_mae

    recipe = get_recipe("demo")
    model, _ = build_model(perturbed_mae(scale=0.02, img_size=64).state_dict(), recipe)
    return model


def test_weight_decay_groups_as_the_reference_constructor_applies_them(upernet):
    from bridges.segmentation.training import param_groups

    groups = param_groups(upernet, weight_decay=0.05, layer_decay=0.8)
    names = {id(p): n for n, p in upernet.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    free = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert len(decay) + len(free) == len(names) and not decay & free
    # decayed: the reference's name check never matches these (its names carry the ``backbone.`` prefix)
    for decayed in ("beit.embeddings.cls_token", "beit.embeddings.position_embeddings",
                    "beit.layers.0.relative_position_bias.relative_position_bias_table",
                    "beit.layers.0.attention.q_proj.weight", "decode_head.classifier.weight"):
        assert decayed in decay, decayed
    for exempt in ("beit.layers.0.attention.q_proj.bias", "beit.layers.0.layernorm_before.weight",
                   "beit.layers.0.lambda_1", "decode_head.classifier.bias"):
        assert exempt in free, exempt
    assert all(upernet.get_parameter(n).ndim == 1 or n.endswith(".bias") for n in free)


def test_layer_decay_scales_each_layer_of_the_vit(upernet):
    from bridges.segmentation.training import param_groups

    depth = upernet.config.num_hidden_layers
    scale = {}
    for group in param_groups(upernet, weight_decay=0.05, layer_decay=0.8):
        for p in group["params"]:
            scale[id(p)] = group["lr_scale"]
    by_name = {n: scale[id(p)] for n, p in upernet.named_parameters()}
    assert by_name["beit.embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.8 ** (depth + 1))
    assert by_name["beit.embeddings.cls_token"] == pytest.approx(0.8 ** (depth + 1))
    for i in range(depth):
        assert by_name[f"beit.layers.{i}.mlp.fc1.weight"] == pytest.approx(0.8 ** (depth - i))
    assert by_name["decode_head.classifier.weight"] == by_name["fpn.fpn1.conv_transpose1.weight"] == 1.0


def test_schedule_warms_up_linearly_then_decays_by_poly(upernet):
    from bridges.segmentation.training import loop_config

    b = get_recipe("upernet_vit_b_ade20k_160k")
    config = loop_config(scale_to_batch(b, 8), seed=0, print_freq=50)
    assert (config.warmup, config.max_steps, config.schedule, config.poly_power) == (3000, 320_000, "poly", 1.0)
    assert config.warmup_lr_init == pytest.approx(4e-5 * 1e-6) and config.min_lr == 0.0
    assert (config.eval_every, config.ckpt_every) == (32_000, 32_000)


def test_heads_drop_channels_before_their_classifiers_in_training_only(upernet):
    from bridges.segmentation.modeling_upernet import DropoutConv2d

    for head in (upernet.decode_head, upernet.auxiliary_head):
        classifier = head.classifier
        assert isinstance(classifier, DropoutConv2d) and classifier.dropout.p == 0.1
        x = torch.ones(1, classifier.in_channels, 2, 2)
        plain = torch.nn.functional.conv2d(x, classifier.weight, classifier.bias)
        classifier.eval()
        assert torch.equal(classifier(x), plain)
        classifier.train()
        torch.manual_seed(0)
        assert not torch.allclose(classifier(x), plain)  # some of the channels dropped (p=0.1 of many)
    assert "decode_head.classifier.weight" in upernet.state_dict()  # transformers' names kept


def test_auxiliary_loss_weighs_0_4_and_relative_position_bias_starts_at_zero(upernet):
    assert upernet.config.auxiliary_loss_weight == 0.4 and upernet.config.use_relative_position_bias
    for layer in upernet.beit.layers:
        assert torch.count_nonzero(layer.relative_position_bias.relative_position_bias_table) == 0
    upernet.eval()
    torch.manual_seed(0)
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    with torch.no_grad():
        loss = upernet(x, labels=labels).loss
        features = upernet.fpn(upernet.block_features(x))
        main_logits, aux_logits = upernet.decode_head(features), upernet.auxiliary_head(features)

    def ce(logits):
        up = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
        return torch.nn.functional.cross_entropy(up, labels, ignore_index=255)

    torch.testing.assert_close(loss, ce(main_logits) + 0.4 * ce(aux_logits))
    upernet.train()


def test_eval_only_takes_only_the_evaluation_overrides(tmp_path, capsys):
    assert main(["segment", "--eval-only", str(tmp_path), "--data-path", str(tmp_path), "lr=1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "lsmae segment: error: --eval-only takes only the evaluation overrides (crop_size, eval_stride, scale, "
        "aug_test_scales), not lr=1")


def test_overrides_parse_back_the_types_of_the_recipe():
    recipe, parsed = apply_overrides(get_recipe("demo"), ["eval_stride=32", "scale=256,128", "warmup_iters=0"])
    assert (recipe.eval_stride, recipe.scale, recipe.warmup_iters) == (32, (256, 128), 0)
    assert type(parsed["eval_stride"]) is int and parsed["scale"] == (256, 128)
    with pytest.raises(LsmaeError, match="scale=1,2,3: expected 2 comma-separated values"):
        apply_overrides(get_recipe("demo"), ["scale=1,2,3"])


def test_the_model_takes_the_recipes_head_dropout_and_auxiliary_weight(upernet):
    from bridges.segmentation.training import build_model
    from tests.conftest import perturbed_mae

    recipe = apply_overrides(get_recipe("demo"), ["head_dropout=0.3", "auxiliary_weight=0.25"])[0]
    model, _ = build_model(perturbed_mae(scale=0.02, img_size=64).state_dict(), recipe)
    assert model.config.auxiliary_loss_weight == 0.25
    assert model.decode_head.classifier.dropout.p == model.auxiliary_head.classifier.dropout.p == 0.3
