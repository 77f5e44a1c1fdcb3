"""The Python API's configs (:mod:`pretrain.configs`): built from keywords or replaced, never changed in place,
checked like the command line, turned into the command line that runs them, and errors that name fields."""
from __future__ import annotations

import dataclasses

import pytest

from bridges.cli import build_parser
from bridges.demo.config import DemoConfig
from bridges.operations import ConvertConfig, ExportConfig, VisualizeConfig
from pretrain.configs import command_line, configure, from_namespace, option, shared
from pretrain.errors import OptionError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy:
    source: str = option(positional="SOURCE")
    data_path: str
    epochs: int | None = None
    norm_pix_loss: bool = option(True, flag="--no-norm-pix-loss", negated=True)
    paths: tuple[str, ...] = ()
    precision: str = shared("finetune", "precision")
    num_workers: int = shared("segment", "workers")
    compile: bool = shared("finetune", "compile")

    def __post_init__(self) -> None:
        from pretrain.configs import check_choices

        check_choices(self)


def test_configure_builds_or_replaces_without_touching_the_callers_config():
    base = configure(Toy, None, {"source": "demo", "data_path": "d"})
    changed = configure(Toy, base, {"epochs": 3})
    assert (base.epochs, changed.epochs, changed.source) == (None, 3, "demo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.epochs = 5  # type: ignore[misc]


def test_shared_fields_take_the_command_lines_defaults():
    from pretrain.shared_options import TASKS

    toy = Toy(source="s", data_path="d")
    assert (toy.precision, toy.compile) == ("auto", False)
    assert toy.num_workers == TASKS["segment"].default_workers()


@pytest.mark.parametrize("options, api, cli", [
    ({"source": "s", "data_path": "d", "precision": "fp8"}, "precision 'fp8': choose one of",
     "--precision 'fp8': choose one of"),
    ({"source": "s"}, "Toy needs data_path", "Toy needs --data-path"),
    ({"source": "s", "data_path": "d", "epoch": 1}, "Toy has no option 'epoch'", "Toy has no option 'epoch'"),
])
def test_errors_name_the_field_and_the_command_line_its_flag(options, api, cli):
    with pytest.raises(OptionError) as caught:
        configure(Toy, None, options)
    assert str(caught.value).startswith(api) and caught.value.command_line_message().startswith(cli)


def test_positional_fields_show_their_metavar_on_the_command_line():
    error = OptionError("{source} and {save_pictures}: {data_path}")
    Toy(source="s", data_path="d")  # registers Toy's spellings
    assert str(error) == "source and save_pictures: data_path"
    assert error.command_line_message() == "SOURCE and --save-pictures: --data-path"


def test_command_line_lists_positionals_then_what_differs_from_the_defaults():
    toy = Toy(source="demo", data_path="d", epochs=2, norm_pix_loss=False, paths=("a", "b"), compile=True)
    assert command_line("pretend", toy) == ["pretend", "demo", "--data-path", "d", "--epochs", "2",
                                            "--no-norm-pix-loss", "--paths", "a", "b", "--compile"]
    assert command_line("pretend", Toy(source="demo", data_path="d")) == ["pretend", "demo", "--data-path", "d"]


@pytest.mark.parametrize("command, config", [
    ("convert", ConvertConfig(source="demo", to="vitdet", output="out.pth", img_size=96, global_pool="token",
                              num_labels=7)),
    ("export", ExportConfig(run="runs/pretrain", output="w.pth")),
    ("visualize", VisualizeConfig(checkpoint="demo", images=("a.png", "b.png"), output="r.png", mask_ratio=0.5,
                                  mask_downsampling=1, seed=3, norm_pix=False)),
    ("demo", DemoConfig(workdir="w", epochs=1, device="cpu", data_only=True)),
])
def test_a_configs_command_line_parses_back_to_the_same_config(command, config):
    args = build_parser().parse_args(command_line(command, config))
    assert from_namespace(type(config), args) == config


def test_an_operation_config_checks_its_choices_like_the_command_line():
    with pytest.raises(OptionError, match=r"^to 'onnx': choose one of timm, vitdet"):
        ConvertConfig(source="demo", to="onnx", output="x")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "demo", "--to", "onnx", "-o", "x"])


def test_pretraining_refuses_one_string_as_its_folders_and_compile_on_xla():
    from pretrain.pretraining_config import PretrainConfig

    with pytest.raises(OptionError, match="^data_path takes a list of folders, not one string$"):
        PretrainConfig(data_path="/data/imagenet")
    with pytest.raises(OptionError, match="^compile is for device cuda or cpu"):
        PretrainConfig(data_path=["/data"], device="xla", compile=True)
    assert PretrainConfig(data_path=["/a", "/b"]).data_path == ("/a", "/b")  # lists become tuples
