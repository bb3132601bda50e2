"""report.html: one self-contained page a person opens in any browser (from output.tar.gz, mailed, offline).

Everything is inside the file: pictures as base64 `data:` URIs, the style in one <style> block, no script and
no external resource, so it renders the same in any browser and survives being copied around on its own.
This module only renders; `outputs.write_outputs` gathers what goes in.
"""

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from segmaker.files import staged_file

REPORT_HTML = "report.html"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.summary td { text-align: left; } .note { color: #666; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class Table:
    """A table: header cells, then rows of cells already formatted as text; the first column is a name."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Section:
    """A heading with an optional note, table and picture (a PNG file, embedded)."""

    title: str
    note: str = ""
    table: Optional[Table] = None
    picture: Optional[Path] = None
    alt: str = ""


@dataclass(frozen=True)
class Report:
    title: str
    summary: Sequence[Tuple[str, str]]
    sections: List[Section] = field(default_factory=list)


def render(report: Report) -> str:
    """The whole page as one HTML string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_text(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_text(report.title)}</h1>",
        _summary(report.summary),
    ]
    parts += [_section(section) for section in report.sections]
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Report, path: Path) -> Path:
    """Render `report` to `path` (written under a temporary name, then renamed)."""
    with staged_file(path) as temporary:
        temporary.write_text(render(report), encoding="utf-8")
    return path


def _summary(rows: Sequence[Tuple[str, str]]) -> str:
    cells = "".join(f'<tr><th class="name">{_text(k)}</th><td>{_text(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary">{cells}</table>'


def _section(section: Section) -> str:
    parts = [f"<h2>{_text(section.title)}</h2>"]
    if section.note:
        parts.append(f'<p class="note">{_text(section.note)}</p>')
    if section.table is not None:
        parts.append(_table(section.table))
    if section.picture is not None and section.picture.exists():
        parts.append(f'<img src="{_data_uri(section.picture)}" alt="{_text(section.alt or section.title)}">')
    return "\n".join(parts)


def _table(table: Table) -> str:
    header = "".join(
        f'<th class="name">{_text(h)}</th>' if i == 0 else f"<th>{_text(h)}</th>"
        for i, h in enumerate(table.header)
    )
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="name">{_text(c)}</td>' if i == 0 else f"<td>{_text(c)}</td>"
            for i, c in enumerate(row)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)
