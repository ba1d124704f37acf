"""tcpclose report: the same reports from a recording, without root."""
from __future__ import annotations

from pathlib import Path

import click

from . import results
from .options import CONTEXT, announce, expected_errors, out_option, output_dir, view_options


@click.command("report", context_settings=CONTEXT)
@click.argument("recording", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_option
@view_options
@expected_errors
def report_command(recording, out, force, view):
    """The same reports from a --record file; needs no root.

    \b
    Example:
      tcpclose report pg.jsonl.gz -o out/
      tcpclose report pg.jsonl.gz --by pid --top 5   # the five busiest processes, one row each
    """
    from ..record.recording import read_recording
    from ..run.control import announce_long_end, stop_on_signals

    out = output_dir(out, force)
    with stop_on_signals() as stop:
        stop.finishing()  # nothing to trace: a signal goes to the files' writing at once
        events, run_info = read_recording(recording)
        announce_long_end(len(events), announce)
        results.show(events, run_info, out, view=view)
