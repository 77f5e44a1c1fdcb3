"""The segmentation model's step without host work (issue 29): it equals the stock model (transformers'
unmodified BEiT modules, the loss on the logits' own precision) in float32, gathers each relative
position table with an index that lives on the table's device and resamples no table at its own
window size, resamples other sizes as transformers does, upsamples the logits for the loss in float32,
and compiles."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torch._dynamo.utils import counters  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers.models.beit.modeling_beit import BeitRelativePositionBias  # noqa: E402

from bridges.segmentation.model import convert_to_upernet, model_class, stock_upernet  # noqa: E402
from bridges.segmentation.modeling_upernet import (  # noqa: E402
    DeviceRelativePositionBias,
    cached_relative_position_index,
    relative_position_index,
)
from bridges.segmentation.recipes import get_recipe  # noqa: E402
from tests.conftest import perturbed_mae  # noqa: E402

aten = torch.ops.aten
GATHERS = (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default)
RECIPE = get_recipe("demo")
CROP = RECIPE.crop_size


@pytest.fixture(scope="module")
def demo_upernet() -> torch.nn.Module:
    """The demo architecture's UperNet (4 blocks, patch 8, 64 px, 4 classes) in float32, without dropout
    or drop path, every parameter moved off its initialisation (nonzero relative position tables)."""
    conversion = convert_to_upernet(perturbed_mae(scale=0.02, img_size=CROP).state_dict(), img_size=CROP,
                                    num_labels=RECIPE.num_labels, block_taps=list(RECIPE.out_indices),
                                    drop_path=0.0, head_dropout=0.0)
    model = conversion.model
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def batch(height: int = CROP, width: int = CROP, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels (some pixels at the ignore index), seeded."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, height, width, generator=generator)
    labels = torch.randint(0, RECIPE.num_labels, (2, height, width), generator=generator)
    labels[:, :4] = 255
    return images.to(device), labels.to(device)


def test_logits_loss_and_every_gradient_equal_the_stock_model(demo_upernet):
    """In training mode (BatchNorm on batch statistics), float32: the same numbers as the model built
    from transformers' unmodified modules on the same weights."""
    ours = copy.deepcopy(demo_upernet).train()
    stock = stock_upernet(ours)
    assert type(stock) is not type(ours) and stock.training
    assert {type(layer.relative_position_bias) for layer in stock.beit.layers} == {BeitRelativePositionBias}
    assert {type(layer.relative_position_bias) for layer in ours.beit.layers} == {DeviceRelativePositionBias}
    images, labels = batch()
    outputs = []
    for model in (ours, stock):
        out = model(images, labels=labels)
        out.loss.backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0].logits, outputs[1].logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[0].loss, outputs[1].loss, rtol=1e-6, atol=0)
    stock_params = dict(stock.named_parameters())
    assert stock_params.keys() == dict(ours.named_parameters()).keys()
    for name, p in ours.named_parameters():
        assert p.grad is not None and stock_params[name].grad is not None, name
        torch.testing.assert_close(p.grad, stock_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(layer.relative_position_bias.relative_position_bias_table.grad.abs().sum() > 0
               for layer in ours.beit.layers)


def test_stock_upernet_copies_the_weights_dtype_and_mode(demo_upernet):
    ours = copy.deepcopy(demo_upernet).to(torch.bfloat16).eval()
    stock = stock_upernet(ours)
    assert not stock.training and stock.config is not ours.config
    reference = ours.state_dict()
    for key, value in stock.state_dict().items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key
        assert value.data_ptr() != reference[key].data_ptr(), key  # a copy: training one leaves the other


class _Gathers(TorchDispatchMode):
    """The index tensors of every gather (and its backward's scatter) from a relative position table."""

    def __init__(self, tables: list[torch.Tensor]) -> None:
        super().__init__()
        self.shapes = {t.shape for t in tables}
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (table or its gradient, index)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GATHERS and args[0].shape in self.shapes:
            self.seen += [(args[0], index) for index in args[1] if index is not None]
        return func(*args, **(kwargs or {}))


@contextmanager
def table_interpolations(model: torch.nn.Module) -> Iterator[list[tuple[int, ...]]]:
    """The input shapes of ``torch.nn.functional.interpolate`` called (as modeling_beit calls it) inside a
    relative position bias module."""
    seen: list[tuple[int, ...]] = []
    inside = [0]
    original = torch.nn.functional.interpolate

    def counted(x, *args, **kwargs):
        if inside[0]:
            seen.append(tuple(x.shape))
        return original(x, *args, **kwargs)

    def enter(*_):
        inside[0] += 1

    def leave(*_):
        inside[0] -= 1

    handles = [h for m in model.modules() if hasattr(m, "relative_position_bias_table")
               for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    torch.nn.functional.interpolate = counted
    try:
        yield seen
    finally:
        torch.nn.functional.interpolate = original
        for handle in handles:
            handle.remove()


def second_step_work(model: torch.nn.Module) -> tuple[list[tuple[int, ...]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """A training step's forward and backward on the meta device after a first one: the tables'
    interpolations and gathers. On meta, a host index shows as a CPU tensor (on a GPU it is copied to the
    device in every layer)."""
    model = model.to("meta").train()
    images, labels = batch(device="meta")
    model(images, labels=labels).loss.backward()
    tables = [layer.relative_position_bias.relative_position_bias_table for layer in model.beit.layers]
    model.zero_grad()
    with table_interpolations(model) as interpolations, _Gathers(tables) as gathers:
        model(images, labels=labels).loss.backward()
    return interpolations, gathers.seen


def test_after_the_first_step_no_table_is_resampled_and_every_index_lives_on_the_device(demo_upernet):
    ours = copy.deepcopy(demo_upernet)
    interpolations, gathers = second_step_work(ours)
    assert interpolations == []
    layers = len(ours.beit.layers)
    assert len(gathers) == 2 * layers  # each layer's gather and its backward
    cached = cached_relative_position_index((CROP // 8, CROP // 8), torch.device("meta"))
    assert all(index.device == table.device and index is cached for table, index in gathers)


def test_the_stock_model_fails_the_no_host_work_check(demo_upernet):
    """The check above is able to fail: the stock module resamples every table at its own size and
    gathers with a host index."""
    interpolations, gathers = second_step_work(stock_upernet(demo_upernet))
    layers = len(demo_upernet.beit.layers)
    grid = 2 * (CROP // 8) - 1
    assert interpolations == [(1, demo_upernet.config.num_attention_heads, grid, grid)] * layers
    assert len(gathers) == 2 * layers and {index.device.type for _, index in gathers} == {"cpu"}


@pytest.mark.parametrize("window", [(6, 6), (5, 11), (8, 8), (12, 9)])
def test_the_bias_is_transformers_at_every_window_size(demo_upernet, window):
    """Another window than the configured 8x8 (smaller or larger images, non-square ones) resamples the
    table as transformers does; also with ``interpolate_pos_encoding``."""
    stock = BeitRelativePositionBias(demo_upernet.config)
    ours = demo_upernet.beit.layers[1].relative_position_bias
    stock.load_state_dict(ours.state_dict())
    torch.testing.assert_close(relative_position_index(window, torch.device("cpu")),
                               BeitRelativePositionBias.generate_relative_position_index(window).view(-1), rtol=0,
                               atol=0)
    with torch.no_grad():
        torch.testing.assert_close(ours(window), stock(window), rtol=0, atol=0)
        tokens = window[0] * window[1] + 1
        torch.testing.assert_close(ours(window, True, tokens + 5), stock(window, True, tokens + 5), rtol=0, atol=0)


def test_a_non_square_image_of_another_size_gives_the_stock_logits(demo_upernet):
    ours = copy.deepcopy(demo_upernet).eval()
    images, _ = batch(40, 88)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, stock_upernet(ours)(images).logits, rtol=1e-5, atol=1e-5)


def loss_upsampling_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """The dtypes of the bilinear upsamplings to the labels' size (the loss's) and of their backward."""
    images, labels = batch()
    seen: set[torch.dtype] = set()

    class Upsamplings(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            full = out if func is aten.upsample_bilinear2d.vec else args[0]  # the backward's gradient at full size
            if func in (aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d_backward.default) and \
                    tuple(full.shape[-2:]) == (CROP, CROP):
                seen.add(full.dtype)
            return out

    with Upsamplings():
        model(images.to(torch.bfloat16), labels=labels).loss.backward()
    return seen


def test_the_loss_upsamples_bf16_logits_in_float32(demo_upernet):
    bf16 = copy.deepcopy(demo_upernet).to(torch.bfloat16).train()
    assert loss_upsampling_dtypes(bf16) == {torch.float32}
    assert loss_upsampling_dtypes(stock_upernet(bf16)) == {torch.bfloat16}  # today's: the logits' own


def test_the_model_compiles_into_one_graph_with_the_keys_and_numbers_of_eager(demo_upernet):
    """``model.compile()`` on a model never run before (as ``lsmae segment --compile`` trains): one graph,
    no graph break (the bias's index made in the graph, not read from its eager cache; no output-recording
    hooks installed on the first call), the state-dict keys kept, the eager loss and gradients.
    AOTAutograd's eager backend: the same graph capture as inductor without its code generation
    (inductor on CPU: measured once, not here)."""
    eager = copy.deepcopy(demo_upernet).train()
    compiled = copy.deepcopy(demo_upernet).train()
    keys = list(compiled.state_dict())
    compiled.compile(backend="aot_eager")
    assert list(compiled.state_dict()) == keys and type(compiled) is model_class()
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    images, labels = batch()
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for model in (eager, compiled):
            loss = model(images, labels=labels).loss
            loss.backward()
            losses.append(loss)
    assert not [w for w in caught if "lru_cache" in str(w.message)]  # dynamo would trace past a cache, warning
    assert counters["stats"]["unique_graphs"] - graphs == 1 and sum(counters["graph_break"].values()) == breaks
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    grads = dict(eager.named_parameters())
    for name, p in compiled.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_bias_compiles_at_another_window(demo_upernet):
    bias = demo_upernet.beit.layers[0].relative_position_bias
    compiled = torch.compile(bias, backend="aot_eager", fullgraph=True)
    table = bias.relative_position_bias_table
    expected = torch.autograd.grad(bias((6, 7)).square().sum(), table)[0]
    torch.testing.assert_close(torch.autograd.grad(compiled((6, 7)).square().sum(), table)[0], expected)
