import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain
from bridges.cli import main
from tests.conftest import TINY_MODEL


def run_cli(*args, env=None):
    """The installed console script's code path, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "bridges", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_list_table_and_json(lsmae_home, capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["id", "model", "dataset", "epochs"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert len(rows) == 7
    assert "4000 (800ep file)" in rows["vit_large/coco/4000"] and "CC-BY-NC-4.0" in rows["vit_large/coco/4000"]
    assert "~1.3 GB" in rows["vit_large/in1k/1600"] and "~405.4 MB" in rows["vit_base/in1k/800"]
    assert main(["list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {"id", "url", "arch", "dataset", "epochs"} <= set(records[0])
    assert [r["epochs"] for r in records[:3]] == [4000, 800, 1600]


def test_fetch_demo_prints_path_last_and_verify_inspect(lsmae_home, capsys):
    fetched = run_cli("fetch", "demo")
    assert fetched.returncode == 0, fetched.stderr
    path = Path(fetched.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.is_relative_to(lsmae_home)
    assert "Apache-2.0" in fetched.stderr  # license shown on first fetch
    assert main(["fetch", "demo", "--offline", "--quiet"]) == 0
    again = capsys.readouterr()
    assert again.out.strip() == str(path) and again.err == ""
    assert main(["verify", "demo"]) == 0
    assert "matches the registry" in capsys.readouterr().out
    assert main(["cache", "ls"]) == 0
    listed = capsys.readouterr().out
    assert "demo" in listed and str(path) in listed
    assert main(["cache", "rm", "demo"]) == 0 and not path.exists()


def test_inspect_and_verify_a_file(tmp_path, capsys):
    path = tmp_path / "mine.pth"
    torch.manual_seed(0)
    sd = pretrain.create_model(TINY_MODEL, no_k_bias=True, img_size=96).state_dict()
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("decoder") and k != "mask_token"},
                "epoch": 12}, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mae_vit_micro_patch8_dec64d4h2b" in out and "12x12 = 144 tokens (96px)" in out
    assert "absent (encoder only)" in out and "q_bias/v_bias" in out and "epoch:         12" in out
    assert main(["verify", str(path)]) == 0
    assert "OK:" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["fetch", "vit_base/coco/800"], "4000 effective epochs"),
    (["fetch", "nonsense"], "valid ids"),
    (["inspect", "/nonexistent/file.pth"], "no such file"),
    (["verify", "vit_base/in1k/1600"], "not cached"),
    (["cache", "rm"], "--all"),
])
def test_errors_are_one_line(lsmae_home, monkeypatch, capsys, args, message):
    monkeypatch.setenv("LSMAE_OFFLINE", "1")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_unsafe_file_is_refused_by_the_console_script(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    from tests.zoo.test_checkpoint import _Payload
    torch.save({"model": {"cls_token": torch.zeros(1)}, "args": _Payload(marker)}, evil)
    result = run_cli("inspect", str(evil))
    assert result.returncode == 1 and "refused to load" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("command", ["segment", "finetune", "eval"])
def test_python_m_bridges_is_the_lsmae_command(command):
    """``python -m bridges COMMAND`` (what torchrun starts) is ``lsmae COMMAND``, usage line included."""
    lsmae = Path(sys.executable).with_name("lsmae")
    if not lsmae.exists():
        pytest.skip("the lsmae console script is not installed beside this interpreter")
    via_module = subprocess.run([sys.executable, "-m", "bridges", command, "--help"], capture_output=True, text=True,
                                timeout=120)
    via_script = subprocess.run([str(lsmae), command, "--help"], capture_output=True, text=True, timeout=120)
    assert via_module.returncode == via_script.returncode == 0
    assert via_module.stdout == via_script.stdout and via_module.stdout.startswith(f"usage: lsmae {command}")


def test_every_command_of_the_table_has_its_parser_and_its_run():
    """Each row names a module of bridges.cli holding ``add_NAME_arguments`` and ``run_NAME`` (a run is
    imported only when its command starts, so a misspelt one would otherwise show up only then)."""
    from bridges.cli import COMMANDS

    for command in COMMANDS:
        assert callable(command.function("add")) and callable(command.function("run")), command.name
