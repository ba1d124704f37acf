"""The terminal summary: who closes first, who holds the TIME_WAITs, open CLOSE_WAITs, what was not seen."""
from __future__ import annotations

import io
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..analysis.tally import SHORT_S, Tally
from ..analysis.findings import close_wait_owner, listen_queues
from ..analysis.ports import describe
from ..analysis.processes import PER_PROCESS, open_close_waits
from ..analysis.reconcile import RECONCILED, reconcile
from ..analysis.accounting import unseen
from ..record.runinfo import RunInfo
from ..labels import close_wait_age, duration_text, printable, who

_TABLE_COLUMNS = [
    ("PID", "pid"), ("COMM", "comm"), ("CONNS", "connections"), ("ACTIVE", "active_closes"),
    ("PASSIVE", "passive_closes"), ("SIMUL", "simultaneous_closes"), ("RST_LOCAL", "resets_local"),
    ("RST_REMOTE", "resets_remote"), ("TIME_WAIT", "timewait_count"), ("CLOSE_WAIT", "close_wait_open"),
    ("OLDEST_CW_S", "close_wait_max_age_s"),
]


OLDEST_CLOSE_WAITS = 5  # listed one by one per process
DESTINATIONS_SHOWN = 5  # the most pressed ephemeral-port destinations; ports.csv has all


