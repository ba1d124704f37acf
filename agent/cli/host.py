"""tcpclose states and tcpclose doctor: the host now, without tracing."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import CONTEXT, expected_errors, filter_options, netns_option, netns_option_path


@click.command(context_settings=CONTEXT)
@filter_options
@netns_option
@click.option("-w", "--watch", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per refresh instead of tables.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True,
              help="Processes and peers shown.")
@expected_errors
def states(filters, netns, watch, as_json, top):
    """Count TCP sockets per state, per process and per peer, right now.

    What 'netstat -n | awk' tries to say: from sock_diag (what ss reads) and
    /proc/*/fd.  Any user gets the counts; naming the processes that hold other
    users' sockets needs root.  TIME_WAITs and orphans (closed, still finishing)
    have no process: those on a listening port are credited to the listener.

    \b
    Examples:
      tcpclose states                      # the whole host, once
      sudo tcpclose states -w 2 -L 443     # who holds what on port 443, every 2 s
      tcpclose states --netns web1 --json
    """
    import json as json_lib
    import time

    from ..analysis.queues import describe, pressed
    from ..host import states as socket_states
    from ..kernel.diag import listeners
    from ..run.control import stop_on_signals

    netns_path = netns_option_path(netns)
    with stop_on_signals() as stop:
        while True:
            counts = socket_states.counts(socket_states.sockets_now(filters, netns_path))
            counts["listen_queues"] = [describe(r) for r in pressed(listeners(netns_path)).itertuples(index=False)]
            if as_json:
                click.echo(json_lib.dumps({"at": time.time()} | counts))
            else:
                if watch and sys.stdout.isatty():
                    click.clear()
                if watch:
                    click.echo(time.strftime("%H:%M:%S ") + f"(every {watch:g} s, Ctrl-C to end)")
                click.echo(socket_states.render(counts, top), nl=False)
            if not watch:
                return
            stop.wait(watch)
            if stop.is_set():
                return


@click.command(context_settings=CONTEXT)
@click.argument("run", required=False, type=click.Path(exists=True, path_type=Path))
@netns_option
@click.option("--json", "as_json", is_flag=True, help="The findings as one JSON object.")
@click.option("--sysctl", "block", type=click.File("r"), metavar="FILE",
              help="Review this sysctl.conf or pasted block ('-': stdin) line by line against this host "
                   "instead: a verdict each (helps here, no effect, harmful, unknown key); exit code 9 if "
                   "any line is harmful or unknown.")
@expected_errors
def doctor(run, netns, as_json, block):
    """Say what applies to this host about TIME_WAIT and CLOSE_WAIT, with the evidence.

    Reads the kernel release, the TCP sysctls, the TcpExt counters, the
    sockets and listen queues there now; RUN, a --record file or an --out
    directory, adds what that trace found.  With --sysctl it reviews the
    settings you are about to apply instead.  It never changes a setting.

    \b
    Examples:
      tcpclose doctor
      tcpclose doctor out/                 # with a trace's findings
      sudo tcpclose doctor --netns web1 --json
      tcpclose doctor --sysctl /etc/sysctl.d/99-tuning.conf
      pbpaste | tcpclose doctor --sysctl - out/   # a blog's block, with a trace's rates
    """
    import json as json_lib

    from ..host import doctor as checks

    netns_path = netns_option_path(netns)
    if block is not None:
        from dataclasses import asdict

        from ..host import sysctl_review

        verdicts = checks.review_sysctls(block.read(), netns_path, run)
        click.echo(json_lib.dumps([asdict(v) for v in verdicts], indent=1) if as_json
                   else sysctl_review.render(verdicts), nl=False)
        if any(v.verdict in sysctl_review.FAILING for v in verdicts):
            sys.exit(9)
        return
    result = checks.examine(netns_path, run)
    click.echo(json_lib.dumps(result, indent=1) if as_json else checks.render(result))
