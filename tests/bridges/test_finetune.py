"""The classification bridge on CPU: fine-tuning and linear probing of a micro MAE pretrained here on
scikit-learn's 8x8 digits (upscaled to 64x64 RGB), resume after an interruption, ``lsmae eval``,
plain-timm loading of the checkpoints, the recipe defaults and one-line command-line errors.

The "pretrained" encoder is made by the project's own engine (a few epochs on the digits train
split) and exported in the release format, so the whole path zoo-format file -> timm -> run ->
plain timm is exercised. Runs are in-process with one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from bridges.classification import FinetuneConfig, LinprobeConfig, evaluate, finetune, linprobe, training
from bridges.classification import data as classification_data
from bridges.classification import model as classification_model
from bridges.classification import recipes as classification_recipes
from bridges.cli import build_parser as cli_parser
from bridges.cli import classification as classification_cli
from bridges.cli import main as cli_main
from bridges.cli.classification import add_arguments
from bridges.demo.sample_data import write_digits
from pretrain import pretrain
from pretrain.configs import from_namespace
from pretrain.engine.checkpoints import export_release
from pretrain.engine.run_plan import resolve_batch
from tests.conftest import REPO, TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN_PER_CLASS, VAL_PER_CLASS = 60, 20
FT_EPOCHS, FT_INTERRUPTED_AFTER = 6, 3
PROBE_EPOCHS = 8


def records(out: Path, kind: str) -> list[dict]:
    return [r for line in (out / "log.jsonl").read_text().splitlines() if (r := json.loads(line))["kind"] == kind]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


CONFIGS = {"finetune": FinetuneConfig, "linprobe": LinprobeConfig}


def config_of(mode: str, argv: list[str]) -> FinetuneConfig | LinprobeConfig:
    """The config ``lsmae MODE ARGV`` runs."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, mode)
    return from_namespace(CONFIGS[mode], parser.parse_args(argv))


def run_mode(mode: str, argv: list[str]):
    return (finetune if mode == "finetune" else linprobe)(config_of(mode, argv))


def common(data: Path, out: Path, *extra: str) -> list[str]:
    """Runs at 32px from the 64px pretraining (pos_embed resampled 8x8 -> 4x4, like the release's 448px
    checkpoints fine-tuned at 224px), which also makes them 4x cheaper; ``extra`` options come last."""
    return ["--data-path", str(data), "--input-size", "32", "--num-workers", "0", "--device", "cpu",
            "--precision", "fp32", "--output-dir", str(out), "--print-freq", "25", *extra]


# flips and small crops change what an 8x8 digit is: the learning runs keep whole, unflipped digits
DIGIT_AUGMENTATION = ("--hflip", "0", "--min-crop-scale", "0.7")


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    """LSMAE_HOME in a temporary folder for the module-scoped runs (like conftest's ``lsmae_home``)."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("lsmae_home")
        mp.setenv("LSMAE_HOME", str(home))
        for var in ("LSMAE_MIRROR", "LSMAE_OFFLINE", "LSMAE_REGISTRY"):
            mp.delenv(var, raising=False)
        yield home


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), TRAIN_PER_CLASS, VAL_PER_CLASS, size=64)


@pytest.fixture(scope="module")
def pretrained(digits, module_home, tmp_path_factory) -> Path:
    """The micro MAE pretrained for a few epochs on the digits train split, exported like a release file."""
    out = tmp_path_factory.mktemp("pretrain")
    result = pretrain(  # the Python API of `lsmae pretrain`
        model=TINY_MODEL, input_size=64, data_path=(str(digits),), epochs=4, warmup_epochs=1, effective_batch_size=16,
        lr=1.5e-3, mask_downsampling=1,
        norm_pix_loss=False,  # upscaled 8x8 digits make nearly flat patches: normalising them amplifies noise
        num_workers=0, device="cpu", precision="fp32", output_dir=str(out), ckpt_interval=100, print_freq=100)
    assert (result.checkpoint, result.epochs, result.resumed_from) == (out / "checkpoint-3.pth", 4, None)
    return export_release(out, out / "mae_digits.pth")


def finetune_argv(pretrained: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The fine-tuning run of :func:`finetuned`; ``extra`` options come last."""
    return [str(pretrained), *common(data, out, "--epochs", str(FT_EPOCHS), "--warmup-epochs", "1",
                                     "--effective-batch-size", "8", "--lr", "2e-3", "--mixup", "0", "--cutmix", "0",
                                     "--aa", "none", "--reprob", "0", *DIGIT_AUGMENTATION, *extra)]


