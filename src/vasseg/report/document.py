"""The report as a list of blocks (headings, paragraphs, tables, figures) and its markdown form.

Sections build blocks; :func:`render_markdown` and :func:`vasseg.report.html.render_html` turn
the same blocks into ``report.md`` and ``report.html``, so the two never disagree.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    note: bool = False  # a table/figure note (smaller print in HTML)


@dataclass
class Table:
    """A table of already formatted cells, with its caption and the notes printed under it."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """A PNG (path relative to the report folder) with its caption."""

    path: str
    caption: str


Block = Union[Heading, Paragraph, Table, Figure]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """A GitHub-flavoured markdown table with its caption above and its notes below."""
    lines = [f"**{table.caption}**", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"{note}  " for note in table.notes]
    return "\n".join(lines)


def render_markdown(blocks: list[Block]) -> str:
    """The whole report as markdown; figures are relative image links."""
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(f"*{block.text}*" if block.note else block.text)
        elif isinstance(block, Table):
            parts.append(table_markdown(block))
        elif isinstance(block, Figure):
            parts.append(f"![{_md_cell(block.caption)}]({block.path})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Machine-readable companion of a table (raw numbers, not formatted text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
