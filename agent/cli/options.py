"""What the commands share: click settings, the filter options (bcc's letters where they
overlap), -o, --netns, and one-line errors for expected failures."""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import Abandoned, NotRoot, TcpcloseError
from ..filters import AF_INET, AF_INET6, Filters

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PID_MAX_LIMIT = 4194304  # the largest pid a 64-bit kernel hands out (kernel.pid_max's ceiling)


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


MAX_DURATION_S = 10 * 365 * 86400.0  # -d: ten years is "until stopped"; use no -d for that


def finite(value: float | None, param) -> float | None:
    """A number option that must be a number: click's ranges let nan through."""
    if value is not None and value != value:
        raise click.BadParameter("give a number of seconds", param=param)
    return value


def announce(text: str) -> None:
    click.echo(f"tcpclose: {text}", err=True)


OUT_HELP = ("Write connections.csv, processes.csv, peers.csv, ports.csv, timeline.csv, summary.txt, summary.json, "
            "report.html and run.json into this directory.")


def out_option(func=None, *, what: str = OUT_HELP):
    """-o DIR, --format and --force (the command opens the directory with output_dir());
    @out_option(what=...) says what -o writes where the command writes it otherwise."""
    if func is None:
        return functools.partial(out_option, what=what)
    func = click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True,
                        help="With -o: the connection rows as connections.csv, or as connections.parquet (every "
                             "column, typed, zstd: for tens of millions of rows).")(func)
    func = click.option("--force", is_flag=True,
                        help="Write into a directory that belongs to another user and that others can write in "
                             "(refused by default: a file there could be a planted link).")(func)
    return click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), help=what)(func)


@dataclass(frozen=True)
class View:
    """How a finished run is shown: rows grouped `by` process name or pid, `top` rows a table
    (None: all).  The files keep every process (processes.csv) and every name (workloads.csv)."""
    by: str = "comm"
    top: int | None = 20


def view_options(func):
    """--by and --top, handed to the command as one View."""
    from ..analysis.workloads import BY, DEFAULT_TOP

    @functools.wraps(func)
    def wrapper(*args, by, top, **kwargs):
        return func(*args, view=View(by, top or None), **kwargs)
    wrapper = click.option("--top", type=click.IntRange(min=0), default=DEFAULT_TOP, show_default=True,
                           help="Rows per table on the terminal and in report.html, the rest summed in one "
                                "'others' row (0: all).")(wrapper)
    return click.option("--by", type=click.Choice(list(BY)), default="comm", show_default=True,
                        help="Group the summary, findings and report by process name (a curl loop is one row: "
                             "'curl (2,954 processes)'), by workload (the container, else the systemd unit, else "
                             "the name), or show each pid.")(wrapper)


def output_dir(out: Path | None, force: bool):
    """The directory of -o opened (and made) now, so that one that cannot be written fails
    before anything is traced (safefiles.OutputDir); None without -o."""
    from ..safefiles import OutputDir

    return OutputDir(out, force) if out else None


def filter_options(func):
    """-p, -c, -L, -D, -4, -6, handed to the command as one Filters (trace and states)."""
    options = [
        click.option("-p", "--pid", type=click.IntRange(min=1, max=PID_MAX_LIMIT),
                     help="Only connections owned by this process."),
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
    from ..kernel.netns import named_netns

    if name is not None and (not name or "/" in name or name in (".", "..") or "\0" in name):
        raise click.BadParameter(f"{name!r} is not a namespace name: give one 'ip netns list' shows",
                                 param_hint="--netns")
    path = named_netns(name) if name else None
    if name and path is None:
        raise click.BadParameter(f"no network namespace {name!r}: see 'ip netns list'", param_hint="--netns")
    if path is not None and os.geteuid() != 0:
        raise NotRoot(f"entering network namespace {name!r} needs root: run 'sudo tcpclose ... --netns {name}', "
                      f"or 'sudo ip netns exec {name} tcpclose ...' without --netns")
    return path