@pytest.fixture(scope="module")
def finetuned(pretrained, digits, tmp_path_factory) -> tuple[Path, dict]:
    """A fine-tuning run interrupted during epoch 4 (after epoch 3's checkpoint), then rerun to the end."""
    out = tmp_path_factory.mktemp("finetune")
    argv = finetune_argv(pretrained, digits, out)
    evaluations = []
    real_accuracy = training.accuracy

    def crash_in_fourth_epoch(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) > FT_INTERRUPTED_AFTER:
            raise KeyboardInterrupt  # the process dies after training epoch 4, before its checkpoint
        return real_accuracy(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "accuracy", crash_in_fourth_epoch)
        with pytest.raises(KeyboardInterrupt):
            run_mode("finetune", argv)
    assert load(out / "last.pth")["epoch"] == FT_INTERRUPTED_AFTER - 1
    return out, run_mode("finetune", argv)


@pytest.fixture(scope="module")
def probed(pretrained, digits, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("linprobe")
    # LARS moves weights by lr x 1e-3 of their norm per step and biases by lr x gradient: with 10 classes
    # and ~300 steps (not 1000 classes and ~7000) a high lr is needed, and it settles as the cosine decays
    argv = [str(pretrained), *common(digits, out, "--epochs", str(PROBE_EPOCHS), "--warmup-epochs", "1",
                                     "--effective-batch-size", "16", "--lr", "12", *DIGIT_AUGMENTATION)]
    return out, run_mode("linprobe", argv)


# --- learning -------------------------------------------------------------------------------------
def test_finetuning_learns_and_resumes_after_an_interruption(finetuned):
    out, result = finetuned
    epochs = records(out, "epoch")
    assert [r["epoch"] for r in epochs] == list(range(FT_EPOCHS))  # each epoch once: resumed, not restarted
    assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in epochs)
    interrupted = [r for r in records(out, "train") if r["epoch"] == FT_INTERRUPTED_AFTER]
    assert len({r["step"] for r in interrupted}) < len(interrupted)  # epoch 4 was trained twice...
    first, second = interrupted[:len(interrupted) // 2], interrupted[len(interrupted) // 2:]
    assert [r["loss"] for r in first] == [r["loss"] for r in second]  # ...identically: exact resume
    assert result.best.top1 == max(r["top1"] for r in epochs) >= 0.5  # chance is 0.1
    assert (result.top1, result.top5) == (epochs[-1]["top1"], epochs[-1]["top5"])  # the final model's
    last, best = load(out / "last.pth"), load(out / "best.pth")
    assert last["epoch"] == FT_EPOCHS - 1 and "optimizer" in last and "optimizer" not in best
    assert best["top1"] == result.best.top1 and best["epoch"] == result.best.epoch
    assert result.resumed_from == out / "last.pth" and (result.best_path, result.last_path) == (out / "best.pth",
                                                                                              out / "last.pth")
    assert (out / "tensorboard").is_dir()


def test_rerunning_a_finished_run_does_nothing(finetuned, pretrained, digits):
    out, result = finetuned
    before = (out / "log.jsonl").read_text()
    again = run_mode("finetune", finetune_argv(pretrained, digits, out))
    assert (again.top1, again.best) == (result.top1, result.best) and (out / "log.jsonl").read_text() == before


def test_linear_probe_learns_with_a_frozen_encoder(probed, pretrained):
    out, result = probed
    assert [r["epoch"] for r in records(out, "epoch")] == list(range(PROBE_EPOCHS))
    assert result.best.top1 >= 0.3 and result.resumed_from is None
    best = load(out / "best.pth")
    assert best["global_pool"] == "token" and best["mode"] == "linprobe"
    assert "head.weight" in best["model"] and not any(k.startswith("head.0") for k in best["model"])
    source = torch.load(pretrained, weights_only=True)["model"]
    for key in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "norm.weight"):
        assert torch.equal(best["model"][key], source[key]), f"{key} changed: the encoder must stay frozen"


