"""The README cannot go stale: its two first commands are what CI runs, every command it shows parses
with the real parsers (zoo ids resolve), the runnable ones run here (the quickstart, ``lsmae list``,
``--help``), and the demo checkpoint's recipe is the one the registry records."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bridges.cli import build_parser, main
from pretrain import main_pretrain
from tests.conftest import REPO
from zoo.registry import get_entry

README = (REPO / "README.md").read_text()
ID_PATTERN = re.compile(r"^[a-z_]+/[a-z0-9]+/\d+$")


def indented_commands(text: str) -> list[str]:
    """The README's indented code lines, backslash continuations and multi-line quotes joined (fenced
    blocks are Python)."""
    commands, current, fenced = [], "", False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or not line.startswith("    "):
            current = ""
            continue
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.count('"') % 2:  # a quoted remote command goes on over the next lines
            current += " "
            continue
        commands.append(current)
        current = ""
    return commands


def lsmae_invocations(command: str) -> list[tuple[str, list[str]]]:
    """(program, argv) for each lsmae (also ``-m bridges``) / ``-m pretrain`` call,
    also inside quoted remote commands (gcloud ... --command="... lsmae pretrain ...")."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:  # comments ('#') are dropped by the lexer
        if token in ("&&", ";", "|", "||"):
            segments.append([])
        else:
            segments[-1].append(token)
    found = []
    for tokens in segments:
        for i, token in enumerate(tokens):
            if token == "lsmae" or token.endswith("/lsmae"):
                found.append(("lsmae", tokens[i + 1:]))
                break
            if token == "-m" and i + 1 < len(tokens) and tokens[i + 1] in ("pretrain", "bridges"):
                found.append(("lsmae" if tokens[i + 1] == "bridges" else tokens[i + 1], tokens[i + 2:]))
                break
            if token.startswith("--command="):
                found += lsmae_invocations(token.split("=", 1)[1])
    return found


def test_the_first_lines_are_the_two_commands_ci_runs():
    lines = [line for line in README.splitlines()[1:] if line.strip()]
    setup, tests = lines[0], lines[1]
    assert setup.startswith("    python3 -m venv .venv && ") and setup.endswith(" && .venv/bin/lsmae demo")
    assert "pip install -e '.[demo,test]'" in setup
    assert tests == "    .venv/bin/python -m pytest -q -rs tests"
    assert indented_commands(README)[:2] == [setup.strip(), tests.strip()]
    assert "grep -m2 -E '^    \\S' README.md" in (REPO / ".ci" / "run").read_text()


def test_every_command_in_the_readme_parses():
    invocations = [inv for c in indented_commands(README) for inv in lsmae_invocations(c)]
    programs = {program for program, _ in invocations}
    assert programs == {"lsmae"}  # torchrun lines too: -m bridges COMMAND
    seen_subcommands = set()
    for program, argv in invocations:
        if "..." in argv:  # "lsmae detect ... --resume": an elided command, options shown alone
            continue
        parser = {"lsmae": build_parser(), "pretrain": main_pretrain.build_parser()}[program]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README: `{program} {shlex.join(argv)}` does not parse")
        seen_subcommands.add(getattr(args, "command", program))
        for value in vars(args).values():  # every zoo id the README names resolves
            if isinstance(value, str) and ID_PATTERN.match(value):
                get_entry(value)
    assert {"demo", "list", "fetch", "verify", "inspect", "cache", "pretrain", "export", "visualize", "convert",
            "finetune", "linprobe", "eval", "detect", "segment", "bench"} <= seen_subcommands


def test_lsmae_list_and_help_of_every_subcommand(lsmae_home, capsys):
    listed = subprocess.run([sys.executable, "-m", "bridges", "list"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "LSMAE_HOME": str(lsmae_home)})
    assert listed.returncode == 0, listed.stderr
    ids = {line.split()[0] for line in listed.stdout.splitlines()[1:]}
    table = set(re.findall(r"^\| `([^`]+)` \| `mae_", README, re.M))
    assert ids == table  # the README's table of checkpoints lists exactly the registry's entries

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name in subparsers.choices:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: lsmae {name}") and len(out.splitlines()) > 3, name


def test_demo_recipe_is_recorded_and_reproduces_the_checkpoint_format(tmp_path, monkeypatch):
    """The README shows the registry's recipe; run it shortened (one step) and check
    the result is a file of the demo entry's architecture in the release format."""
    entry = get_entry("demo")
    assert len(entry.recipe) == 3
    block = README[README.index("lsmae demo --data-only"):]
    assert [line.strip() for line in block.splitlines()[:3]] == list(entry.recipe)

    from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict

    monkeypatch.chdir(tmp_path)
    short = ["--epochs", "1", "--warmup-epochs", "0", "--repeat", "10", "--num-workers", "0"]  # one step of 128
    for command, extra in zip(entry.recipe, ([], short, [])):
        (program, argv), = lsmae_invocations(command)
        assert program == "lsmae"
        assert main(argv + extra) == 0, command
    exported = Path(shlex.split(entry.recipe[-1])[-1])
    info = check_structure(model_state_dict(load_checkpoint(exported)), entry.model, entry.img_size)
    assert info.has_decoder and info.grid_size == 8
    assert "--model " + entry.model in entry.recipe[1] and f"--input-size {entry.img_size}" in entry.recipe[1]
    assert f"--epochs {entry.file_epochs}" in entry.recipe[1] and f"--repeat {entry.repeat}" in entry.recipe[1]
