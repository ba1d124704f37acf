"""The terminal summary: who closes first, who holds the TIME_WAITs, open CLOSE_WAITs, what was not seen."""
from __future__ import annotations

import io
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from .aggregate import open_close_waits
from .ports import describe
from .profile import SHORT_S

_TABLE_COLUMNS = [
    ("PID", "pid"), ("COMM", "comm"), ("CONNS", "connections"), ("ACTIVE", "active_closes"),
    ("PASSIVE", "passive_closes"), ("SIMUL", "simultaneous_closes"), ("RST_LOCAL", "resets_local"),
    ("RST_REMOTE", "resets_remote"), ("TIME_WAIT", "timewait_count"), ("CLOSE_WAIT", "close_wait_open"),
    ("OLDEST_CW_S", "close_wait_max_age_s"),
]


OLDEST_CLOSE_WAITS = 5  # listed one by one per process
DESTINATIONS_SHOWN = 5  # the most pressed ephemeral-port destinations; ports.csv has all


def close_wait_age(row) -> str:
    """A CLOSE_WAIT's age; for one begun before tracing, the snapshot gives only a lower bound."""
    if pd.isna(row.close_wait_age_s):
        return "age unknown (begun before tracing)"
    return (f"at least {row.close_wait_age_s:.1f} s (begun before tracing)" if row.partial
            else f"{row.close_wait_age_s:.1f} s")


def who(row) -> str:
    return f"{row.comm} (pid {row.pid})" if not pd.isna(row.pid) else "unknown owner"