# --- checkpoints: eval and plain timm -------------------------------------------------------------
@pytest.mark.parametrize("run", ["finetuned", "probed"])
def test_eval_reproduces_the_logged_best_top1(run, request, digits, capsys):
    out, result = request.getfixturevalue(run)
    batch = str(load(out / "best.pth")["batch_size"])  # the batch the run evaluated with
    argv = ["eval", str(out / "best.pth"), "--data-path", str(digits), "--device", "cpu", "--num-workers", "0",
            "--precision", "fp32", "--batch-size", batch]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {100 * result.best.top1:.2f}%" in printed and f"on {10 * VAL_PER_CLASS} images" in printed
    measured = evaluate(checkpoint=str(out / "best.pth"), data_path=str(digits), batch_size=int(batch),
                        device="cpu", precision="fp32")
    assert (measured.top1, measured.top5) == (result.best.top1, result.best.top5)


@pytest.mark.parametrize("run", ["finetuned", "probed"])
def test_best_checkpoint_loads_into_plain_timm(run, request, digits):
    out, _ = request.getfixturevalue(run)
    ckpt = load(out / "best.pth")
    model = timm.create_model(ckpt["timm_model"], **ckpt["timm_kwargs"], num_classes=ckpt["num_classes"],
                              global_pool=ckpt["global_pool"], img_size=ckpt["img_size"])
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    picture = Image.open(next((digits / "val" / "digit3").iterdir()))
    image = classification_data.eval_transform(ckpt["img_size"])(picture)
    with torch.no_grad():
        assert model(image[None]).shape == (1, 10)
    assert ckpt["classes"] == [f"digit{c}" for c in range(10)]


# --- the full default recipe, and resuming with more epochs ---------------------------------------
def test_default_recipe_smoke_and_resume_with_more_epochs(pretrained, tmp_path):
    """MAE's recipe as is (RandAugment, random erasing, mixup/cutmix, smoothing, layer decay, drop path)
    on a small copy of the data; a run of 1 epoch is then continued to 2 by rerunning with --epochs 2."""
    data = write_digits(tmp_path / "small", 4, 2, size=64)
    out = tmp_path / "run"
    argv = [str(pretrained), *common(data, out, "--effective-batch-size", "8", "--warmup-epochs", "1",
                                     "--input-size", "64")]
    first = run_mode("finetune", [*argv, "--epochs", "1"])
    second = run_mode("finetune", [*argv, "--epochs", "2"])
    assert [r["epoch"] for r in records(out, "epoch")] == [0, 1]
    assert second.epochs == 2 and first.best.top1 <= second.best.top1
    args = load(out / "last.pth")["args"]
    assert (args["aa"], args["reprob"], args["mixup"], args["cutmix"], args["smoothing"]) == \
        ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1)
    assert (args["layer_decay"], args["drop_path"], args["weight_decay"], args["min_lr"]) == (0.65, 0.1, 0.05, 1e-6)


# --- recipe resolution (no training) --------------------------------------------------------------
def _resolved(mode: str, width: int | None, *argv: str) -> FinetuneConfig | LinprobeConfig:
    given = config_of(mode, ["src", "--data-path", "d", *argv])
    resolved = classification_recipes.resolve_recipe(given, width)
    assert given == config_of(mode, ["src", "--data-path", "d", *argv])  # the caller's config is left alone
    return resolved


