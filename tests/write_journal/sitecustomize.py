"""Test instrumentation for the multi-process tier (on PYTHONPATH there only): every process
appends to ``$LSMAE_TEST_WRITE_JOURNAL`` one line per file it opens for writing, or renames into
place, under ``$LSMAE_TEST_WATCH_DIR`` (Python's audit events ``open`` and ``os.rename``), so a
test can tell which process wrote which file, and how often. Writes that bypass Python (torch.save,
safetensors) land through the atomic rename, which is seen."""
import os
import sys

_JOURNAL = os.environ.get("LSMAE_TEST_WRITE_JOURNAL")
_WATCH = os.environ.get("LSMAE_TEST_WATCH_DIR")


def _writing(mode, flags) -> bool:
    if mode is None:  # os.open
        return bool(flags & (os.O_WRONLY | os.O_RDWR))
    return any(c in mode for c in "wax+")


def _hook(event, args) -> None:
    if event == "open" and not isinstance(args[0], int) and args[0] is not None and _writing(args[1], args[2]):
        path = args[0]
    elif event == "os.rename":
        path = args[1]
    else:
        return
    path = os.path.realpath(os.fsdecode(path))
    if not path.startswith(_WATCH):
        return  # the journal itself is outside the watched folder: no recursion
    fd = os.open(_JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\t{event}\t{path}\n".encode())
    finally:
        os.close(fd)


if _JOURNAL and _WATCH:
    _WATCH = os.path.realpath(_WATCH) + os.sep
    sys.addaudithook(_hook)
