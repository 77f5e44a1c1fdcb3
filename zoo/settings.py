"""Every ``LSMAE_*`` environment variable, read here and nowhere else, and the cache's file names.

Standard library only. Values are read when asked for (not at import), so a test or a launcher
that sets the environment later is obeyed.
"""
from __future__ import annotations

import os
from pathlib import Path

# what `lsmae --help` lists, in this order
ENVIRONMENT = {
    "LSMAE_HOME": "cache folder (default $XDG_CACHE_HOME/lsmae or ~/.cache/lsmae)",
    "LSMAE_MIRROR": "URL prefix replacing the release's",
    "LSMAE_OFFLINE": "1 = never use the network",
    "LSMAE_REGISTRY": "a checkpoint registry file of your own",
    "LSMAE_LOCK_TIMEOUT": "seconds to wait for another process's download (default 3600)",
}
DEFAULT_LOCK_TIMEOUT_S = 3600.0
CHUNK_SIZE = 1 << 20  # read and hash size
PINS_FILE = "pinned-digests.json"  # shareable: digests only
FINGERPRINT_FILE = ".fingerprint.json"  # per machine, beside each cached file: never shared


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_root() -> Path:
    """``LSMAE_HOME``, else ``$XDG_CACHE_HOME/lsmae``, else ``~/.cache/lsmae``."""
    if os.environ.get("LSMAE_HOME"):
        return Path(os.environ["LSMAE_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "lsmae"


def mirror() -> str | None:
    """``LSMAE_MIRROR``: a URL prefix that replaces the release's (None when unset)."""
    return os.environ.get("LSMAE_MIRROR") or None


def offline() -> bool:
    return _flag("LSMAE_OFFLINE")


def registry_override() -> Path | None:
    """``LSMAE_REGISTRY``: a registry file of the user's own (same format as the packaged one)."""
    value = os.environ.get("LSMAE_REGISTRY")
    return Path(value) if value else None


def lock_timeout() -> float:
    """``LSMAE_LOCK_TIMEOUT`` in seconds; raises ValueError for anything but a number >= 0."""
    value = os.environ.get("LSMAE_LOCK_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise ValueError(f"LSMAE_LOCK_TIMEOUT={value!r}: expected a number of seconds")
    return seconds