def test_recipe_defaults_follow_the_architecture_and_flags_override_them():
    base, large, micro = (_resolved("finetune", w) for w in (768, 1024, 96))
    assert (base.epochs, base.blr, base.layer_decay, base.drop_path) == (100, 5e-4, 0.65, 0.1)
    assert (large.epochs, large.blr, large.layer_decay, large.drop_path) == (50, 1e-3, 0.75, 0.2)
    assert micro == base
    assert base.lr == pytest.approx(5e-4 * 1024 / 256) and large.lr == pytest.approx(1e-3 * 4)
    for a in (base, large):
        assert (a.effective_batch_size, a.weight_decay, a.warmup_epochs, a.min_lr, a.smoothing) == \
            (1024, 0.05, 5, 1e-6, 0.1)
        assert (a.aa, a.reprob, a.mixup, a.cutmix, a.global_pool) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, "avg")
    custom = _resolved("finetune", 1024, "--epochs", "3", "--blr", "1e-4", "--layer-decay", "0.9", "--aa", "none",
                       "--effective-batch-size", "512")
    assert (custom.epochs, custom.layer_decay, custom.aa, custom.drop_path) == (3, 0.9, None, 0.2)
    assert custom.lr == pytest.approx(1e-4 * 2)
    assert _resolved("finetune", 768, "--lr", "0.01").lr == 0.01
    probe = _resolved("linprobe", 1024)
    assert (probe.epochs, probe.blr, probe.effective_batch_size, probe.warmup_epochs, probe.weight_decay) == \
        (90, 0.1, 16384, 10, 0.0)
    assert probe.lr == pytest.approx(6.4)


def test_batch_plan():
    assert resolve_batch(1024, None, None, 8, cap=64) == (64, 2)
    assert resolve_batch(1024, None, None, 1, cap=64) == (64, 16)
    assert resolve_batch(16384, None, None, 32, cap=512) == (512, 1)
    assert resolve_batch(48, None, None, 1, cap=64) == (48, 1)
    assert resolve_batch(1024, 32, None, 8, cap=64) == (32, 4)


def test_transforms_are_timms_at_the_input_size():
    args = _resolved("finetune", 768, "--input-size", "96")
    train = classification_data.train_transform(args)
    names = [type(t).__name__ for t in train.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert names[-1] == "RandomErasing" and train.transforms[0].size == (96, 96)
    probe = classification_data.train_transform(_resolved("linprobe", 768, "--input-size", "96"))
    assert [type(t).__name__ for t in probe.transforms][:2] == ["RandomResizedCropAndInterpolation",
                                                                "RandomHorizontalFlip"]
    assert not any("RandAugment" in type(t).__name__ or "Erasing" in type(t).__name__ for t in probe.transforms)
    image = Image.new("RGB", (150, 120), (90, 160, 30))
    assert classification_data.eval_transform(96)(image).shape == (3, 96, 96)
    assert classification_data.eval_transform(448)(image).shape == (3, 448, 448)


def test_randaugment_posterize_at_full_magnitude_works():
    """RandAugment 'inc1' posterizes to 0 bits at magnitude 10, which Pillow >= 13 refuses."""
    train = classification_data.train_transform(_resolved("finetune", 768, "--input-size", "32"))
    randaug = train.transforms[2]
    op = next(o for o in randaug.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.new("RGB", (32, 32), (200, 100, 50))
    assert op(image).getpixel((0, 0)) == (0, 0, 0)


def test_linear_probe_head_folding_is_exact():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(6, affine=False, eps=1e-6), torch.nn.Linear(6, 3))
    head.train()
    for _ in range(5):
        head(torch.randn(16, 6) * 3 + 1)
    head.eval()
    folded = classification_model.fold_probe_head({f"head.{k}": v for k, v in head.state_dict().items()})
    linear = torch.nn.Linear(6, 3)
    linear.load_state_dict({"weight": folded["head.weight"], "bias": folded["head.bias"]})
    x = torch.randn(4, 6)
    torch.testing.assert_close(linear(x), head(x), rtol=1e-5, atol=1e-5)


# --- errors: one line, exit 1 ---------------------------------------------------------------------
def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    assert err.startswith(f"lsmae {argv[0]}: error: ")
    return err


def test_val_classes_differing_from_train_are_an_error(tmp_path, pretrained, capsys):
    for split, classes in (("train", ("cat", "dog", "owl")), ("val", ("cat", "dog", "emu"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (64, 64)).save(tmp_path / split / c / "a.png")
    err = _one_line_error(capsys, ["finetune", str(pretrained), *common(tmp_path, tmp_path / "out")])
    assert "only in train: owl" in err and "only in val: emu" in err


def test_missing_data_folder_is_an_error(tmp_path, pretrained, capsys):
    (tmp_path / "train").mkdir()
    err = _one_line_error(capsys, ["linprobe", str(pretrained), *common(tmp_path, tmp_path / "out")])
    assert f"data folder {tmp_path / 'train'}" in err and "does not exist" not in err  # empty: no class folders
    err = _one_line_error(capsys, ["finetune", str(pretrained), *common(tmp_path / "nowhere", tmp_path / "out")])
    assert f"data folder {tmp_path / 'nowhere' / 'train'} does not exist" in err


@pytest.mark.parametrize("kind", ["vitdet", "finetuned", "wrong_architecture"])
def test_a_checkpoint_that_is_not_an_mae_encoder_is_an_error(kind, tmp_path, pretrained, digits, request, capsys):
    sd = torch.load(pretrained, weights_only=True)["model"]
    if kind == "vitdet":
        source, expected = tmp_path / "vitdet.pth", "Detectron2 ViTDet checkpoint"
        torch.save({"model": {f"backbone.net.{k}": v for k, v in sd.items()}}, source)
    elif kind == "finetuned":
        source, expected = request.getfixturevalue("finetuned")[0] / "best.pth", "fine-tuned classifier"
    else:
        source, expected = tmp_path / "shallow.pth", "no known architecture"
        torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("blocks.3.")}}, source)
    err = _one_line_error(capsys, ["finetune", str(source), *common(digits, tmp_path / "out")])
    assert expected in err


