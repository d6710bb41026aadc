"""The report page: one HTML file with its style inline and no script. Every value that
comes from data (texts, labels, paths, config values) is escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 980px;
       padding: 1.5em; color: #1f2328; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de;
  padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #59636e; margin-top: 0; }
nav a { margin-right: 1em; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: 0.25em 0.7em; text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.run td { font-weight: 600; }
.verdict { padding: 0.5em 0.8em; border-left: 4px solid #8c959f; background: #f6f8fa;
  margin: 0.4em 0; } .verdict.good { border-color: #2da44e; }
.verdict.bad { border-color: #d1242f; } .verdict.warn { border-color: #bf8700; }
figure.chart { margin: 0.8em 0; } figure.chart svg { max-width: 100%; height: auto; }
figcaption { color: #59636e; font-size: 0.9em; }
.text { max-width: 520px; } img.thumb { width: 56px; height: 56px; image-rendering: pixelated; }
.note { color: #59636e; }
"""


@dataclass
class Section:
    anchor: str
    title: str
    body: str
    """HTML, already escaped."""


def text(value: object) -> str:
    return escape(str(value))


def percent(share: float) -> str:
    """A share as a percentage that stays readable when tiny (a head is 0.0034 % of a model)."""
    value = 100 * share
    return f"{value:.1f} %" if value >= 1 or value == 0 else f"{value:.2g} %"


def chart(name: str, svg: str, caption: str = "") -> str:
    """A chart in a figure the browser test finds by `data-chart`."""
    tail = f"<figcaption>{text(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart" data-chart="{text(name)}">{svg}{tail}</figure>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    numeric: Sequence[bool] | None = None,
    highlight: int | None = None,
) -> str:
    """A table of escaped cells; `numeric` columns align right; row `highlight` is bold. A
    cell that is a `Raw` keeps its HTML."""
    numeric = numeric or [False] * len(headers)
    head = "".join(
        f'<th class="num">{text(h)}</th>' if n else f"<th>{text(h)}</th>"
        for h, n in zip(headers, numeric, strict=True)
    )
    body = []
    for index, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{_cell(c)}</td>' if n else f"<td>{_cell(c)}</td>"
            for c, n in zip(row, numeric, strict=True)
        )
        mark = ' class="run"' if index == highlight else ""
        body.append(f"<tr{mark}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw(str):
    """HTML made here (an image, a link to a section), not data: not escaped again."""


def _cell(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return text(value)


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{text(s.title)}</a>' for s in sections)
    parts = "".join(
        f'<section id="{s.anchor}"><h2>{text(s.title)}</h2>{s.body}</section>' for s in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{text(title)}</h1><p class="sub">{text(subtitle)}</p><nav>{nav}</nav>'
        f"{parts}</body></html>\n"
    )
