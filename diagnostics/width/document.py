"""The report document: one list of blocks rendered to Markdown (figures linked) and to self-contained HTML.

The HTML embeds every figure as base64 PNG and has inline CSS, so the one file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .plotting import FigureFile

__all__ = ["Document"]


class Document:
    """A report as a list of blocks (headings, paragraphs, bullets, tables, figures, code)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, level: int, text: str) -> None:
        """Append a heading of ``level`` (1 = title)."""
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        """Append a paragraph (inline Markdown: bold, italic, code)."""
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        """Append a bulleted list."""
        self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        """Append a table (floats to 4 significant digits)."""
        self.blocks.append(("table", frame))

    def figure(self, fig: FigureFile) -> None:
        """Append a saved figure with its caption."""
        self.blocks.append(("figure", fig))

    def code(self, text: str) -> None:
        """Append a block of JSON."""
        self.blocks.append(("code", text))

    def markdown(self, folder: Path) -> str:
        """Render to Markdown, linking figures relative to ``folder``."""
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "paragraph":
                out.append(value)
            elif kind == "bullets":
                out.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                out.append(_markdown_table(value))
            elif kind == "figure":
                rel = value.png.relative_to(folder).as_posix()
                svg = value.svg.relative_to(folder).as_posix()
                out.append(f"![{value.title}]({rel})\n\n*{value.caption}* ([SVG]({svg}))")
            else:
                out.append(f"```json\n{value}\n```")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        """Render to one self-contained HTML page (figures embedded as base64 PNG)."""
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{_inline(value[1])}</h{value[0]}>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in value) + "</ul>")
            elif kind == "table":
                body.append(_formatted(value).to_html(index=False, border=0, escape=True))
            elif kind == "figure":
                data = base64.b64encode(value.png.read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{html.escape(value.title)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(value.caption)}</figcaption></figure>"
                )
            else:
                body.append(f"<pre>{html.escape(value)}</pre>")
        title = next(v[1] for k, v in self.blocks if k == "heading")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.5;"
    "color:#222}img{max-width:100%}figure{margin:1.5em 0}figcaption{font-style:italic;color:#444}"
    "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}th,td{padding:3px 8px;"
    "border-bottom:1px solid #ddd;text-align:right}th{background:#f3f3f3}pre{background:#f6f6f6;"
    "padding:1em;overflow-x:auto;font-size:0.85em}code{background:#f3f3f3;padding:0 3px}"
)


def _inline(text: str) -> str:
    """Escape, then render the Markdown inline marks the report uses: **bold**, *italic*, `code`."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    return frame.apply(lambda col: col.map(cell))


def _markdown_table(frame: pd.DataFrame) -> str:
    frame = _formatted(frame)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join(lines)