def _cell(value) -> str:
    if pd.isna(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def analysis_skipped_line(skipped: dict) -> str:
    """Why a run was counted per process only (run.memory)."""
    gib = 2 ** 30
    return (f"Too many socket lives to analyse in memory: {skipped['records']:,} records would need about "
            f"{skipped['needed_bytes'] / gib:.1f} GiB, with {skipped['available_bytes'] / gib:.1f} GiB available. "
            "They were counted per process only, as --aggregates does: no connections.csv and no report.html. "
            "With -o DIR the rows are whole in DIR/connections.arrow: 'tcpclose report DIR -o OTHER' on a host "
            "with more memory writes every file. Else trace for less time (-d) or narrow it with filters; for "
            "long runs at this rate use --aggregates.")


def transitions_line(t: dict) -> str:
    """--transitions: what the raw stream holds, and what it lost."""
    where = "stdout" if t["file"] == "-" else t["file"]
    line = f"Transitions: {t['written']} of {t['offered']} written to {where}"
    if t["lost"]:
        line += f"; {t['lost']} lost (their ring buffer was full: the writer fell behind)"
    if t.get("stopped"):
        line += f"; the file stopped early ({t['stopped']}): {t['in_flight_at_end']} not written after it"
    elif t["in_flight_at_end"]:
        line += f"; {t['in_flight_at_end']} offered as tracing ended, after the last read"
    return line


def _timewait_section(console: Console, tally: Tally, procs: pd.DataFrame, run: RunInfo) -> None:
    method = run.timewait_method
    console.print("\nTIME_WAIT lifetimes")
    why = run.timewait_method_why or "an older recording"
    if method == "timers":
        console.print("  measured from the timewait timers (timer tracepoints, callback tw_timer_handler)")
    elif method == "diag":
        console.print(f"  measured by polling sock_diag every second, as ss does (timers not followed: {why}): "
                      "expiries to the millisecond, early ends to the second, this network namespace only")
    else:
        console.print(f"  not measured ({why}): TIME_WAITs are counted at their start only")
        return
    rows = procs[(procs["timewait_count"] > 0) | (procs["timewait_overflow"] > 0)]
    if not len(rows):
        console.print("  no TIME_WAIT was made while tracing")
    for row in rows.itertuples(index=False):
        ended = row.timewait_expired + row.timewait_reused + row.timewait_killed
        parts = [f"{row.timewait_count} made"]
        if ended and not pd.isna(row.timewait_p50_s):
            parts.append(f"{ended} ended: p50 {row.timewait_p50_s:.1f} s, p95 {row.timewait_p95_s:.1f} s, "
                         f"max {row.timewait_max_s:.1f} s")
        reasons = [f"{getattr(row, 'timewait_' + r)} {r}" for r in ("expired", "reused", "killed", "open", "unknown")
                   if getattr(row, "timewait_" + r)]
        if reasons:
            parts.append(", ".join(reasons))
        if row.timewait_overflow:
            parts.append(f"{row.timewait_overflow} never made (tcp_max_tw_buckets full: no TIME_WAIT protection)")
        console.print(f"  {who(row)}: " + "; ".join(parts))
    waited, p50, longest = tally.fin_wait2()
    if waited:
        console.print(f"  {waited} waited in FIN_WAIT2 substate for the peer's FIN first "
                      f"(p50 {p50:.1f} s, max {longest:.1f} s)")

    _reconciliation(console, tally, run)


def _reconciliation(console: Console, tally: Tally, run: RunInfo) -> None:
    namespaces = reconcile(tally, run)
    console.print("\nKernel counters (TcpExt, per network namespace) beside tcpclose's own counts")
    grid = Table(box=None, pad_edge=False, show_edge=False)
    for title in ("NETWORK NAMESPACE / COUNTER", "KERNEL", "TCPCLOSE"):
        grid.add_column(title, justify="right" if title != "NETWORK NAMESPACE / COUNTER" else "left", no_wrap=True)
    for ns in namespaces:
        label = ns["netns"] or "owner's namespace not known (it exited first)"
        if ns["name"]:
            label += f" ({ns['name']})"
        if ns["netns"] == run.netns:
            label += " (where tcpclose read sockets and counters)"
        grid.add_row("  " + label, "", "")
        for what, counter in RECONCILED:
            kernel = ns["kernel"][counter]
            grid.add_row("    " + what, "-" if kernel is None else str(kernel), str(ns["tcpclose"][counter]))
    console.print(grid)
    differ = [ns for ns in namespaces if any(ns["kernel"][c] is not None and ns["kernel"][c] != ns["tcpclose"][c]
                                             for _, c in RECONCILED)]
    if differ:
        console.print("  Where they differ: filters left sockets out, the kernel counted timewait sockets of lives "
                      "that began before tracing or whose owner exited before its namespace was read, or events "
                      "were lost (see Not seen).")


def _churn_section(console: Console, procs: pd.DataFrame) -> None:
    """Connection rate and duration per process (the churn columns of processes.csv)."""
    console.print("\nChurn (connections opened while tracing)")
    rows = procs[procs["opened"] > 0]
    if not len(rows):
        console.print("  no connection was opened while tracing")
    for row in rows.itertuples(index=False):
        durations = ("" if pd.isna(row.duration_p50_s) else
                     f"; lived p50 {duration_text(row.duration_p50_s)}, p95 {duration_text(row.duration_p95_s)}, "
                     f"p99 {duration_text(row.duration_p99_s)}, {row.short_share:.0%} under {SHORT_S:.0f} s")
        busiest = "" if pd.isna(row.peak_opened_per_s) else f" (busiest {row.peak_opened_per_s:.0f}/s)"
        console.print(f"  {who(row)}: {row.opened} opened, {row.opened_per_s:.1f}/s{busiest}{durations}")


def _ports_section(console: Console, pressure: pd.DataFrame) -> None:
    console.print("\nEphemeral ports (connections this host opened, per local address and destination)")
    if not len(pressure):
        console.print("  this host opened no connection while tracing")
    for row in pressure.head(DESTINATIONS_SHOWN).itertuples(index=False):
        console.print(f"  {'WARNING ' if row.warning else ''}{describe(row)}")


def render(tally: Tally, procs: pd.DataFrame, run: RunInfo, width: int = 120,
           pressure: pd.DataFrame | None = None, keys: list[str] = PER_PROCESS) -> str:
    """The terminal summary of a run's figures (analysis.tally).  procs: its rows, per process or grouped by name (keys, see
    analysis.workloads), cut to the top ones or not; with the churn columns
    (analysis.processes.processes) it adds the churn section, pressure (analysis.ports.pressure)
    the ephemeral-port one."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, emoji=False)
    started, ended = run.started_at, run.ended_at
    processes = int(procs["processes"].sum()) if "processes" in procs else len(procs)
    console.print(
        f"tcpclose: {int(procs['connections'].sum())} socket lives of {processes:,} processes, "
        f"traced {ended - started:.1f} s "
        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))} to "
        f"{time.strftime('%H:%M:%S', time.gmtime(ended))} UTC)"
    )
    table = Table(box=None, pad_edge=False, show_edge=False)
    columns = _TABLE_COLUMNS
    if "processes" in procs and (procs["processes"] > 1).any():  # rows that fold several processes of a name
        columns = [*columns[:2], ("PROCS", "processes"), *columns[2:]]
    if "netns" in procs and procs["netns"].dropna().nunique() > 1:  # two containers may share pids and names
        columns = [*_TABLE_COLUMNS[:2], ("NETNS", "netns"), *_TABLE_COLUMNS[2:]]
    for title, _ in columns:
        table.add_column(title, justify="left" if title in ("COMM", "NETNS") else "right", no_wrap=True)
    for row in procs.itertuples(index=False):
        table.add_row(*(printable(row.comm) if column == "comm" else _cell(getattr(row, column))
                        for _, column in columns))
    console.print(table)

    console.print("\nWho closes first")
    lines = 0
    for row in procs.itertuples(index=False):
        closed = row.active_closes + row.passive_closes + row.simultaneous_closes
        if row.active_closes:
            console.print(f"  {who(row)} closed first on {row.active_closes} of {closed} closes: "
                          f"it holds their {row.timewait_count} TIME_WAIT sockets")
            lines += 1
        if row.passive_closes:
            console.print(f"  {who(row)} closed after its peer on {row.passive_closes} of {closed} closes "
                          "(passive: no TIME_WAIT on its side)")
            lines += 1
        if row.simultaneous_closes:
            console.print(f"  {who(row)}: {row.simultaneous_closes} simultaneous closes (TIME_WAIT on both sides)")
            lines += 1
    if not lines:
        console.print("  no connection was closed with FINs while tracing")

    cw = open_close_waits(tally.close_waits(), ended)
    console.print("\nOpen CLOSE_WAIT (the peer closed; the owner has not called close())")
    if not len(cw):
        console.print("  none")
    for _, group in cw.groupby(keys, dropna=False, sort=False):
        console.print(f"  {close_wait_owner(group)}: {len(group)} sockets in CLOSE_WAIT, oldest {close_wait_age(group.iloc[0])}: "
                      "it forgot to close them")
        for row in group.head(OLDEST_CLOSE_WAITS).itertuples(index=False):
            fd = "fd ?" if pd.isna(row.fd) else f"fd {row.fd}"
            console.print(f"    {fd:>7}  {row.laddr}:{row.lport} <- {row.raddr}:{row.rport}  {close_wait_age(row)}")

    _timewait_section(console, tally, procs, run)
    if "opened_per_s" in procs:
        _churn_section(console, procs)
    if pressure is not None:
        _ports_section(console, pressure)
    for found in listen_queues(run):  # (only where a queue overflowed while tracing)
        console.print(f"\nListen queues\n  {found['text']}\n  evidence: {found['evidence']}")

    console.print("\nNot seen: " + ", ".join(f"{count} {what}" for what, count in unseen(run).items()))
    owners = tally.owner_src
    if owners.get("ambiguous", 0) or owners.get("fd_table", 0):
        console.print(f"Owners: {owners.get('fd_table', 0)} lives credited from the fd tables at the end; "
                      f"{owners.get('ambiguous', 0)} ambiguous (a listener several processes share, and "
                      "nothing of their owner's settled it: credited to no one)")
    if run.transitions:
        console.print(transitions_line(run.transitions))
    if run.analysis_skipped:
        console.print(analysis_skipped_line(run.analysis_skipped))
    if run.recording_stopped:
        console.print(f"The recording stopped early ({run.recording_stopped}): what it holds is readable, "
                      "up to where it stopped.")
    if run.lives_pending:
        console.print(f"Still tracing: {run.lives_pending:,} lives whose rows are not final yet (TIME_WAITs alive, "
                      "or records still to read) are not in these figures; the end of the run counts them, "
                      "or 'tcpclose report DIR' if it was killed.")
    if run.lives_carried:
        console.print(f"{run.lives_carried:,} lives whose rows were not final as this period ended (TIME_WAITs "
                      "alive, or records still to read) are in the next period's files.")
    if run.cut_short:
        console.print("The run was cut short: the tracer did not finish it (its figures end where its records do).")
    return out.getvalue()
