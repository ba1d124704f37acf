"""The terminal summary: who closes first, who holds the TIME_WAITs, open CLOSE_WAITs, what was not seen."""
from __future__ import annotations

import io
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from .aggregate import open_close_waits

_TABLE_COLUMNS = [
    ("PID", "pid"), ("COMM", "comm"), ("CONNS", "connections"), ("ACTIVE", "active_closes"),
    ("PASSIVE", "passive_closes"), ("SIMUL", "simultaneous_closes"), ("RST_LOCAL", "resets_local"),
    ("RST_REMOTE", "resets_remote"), ("TIME_WAIT", "timewait_count"), ("CLOSE_WAIT", "close_wait_open"),
    ("OLDEST_CW_S", "close_wait_max_age_s"),
]


def _who(row) -> str:
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


def unseen(run: dict) -> dict[str, int]:
    """What the run could not see, from the BPF counters (all zero is the good case)."""
    c = run.get("counters", {})
    return {
        "ring-buffer drops": c.get("ringbuf_drops", 0),
        "lives evicted (map full or a missed close)": evicted(run),
        "lives begun before tracing": c.get("partial", 0),
        "transitions the kernel skipped (BPF recursion)": c.get("recursion_misses", 0),
        "lives whose close was skipped (ended at their last transition seen)": c.get("missed_close", 0),
    }


def render(conns: pd.DataFrame, procs: pd.DataFrame, run: dict, width: int = 120) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, emoji=False)
    started, ended = run["started_at"], run["ended_at"]
    console.print(
        f"tcpclose: {len(conns)} socket lives of {len(procs)} processes, traced {ended - started:.1f} s "
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
            console.print(f"  {_who(row)} closed first on {row.active_closes} of {closed} closes: "
                          f"it holds their {row.timewait_count} TIME_WAIT sockets")
            lines += 1
        if row.passive_closes:
            console.print(f"  {_who(row)} closed after its peer on {row.passive_closes} of {closed} closes "
                          "(passive: no TIME_WAIT on its side)")
            lines += 1
        if row.simultaneous_closes:
            console.print(f"  {_who(row)}: {row.simultaneous_closes} simultaneous closes (TIME_WAIT on both sides)")
            lines += 1
    if not lines:
        console.print("  no connection was closed with FINs while tracing")

    cw = open_close_waits(conns, ended)
    console.print("\nOpen CLOSE_WAIT (the peer closed; the owner has not called close())")
    if not len(cw):
        console.print("  none")
    for (pid, comm), group in cw.groupby(["pid", "comm"], dropna=False, sort=False):
        oldest = group.iloc[0]
        owner = f"{comm} (pid {pid})" if not pd.isna(pid) else "unknown owner"
        console.print(f"  {owner}: {len(group)} sockets in CLOSE_WAIT, oldest {oldest.close_wait_age_s:.1f} s "
                      f"(peer {oldest.raddr}:{oldest.rport}): it forgot to close them")

    console.print("\nNot seen: " + ", ".join(f"{count} {what}" for what, count in unseen(run).items()))
    if run.get("cut_short"):
        console.print("The recording was cut short: the tracer did not finish it.")
    return out.getvalue()
