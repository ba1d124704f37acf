"""tcpclose report: the same reports from a recording, without root; or what a fleet's
agents reported to Prometheus."""
from __future__ import annotations

import time
from pathlib import Path

import click

from . import results
from .options import CONTEXT, announce, expected_errors, out_option, output_dir, view_options


def _prometheus(ctx, param, value: str | None) -> str | None:
    from ..metrics.fleet import ADDRESS

    if value is not None and not ADDRESS.match(value):
        raise click.BadParameter(f"{value!r} is not a Prometheus address: give e.g. http://prometheus:9090")
    return value


def _since(ctx, param, value: str) -> int:
    from ..metrics.fleet import DURATION, SECONDS

    match = DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{value!r} is not a duration: give e.g. 30m, 6h or 2d")
    return int(match.group(1)) * SECONDS[match.group(2)]


def _instance(ctx, param, value: str | None) -> str | None:
    from ..metrics.fleet import INSTANCE

    if value is not None and not INSTANCE.match(value):
        raise click.BadParameter(f"{value!r} is not an instance: give HOST:PORT as Prometheus labels its targets")
    return value


@click.command("report", context_settings=CONTEXT)
@click.argument("recording", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--prometheus", metavar="URL", callback=_prometheus,
              help="Instead of a recording: what the tcpclose agents reported to this Prometheus server.")
@click.option("--since", "seconds", default="1h", show_default=True, callback=_since, metavar="DURATION",
              help="With --prometheus: the range, up to now (30m, 6h, 2d).")
@click.option("--instance", callback=_instance, metavar="HOST:PORT",
              help="With --prometheus: one agent's host only (default: the whole fleet, summed per workload).")
@out_option
@view_options
@expected_errors
def report_command(recording, prometheus, seconds, instance, out, force, fmt, view):
    """The same reports from a --record file, or from the directory of a trace -o that was
    killed before it finished (its connections.arrow and run.json, and the records it had
    not made into rows yet: every other file is written from them, as of its last
    --interval); needs no root.  Or, with --prometheus, the summary of what a fleet's
    tcpclose agents reported over a time range.

    \b
    Examples:
      tcpclose report pg.jsonl.gz -o out/
      tcpclose report out/                           # finish the files of a killed trace -o out/
      tcpclose report pg.jsonl.gz --by pid --top 5   # the five busiest processes, one row each
      tcpclose report --prometheus http://prometheus:9090 --since 6h -o fleet/
      tcpclose report --prometheus http://prometheus:9090 --instance web1:9864
    """
    from ..run.control import stop_on_signals

    if (recording is None) == (prometheus is None):
        raise click.UsageError("give a recording, or --prometheus URL")
    out = output_dir(out, force)
    if prometheus is not None:
        from ..metrics.fleet import Prometheus, read
        from ..output import fleet_summary

        fleet = read(Prometheus(prometheus), time.time(), seconds, instance)
        text = fleet_summary.render(fleet, prometheus, results.FILE_WIDTH if out else results.terminal_width(),
                                    view.top)
        if out:
            with stop_on_signals() as stop:
                stop.finishing()
                try:
                    paths = fleet_summary.write(out, fleet, prometheus, text, view.top)
                finally:
                    out.close()
            click.echo("wrote " + ", ".join(str(p) for p in paths))
        else:
            click.echo(text, nl=False)
        return
    from ..record import rundir
    from ..run.progress import Progress
    from ..run.replay import rows_of, rows_of_directory

    there: tuple[str, ...] = ()
    with stop_on_signals() as stop:
        stop.finishing()  # nothing to trace: a signal goes to the files' writing at once
        if recording.is_dir() and not rundir.is_run_directory(recording):
            raise click.BadParameter(f"{recording} holds no {rundir.ROWS} (or {rundir.PARQUET}) and "
                                     f"{rundir.RUN} of a trace -o", param_hint="RECORDING")
        progress = Progress()  # (on a terminal: a recording's records, or those a run killed while behind left)
        try:
            rows_of_run = rows_of_directory if recording.is_dir() else rows_of
            kept, run_info = rows_of_run(recording, announce, progress.made)
        finally:
            progress.close()
        if recording.is_dir() and out is None:  # finish the files there
            out, there = output_dir(recording, force), (rundir.rows_file(recording),)  # (the others made anew)
        results.show(kept, run_info, out, view=view, there=there, fmt=fmt)
