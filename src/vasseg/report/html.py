"""``report.html``: the report's blocks as one self-contained page (inline CSS, relative PNGs)."""

from __future__ import annotations

from html import escape

from vasseg.report.document import Block, Figure, Heading, Paragraph, Table

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1200px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
.table-wrap { overflow-x: auto; margin: .6em 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #d6d6d6; padding: .3em .6em; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
.notes { font-size: 12.5px; color: #555; margin: .2em 0 1.2em; max-width: 1000px; }
.notes p { margin: .25em 0; }
p.note { font-size: 12.5px; color: #555; }
figure { margin: 1em 0 1.8em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12.5px; color: #444; margin-top: .4em; max-width: 1000px; }
"""


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<p>{escape(n)}</p>" for n in table.notes)
    return (f'<div class="table-wrap"><table><caption>{escape(table.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
            + (f'<div class="notes">{notes}</div>' if notes else ""))


def block_html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f'<p class="note">{escape(block.text)}</p>' if block.note else f"<p>{escape(block.text)}</p>"
    if isinstance(block, Table):
        return table_html(block)
    if isinstance(block, Figure):
        return (f'<figure><img src="{escape(block.path)}" alt="{escape(block.caption)}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>")
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(blocks: list[Block], title: str) -> str:
    """A complete HTML document: no scripts, no external styles, images by relative path."""
    body = "\n".join(block_html(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
