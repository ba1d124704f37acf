"""The command line: tcpclose trace | report | demo."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from . import export, findings, records, summary
from .errors import Abandoned, NotRoot, TcpcloseError
from .filters import AF_INET, AF_INET6, Filters

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class PortList(click.ParamType):
    name = "PORTS"

    def convert(self, value, param, ctx):
        if isinstance(value, frozenset):
            return value
        if not str(value).strip():
            return frozenset()
        ports = set()
        for part in str(value).split(","):
            part = part.strip()
            if not part.isdigit() or not 1 <= int(part) <= 65535:
                self.fail(f"{part!r} is not a port (1-65535); give a list like 80,443", param, ctx)
            ports.add(int(part))
        return frozenset(ports)


def expected_errors(func):
    """Expected failures end in one line naming the fix and their own exit code."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (TcpcloseError, Abandoned) as exc:
            click.echo(f"tcpclose: {exc.message}", err=True)
            sys.exit(exc.exit_code)
    return wrapper


def announce(text: str) -> None:
    click.echo(f"tcpclose: {text}", err=True)


def out_option(func):
    return click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
                        help="Write connections.csv, processes.csv, peers.csv, ports.csv, timeline.csv, summary.txt, "
                             "summary.json, report.html and run.json into this directory.")(func)


def filter_options(func):
    """-p, -c, -L, -D, -4, -6, handed to the command as one Filters (trace and states)."""
    options = [
        click.option("-p", "--pid", type=click.IntRange(min=1), help="Only connections owned by this process."),
        click.option("-c", "--comm", help="Only connections owned by processes of this name (as in /proc/PID/comm)."),
        click.option("-L", "local_ports", type=PortList(), default="", help="Only these local ports, e.g. -L 80,443."),
        click.option("-D", "remote_ports", type=PortList(), default="", help="Only these remote ports, e.g. -D 5432."),
        click.option("-4", "--ipv4", "ipv4", is_flag=True, help="Only IPv4."),
        click.option("-6", "--ipv6", "ipv6", is_flag=True, help="Only IPv6."),
    ]

    @functools.wraps(func)
    def wrapper(*args, pid, comm, local_ports, remote_ports, ipv4, ipv6, **kwargs):
        if ipv4 and ipv6:
            raise click.UsageError("-4 and -6 exclude each other; give one, or neither for both")
        if comm is not None and not 1 <= len(comm.encode()) <= 15:
            raise click.BadParameter("a comm is 1 to 15 bytes (the kernel truncates longer names)",
                                     param_hint="--comm")
        filters = Filters(pid=pid, comm=comm, local_ports=local_ports, remote_ports=remote_ports,
                          family=AF_INET if ipv4 else AF_INET6 if ipv6 else None)
        return func(*args, filters=filters, **kwargs)
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def netns_option(func):
    return click.option("--netns", metavar="NAME", help="Read sockets (sock_diag) and TcpExt counters in this "
                        "namespace made by 'ip netns add' instead of tcpclose's own; tracing sees every "
                        "namespace anyway.")(func)


def netns_option_path(name: str | None) -> Path | None:
    from .kernel import named_netns

    path = named_netns(name) if name else None
    if name and path is None:
        raise click.BadParameter(f"no network namespace {name!r}: see 'ip netns list'", param_hint="--netns")
    if path is not None and os.geteuid() != 0:
        raise NotRoot(f"entering network namespace {name!r} needs root: run 'sudo tcpclose ... --netns {name}', "
                      f"or 'sudo ip netns exec {name} tcpclose ...' without --netns")
    return path


def report(events, run: dict, out: Path | None, show: bool = False, err: bool = False) -> None:
    """The summary on stdout (stderr if `err`), or the files in `out` (and the summary too if `show`)."""
    if "aggregates" in run:  # counted in BPF: no per-connection rows to analyse
        from . import aggregate, lifecycle

        still_open = lifecycle.connections(events, run["ended_at"], None)
        procs = aggregate.from_counts(run["aggregates"], still_open, run["ended_at"])
        text = summary.render(still_open, procs, run)
        write = lambda: export.write_aggregates(out, procs, text, run)  # noqa: E731
    else:
        a = findings.analyse(events, run)
        text = summary.render(a.conns, a.procs, run, pressure=a.pressure)
        write = lambda: export.write(out, a, text)  # noqa: E731
    if not out or show:
        click.echo(text, nl=False, err=err)
    if out:
        paths = write()
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)
        if "analysis_skipped" in run:
            click.echo(summary.analysis_skipped_line(run["analysis_skipped"]), err=True)
        elif "aggregates" in run:
            click.echo("--aggregates keeps per-process counts only: no connections.csv and no report.html", err=True)
        else:
            click.echo(f"the incident report: {out / 'report.html'}", err=True)


@click.group(context_settings=CONTEXT)
def main():
    """Which process closes TCP connections first, and what it leaves behind.

    \b
    Start with:  sudo tcpclose demo
    Then:        sudo tcpclose trace -d 60 -o out/
    """


@main.command(context_settings=CONTEXT)
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds (default: Ctrl-C).")
@out_option
@filter_options
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="Keep the decoded event stream as JSONL, for 'tcpclose report'.")
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
@click.option("--progress/--no-progress", default=None,
              help="A live line of elapsed time, connections, TIME_WAITs and drops [default: on a terminal; "
                   "--progress elsewhere writes one every 10 s].")
