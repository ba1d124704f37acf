"""A finished run shown: the terminal summary, or the files of -o (and the summary too where asked)."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from ..errors import CannotWrite
from ..output import files, text
from ..record.runinfo import RunInfo
from ..analysis.tally import Tally
from ..record.runrows import RunRows
from ..safefiles import OutputDir, scratch_directory
from .options import View

FILE_WIDTH = 120  # summary.txt, and a summary that does not go to a terminal


def show(kept: RunRows, run: RunInfo, out: OutputDir | None, summary: bool = False, err: bool = False,
         rescue: bool = False, view: View = View(), there: tuple[str, ...] = (), fmt: str = "csv") -> None:
    """The summary on stdout (stderr if `err`), or the files in `out` (and the summary too if `summary`).
    kept: the run's connection rows (analysis.lives) and their figures; of a run counted per
    process, those of the lives still open.
    rescue: the rows exist nowhere else (a live trace): where `out` cannot be written, they
    are kept in a new directory of our own, for `tcpclose report` later.
    view: the grouping and the rows per table of the summary (--by, --top).
    there: the files of these rows `out` holds already, whole (see output.files.write).
    fmt: --format, the file of the connection rows (record.formats)."""
    from ..analysis import workloads

    if run.counted_only:  # counted in BPF: no per-connection rows to analyse
        from ..analysis import processes

        procs = processes.from_counts(run.aggregates, kept.frame(), run.ended_at)
        groups, pressure, a = workloads.folded(procs, view.by), None, None
    else:
        from ..analysis.pipeline import analyse

        a = analyse(kept.tally, run, view.by, view.top)
        groups, pressure = a.groups, a.pressure

    def render(width: int) -> str:
        return text.render(kept.tally, workloads.top(groups, view.top), run, width, pressure=pressure,
                           keys=workloads.BY[view.by])

    def write() -> list:
        if a is None:
            return files.write_aggregates(out, procs, workloads.folded(procs, "comm"), render(FILE_WIDTH), run)
        return files.write(out, a, kept.batches, render(FILE_WIDTH), there, fmt)

    summary_text = render(terminal_width(err) if not out or summary else FILE_WIDTH)
    if out:
        try:
            paths = write()
        except CannotWrite:  # a disk that filled up at the end: the summary at least is not lost
            _echo(summary_text, err=True)
            if rescue:
                _echo(_rescued(kept, run), err=True, nl=True)
            raise
        finally:
            out.close()
    if not out or summary:
        _echo(summary_text, err=err)
    if out:
        _echo(f"wrote {', '.join(str(p) for p in paths)}", err=True, nl=True)
        if run.analysis_skipped:
            _echo(text.analysis_skipped_line(run.analysis_skipped), err=True, nl=True)
        elif run.counted_only:
            _echo("--aggregates keeps per-process counts only: no connections.csv and no report.html", err=True, nl=True)
        else:
            _echo(f"the incident report: {out.path / 'report.html'}", err=True, nl=True)


def write_interval(out: OutputDir, tally: Tally, run: RunInfo, view: View) -> None:
    """The tables of a trace -o still running (output.files.write_tables), made from the
    figures of its rows final by now: what a SIGKILL leaves beside its rows (report DIR finishes
    them, report.html included).  Called every --interval (run.kept.Kept.note)."""
    from ..analysis import workloads
    from ..analysis.pipeline import analyse

    a = analyse(tally, run, view.by, view.top)
    summary = text.render(tally, workloads.top(a.groups, view.top), run, FILE_WIDTH, pressure=a.pressure,
                          keys=workloads.BY[view.by])
    files.write_tables(out, a, summary)


def _rescued(kept: RunRows, run: RunInfo) -> str:
    """Keep a finished trace whose files could not be written: its rows and run.json, in a
    directory made for it ($TMPDIR, else /var/tmp: mkdtemp makes it new, ours alone, 0700)."""
    from ..record import rows, rundir

    try:
        directory = OutputDir(Path(tempfile.mkdtemp(prefix="tcpclose-rescue-", dir=scratch_directory())))
        with directory.appending(rundir.ROWS) as f:
            writer = rows.RowsWriter(f)
            for part in kept.batches():
                writer.append(part)
            writer.close()
        directory.write_text(rundir.RUN, run.to_json())
        directory.close()
    except (OSError, CannotWrite) as exc:
        return f"the run could not be kept elsewhere either: {getattr(exc, 'strerror', None) or exc}"
    return (f"the run is kept in {directory.path}: "
            f"'tcpclose report {directory.path} -o DIR' writes its files where there is room")


def terminal_width(err: bool = False) -> int:
    """The terminal's width where the summary goes to one (rich wraps at word boundaries
    there, not the terminal mid-phrase), else FILE_WIDTH."""
    stream = sys.stderr if err else sys.stdout
    return shutil.get_terminal_size((FILE_WIDTH, 24)).columns if stream.isatty() else FILE_WIDTH


def _echo(message: str, err: bool, nl: bool = False) -> None:
    """To a terminal that may be gone (SIGHUP: the ssh session dropped): the files are written
    first, and a summary that cannot be shown does not fail the run."""
    try:
        click.echo(message, nl=nl, err=err)
    except OSError:
        pass
