"""The pretraining engine on CPU with the micro model: learning, exact resume, export, batch and
lr bookkeeping, divergence and command-line errors.

Runs are in-process (``pretrain.main_pretrain.run``) with one thread, except where a real
process is needed (SIGKILL, exit codes); those get ``OMP_NUM_THREADS=1`` so their arithmetic
matches the in-process runs bit for bit.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pretrain
import zoo
from pretrain.engine.checkpoints import export_release
from pretrain.engine.run_plan import resolve_batch
from pretrain.errors import LsmaeError, NonFiniteLossError, OptionError
from pretrain.main_pretrain import build_parser, main, run
from tests.conftest import REPO, TINY_MODEL

E = 8  # epochs of the resume runs (4 steps each)


pytestmark = pytest.mark.usefixtures("one_thread")


def argv(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    """The tiny recipe; ``extra`` options come last and so override these."""
    return ["--model", TINY_MODEL, "--input-size", "64", "--data-path", str(data), "--epochs", str(epochs),
            "--warmup-epochs", "1", "--effective-batch-size", "8", "--num-workers", "0", "--device", "cpu",
            "--output-dir", str(out), "--ckpt-interval", "1", "--print-freq", "1", "--precision", "fp32",
            "--lr", "1e-3", *extra]


def train(*args: str) -> None:
    run(build_parser().parse_args(list(args)))


def records(out: Path, kind: str) -> list[dict]:
    return [r for line in (out / "log.jsonl").read_text().splitlines() if (r := json.loads(line))["kind"] == kind]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    """Model and optimizer state bit-identical."""
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys() and oa["state"]
    for i in oa["state"]:
        assert oa["state"][i].keys() == ob["state"][i].keys()
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), f"optimizer state {i}/{k} differs"


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def learning_run(photos, tmp_path_factory) -> Path:
    """12 epochs x 4 updates at lr 1e-3 (min lr 1e-5), one checkpoint at the end."""
    out = tmp_path_factory.mktemp("learning")
    train(*argv(photos, out, 12, "--ckpt-interval", "100", "--min-lr", "1e-5"))
    return out


@pytest.fixture(scope="module")
def reference_run(photos, tmp_path_factory) -> Path:
    """An uninterrupted run of E epochs with a checkpoint after every epoch."""
    out = tmp_path_factory.mktemp("reference")
    train(*argv(photos, out, E))
    return out


# --- learning and the lr schedule ----------------------------------------------------------------

def test_loss_decreases(learning_run):
    epochs = records(learning_run, "epoch")
    assert [r["epoch"] for r in epochs] == list(range(12))
    assert all(r["skipped_images"] == 0 for r in epochs)
    first, last = epochs[0]["loss"], epochs[-1]["loss"]
    assert last < 0.85 * first, f"mean loss went from {first:.4f} to {last:.4f} only"
    assert sorted((learning_run).glob("checkpoint-*.pth")) == [learning_run / "checkpoint-11.pth"]


def test_lr_schedule_warmup_then_cosine_to_min(learning_run):
    steps = records(learning_run, "train")
    assert len(steps) == 12 * 4  # --print-freq 1: every step
    lrs = [r["lr"] for r in steps]
    peak, min_lr, warmup = 1e-3, 1e-5, 4
    assert lrs[0] == 0.0  # warmup from 0
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))  # linear ramp ...
    assert lrs[warmup] == pytest.approx(peak, rel=1e-6)  # ... to the peak at the end of warmup
    assert max(lrs) == pytest.approx(peak, rel=1e-6)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # then only down
    assert min_lr <= lrs[-1] < min_lr + 0.01 * (peak - min_lr)  # to the min lr at the end


# --- exact resume --------------------------------------------------------------------------------

def test_resume_after_sigkill_is_bit_identical(photos, reference_run, tmp_path, caplog):
    killed = tmp_path / "killed"
    stderr = tmp_path / "killed.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pretrain", *argv(photos, killed, E)], cwd=REPO,
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint-1.pth").exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}): {stderr.read_text()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint-1.pth after 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / f"checkpoint-{E - 1}.pth").exists(), "the run finished before it was killed"
    newest = max(int(p.stem.split("-")[1]) for p in killed.glob("checkpoint-*.pth"))

    # the newest checkpoint damaged (e.g. killed mid-write by a filesystem without atomic rename)
    damaged = tmp_path / "damaged"
    shutil.copytree(killed, damaged)
    bad = damaged / f"checkpoint-{newest}.pth"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])

    reference = load(reference_run / f"checkpoint-{E - 1}.pth")
    with caplog.at_level(logging.INFO):
        train(*argv(photos, killed, E))  # --resume auto is the default
    assert f"resumed from {killed / f'checkpoint-{newest}.pth'}" in caplog.text
    assert_same_state(load(killed / f"checkpoint-{E - 1}.pth"), reference)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(*argv(photos, damaged, E))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in w and "unreadable checkpoint" in w for w in warnings), warnings
    assert f"resumed from {damaged / f'checkpoint-{newest - 1}.pth'}" in caplog.text
    assert_same_state(load(damaged / f"checkpoint-{E - 1}.pth"), reference)
    load(bad)  # rewritten whole


def test_resume_from_explicit_path(photos, reference_run, tmp_path, caplog):
    source = reference_run / f"checkpoint-{E - 3}.pth"
    with caplog.at_level(logging.INFO):
        train(*argv(photos, tmp_path, E, "--resume", str(source)))
    assert f"resumed from {source}" in caplog.text
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == [f"checkpoint-{E - 2}.pth",
                                                                         f"checkpoint-{E - 1}.pth"]
    assert_same_state(load(tmp_path / f"checkpoint-{E - 1}.pth"), load(reference_run / f"checkpoint-{E - 1}.pth"))


def test_resume_explicit_path_that_is_damaged_fails(photos, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(LsmaeError, match="bad.pth"):
        train(*argv(photos, tmp_path / "out", 2, "--resume", str(bad)))


def test_resume_empty_starts_fresh(photos, reference_run, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)  # holds checkpoint-0 .. checkpoint-{E-1}
    with caplog.at_level(logging.INFO):
        train(*argv(photos, out, 1, "--resume", ""))
    assert "resumed" not in caplog.text
    # a fresh first epoch (epoch 0 is all warmup, independent of --epochs) rewrote checkpoint-0
    assert_same_state(load(out / "checkpoint-0.pth"), load(reference_run / "checkpoint-0.pth"))
    assert len(records(out, "epoch")) == E + 1


@pytest.mark.parametrize("change, field", [
    (("--model", "mae_vit_base_patch16_dec384d12h8b"),
     f"model.name '{TINY_MODEL}' -> 'mae_vit_base_patch16_dec384d12h8b'"),
    (("--data-path", "OTHER"), "data.paths ['PHOTOS'] -> ['OTHER']"),
    (("--mask-ratio", "0.5"), "recipe.mask_ratio 0.75 -> 0.5"),
])
def test_resuming_another_runs_folder_stops_naming_the_field(photos, reference_run, tmp_path, capsys, change, field):
    """Another model, data path or recipe value: one line, exit status 1, the folder left as it was."""
    other = tmp_path / "other_photos"
    if "OTHER" in change:
        shutil.copytree(photos, other)
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main([*argv(photos, out, E + 1), *(str(other) if a == "OTHER" else a for a in change)]) == 1
    err = capsys.readouterr().err.strip()
    field = field.replace("PHOTOS", str(photos.resolve())).replace("OTHER", str(other.resolve()))
    assert err == f"pretrain: error: {out / f'checkpoint-{E - 1}.pth'} belongs to another run: {field}; use " \
                  "another --output-dir, or --resume '' to start over there"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_refuses_when_no_checkpoint_loads(photos, reference_run, tmp_path, capsys):
    """Every checkpoint torn: refused in one line naming them, not a silent fresh start over them."""
    torn = [tmp_path / f"checkpoint-{epoch}.pth" for epoch in (E - 1, E - 2)]
    for path in torn:
        data = (reference_run / path.name).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    assert main(argv(photos, tmp_path, E)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    # each torn file is logged as skipped as it is tried, then the run ends with one error line, no traceback
    assert [line.split(" ", 1)[1].startswith("skipping unreadable checkpoint") for line in lines[:-1]] == [True] * 2
    err = lines[-1]
    assert err.startswith("pretrain: error: cannot resume: no checkpoint loads (")
    assert all(f"{p}: damaged or truncated checkpoint" in err for p in torn)
    assert err.endswith("move them away, or --resume '' to start over")
    assert not (tmp_path / "checkpoint-0.pth").exists()


# --- export --------------------------------------------------------------------------------------

def test_export_release_round_trip(reference_run, tmp_path):
    out = export_release(reference_run, tmp_path / "release" / "tiny.pth")
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]  # no optimizer, scaler, epoch or args
    sd = zoo.checkpoint.model_state_dict(zoo.load_checkpoint(out))
    info = zoo.checkpoint.check_structure(sd)
    assert info.model == TINY_MODEL and info.img_size == 64 and info.has_decoder
    model = pretrain.create_model(TINY_MODEL, img_size=64)
    model.load_state_dict(sd, strict=True)
    last = load(reference_run / f"checkpoint-{E - 1}.pth")["model"]
    assert model.state_dict().keys() == last.keys()
    assert all(torch.equal(model.state_dict()[k], last[k]) for k in last)
    # one checkpoint file works too, and an empty folder is a clear error
    single = export_release(reference_run / "checkpoint-0.pth", tmp_path / "zero.pth")
    first = load(reference_run / "checkpoint-0.pth")["model"]
    assert all(torch.equal(load(single)["model"][k], first[k]) for k in first)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LsmaeError, match="no loadable checkpoint"):
        export_release(tmp_path / "empty", tmp_path / "x.pth")


# --- batch resolution ----------------------------------------------------------------------------

@pytest.mark.parametrize("effective, batch, accum, world, expected", [
    (4096, None, None, 8, (512, 1)),  # batch inferred, accum defaults to 1
    (4096, None, 4, 8, (128, 4)),  # batch inferred from accum
    (4096, 64, None, 8, (64, 8)),  # accum inferred from batch
    (4096, 64, 8, 8, (64, 8)),  # consistent
    (8, 4, None, 1, (4, 2)),
])
def test_resolve_batch(effective, batch, accum, world, expected):
    assert resolve_batch(effective, batch, accum, world) == expected


@pytest.mark.parametrize("effective, batch, accum, world, message", [
    (4096, 64, 4, 8, "batch_size 64 x accum_iter 4 x 8 devices != effective_batch_size 4096"),
    (100, None, None, 8, "not divisible by 8 devices"),
    (100, None, 3, 1, "not divisible by 1 devices x 3 accumulation"),
    (100, 12, None, 1, "not divisible by 1 devices x batch 12"),
])
def test_resolve_batch_inconsistent(effective, batch, accum, world, message):
    with pytest.raises(OptionError, match=message.replace("+", r"\+")) as refused:
        resolve_batch(effective, batch, accum, world)
    assert refused.value.command_line_message().startswith(("--batch-size 64 x --accum-iter 4", "--effective-batch"))


def test_gradient_accumulation_run(photos, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train(*argv(photos, tmp_path, 1, "--batch-size", "4"))
    assert "batch 4 x 2 accumulation = 8 per update" in caplog.text
    steps = records(tmp_path, "train")
    assert [r["step"] for r in steps] == list(range(8))
    lrs = [r["lr"] for r in steps]
    assert lrs[0] == lrs[1] == 0.0 and lrs[2] == lrs[3] > 0  # the lr moves once per update, not per batch
    (epoch,) = records(tmp_path, "epoch")
    assert epoch["loss"] == pytest.approx(sum(r["loss"] for r in steps) / 8, rel=1e-6)


def test_epoch_loss_with_leftover_batches(photos, tmp_path):
    """8 batches of 4 with 3 accumulation steps: 2 updates, the last 2 batches are not used."""
    train(*argv(photos, tmp_path, 1, "--batch-size", "4", "--effective-batch-size", "12"))
    steps = records(tmp_path, "train")
    assert [r["step"] for r in steps] == list(range(6))
    (epoch,) = records(tmp_path, "epoch")
    assert epoch["loss"] == pytest.approx(sum(r["loss"] for r in steps) / 6, rel=1e-6)


def test_too_few_images_for_one_update(photos, tmp_path):
    with pytest.raises(LsmaeError, match="fewer than one optimizer update"):
        train(*argv(photos, tmp_path, 1, "--batch-size", "8", "--effective-batch-size", "40"))


# --- divergence ----------------------------------------------------------------------------------

def test_non_finite_loss_stops_the_run(photos, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0 step \d.*--resume"):
        train(*argv(photos, tmp_path, 2, "--lr", "1e30", "--warmup-epochs", "0"))
    assert not list(tmp_path.glob("checkpoint-*.pth"))


def test_non_finite_loss_between_progress_lines_names_its_step(photos, tmp_path):
    """With no progress line in between, the stop comes later but names the same first bad step."""
    messages = []
    for freq in ("1", "1000"):
        with pytest.raises(NonFiniteLossError) as e:
            train(*argv(photos, tmp_path / freq, 2, "--lr", "1e30", "--warmup-epochs", "0", "--print-freq", freq))
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "step 0" not in messages[0], messages


# --- command line --------------------------------------------------------------------------------

def test_compile_compiles_the_model_in_place(photos, tmp_path, monkeypatch):
    """--compile: the model's own forward is compiled (torch.compile itself is not run here: minutes on a
    CPU); the checkpoint keeps the release's keys."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    train(*argv(photos, tmp_path, 1, "--compile"))
    assert compiled == ["MaskedAutoencoderViT"]
    assert load(tmp_path / "checkpoint-0.pth")["model"].keys() == pretrain.create_model(TINY_MODEL).state_dict().keys()


