"""A finished run shown: the terminal summary, or the files of -o (and the summary too where asked)."""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ..output import files, text
from ..record.runinfo import RunInfo


def show(events: pd.DataFrame, run: RunInfo, out: Path | None, summary: bool = False, err: bool = False) -> None:
    """The summary on stdout (stderr if `err`), or the files in `out` (and the summary too if `summary`)."""
    if run.counted_only:  # counted in BPF: no per-connection rows to analyse
        from ..analysis import lives, processes

        still_open = lives.connections(events, run.ended_at, None)
        procs = processes.from_counts(run.aggregates, still_open, run.ended_at)
        summary_text = text.render(still_open, procs, run)
        write = lambda: files.write_aggregates(out, procs, summary_text, run)  # noqa: E731
    else:
        from ..analysis.pipeline import analyse

        a = analyse(events, run)
        summary_text = text.render(a.conns, a.procs, run, pressure=a.pressure)
        write = lambda: files.write(out, a, summary_text)  # noqa: E731
    if not out or summary:
        click.echo(summary_text, nl=False, err=err)
    if out:
        paths = write()
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)
        if run.analysis_skipped:
            click.echo(text.analysis_skipped_line(run.analysis_skipped), err=True)
        elif run.counted_only:
            click.echo("--aggregates keeps per-process counts only: no connections.csv and no report.html", err=True)
        else:
            click.echo(f"the incident report: {out / 'report.html'}", err=True)
