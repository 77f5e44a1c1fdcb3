"""A parser whose positionals (SOURCE, ``KEY=VALUE`` overrides) may come before, between or after the options."""
from __future__ import annotations

import argparse


class IntermixedParser(argparse.ArgumentParser):
    """``parse_known_intermixed_args`` for every parse, also when the parser is a subcommand's."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixing:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
