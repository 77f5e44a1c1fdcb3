"""Zoo benchmark at full size: fetch throughput, verification, conversion time and memory.

    lsmae bench zoo                      # a ViT-L release-format file (~1.3 GB), served on 127.0.0.1

A release-format file is made by our model code (random weights), served by a local HTTP
server, then: a plain ``requests`` streaming copy (the baseline), ``zoo.fetch`` (download +
SHA-256 in the same pass + structural verification), a second ``zoo.fetch`` of the cached file
(with the bytes it read, from ``/proc/self/io``: the fingerprint spares the re-hash), a
re-verification as ``lsmae verify`` does it (hashed again), and the conversions to ViTDet, timm and (when
transformers is installed) a transformers ViTMAEForPreTraining folder. Each step runs in its own process
so that its peak memory (resident set, above the process's footprint after imports) is its own.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pretrain.optional import installed

MODEL = "mae_vit_large_patch16_dec512d16h8b"
ENTRY = "vit_large/in1k/1600"


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process (VmHWM restarts at exec, unlike getrusage's maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (``rchar``: page cache hits included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _step(name: str, workdir: Path, url: str) -> dict[str, Any]:
    """One measured step, run in a fresh process (imports done before the baseline)."""
    import requests
    import torch  # noqa: F401  (part of every step's footprint)

    import zoo
    from bridges.classification.convert import convert_to_timm, save_safetensors
    from bridges.detection.convert import convert_to_vitdet, save_vitdet

    if name == "to_hf":  # importing transformers' classes is part of the footprint, not of the step
        from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining  # noqa: F401

        from bridges.hf.export import export_hf
    base = _status_mb("VmRSS")
    read_before = _bytes_read()
    start = time.perf_counter()
    if name == "plain_copy":
        with requests.get(url, stream=True, timeout=60) as r, open(workdir / "plain_copy.pth", "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_content(1 << 20):
                f.write(chunk)
    elif name in ("fetch", "cached_fetch"):
        zoo.fetch(ENTRY, quiet=True)
    elif name == "verify":  # what `lsmae verify ID` does: digest against the pin (read again), then the structure
        cached = zoo.fetch(ENTRY, quiet=True, offline=True, verify=True)
        zoo.check_structure(zoo.checkpoint.model_state_dict(zoo.load_checkpoint(cached)))
    elif name == "make_file":
        _make_release_file(Path(url), MODEL)
    elif name == "to_vitdet":
        save_vitdet(convert_to_vitdet(workdir / "release.pth"), workdir / "vitdet.pth")
    elif name == "to_timm":
        save_safetensors(convert_to_timm(workdir / "release.pth"), workdir / "timm.safetensors")
    elif name == "to_hf":
        export_hf(workdir / "release.pth", "hf-mae", workdir / "hf")
    seconds = time.perf_counter() - start
    return {"step": name, "seconds": seconds, "peak_mb_above_imports": _status_mb("VmHWM") - base,
            "mb_read": (_bytes_read() - read_before) / 2**20}


def _serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _make_release_file(path: Path, model: str) -> None:
    import torch

    import pretrain

    torch.manual_seed(0)
    torch.save({"model": pretrain.create_model(model, img_size=448).state_dict()}, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lsmae bench zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="where the files go (default: a temporary folder, removed)")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        print(json.dumps(_step(args.step, Path(args.workdir), args.url)))
        return

    from zoo.registry import REGISTRY_FILE, get_entry

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lsmae-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        served = workdir / "served"
        entry = get_entry(ENTRY)
        release = served / entry.path.replace("%2B", "+")
        release.parent.mkdir(parents=True, exist_ok=True)
        print(f"making a full-size {MODEL} release-format file ...", flush=True)
        subprocess.run([sys.executable, "-m", "bridges.bench.zoo", "--step", "make_file", "--workdir",
                        str(workdir), "--url", str(release)], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(release, workdir / "release.pth")
        size_mb = release.stat().st_size / 2**20
        server, base_url = _serve(served)
        registry = json.loads(REGISTRY_FILE.read_text())
        (workdir / "registry.json").write_text(json.dumps(registry))
        env = {**os.environ, "LSMAE_HOME": str(workdir / "home"), "LSMAE_MIRROR": base_url,
               "LSMAE_REGISTRY": str(workdir / "registry.json")}
        env.pop("LSMAE_OFFLINE", None)
        print(f"{release.name}: {size_mb:.0f} MiB, served at {base_url}", flush=True)
        results = {}
        steps = ("plain_copy", "fetch", "cached_fetch", "verify", "to_vitdet", "to_timm")
        for step in steps + (("to_hf",) if installed("transformers") else ()):
            out = subprocess.run(
                [sys.executable, "-m", "bridges.bench.zoo", "--step", step, "--workdir", str(workdir),
                 "--url", entry.url(base_url)], capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"{step}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = results[step] = json.loads(out.stdout.strip().splitlines()[-1])
            line = f"{step:12s} {r['seconds']:7.2f} s  peak {r['peak_mb_above_imports']:7.0f} MiB " \
                   f"(x{r['peak_mb_above_imports'] / size_mb:.2f} file size)  read {r['mb_read']:7.1f} MiB"
            if step in ("plain_copy", "fetch"):
                line += f"  {size_mb / r['seconds']:7.1f} MiB/s"
            if step == "fetch" and "plain_copy" in results:
                line += f"  x{results['plain_copy']['seconds'] / r['seconds']:.2f} the plain copy's throughput"
            print(line, flush=True)
        server.shutdown()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
