"""tcpclose trace and tcpclose demo: the commands that load the BPF program (root)."""
from __future__ import annotations

import functools
from pathlib import Path

import click

from ..errors import Abandoned
from ..filters import Filters
from . import results
from .options import (CONTEXT, MAX_DURATION_S, announce, expected_errors, filter_options, finite, netns_option,
                      netns_option_path, out_option, output_dir, view_options)


@click.command(context_settings=CONTEXT)
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True, max=MAX_DURATION_S), metavar="SECONDS",
              callback=lambda ctx, param, value: finite(value, param), help="Stop after this many seconds (default: Ctrl-C).")
@out_option
@filter_options
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="Keep the decoded event stream as gzip-compressed JSONL, for 'tcpclose report'.")
@click.option("--timewait", type=click.Choice(["auto", "timers", "diag", "none"]), default="auto", show_default=True,
              help="How TIME_WAIT ends are measured: timers (BPF on the timewait timers), diag (poll sock_diag "
                   "every second; this network namespace only), none (their start only), auto (timers where "
                   "the kernel allows, else diag).")
@netns_option
@click.option("--aggregates", is_flag=True,
              help="Count closes per process in BPF and keep no per-connection rows: the cheapest mode, "
                   "for leaving it running on a busy host. TIME_WAITs are counted, not timed.")
@click.option("--transitions", "transitions_to", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
              help="Also write every state transition to FILE as CSV ('-': stdout), as it happens, with the "
                   "owner tcpclose credits and the task it ran in; what the stream lost is counted in the summary.")
@click.option("--max-sockets", type=click.IntRange(min=64, max=1 << 24), metavar="N",
              help="Socket lives followed at once in BPF [default: 131072, about 200 bytes each]: half in slots "
                   "picked by socket address, the rest in an LRU map for sockets whose slot is taken. When that "
                   "map is full, its least recently active is evicted; evictions are counted in the summary.")
@click.option("--interval", type=click.FloatRange(min=1, max=MAX_DURATION_S), default=10, show_default=True,
              metavar="SECONDS", callback=lambda ctx, param, value: finite(value, param),
              help="With -o: the connection rows go to DIR/connections.arrow and connections.csv (or "
                   ".parquet) as they become final; this often DIR/run.json says how far the run got and the "
                   "summary and tables are rewritten from the rows final by then; after a kill, "
                   "'tcpclose report DIR' writes every file from the rows.")
@click.option("--progress/--no-progress", default=None,
              help="A live line of elapsed time, connections, TIME_WAITs and drops [default: on a terminal; "
                   "--progress elsewhere writes one every 10 s].")
