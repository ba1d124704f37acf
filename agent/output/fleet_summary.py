"""The summary of what a fleet's agents reported to Prometheus (metrics.fleet), in the words
of a trace's: who closes first, the TIME_WAITs and how they ended, the CLOSE_WAITs left
open, the ports running out."""
from __future__ import annotations

import io
import json
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..labels import printable, span_text
from ..metrics.fleet import REASONS, Fleet
from ..safefiles import OutputDir
from .files import spreadsheet_safe

COLUMNS = [  # the rest (simultaneous closes, resets, overflows) in the lines below the table
    ("WORKLOAD", "comm"), ("CLOSES", "connections"), ("ACTIVE", "active_closes"), ("PASSIVE", "passive_closes"),
    ("TIME_WAIT", "timewait_count"), ("TW_P50_S", "timewait_p50_s"), ("CLOSE_WAIT", "close_wait_open"),
    ("OLDEST_CW_S", "close_wait_max_age_s"),
]


def _cell(value) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def render(fleet: Fleet, source: str, width: int = 120, top: int | None = 20) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, emoji=False)
    rows = fleet.workloads
    shown = rows if top is None else rows.head(top)
    console.print(
        f"tcpclose: {int(rows['connections'].sum()):,} socket lives closed in {len(rows):,} workloads, as "
        f"{len(fleet.instances)} agent(s) reported them to {printable(source)} in the "
        f"{span_text(fleet.seconds)} to {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(fleet.end))} UTC")
    table = Table(box=None, pad_edge=False, show_edge=False)
    for title, _ in COLUMNS:
        table.add_column(title, justify="left" if title == "WORKLOAD" else "right", no_wrap=True)
    for row in shown.itertuples(index=False):
        table.add_row(*(printable(row.comm) if column == "comm" else _cell(getattr(row, column)) for _, column in COLUMNS))
    console.print(table)
    if len(rows) > len(shown):
        console.print(f"  ... {len(rows) - len(shown):,} other workloads ({int(rows['connections'][len(shown):].sum()):,} "
                      "socket lives): --top 0 shows them all")

    console.print("\nWho closes first")
    for row in shown.itertuples(index=False):
        closed = row.active_closes + row.passive_closes + row.simultaneous_closes
        name = printable(row.comm)
        if row.active_closes:
            console.print(f"  {name} closed first on {row.active_closes:,} of {closed:,} closes: "
                          f"{row.timewait_count:,} TIME_WAITs on its side")
        elif row.passive_closes:
            console.print(f"  {name} closed after its peer on {row.passive_closes:,} of {closed:,} "
                          "closes (passive: no TIME_WAIT on its side)")
        if row.simultaneous_closes:
            console.print(f"  {name}: {row.simultaneous_closes:,} simultaneous closes (TIME_WAIT on both sides)")
        if row.resets_local or row.resets_remote:
            console.print(f"  {name}: {row.resets_local:,} connections reset by itself, {row.resets_remote:,} "
                          "by its peer")

    console.print("\nHow the TIME_WAITs ended (median lifetime)")
    for row in shown[shown["timewait_count"] > 0].itertuples(index=False):
        ends = ", ".join(f"{getattr(row, 'timewait_' + r):,} {r}" for r in REASONS if getattr(row, "timewait_" + r))
        median = "" if pd.isna(row.timewait_p50_s) else f"; median {row.timewait_p50_s:.1f} s"
        unlinked = (f"; {row.timewait_unlinked:,} due and not seen made (tcp_max_tw_buckets, or a timer "
                    "event missed)") if row.timewait_unlinked else ""
        console.print(f"  {printable(row.comm)}: {ends or 'none ended yet'}{median}{unlinked}")
    if fleet.overflows:
        console.print(f"  The kernels made {fleet.overflows:,} TIME_WAITs fewer than due: tcp_max_tw_buckets was "
                      "reached (TCPTimeWaitOverflow)")

    console.print("\nOpen CLOSE_WAIT at the end (the peer closed; the owner has not called close())")
    leaking = rows[rows["close_wait_open"] > 0]
    if not len(leaking):
        console.print("  none")
    for row in leaking.itertuples(index=False):
        oldest = "" if pd.isna(row.close_wait_max_age_s) else f", the oldest {row.close_wait_max_age_s:,.0f} s old"
        console.print(f"  {printable(row.comm)}: {row.close_wait_open:,} sockets in CLOSE_WAIT{oldest}")

    console.print("\nEphemeral ports: the least headroom towards a destination over the range")
    if not len(fleet.headroom):
        console.print("  no client TIME_WAITs held")
    for row in fleet.headroom.itertuples(index=False):
        console.print(f"  {printable(row.instance)}: {printable(row.source)} -> {printable(row.destination)}: "
                      f"{row.headroom:.0%} of the range free at the lowest")
    console.print("\nNot seen by the agents: " + (", ".join(f"{n:,} {what}" for what, n in sorted(fleet.unseen.items()))
                                                  or "nothing reported"))
    console.print("Counts are Prometheus' increase() over the range, rounded; a workload first seen inside it "
                  "counts from 0.")
    return out.getvalue()


def write(out: OutputDir, fleet: Fleet, source: str, text: str, top: int | None = 20) -> list:
    """summary.txt, workloads.csv (a row per workload), fleet.json (the range, the agents,
    what they could not see) and report.html (output.fleet_report)."""
    from . import fleet_report  # matplotlib: imported only when a report is written

    out.write_text("fleet.json", json.dumps({
        "prometheus": source, "end": fleet.end, "seconds": fleet.seconds, "instances": fleet.instances,
        "unseen": fleet.unseen, "timewait_overflows": fleet.overflows,
        "headroom": fleet.headroom.to_dict("records")}, indent=2) + "\n")
    out.write_text("summary.txt", text)
    with out.replacing("workloads.csv") as f:
        spreadsheet_safe(fleet.workloads).to_csv(f, index=False, float_format="%.3f")
    out.write_text("report.html", fleet_report.render(fleet, source, text, top))
    return [out.path / name for name in ("summary.txt", "workloads.csv", "fleet.json", "report.html")]