def _cell(value) -> str:
    if pd.isna(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def evicted(run: dict) -> int:
    """Lives the BPF side lost track of: the LRU map evicts silently, so they are
    the lives started, less those ended, less those still open, plus those that
    never fitted."""
    c = run.get("counters", {})
    gone = c.get("lives_started", 0) - c.get("lives_ended", 0) - run.get("open_lives", 0)
    return max(gone, 0) + c.get("socks_full", 0)


def timewaits_evicted(run: dict) -> int:
    """Timewait sockets the BPF side did not follow to their end: those linked, less those
    ended, less those still open (the stale entries swept, whose end went unseen), plus those
    neither tw_slots nor the tws map had room for."""
    c = run.get("counters", {})
    gone = c.get("tw_linked", 0) - c.get("tw_ended", 0) - run.get("open_timewaits", 0)
    return max(gone, 0) + c.get("tw_full", 0)


RECONCILED = [  # (what, TcpExt counter)
    ("timewait sockets created (TW)", "TW"),
    ("  armed for <= 4 s (TWKilled)", "TWKilled"),
    ("4-tuples taken over by connect() (TWRecycled)", "TWRecycled"),
    ("never created: tcp_max_tw_buckets full (TCPTimeWaitOverflow)", "TCPTimeWaitOverflow"),
]


def _our_counts(conns: pd.DataFrame) -> dict[str, int]:
    """tcpclose's own counts, as the kernel counts: timewait sockets at creation,
    TW when armed for more than 4 s and TWKilled for 4 s or less."""
    made = conns["tw_start"].notna()
    short = made & (conns["tw_timeout_s"] <= 4.0)
    return {
        "TW": int((made & ~short).sum()),
        "TWKilled": int(short.sum()),
        "TWRecycled": int((conns["tw_end_reason"] == "reused").sum()),
        "TCPTimeWaitOverflow": int(conns["tw_overflow"].sum()),
    }


def reconcile(conns: pd.DataFrame, run: dict) -> list[dict]:
    """Per network namespace: the kernel's TcpExt counts over the run beside tcpclose's.

    Returns [{"netns", "name", "kernel": {counter: n or None}, "tcpclose": {counter: n}}], the
    namespace tcpclose runs in first, then every other one where either side counted
    something; lives whose owner's namespace is not known come last (netns None).
    """
    tcpext = run.get("tcpext", {})
    start, end = tcpext.get("start", {}), tcpext.get("end", {})
    netns_col = conns["netns"]
    out = []
    order = [run.get("netns")] + sorted((set(start) | set(netns_col.dropna())) - {run.get("netns")})
    for ns in order:
        before = start.get(ns, {}).get("counters", {})
        after = end.get(ns, {}).get("counters", {})
        kernel = {c: after[c] - before[c] if c in before and c in after else None for _, c in RECONCILED}
        ours = _our_counts(conns[netns_col == ns])
        if ns == run.get("netns") or any(kernel.values()) or any(ours.values()):
            name = (start.get(ns) or end.get(ns) or {}).get("name", "")
            out.append({"netns": ns, "name": name, "kernel": kernel, "tcpclose": ours})
    unknown = _our_counts(conns[netns_col.isna()])
    if any(unknown.values()):
        out.append({"netns": None, "name": "", "kernel": {c: None for _, c in RECONCILED}, "tcpclose": unknown})
    return out


def unseen(run: dict) -> dict[str, int]:
    """What the run could not see, from the BPF counters (all zero is the good case)."""
    c = run.get("counters", {})
    return {
        "ring-buffer drops": c.get("ringbuf_drops", 0),
        "lives evicted (map full or a missed close)": evicted(run),
        "lives begun before tracing": c.get("partial", 0),
        "transitions the kernel skipped (BPF recursion)": c.get("recursion_misses", 0),
        "lives whose close was skipped (ended at their last transition seen)": c.get("missed_close", 0),
        "timewait sockets no close claimed": c.get("tw_unlinked", 0),
        "timewait sockets not followed to their end (map full or swept)": timewaits_evicted(run),
    }


def analysis_skipped_line(skipped: dict) -> str:
    """Why a run was counted per process only (session.Tracer._analysable)."""
    gib = 2 ** 30
    return (f"Too many socket lives to analyse in memory: {skipped['records']:,} records would need about "
            f"{skipped['needed_bytes'] / gib:.1f} GiB, with {skipped['available_bytes'] / gib:.1f} GiB available. "
            "They were counted per process only, as --aggregates does: no connections.csv and no report.html. "
            "For per-connection files trace for less time (-d) or narrow it with filters; for long runs at "
            "this rate use --aggregates.")


def transitions_line(t: dict) -> str:
    """--transitions: what the raw stream holds, and what it lost."""
    where = "stdout" if t["file"] == "-" else t["file"]
    line = f"Transitions: {t['written']} of {t['offered']} written to {where}"
    if t["lost"]:
        line += f"; {t['lost']} lost (their ring buffer was full: the writer fell behind)"
    if t["in_flight_at_end"]:
        line += f"; {t['in_flight_at_end']} offered as tracing ended, after the last read"
    return line


def _timewait_section(console: Console, conns: pd.DataFrame, procs: pd.DataFrame, run: dict) -> None:
    method = run.get("timewait_method")
    console.print("\nTIME_WAIT lifetimes")
    why = run.get("timewait_method_why") or "an older recording"
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
        if ended:
            parts.append(f"{ended} ended: p50 {row.timewait_p50_s:.1f} s, p95 {row.timewait_p95_s:.1f} s, "
                         f"max {row.timewait_max_s:.1f} s")
        reasons = [f"{getattr(row, 'timewait_' + r)} {r}" for r in ("expired", "reused", "killed", "open", "unknown")
                   if getattr(row, "timewait_" + r)]
        if reasons:
            parts.append(", ".join(reasons))
        if row.timewait_overflow:
            parts.append(f"{row.timewait_overflow} never made (tcp_max_tw_buckets full: no TIME_WAIT protection)")
        console.print(f"  {who(row)}: " + "; ".join(parts))
    fin_wait2 = conns["tw_fin_wait2_s"].dropna()
    if len(fin_wait2):
        console.print(f"  {len(fin_wait2)} waited in FIN_WAIT2 substate for the peer's FIN first "
                      f"(p50 {fin_wait2.quantile(0.5):.1f} s, max {fin_wait2.max():.1f} s)")

    _reconciliation(console, conns, run)


def _reconciliation(console: Console, conns: pd.DataFrame, run: dict) -> None:
    namespaces = reconcile(conns, run)
    console.print("\nKernel counters (TcpExt, per network namespace) beside tcpclose's own counts")
    grid = Table(box=None, pad_edge=False, show_edge=False)
    for title in ("NETWORK NAMESPACE / COUNTER", "KERNEL", "TCPCLOSE"):
        grid.add_column(title, justify="right" if title != "NETWORK NAMESPACE / COUNTER" else "left", no_wrap=True)
    for ns in namespaces:
        label = ns["netns"] or "owner's namespace not known (it exited first)"
        if ns["name"]:
            label += f" ({ns['name']})"
        if ns["netns"] == run.get("netns"):
            label += " (tcpclose's own)"
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
        console.print(f"  {who(row)}: {row.opened} opened, {row.opened_per_s:.1f}/s "
                      f"(busiest {row.peak_opened_per_s:.0f}/s){durations}")


def duration_text(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _ports_section(console: Console, pressure: pd.DataFrame) -> None:
    console.print("\nEphemeral ports (connections this host opened, per local address and destination)")
    if not len(pressure):
        console.print("  this host opened no connection while tracing")
    for row in pressure.head(DESTINATIONS_SHOWN).itertuples(index=False):
        console.print(f"  {'WARNING ' if row.warning else ''}{describe(row)}")


def render(conns: pd.DataFrame, procs: pd.DataFrame, run: dict, width: int = 120,
           pressure: pd.DataFrame | None = None) -> str:
    """The terminal summary.  procs with profile's churn columns adds the churn section,
    pressure (ports.pressure) the ephemeral-port one."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, emoji=False)
    started, ended = run["started_at"], run["ended_at"]
    console.print(
        f"tcpclose: {int(procs['connections'].sum())} socket lives of {len(procs)} processes, "
        f"traced {ended - started:.1f} s "
        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))} to "
        f"{time.strftime('%H:%M:%S', time.gmtime(ended))} UTC)"
    )
    table = Table(box=None, pad_edge=False, show_edge=False)
    for title, _ in _TABLE_COLUMNS:
        table.add_column(title, justify="left" if title == "COMM" else "right", no_wrap=True)
    for row in procs.itertuples(index=False):
        table.add_row(*(_cell(getattr(row, column)) for _, column in _TABLE_COLUMNS))
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

    cw = open_close_waits(conns, ended)
    console.print("\nOpen CLOSE_WAIT (the peer closed; the owner has not called close())")
    if not len(cw):
        console.print("  none")
    for (pid, comm), group in cw.groupby(["pid", "comm"], dropna=False, sort=False):
        owner = f"{comm} (pid {pid})" if not pd.isna(pid) else "unknown owner"
        console.print(f"  {owner}: {len(group)} sockets in CLOSE_WAIT, oldest {close_wait_age(group.iloc[0])}: "
                      "it forgot to close them")
        for row in group.head(OLDEST_CLOSE_WAITS).itertuples(index=False):
            fd = "fd ?" if pd.isna(row.fd) else f"fd {row.fd}"
            console.print(f"    {fd:>7}  {row.laddr}:{row.lport} <- {row.raddr}:{row.rport}  {close_wait_age(row)}")

    _timewait_section(console, conns, procs, run)
    if "opened_per_s" in procs:
        _churn_section(console, procs)
    if pressure is not None:
        _ports_section(console, pressure)

    console.print("\nNot seen: " + ", ".join(f"{count} {what}" for what, count in unseen(run).items()))
    if "transitions" in run:
        console.print(transitions_line(run["transitions"]))
    if "analysis_skipped" in run:
        console.print(analysis_skipped_line(run["analysis_skipped"]))
    if run.get("cut_short"):
        console.print("The recording was cut short: the tracer did not finish it.")
    return out.getvalue()
