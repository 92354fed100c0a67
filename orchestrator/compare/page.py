"""The comparison's blocks as Markdown (the terminal) and as one self-contained HTML page.

Every block but ``Diff`` is the report's (``report.render``), rendered by it; ``Diff``
is a fenced ``diff`` block in Markdown and a ``<pre>`` with coloured lines in HTML.
``report.render`` has no preformatted block, so each diff goes through its HTML
renderer as a marker paragraph that is then swapped for the ``<pre>``.
"""

from __future__ import annotations

import html
import secrets
from pathlib import Path

from orchestrator.compare.blocks import Diff, PageBlock
from orchestrator.report import render

DIFF_CSS = (
    "pre.diff{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.7em 1em;overflow-x:auto;"
    "font-size:13px;line-height:1.4}.add{color:#1a7f37}.del{color:#cf222e}.hunk{color:#8250df}"
)


def to_markdown(blocks: list[PageBlock]) -> str:
    parts = [_md_diff(block) if isinstance(block, Diff) else render.to_markdown([block]).strip() for block in blocks]
    return "\n\n".join(part for part in parts if part) + "\n"


def _md_diff(diff: Diff) -> str:
    # a context line " ```" would close a ``` fence (up to 3 spaces may indent one)
    fence = "~~~~" if any(line.lstrip(" ").startswith("```") for line in diff.lines) else "```"
    return "\n".join([f"{fence}diff", *diff.lines, fence])


def to_html(blocks: list[PageBlock], title: str) -> str:
    """A standalone page (no image, no external reference)."""
    token = secrets.token_hex(8)
    markers: dict[str, Diff] = {}
    plain: list[render.Block] = []
    for block in blocks:
        if isinstance(block, Diff):
            marker = f"diff-{token}-{len(markers)}"
            markers[marker] = block
            plain.append(render.Para(marker))
        else:
            plain.append(block)
    page = render.to_html(plain, title, Path("."))
    for marker, diff in markers.items():
        page = page.replace(f"<p>{marker}</p>", _html_diff(diff), 1)
    return page.replace("</style>", DIFF_CSS + "</style>", 1)


def _html_diff(diff: Diff) -> str:
    lines = []
    for line in diff.lines:
        kind = ""
        if line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+") and not line.startswith("+++"):
            kind = "add"
        elif line.startswith("-") and not line.startswith("---"):
            kind = "del"
        text = html.escape(line)
        lines.append(f'<span class="{kind}">{text}</span>' if kind else text)
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"