@view_options
@click.option("-q", "--quiet", is_flag=True, help="With -o, write the files only: no summary on the terminal.")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF program and its compile flags, then exit.")
@expected_errors
def trace(duration, out, force, fmt, filters, record, timewait, netns, aggregates, transitions_to, max_sockets, interval,
          progress, view, quiet, print_bpf):
    """Trace TCP closes on this host (root) until Ctrl-C or --duration.

    Every connection is credited to the process that owns it, with who closed
    first (active, passive, simultaneous, reset, never established, open).
    Each connection's row is made as soon as nothing can change it (its
    TIME_WAIT ended), counted in the figures and kept on disk
    (DIR/connections.arrow with -o, else $TMPDIR or /var/tmp): memory stays
    flat however long the run.  On a busy host the rows take at most a tenth
    of a core; connections that close faster than that (tens of thousands a
    second) wait on disk for the end, which then takes a while (the live line says
    how many wait; docs/overhead.md);
    --aggregates never falls behind.  A Ctrl-C or SIGTERM while the files are
    written only warns; the next one abandons them.

    \b
    Examples:
      sudo tcpclose trace                      # summary on Ctrl-C
      sudo tcpclose trace -d 30 -o out/        # the summary, and CSVs, summary.txt, report.html in out/
      sudo tcpclose trace --by pid --top 0     # a row per process, every process
      sudo tcpclose trace -L 8080 -c nginx     # one server port, one program
      sudo tcpclose trace -D 5432 --record pg.jsonl.gz
      sudo tcpclose trace -d 90 --netns web1 -o out/   # sockets and counters of 'ip netns' web1
      sudo tcpclose trace --timewait none      # cheaper: TIME_WAITs counted, not timed
      sudo tcpclose trace --aggregates -o out/ # cheapest: per-process counts only, made in BPF
      sudo tcpclose trace --transitions - -L 80 # every transition on port 80, as CSV on stdout
    """
    netns_path = netns_option_path(netns)
    if print_bpf:
        from ..kernel import probe
        from ..record import layout

        click.echo(" ".join(probe.compile_flags(filters, aggregates=aggregates, transitions=transitions_to is not None,
                                                max_socks=max_sockets or probe.MAX_SOCKS)))
        click.echo(layout.PROGRAM.read_text(), nl=False)
        return
    from ..kernel.preflight import check_privileges
    from ..run.control import run, stop_on_signals
    from ..run.progress import Progress
    from ..run.tracer import Tracer

    check_privileges()  # before any file is made
    out = output_dir(out, force)
    with stop_on_signals() as stop:
        tracing = "Tracing TCP closes... " + ("Ctrl-C to end." if duration is None else f"for {duration:g} s.")
        tracer = Tracer(filters, record, timewait=timewait, netns=netns_path, aggregates=aggregates, force=force,
                        transitions_to=transitions_to, max_socks=max_sockets, out=out, fmt=fmt, interval=interval,
                        attached=lambda: click.echo(tracing, err=True),
                        tables=functools.partial(results.write_interval, view=view))
        try:
            kept, run_info = run(tracer, stop, duration, progress=Progress(progress), announce=announce)
            results.show(kept, run_info, out, summary=not quiet, err=transitions_to == "-",  # stdout: the transitions
                         rescue=True, view=view, there=() if aggregates else tracer.rows_files, fmt=fmt)
        except Abandoned as exc:  # (-o's directory holds the run as of its last --interval: record.rundir)
            if tracer.rows_files:
                exc.message += f"; `tcpclose report {out.path}` finishes them as of the last --interval"
            raise


@click.command(context_settings=CONTEXT)
@out_option
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="Keep the event stream as gzip-compressed JSONL too.")
@view_options
@expected_errors
def demo(out, force, fmt, record, view):
    """Trace a built-in loopback workload and show the summary (root, about 5 seconds);
    with -o, write every file and the incident report too.

    \b
    The workload runs in a network namespace of its own (tcp_fin_timeout 2 s, a
    100-port ephemeral range), removed afterwards, so every kind of ending shows:
      demo-client closes first on its connections to demo-echo (TIME_WAITs, port pressure),
      demo-web closes first; demo-poller reconnects from one port (SYNs kill TIME_WAITs),
      demo-rebinder reconnects from one port (connect() reuses its TIME_WAITs),
      demo-leaky never closes (CLOSE_WAIT); demo-caller's FIN_WAIT2 expires after 2 s.
    Example:
      sudo tcpclose demo -o demo-out/
    """
    from ..demo import pairs as workload
    from ..demo.namespace import Namespace
    from ..kernel.netns import named_netns
    from ..kernel.preflight import check_privileges
    from ..run.control import stop_on_signals
    from ..run.tracer import Tracer

    check_privileges()  # before any file is made
    out = output_dir(out, force)
    with stop_on_signals() as stop, Namespace("tcpclose-demo", **workload.SYSCTLS) as ns:
        tracer = Tracer(Filters(), record, force=force, netns=named_netns(ns.name))
        click.echo(f"Tracing TCP closes while the demo workload runs in network namespace {ns.name}...", err=True)
        procs = []
        try:
            for pair in workload.PAIRS:
                click.echo(f"  {pair.client_comm} -> {pair.server_comm}: {pair.story}", err=True)
            for failure in workload.start(ns.name, procs):
                click.echo(f"tcpclose: a demo process stopped early ({failure}); the report shows what it did",
                           err=True)
            workload.settle(named_netns(ns.name), stop)  # the last ACKs land; the FIN_WAIT2 timewaits expire
            stop.finishing()
            kept, run_info = tracer.finish()
        finally:
            workload.release(procs)
        results.show(kept, run_info, out, summary=True, rescue=True, view=view, fmt=fmt)
