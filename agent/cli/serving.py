"""tcpclose agent: the always-on mode, for Prometheus (root)."""
from __future__ import annotations

import functools

import click

from .options import CONTEXT, View, expected_errors, filter_options, out_option

DEFAULT_LISTEN = "127.0.0.1:9864"  # docs/metrics.md: why this port


def listen_address(ctx, param, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not ADDRESS:PORT, e.g. 127.0.0.1:9864 or 0.0.0.0:9864")
    return host.strip("[]"), int(port)


@click.command("agent", context_settings=CONTEXT)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, callback=listen_address, metavar="ADDR:PORT",
              help="Serve /metrics and /healthz here (0.0.0.0:PORT for a Prometheus on another host).")
@filter_options
@click.option("--max-series", type=click.IntRange(min=100), default=50_000, show_default=True,
              help="Bound the series exported: workloads past the number that fit are counted as "
                   "workload=\"other\" (tcpclose_workloads_folded_total says how many).")
@click.option("--refresh", "refresh_s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              metavar="SECONDS",
              help="How often the CLOSE_WAITs open now and the kernel's TIME_WAIT overflows are read.")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds (default: until SIGTERM or Ctrl-C).")
@out_option(what="Also write the files of 'trace -o' into a new directory in this one every --rotate "
                  "seconds (DIR/20261204T130000Z/), each a period's.")
@click.option("--rotate", "rotate_s", type=click.FloatRange(min=10), default=3600.0, show_default=True,
              metavar="SECONDS", help="With -o: a new directory of files this often (named for when it began, UTC).")
@click.option("--keep", type=click.IntRange(min=1), default=24, show_default=True,
              help="With -o: the directories of this many periods at most; the oldest are removed.")
@expected_errors
def agent_command(listen, filters, max_series, refresh_s, duration, out, force, fmt, rotate_s, keep):
    """Trace TCP closes until stopped and serve the figures to Prometheus (root).

    Counters of closes by workload and kind, TIME_WAITs made and how they ended,
    histograms of TIME_WAIT lifetimes and connection durations, the CLOSE_WAITs
    open now with the oldest's age, and what could not be seen.  A workload is
    the owner's container, else its systemd unit, else its process name.  Every
    metric is in docs/metrics.md.

    \b
    With -o DIR, the files of 'trace -o' too, a directory each --rotate
    seconds (DIR/20261204T130000Z/...: the rows made final in that period, its
    tables every 10 s, report.html when it ends), --keep of them at most; the
    periods a kill left without report.html are finished when it starts again.
    That makes a row of every connection, as trace does, at its cost.

    \b
    Examples:
      sudo tcpclose agent                              # http://127.0.0.1:9864/metrics
      sudo tcpclose agent --listen 0.0.0.0:9864 -L 80,443
      sudo tcpclose agent -o /var/lib/tcpclose --rotate 3600 --keep 48
    """
    from ..kernel.preflight import check_privileges
    from ..kernel.procfs import port_range_size, sysctls
    from ..metrics.exposition import Exposition, serve
    from ..metrics.figures import Figures
    from ..run.control import stop_on_signals
    from ..run.serving import serve_figures
    from ..run.tracer import Tracer
    from .options import output_dir
    from .periods import Periods
    from .results import write_interval

    check_privileges()
    host, port = listen
    exposition = Exposition()
    try:
        server = serve(exposition, host, port)
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; give another --listen") from None
    periods = Periods(output_dir(out, force), rotate_s, keep, fmt, View()) if out else None
    with stop_on_signals() as stop:
        tracer = Tracer(filters, keep=periods is not None, out=periods and periods.current, fmt=fmt,
                        tables=functools.partial(write_interval, view=View()), figures=True)
        click.echo(f"Tracing TCP closes; serving http://{host}:{port}/metrics", err=True)
        try:
            figures = Figures(max_series // SERIES_PER_WORKLOAD, follows_timewaits=tracer.timewait_method == "timers",
                              port_range=port_range_size(sysctls()["ip_local_port_range"]),
                              namer=tracer.owners.workloads_of)
            serve_figures(tracer, figures, exposition, stop, refresh_s, duration, periods)
        finally:
            stop.finishing()
            rows, run = tracer.finish()
            server.shutdown()
        if periods:  # (inside the signals' handling: a second Ctrl-C warns, a third abandons)
            periods.finish(rows, run, tracer.rows_files)


SERIES_PER_WORKLOAD = 50  # closes by kind, TIME_WAITs and their ends, two histograms' buckets, two gauges