@click.option("--print-bpf", is_flag=True, hidden=True, help="Print the BPF program and its compile flags, then exit.")
@expected_errors
def trace(duration, out, filters, record, timewait, netns, aggregates, transitions_to, max_sockets, progress,
          print_bpf):
    """Trace TCP closes on this host (root) until Ctrl-C or --duration.

    Every connection is credited to the process that owns it, with who closed
    first (active, passive, simultaneous, reset, never established, open).
    The records wait on disk ($TMPDIR, else /var/tmp) until the end, whose
    analysis takes up to 0.9 kB of memory a record; a run past 80 % of
    MemAvailable is counted per process only.  For hours at high churn, use
    --aggregates.  A Ctrl-C or SIGTERM while the files are written only warns;
    the next one abandons them.

    \b
    Examples:
      sudo tcpclose trace                      # summary on Ctrl-C
      sudo tcpclose trace -d 30 -o out/        # CSVs and summary.txt in out/
      sudo tcpclose trace -L 8080 -c nginx     # one server port, one program
      sudo tcpclose trace -D 5432 --record pg.jsonl
      sudo tcpclose trace -d 90 --netns web1 -o out/   # sockets and counters of 'ip netns' web1
      sudo tcpclose trace --timewait none      # cheaper: TIME_WAITs counted, not timed
      sudo tcpclose trace --aggregates -o out/ # cheapest: per-process counts only, made in BPF
      sudo tcpclose trace --transitions - -L 80 # every transition on port 80, as CSV on stdout
    """
    netns_path = netns_option_path(netns)
    if print_bpf:
        from . import layout, loader
        click.echo(" ".join(loader.compile_flags(filters, aggregates=aggregates, transitions=transitions_to is not None,
                                                 max_socks=max_sockets or loader.MAX_SOCKS)))
        click.echo(layout.PROGRAM.read_text(), nl=False)
        return
    from .progress import Progress
    from .session import Tracer, run, stop_on_signals
    with stop_on_signals() as stop:
        tracer = Tracer(filters, record, timewait=timewait, netns=netns_path, aggregates=aggregates,
                        transitions_to=transitions_to, max_socks=max_sockets)
        click.echo("Tracing TCP closes... " + ("Ctrl-C to end." if duration is None else f"for {duration:g} s."), err=True)
        events, run_info = run(tracer, stop, duration, progress=Progress(progress), announce=announce)
        report(events, run_info, out, err=transitions_to == "-")  # stdout holds the transitions


@main.command(context_settings=CONTEXT)
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

    from . import states as socket_states
    from .session import stop_on_signals

    netns_path = netns_option_path(netns)
    with stop_on_signals() as stop:
        while True:
            counts = socket_states.counts(socket_states.sockets_now(filters, netns_path))
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


@main.command(context_settings=CONTEXT)
@click.argument("run", required=False, type=click.Path(exists=True, path_type=Path))
@netns_option
@click.option("--json", "as_json", is_flag=True, help="The findings as one JSON object.")
@expected_errors
def doctor(run, netns, as_json):
    """Say what applies to this host about TIME_WAIT and CLOSE_WAIT, with the evidence.

    Reads the kernel release, the TCP sysctls, the TcpExt counters and the
    sockets there now; RUN, a --record file or an --out directory, adds what
    that trace found.  It never changes a setting.

    \b
    Examples:
      tcpclose doctor
      tcpclose doctor out/                 # with a trace's findings
      sudo tcpclose doctor --netns web1 --json
    """
    import json as json_lib

    from . import doctor as checks

    result = checks.examine(netns_option_path(netns), run)
    click.echo(json_lib.dumps(result, indent=1) if as_json else checks.render(result))


@main.command("report", context_settings=CONTEXT)
@click.argument("recording", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_option
@expected_errors
def report_command(recording, out):
    """The same reports from a --record file; needs no root.

    \b
    Example:
      tcpclose report pg.jsonl -o out/
    """
    from .session import announce_long_end, stop_on_signals

    with stop_on_signals() as stop:
        stop.finishing()  # nothing to trace: a signal goes to the files' writing at once
        events, run_info = records.read_recording(recording)
        announce_long_end(len(events), announce)
        report(events, run_info, out)


@main.command(context_settings=CONTEXT)
@out_option
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="Keep the event stream as JSONL too.")
@expected_errors
def demo(out, record):
    """Trace a built-in loopback workload and show the summary (root, a few seconds);
    with -o, write every file and the incident report too.

    \b
    The workload is three pairs of processes:
      demo-client closes first on its connections to demo-echo,
      demo-web closes first on its connections from demo-poller,
      demo-leaky never closes the connections demo-caller made (CLOSE_WAIT).
    Example:
      sudo tcpclose demo -o demo-out/
    """
    from . import demo as workload
    from .session import Tracer, stop_on_signals

    with stop_on_signals() as stop:
        tracer = Tracer(Filters(), record)
        click.echo("Tracing TCP closes while the demo workload runs...", err=True)
        procs = []
        try:
            for pair in workload.PAIRS:
                click.echo(f"  {pair.client_comm} -> {pair.server_comm}: {pair.story}", err=True)
            procs = workload.start()
            stop.wait(0.3)  # let the last FINs and ACKs land
            stop.finishing()
            events, run_info = tracer.finish()
        finally:
            workload.release(procs)
        report(events, run_info, out, show=True)


if __name__ == "__main__":
    main()
