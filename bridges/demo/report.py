"""``WORKDIR/report.html``: the demo's steps on one page, each with its commands, its one-line result
and its pictures, then the artefacts. Static HTML: relative links (the folder can be moved or
zipped), no network and no script, so any browser reads it offline."""
from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bridges.demo.runner import StepRecord
from pretrain.atomic import write_text

STYLE = """body { font-family: sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em; color: #222; }
h2 { font-size: 1.1em; margin-top: 2em; border-bottom: 1px solid #ccc; }
pre { background: #f4f4f4; padding: .5em; overflow-x: auto; white-space: pre-wrap; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
.skip { color: #a60; }
td { padding: 0 1em 0 0; }"""


def _link(target: Path, page_dir: Path) -> str:
    return html.escape(Path(os.path.relpath(target, page_dir)).as_posix(), quote=True)


def _step(record: StepRecord, page_dir: Path) -> list[str]:
    parts = [f"<h2>[{html.escape(record.number)}] {html.escape(record.title)}</h2>"]
    if record.commands:
        parts.append("<pre>" + "\n".join(f"$ {html.escape(c)}" for c in record.commands) + "</pre>")
    parts.append(f"<p>{html.escape(record.result)} ({record.seconds:.1f} s)</p>")
    for picture, caption in record.pictures:
        parts.append(f'<figure><a href="{_link(picture, page_dir)}"><img src="{_link(picture, page_dir)}" '
                     f'alt="{html.escape(caption, quote=True)}"></a><figcaption>{html.escape(caption)}</figcaption>'
                     "</figure>")
    return parts


def write_report(page: Path, steps: Sequence[StepRecord], skipped: Sequence[str], artefacts: Mapping[str, Path],
                 seconds: float) -> Path:
    """Write the page for the steps that ran (and the ``[skip]`` lines of those that did not)."""
    page_dir = page.parent
    body = [f"<h1>lsmae demo</h1><p>{len(steps)} steps in {seconds:.0f} s; every command below can be run on its "
            "own. Logs of each step are in <code>logs/</code>.</p>"]
    for record in steps:
        body.extend(_step(record, page_dir))
    body.extend(f'<p class="skip">{html.escape(line)}</p>' for line in skipped)
    body.append("<h2>artefacts</h2><table>")
    body.extend(f'<tr><td>{html.escape(what)}</td><td><a href="{_link(path, page_dir)}">'
                f"{html.escape(str(path))}</a></td></tr>" for what, path in artefacts.items())
    body.append("</table>")
    text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lsmae demo</title>"
            f"<style>\n{STYLE}\n</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    write_text(page, text)

    return page
