"""A report as a list of blocks, rendered twice: Markdown and self-contained HTML.

The HTML has no external reference at all: CSS is inline and every image is a base64
``data:`` URI, so the one file can be mailed, attached to a pull request or opened
offline. Inline markup in block text is limited to ``code`` spans and **bold**.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

VERDICT_CLASSES = {"SUPPORTED": "supported", "REFUTED": "refuted", "INCONCLUSIVE": "inconclusive"}


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Alert:
    """A line nobody may miss (post-hoc claims, an unfinished run)."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Image:
    path: Path  # relative to the report's folder
    title: str
    caption: str = ""


@dataclass(frozen=True)
class Diff:
    """Lines shown as they are, in a fixed-width font: a unified diff (``orchestrate compare``)."""

    lines: list[str]


Block = Heading | Para | Alert | Bullets | Table | Image | Diff


# -- Markdown -----------------------------------------------------------------------------
def to_markdown(blocks: list[Block]) -> str:
    parts = [_md_block(block) for block in blocks]
    return "\n\n".join(p for p in parts if p) + "\n"


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Para):
        return block.text
    if isinstance(block, Alert):
        return f"> **{block.text}**"
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        rule = ["---:" if i in block.align_right else "---" for i in range(len(block.header))]
        lines = [_md_row(block.header), "| " + " | ".join(rule) + " |"]
        lines += [_md_row(row) for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Image):
        image = f"![{block.title}]({block.path.as_posix()})"
        return image + (f"\n\n*{block.caption}*" if block.caption else "")
    if isinstance(block, Diff):
        # a context line " ```" would close a ``` fence (up to 3 spaces may indent one)
        fence = "~~~~" if any(line.lstrip(" ").startswith("```") for line in block.lines) else "```"
        return "\n".join([f"{fence}diff", *block.lines, fence])
    raise TypeError(f"unknown block {block!r}")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


# -- HTML ---------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1.2em;
color:#1f2328;line-height:1.5;font-size:15px}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.6em}code{background:#f3f4f6;padding:.1em .35em;border-radius:4px;font-size:90%}
table{border-collapse:collapse;margin:.8em 0;font-size:13.5px;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top}th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.alert{border:2px solid #cf222e;background:#ffebe9;color:#82071e;padding:.7em 1em;border-radius:6px;font-weight:600}
.supported{color:#1a7f37;font-weight:700}.refuted{color:#cf222e;font-weight:700}.inconclusive{color:#9a6700;font-weight:700}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #d0d7de;border-radius:4px}
figcaption{color:#57606a;font-size:13px;margin-top:.3em}
pre.diff{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.7em 1em;overflow-x:auto;
font-size:13px;line-height:1.4}.add{color:#1a7f37}.del{color:#cf222e}.hunk{color:#8250df}
"""


def to_html(blocks: list[Block], title: str, folder: Path) -> str:
    """A standalone page; images are read from ``folder`` and inlined."""
    body = "\n".join(_html_block(block, folder) for block in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _html_block(block: Block, folder: Path) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{inline(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f"<p>{inline(block.text)}</p>"
    if isinstance(block, Alert):
        return f'<p class="alert">{inline(block.text)}</p>'
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{inline(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline(h)}</th>" for h in block.header)
        rows = "\n".join(
            "<tr>" + "".join(_cell(cell, i in block.align_right) for i, cell in enumerate(row)) + "</tr>"
            for row in block.rows
        )
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    if isinstance(block, Image):
        data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
        caption = f"<figcaption>{inline(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">{caption}</figure>'
    if isinstance(block, Diff):
        return '<pre class="diff">' + "\n".join(_html_diff_line(line) for line in block.lines) + "</pre>"
    raise TypeError(f"unknown block {block!r}")


def _html_diff_line(line: str) -> str:
    text = html.escape(line)
    if line.startswith("@@"):
        return f'<span class="hunk">{text}</span>'
    if line.startswith("+") and not line.startswith("+++"):
        return f'<span class="add">{text}</span>'
    if line.startswith("-") and not line.startswith("---"):
        return f'<span class="del">{text}</span>'
    return text


def _cell(text: str, numeric: bool) -> str:
    text = str(text)
    verdict = VERDICT_CLASSES.get(text.split(" ")[0].strip("*"))
    content = f'<span class="{verdict}">{inline(text)}</span>' if verdict else inline(text)
    return f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>"


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags (code spans are not re-parsed)."""
    pieces = _CODE.split(str(text))
    out = []
    for i, piece in enumerate(pieces):
        escaped = html.escape(piece)
        out.append(f"<code>{escaped}</code>" if i % 2 else _BOLD.sub(r"<strong>\1</strong>", escaped))
    return "".join(out)