@pytest.mark.parametrize("change", ["lr", "data"])
def test_resuming_another_runs_checkpoint_is_an_error(finetuned, pretrained, digits, tmp_path, capsys, change):
    """Another lr or another data set than the run's last.pth: one line naming the field, nothing trained."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(finetuned[0] / "last.pth", out / "last.pth")
    data = digits
    if change == "data":
        data = write_digits(tmp_path / "other", 4, 2, size=64)
    extra = ("--lr", "1e-3") if change == "lr" else ()
    err = _one_line_error(capsys, ["finetune", *finetune_argv(pretrained, data, out, *extra)])
    field = "recipe.lr 0.002 -> 0.001" if change == "lr" else \
        f"data.path {str(digits.resolve())!r} -> {str(data.resolve())!r}"
    assert err == f"lsmae finetune: error: {out / 'last.pth'} belongs to another run: {field}; use another " \
                  "--output-dir, or --resume '' to start over there"
    assert sorted(p.name for p in out.iterdir()) == ["last.pth"]


def test_eval_of_a_non_classifier_is_an_error(pretrained, digits, capsys):
    err = _one_line_error(capsys, ["eval", str(pretrained), "--data-path", str(digits), "--device", "cpu"])
    assert "not a checkpoint of `lsmae finetune`" in err


def test_help_has_examples_and_every_command_is_registered(capsys):
    for name in ("finetune", "linprobe", "eval"):
        with pytest.raises(SystemExit) as done:
            cli_parser().parse_args([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: lsmae {name}") and "torchrun --nproc_per_node 8 -m bridges finetune" in out
    assert "--data-path" in classification_cli.build_parser().format_help()


def test_module_entry_point_for_torchrun_reports_errors_in_one_line(tmp_path):
    """``python -m bridges finetune`` (what torchrun runs) in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-m", "bridges", "finetune", "demo", "--data-path", str(tmp_path / "none"),
                           "--device", "cpu"], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "LSMAE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"lsmae finetune: error: data folder {tmp_path / 'none' / 'train'} does not exist " \
                                   "(expected ImageFolder splits DATA/train/CLASS/* and DATA/val/CLASS/*)"


# --- promises pinned where they take effect (issue 22) --------------------------------------------
def _parsed(mode: str, source: str, *argv: str) -> FinetuneConfig | LinprobeConfig:
    return config_of(mode, [source, "--data-path", "unused", "--device", "cpu", *argv])


@pytest.fixture
def micro_source(tmp_path) -> Path:
    """A release-format file of the micro MAE (tensors moved off their initialisation)."""
    from tests.conftest import perturbed_mae

    path = tmp_path / "micro.pth"
    torch.save({"model": perturbed_mae(seed=3).state_dict()}, path)
    return path


def test_layer_decay_reaches_the_optimizers_param_groups(micro_source, tmp_path, monkeypatch):
    """MAE's layer-wise lr decay in the optimizer the run trains with, after the scheduler set the lr:
    patch/pos embeddings and cls token decay^(depth+1), block i decay^(depth-i), fc_norm and head 1."""
    built = {}

    def recording(model, config, backend):
        built["model"], built["opt"] = model, classification_model.make_optimizer(model, config, backend)
        return built["opt"]

    monkeypatch.setattr(training, "make_optimizer", recording)
    data = write_digits(tmp_path / "data", 2, 1, size=32)
    run_mode("finetune", [str(micro_source), *common(data, tmp_path / "run", "--epochs", "1", "--warmup-epochs", "0",
                                                      "--effective-batch-size", "4", "--lr", "1e-3",
                                                      "--layer-decay", "0.5", "--mixup", "0", "--cutmix", "0")])
    model, opt = built["model"], built["opt"]
    assert isinstance(opt, torch.optim.AdamW)
    depth, decay = len(model.blocks), 0.5
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    peak = max(g["lr"] for g in opt.param_groups)
    assert peak > 0
    seen = 0
    for name, p in model.named_parameters():
        if name.startswith(("cls_token", "pos_embed", "patch_embed.")):
            scale = decay ** (depth + 1)
        elif name.startswith("blocks."):
            scale = decay ** (depth - int(name.split(".")[1]))
        else:
            assert name.startswith(("fc_norm.", "head.")), name
            scale = 1.0
        group = group_of[id(p)]
        assert group["lr_scale"] == pytest.approx(scale), name
        assert group["lr"] == pytest.approx(peak * scale), name  # the scheduler applied the scale
        no_decay = p.ndim <= 1 or name in ("cls_token", "pos_embed")
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
        seen += 1
    assert seen == sum(len(g["params"]) for g in opt.param_groups)  # every parameter is trained


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
@pytest.mark.parametrize("width, depth, heads, rate", [(768, 12, 12, 0.1), (1024, 24, 16, 0.2)])
def test_recipe_drop_path_is_in_the_built_model(width, depth, heads, rate, tmp_path):
    """FINETUNE.md's drop path (ViT-B 0.1, ViT-L 0.2) in the timm blocks the run trains (timm's linear
    rule: 0 in the first block, the rate in the last), for a source file of that width; none in a probe."""
    from pretrain.models.archs import resolve_model_name
    from zoo.checkpoint import expected_shapes

    name = resolve_model_name({768: "mae_vit_base_patch16", 1024: "mae_vit_large_patch16"}[width])
    shapes = {k: s for k, s in expected_shapes(name).items() if not k.startswith(("decoder", "mask_token"))}
    zeros = torch.zeros(max(s.numel() for s in shapes.values()))  # one shared buffer: a small file
    source = tmp_path / "encoder.pth"
    torch.save({"model": {k: zeros[: s.numel()].view(s) for k, s in shapes.items()}}, source)
    for mode, expected in (("finetune", rate), ("linprobe", 0.0)):
        config = classification_recipes.resolve_recipe(_parsed(mode, str(source)),
                                                       classification_recipes.source_width(str(source)))
        with torch.device("meta"):  # the modules without their weights' memory
            model, _, _ = classification_model.build_model(config, 10)
        assert len(model.blocks) == depth and model.embed_dim == width
        probs = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
        assert probs == pytest.approx([expected * i / (depth - 1) for i in range(depth)])
        assert [getattr(b.drop_path2, "drop_prob", 0.0) for b in model.blocks] == probs


def _blocks_image(width: int, height: int, block: int = 32) -> tuple[Image.Image, callable]:
    """An image of ``block``-px squares, each its own colour; and the colour of the square at (x, y)."""
    import numpy as np

    def colour(x: int, y: int) -> tuple[int, int, int]:
        bx, by = x // block, y // block
        return (bx * 12 % 256, by * 15 % 256, (bx * 7 + by * 11) % 256)

    pixels = np.array([[colour(x, y) for x in range(width)] for y in range(height)], dtype=np.uint8)
    return Image.fromarray(pixels), colour


@pytest.mark.parametrize("input_size, resized, offset", [
    (224, (320, 256), (48, 16)),  # short side to 224/0.875 = 256, centre 224 crop of 320x256
    (256, (320, 256), (32, 0)),  # above 224: crop ratio 1: short side to 256, centre 256 crop
    (448, (560, 448), (56, 0)),
])
def test_eval_transform_geometry(input_size, resized, offset):
    """MAE's evaluation crop on a 640x512 image: which source pixels land where in the output."""
    import numpy as np

    source, colour = _blocks_image(640, 512)
    out = classification_data.eval_transform(input_size)(source)
    assert out.shape == (3, input_size, input_size)
    mean = torch.tensor(classification_data.IMAGENET_DEFAULT_MEAN)
    std = torch.tensor(classification_data.IMAGENET_DEFAULT_STD)
    rgb = ((out * std[:, None, None] + mean[:, None, None]) * 255).permute(1, 2, 0).numpy()
    scale = 640 / resized[0]
    assert 512 / resized[1] == scale
    checked = 0
    for oy in range(0, input_size, 3):
        for ox in range(0, input_size, 3):
            # the output pixel's centre in the source image
            sx, sy = (ox + offset[0] + 0.5) * scale, (oy + offset[1] + 0.5) * scale
            if min(sx % 32, 32 - sx % 32, sy % 32, 32 - sy % 32) < 6:  # bicubic mixes squares near their edges
                continue
            assert np.abs(rgb[oy, ox] - colour(int(sx), int(sy))).max() < 1.5, (oy, ox)
            checked += 1
    assert checked > input_size ** 2 / 9 / 3


def test_linear_probe_optimizer_is_lars_with_trust_ratio_on_the_head_weight(micro_source):
    """main_linprobe.py's LARS: the head weight moves by lr x trust_coeff x ||w|| / ||g|| x g, the bias by
    lr x g (no trust ratio, no weight decay); nothing else is in the optimizer."""
    from timm.optim import Lars

    config = classification_recipes.resolve_recipe(
        _parsed("linprobe", str(micro_source), "--lr", "0.5", "--weight-decay", "0"), None)
    torch.manual_seed(0)
    model, _, _ = classification_model.build_model(config, 10)
    opt = classification_model.make_optimizer(model, config, None)
    assert isinstance(opt, Lars)
    head = model.head[1]
    assert [p for g in opt.param_groups for p in g["params"]] == [head.weight, head.bias]
    head.weight.grad = torch.randn_like(head.weight) * 3
    head.bias.grad = torch.randn_like(head.bias)
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    opt.step()
    g = head.weight.grad
    trust = 0.001 * w.norm() / g.norm()
    assert trust < 0.1  # far from 1: a missing trust ratio would show
    torch.testing.assert_close(w - head.weight.detach(), 0.5 * trust * g, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(b - head.bias.detach(), 0.5 * head.bias.grad, rtol=1e-5, atol=1e-8)


def test_recipe_augmentation_and_loss_are_in_the_built_transform_and_criterion():
    """README: RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (per-pixel, one box), mixup 0.8 /
    cutmix 1.0 with label smoothing 0.1 (soft-target loss); without mixup, smoothing 0.1 in the loss."""
    from types import SimpleNamespace

    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    args = _resolved("finetune", 768, "--input-size", "32")
    train = classification_data.train_transform(args)
    randaug, erasing = train.transforms[2], train.transforms[-1]
    assert randaug.num_layers == 2 and all((o.magnitude, o.magnitude_std) == (9, 0.5) for o in randaug.ops)
    assert "PosterizeIncreasing" in [o.name for o in randaug.ops]  # 'inc1'
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.25, "pixel", 1)
    backend = SimpleNamespace(wrap_model=lambda m: m)
    task = training.Classification(torch.nn.Linear(2, 2), args, backend, None, None, {"num_classes": 10}, {})
    assert (task.mixup.mixup_alpha, task.mixup.cutmix_alpha, task.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    assert isinstance(task.criterion, SoftTargetCrossEntropy)
    plain = training.Classification(torch.nn.Linear(2, 2), _resolved("finetune", 768, "--mixup", "0", "--cutmix",
                                    "0"), backend, None, None, {"num_classes": 10}, {})
    assert plain.mixup is None and isinstance(plain.criterion, LabelSmoothingCrossEntropy)
    assert plain.criterion.smoothing == 0.1