def test_cli_errors(photos, tmp_path):
    """Real processes (exit status, stderr), run side by side to halve the import time."""
    base = [sys.executable, "-m", "pretrain"]
    cases = {"missing": base + argv(tmp_path / "nonexistent", tmp_path / "o1", 1),
             "xla_compile": base + argv(photos, tmp_path / "o3", 1, "--device", "xla", "--compile")}
    if importlib.util.find_spec("torch_xla") is None:  # with torch_xla it would start a TPU run
        cases["xla"] = base + argv(photos, tmp_path / "o2", 1, "--device", "xla")
    procs = {name: subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, cmd in cases.items()}
    results = {name: (*p.communicate(timeout=120), p.returncode) for name, p in procs.items()}

    out, err, rc = results["missing"]
    assert rc == 1 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"pretrain: error: data folder {tmp_path / 'nonexistent'} does not exist"]

    out, err, rc = results["xla_compile"]  # refused before torch_xla is imported, with or without it
    assert rc == 1 and err.strip().splitlines() == [
        "pretrain: error: --compile is for --device cuda or cpu: on XLA the whole step is already compiled"]

    if "xla" not in results:
        pytest.skip("torch_xla is installed here")
    out, err, rc = results["xla"]
    assert rc == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert "--device xla needs torch_xla" in err and "pip install -e '.[tpu]'" in err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m pretrain" in out and "--effective-batch-size" in out
    assert "examples:" in out and "torchrun --nproc_per_node 8 -m bridges pretrain" in out
    assert "PJRT_DEVICE=TPU" in out and "--resume auto" in out


def test_finished_run_is_not_trained_again(photos, reference_run, tmp_path):
    from pretrain.configs import from_namespace
    from pretrain.engine.backends import make_backend
    from pretrain.pretraining import train as engine_train
    from pretrain.pretraining_config import PretrainConfig

    out = tmp_path / "again"
    shutil.copytree(reference_run, out)
    before = (out / f"checkpoint-{E - 1}.pth").read_bytes()
    n_records = len((out / "log.jsonl").read_text().splitlines())
    result = engine_train(from_namespace(PretrainConfig, build_parser().parse_args(argv(photos, out, E))),
                          make_backend("cpu"))
    last = result.checkpoint
    assert last == out / f"checkpoint-{E - 1}.pth" and last.read_bytes() == before
    assert (result.epochs, result.loss, result.resumed_from) == (E, None, last)  # resumed, nothing left to train
    assert len((out / "log.jsonl").read_text().splitlines()) == n_records
