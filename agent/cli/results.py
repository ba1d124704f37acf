"""A finished run shown: the terminal summary, or the files of -o (and the summary too where asked)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import click
import pandas as pd

from ..errors import CannotWrite
from ..output import files, text
from ..record.recording import Recorder
from ..record.runinfo import RunInfo
from ..safefiles import OutputDir, scratch_directory


def show(events: pd.DataFrame, run: RunInfo, out: OutputDir | None, summary: bool = False, err: bool = False,
         rescue: bool = False) -> None:
    """The summary on stdout (stderr if `err`), or the files in `out` (and the summary too if `summary`).
    rescue: the events exist nowhere else (a live trace): where `out` cannot be written, they
    are kept as a recording in a new directory of our own, for `tcpclose report` later."""
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
    if out:
        try:
            paths = write()
        except CannotWrite:  # a disk that filled up at the end: the summary at least is not lost
            _echo(summary_text, err=True)
            if rescue:
                _echo(_rescued(events, run), err=True, nl=True)
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


def _rescued(events: pd.DataFrame, run: RunInfo) -> str:
    """Keep a finished trace whose files could not be written: the events as a recording, in a
    directory made for it ($TMPDIR, else /var/tmp: mkdtemp makes it new, ours alone, 0700)."""
    try:
        directory = tempfile.mkdtemp(prefix="tcpclose-rescue-", dir=scratch_directory())
    except OSError as exc:
        return f"the run could not be kept elsewhere either: {exc.strerror}"
    recorder = Recorder(Path(directory) / "recording.jsonl")
    recorder.write(events)
    recorder.finish(run)
    if recorder.stopped:
        return f"the run could not be kept elsewhere either: {recorder.stopped}"
    return (f"the run is kept in {recorder.path}: "
            f"'tcpclose report {recorder.path} -o DIR' writes its files where there is room")


def _echo(message: str, err: bool, nl: bool = False) -> None:
    """To a terminal that may be gone (SIGHUP: the ssh session dropped): the files are written
    first, and a summary that cannot be shown does not fail the run."""
    try:
        click.echo(message, nl=nl, err=err)
    except OSError:
        pass
