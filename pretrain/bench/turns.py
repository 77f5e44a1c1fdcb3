"""A bench's configurations, each in its own process (:mod:`pretrain.bench.process`), timed in turns:
one round of steps each, so that a machine shared with other work slows them alike."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pretrain.errors import BenchWorkerError


class Worker:
    """One configuration's process: ``python -m MODULE [options] CONFIG``."""

    def __init__(self, module: str, config: str, argv: list[str]) -> None:
        self.config = config
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", module, *argv, config],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=os.environ.copy())

    def ask(self, command: str | None = None) -> dict[str, Any]:
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            print(self.stderr.read()[-3000:], file=sys.stderr)
            raise BenchWorkerError(f"{self.config} failed (exit {self.proc.returncode}; its last output is above)")
        return json.loads(line)

    def close(self) -> None:
        """End of input: the process ends."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()


class Turns:
    """The processes of one bench run: started together (their warm-ups overlap), timed in turns,
    asked for their peak memory, the fastest kept for the end-to-end part; all ended on exit."""

    def __init__(self, prog: str, module: str, configs: list[str], argv: list[str]) -> None:
        self.prog = prog
        self.workers = {c: Worker(module, c, argv) for c in configs}

    def __enter__(self) -> Turns:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for w in self.workers.values():
            w.close()

    def run(self, rounds: int) -> list[dict[str, Any]]:
        """Time the configurations in turns; per configuration the median over rounds, the warm-up's
        facts (devices, precision, ...) and the finish record (peak memory, FLOP counter)."""
        warmup: dict[str, dict[str, Any]] = {}
        for config, w in list(self.workers.items()):
            try:
                warmup[config] = w.ask()
            except BenchWorkerError as e:
                print(f"{self.prog}: {e}", file=sys.stderr)
                del self.workers[config]
        times: dict[str, list[float]] = {c: [] for c in self.workers}
        for _ in range(rounds):
            for config, w in self.workers.items():
                times[config].append(w.ask("step")["s_per_step"])
        results = []
        for config, w in self.workers.items():
            facts = dict(warmup[config])
            results.append({"config": config, "s_per_step": statistics.median(times[config]),
                            "rounds": times[config], "warmup_s": facts.pop("warmup_s"),
                            "warmup_compilations": facts.get("xla_compilations", 0), **facts, **w.ask("finish")})
        return results

    def end_to_end(self, config: str, folder: Path, workers: int) -> dict[str, Any]:
        """Steps of ``config`` fed by ``workers`` loader processes reading ``folder``, in its warm process."""
        return self.workers[config].ask(f"e2e {folder} {workers}")

    def keep_only(self, config: str | None) -> None:
        """End every process but ``config``'s (the others' memory is given back)."""
        for name in [c for c in self.workers if c != config]:
            self.workers.pop(name).close()


def speed_ups(results: list[dict[str, Any]]) -> None:
    """Each result's speed and memory next to the first's (the baseline), the median of per-round ratios."""
    base = results[0]
    for r in results:
        r["vs"] = base["config"]
        r["speed_up"] = statistics.median(b / t for b, t in zip(base["rounds"], r["rounds"]))
        r["memory_ratio"] = r["peak_memory_gb"] / base["peak_memory_gb"]
