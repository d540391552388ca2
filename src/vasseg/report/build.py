"""Build a report folder from run folders: ``report.md``, ``report.html``, ``figures/``, ``tables/``.

    from vasseg.report.build import build_report, ReportOptions
    html = build_report(["runs/"], "report", ReportOptions(eval_name="test_last", reference="supervised"))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm import tqdm

from vasseg.outfolder import Owner, check_folder, published_folder
from vasseg.report.collect import Group, group_runs, load_records, with_results
from vasseg.report.document import Block, Heading, Paragraph, render_markdown
from vasseg.report.features import parse_layer
from vasseg.report.html import render_html
from vasseg.report.sections import SECTIONS, SKIPPABLE, Context, ReportOptions, runs_overview
from vasseg.report.stats import find_reference
from vasseg.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ReportOptions", "build_report"]


def choose_reference(groups: list[Group], wanted: str | None) -> str:
    """The reference method: as asked (it must exist), else ``supervised``, else the first one."""
    methods = [g.method for g in groups]
    if wanted:
        if wanted not in methods:
            raise ConfigError(f"--reference {wanted!r}: no run of that method (have: {', '.join(sorted(set(methods)))})")
        return wanted
    return "supervised" if "supervised" in methods else methods[0]


def check_options(options: ReportOptions) -> None:
    """Refuse bad flags before any slow work."""
    parse_layer(options.layer)
    unknown = sorted(set(options.skip) - set(SKIPPABLE))
    if unknown:
        raise ConfigError(f"--skip {','.join(unknown)}: choose from {', '.join(SKIPPABLE)}")
    if options.slice_axis not in (0, 1, 2):
        raise ConfigError(f"--slice-axis {options.slice_axis}: choose 0, 1 or 2")


def make_context(paths: list[str | Path], out_dir: Path, options: ReportOptions) -> Context:
    from vasseg.engine.setup import select_device

    records = load_records(paths, options.eval_name, options.grid)
    groups = group_runs(records)
    evaluated = with_results(groups)
    reference = choose_reference(evaluated or groups, options.reference)
    groups, evaluated = reference_first(groups, reference), reference_first(evaluated, reference)
    device = select_device(options.device, "--device")
    return Context(options, out_dir, records, groups, evaluated, reference, device)


def reference_first(groups: list[Group], reference: str) -> list[Group]:
    """Table order: per dataset and labeled count, the reference (baseline) row first (of the
    reference method's variants, the one ``find_reference`` picks), then its other variants."""
    def key(g: Group) -> tuple:
        return (g.dataset, g.labeled, g is not find_reference(g, groups, reference), g.method != reference,
                g.method, g.variant)
    return sorted(groups, key=key)


def run_sections(ctx: Context) -> list[Block]:
    """Every section not skipped; a section that cannot run (data or checkpoint gone) says why."""
    from vasseg.config import ConfigError
    from vasseg.data.volumes import DataError
    from vasseg.engine.checkpoint import CheckpointError

    blocks: list[Block] = []
    names = [name for name in SECTIONS if name not in ctx.options.skip]
    bar = tqdm(names, desc="report", unit="section", disable=not ctx.options.progress, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        section = SECTIONS[name]
        started = time.perf_counter()
        try:
            blocks += section(ctx)
        except (ConfigError, DataError, CheckpointError, FileNotFoundError) as exc:
            log.warning("report section %s skipped: %s", name, exc)
            blocks += [Heading(name.capitalize()), Paragraph(f"Section skipped: {exc}", note=True)]
        log.info("report section %s: %.1f s", name, time.perf_counter() - started)
    return blocks


# What a report folder holds (vasseg.outfolder: the overwrite rule).
REPORT_OUTPUT = Owner("report", ("report.md", "report.html", "figures", "tables"))


def build_report(paths: list[str | Path], out_dir: str | Path, options: ReportOptions | None = None,
                 overwrite: bool = False) -> Path:
    """Write the report for the runs under ``paths`` into ``out_dir``; returns ``report.html``.

    The report appears complete or not at all (a previous report stays as it was on failure). A
    folder holding other files is refused unless ``overwrite``, and even then they stay.
    """
    options = options or ReportOptions()
    check_options(options)
    out = Path(out_dir).expanduser().resolve()
    check_folder(out, REPORT_OUTPUT, overwrite)
    with published_folder(out, REPORT_OUTPUT, "the report") as tmp:
        ctx = make_context(paths, tmp, options)
        blocks: list[Block] = [Heading(options.title, 1), *runs_overview(ctx), *run_sections(ctx)]
        (tmp / "report.md").write_text(render_markdown(blocks))
        (tmp / "report.html").write_text(render_html(blocks, options.title))
    html = out / "report.html"
    log.info("report: %s", html)
    return html
