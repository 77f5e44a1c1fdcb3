"""How fast the commands that only list or look something up answer, next to ``import torch``.

    lsmae bench cli [--repeat N]

Each command runs as a fresh process (as a user types it), N times; the best time is compared
with the best of ``python -c "import torch"`` measured in the same run, so the ratio holds on any
machine. ``fetch demo`` runs against a cache that holds the demo entry already (pinned and
fingerprinted), in a temporary LSMAE_HOME.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 0.35  # at most this fraction of `import torch`
LOOKUPS = (["--help"], ["fetch", "--help"], ["list"], ["list", "--json"], ["cache", "ls"], ["fetch", "demo"])


def _best_of(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lsmae bench cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="runs per command; the best counts (default %(default)s)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lsmae-bench-cli-") as home:
        env = {**os.environ, "LSMAE_HOME": str(Path(home) / "lsmae")}
        lsmae = [sys.executable, "-m", "bridges"]
        subprocess.run([*lsmae, "fetch", "demo", "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
        torch_s = _best_of([sys.executable, "-c", "import torch"], env, args.repeat)
        yardstick = 'python -c "import torch"'
        print(f"{yardstick:28s} {torch_s:6.3f} s  (the yardstick)")
        worst = 0.0
        for argv_ in LOOKUPS:
            seconds = _best_of([*lsmae, *argv_], env, args.repeat)
            worst = max(worst, seconds / torch_s)
            print(f"{'lsmae ' + ' '.join(argv_):28s} {seconds:6.3f} s  x{seconds / torch_s:.2f} of import torch")
        print(f"slowest: x{worst:.2f} of import torch (goal <= x{GOAL}): {'met' if worst <= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
