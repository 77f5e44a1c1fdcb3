"""The Python API's configs: each command's options as a frozen dataclass (keyword-only fields, the
command's defaults and checks), and the three ways a config meets a command line.

- :func:`configure` builds the config of an API call (``finetune(config, epochs=5)`` or
  ``finetune(source=..., data_path=...)``), never changing the caller's config;
- :func:`from_namespace` is the CLI's edge: the parsed options, by field name, into the config;
- :func:`command_line` is the reverse: the ``lsmae`` arguments that run a config (``lsmae demo``
  prints them beside the call it makes, so the two cannot drift apart).

A field is declared with :func:`option` (its command-line spelling when that is not ``--name-with-dashes``)
or :func:`shared` (one of the options every training command shares, from
:mod:`pretrain.shared_options`: the same default and choices as the command line's). Standard library only.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from pretrain.errors import OptionError, register_spelling
from pretrain.shared_options import TASKS, declaration

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, *, positional: str | None = None, flag: str | None = None,
           negated: bool = False, choices: tuple[Any, ...] | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field. ``positional``: its metavar where the command line takes it without a flag
    (``SOURCE``); ``flag``: its spelling when not ``--name-with-dashes``; ``negated``: the flag turns
    the field off (``--no-norm-pix-loss`` sets ``norm_pix_loss=False``); ``choices``: the values it takes."""
    metadata = {"positional": positional, "flag": flag, "negated": negated, "choices": choices}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def shared(task: str, name: str) -> Any:
    """The field of shared option ``name`` (precision, device, workers, resume, seed, compile) with
    ``task``'s row of :data:`pretrain.shared_options.TASKS`."""
    flag, keywords = declaration(task, name)
    metadata = {"positional": None, "flag": flag, "negated": False, "shared": name, "task": task,
                "choices": keywords.get("choices")}
    if name == "workers":
        return dataclasses.field(default_factory=TASKS[task].default_workers, metadata=metadata)
    default = keywords.get("default", False if keywords.get("action") == "store_true" else None)
    return dataclasses.field(default=default, metadata=metadata)


def spelling(field: dataclasses.Field) -> str:
    """How the command line spells a field: its metavar, its own flag, or ``--name-with-dashes``."""
    return field.metadata.get("positional") or field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def check_choices(config: Any) -> None:
    """The checks argparse makes on the command line, made on a config: each field with choices holds one.
    Called by every config's ``__post_init__``; lists become tuples (a config compares equal however it was
    built), and the fields' command-line spellings are registered for :class:`~pretrain.errors.OptionError`."""
    for field in dataclasses.fields(config):
        register_spelling(field.name, spelling(field))
        choices = field.metadata.get("choices")
        value = getattr(config, field.name)
        if isinstance(value, list):
            object.__setattr__(config, field.name, tuple(value))
        if choices is not None and value is not None and value not in choices:
            raise OptionError(f"{{{field.name}}} {value!r}: choose one of {', '.join(map(str, choices))}")


def configure(cls: type[C], config: C | None, options: Mapping[str, Any]) -> C:
    """The config an API call runs: ``config`` with ``options`` replaced (a new object), or a config of
    ``options`` alone."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise OptionError(f"{cls.__name__} has no option {unknown[0]!r}; its options: {', '.join(names)}")
    if config is not None and not isinstance(config, cls):
        raise OptionError(f"expected a {cls.__name__}, got {type(config).__name__}")
    if config is not None:
        return dataclasses.replace(config, **options)
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in options]
    if required:
        raise OptionError(f"{cls.__name__} needs {', '.join('{' + name + '}' for name in required)}")
    return cls(**options)


def from_namespace(cls: type[C], args: argparse.Namespace) -> C:
    """The CLI's edge: the config of parsed options (each field from the option of the same name; the config's
    :func:`check_choices` makes argparse's lists tuples). An option left at None (not given) keeps the field's
    own default."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
                  and not (getattr(args, f.name) is None and f.default is not None)})


def command_line(command: str, config: Any) -> list[str]:
    """The ``lsmae`` arguments that run ``config``: ``[command, positionals..., options that differ from
    their defaults...]``."""
    positionals: list[str] = []
    options: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.metadata.get("positional"):
            positionals.extend(_words(value))
            continue
        default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                   else field.default)
        if value == default or value is None:
            continue
        flag = spelling(field)
        if isinstance(value, bool) and default is None:  # on, off, or unset: --flag / --no-flag
            options.append(flag if value else "--no-" + flag[2:])
            continue
        if isinstance(value, bool):
            if value != field.metadata.get("negated", False):
                options.append(flag)
            continue
        options.extend([flag, *_words(value)])
    return [command, *positionals, *options]


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def as_dict(config: Any) -> dict[str, Any]:
    """A config's fields as plain values (paths and tuples as strings and lists), as checkpoints record them."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
