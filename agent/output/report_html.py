"""report.html: one self-contained page to attach to an incident.

It opens with the findings in plain words, then the plots (PNG drawn by
matplotlib, embedded as data: URIs, so the file needs no network and no other
file), then what the run could not see.
"""
from __future__ import annotations

import base64
import html
import io
import time

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

from ..analysis import ports
from ..analysis.accounting import unseen
from ..analysis.findings import close_wait_owner
from ..analysis.pipeline import Analysis
from ..analysis.processes import open_close_waits
from ..analysis.tally import LIFETIME_BIN_S
from ..analysis.workloads import BY, top
from ..labels import who

TOP = 10  # processes and destinations per plot
SEVERITY = {"problem": "#b00020", "warning": "#b26a00", "info": "#305080"}
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.finding { border-left: 5px solid; padding: .3em .8em; margin: .6em 0; background: #f7f7f7; }
.finding .evidence { color: #555; font-size: .9em; }
table { border-collapse: collapse; font-size: .85em; } td, th { padding: 2px 8px; text-align: right; }
th { border-bottom: 1px solid #999; } td.l, th.l { text-align: left; }
img { max-width: 100%; } .empty { color: #777; font-style: italic; }
"""


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(section_id: str, title: str, draw, empty_because: str | None) -> str:
    """A section with one plot, or the reason there is nothing to plot."""
    head = f'<h2 id="{section_id}">{html.escape(title)}</h2>\n'
    if empty_because:
        return head + f'<p class="empty">{html.escape(empty_because)}</p>\n'
    fig = Figure(figsize=(10, 3.6))
    draw(fig)
    fig.tight_layout()
    return head + f'<img id="{section_id}-plot" alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}">\n'


def _timewait_over_time(a: Analysis):
    def draw(fig):
        t = a.timeline["since_start_s"]
        ax = fig.add_subplot(1, 2, 1)
        ax.plot(t, a.timeline["timewait"], label="TIME_WAIT")
        ax.plot(t, a.timeline["close_wait"], label="CLOSE_WAIT")
        ax.set(xlabel="seconds since tracing started", ylabel="sockets alive", title="sockets over time")
        ax.legend()
        ax = fig.add_subplot(1, 2, 2)
        width = np.diff(np.r_[0, t])
        ax.step(t, a.timeline["opened"] / width, where="pre")
        ax.set(xlabel="seconds since tracing started", ylabel="per second",
               title="socket lives opened (a loopback connection is two)")
    note = "" if a.run.timewait_followed else " (TIME_WAIT ends not followed: each counted for 60 s)"
    return figure("timewait-over-time", "TIME_WAIT and CLOSE_WAIT sockets over time" + note, draw,
                   None if a.tally.lives else "no socket life was traced")


def log_scale_if_decades(ax, values) -> None:
    """A log x axis where the bars' counts span two decades or more: with 3,000 of one and 3 of
    another, the 3 would not show at all on a linear one."""
    positive = np.asarray(values, dtype=float)
    positive = positive[positive > 0]
    if len(positive) and positive.max() >= 100 * positive.min():
        ax.set_xscale("log")


def _timewait_lifetimes(a: Analysis):
    made = int(a.procs["timewait_count"].sum())
    counts = a.tally.lifetimes  # per LIFETIME_BIN_S
    ended = int(counts.sum())

    def draw(fig):
        ax = fig.add_subplot(1, 2, 1)
        if ended:
            seen = np.flatnonzero(counts)
            lows = np.arange(len(counts)) * LIFETIME_BIN_S
            ax.hist(lows[seen], bins=40, weights=counts[seen])
        else:
            ax.text(0.5, 0.5, "none ended while tracing:\na TIME_WAIT lasts 60 s, trace longer", ha="center",
                    va="center", transform=ax.transAxes)
        ax.set(xlabel=f"TIME_WAIT lifetime (s, to {LIFETIME_BIN_S} s)", ylabel="sockets",
               title=f"{ended} ended while tracing")
        ax = fig.add_subplot(1, 2, 2)
        reasons = pd.Series(a.tally.end_reasons).sort_values(ascending=False)
        ax.barh(reasons.index.astype(str), reasons.to_numpy())
        log_scale_if_decades(ax, reasons.to_numpy())
        ax.set(xlabel="TIME_WAITs", title="how they ended")
    why = None if made else "no TIME_WAIT was made while tracing"
    return figure("timewait-lifetimes", "TIME_WAIT lifetimes and end reasons", draw, why)


def _closes_per_process(a: Analysis):
    procs = a.groups[(a.groups["active_closes"] + a.groups["passive_closes"] + a.groups["simultaneous_closes"]) > 0]
    procs = procs.head(TOP)

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        labels = [who(r) for r in procs.itertuples(index=False)]
        left = np.zeros(len(procs))
        for column, name in (("active_closes", "active (closed first: TIME_WAIT here)"),
                             ("passive_closes", "passive (peer closed first)"),
                             ("simultaneous_closes", "simultaneous")):
            values = procs[column].to_numpy(float)
            ax.barh(labels, values, left=left, label=name)
            left += values
        log_scale_if_decades(ax, left)  # (stacked: the totals decide)
        ax.invert_yaxis()
        ax.set(xlabel="closes")
        ax.legend(loc="lower right")
    return figure("closes", "Who closes first: active vs passive closes per process", draw,
                   None if len(procs) else "no connection was closed with FINs while tracing")


def _churn_per_process(a: Analysis):
    procs = a.groups[a.groups["opened"] > 0].sort_values("opened", ascending=False).head(5)

    def draw(fig):
        ax = fig.add_subplot(1, 2, 1)
        keys = BY[a.by]
        rates = a.tally.owners.opened_rates(keys, a.run.ended_at)
        for row in procs.itertuples(index=False):
            mine = rates.get(tuple(None if pd.isna(getattr(row, k)) else getattr(row, k) for k in keys))
            if mine is not None:
                ax.step(mine.index, mine.to_numpy(), where="post", label=who(row))
        ax.set(xlabel="seconds since tracing started", ylabel="opened per second", title="connection rate")
        ax.legend(fontsize="small")
        ax = fig.add_subplot(1, 2, 2)
        labels = [who(r) for r in procs.itertuples(index=False)]
        y = np.arange(len(procs))
        for offset, column in ((-0.25, "duration_p50_s"), (0, "duration_p95_s"), (0.25, "duration_p99_s")):
            ax.barh(y + offset, procs[column].to_numpy(float) * 1000, height=0.25, label=column[9:12])
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set(xlabel="connection duration (ms)", title="duration percentiles")
        ax.legend(fontsize="small")
    return figure("churn", "Connection rate and duration per process (the 5 busiest)", draw,
                   None if len(procs) else "no connection was opened while tracing")


def _port_pressure(a: Analysis):
    rows = a.pressure.head(TOP)

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        labels = [f"{r.laddr} -> {r.raddr}:{r.rport}" for r in rows.itertuples(index=False)]
        y = np.arange(len(rows))
        ax.barh(y - 0.2, rows["peak_share"] * 100, height=0.4, label="TIME_WAITs at peak")
        ax.barh(y + 0.2, rows["now_share"] * 100, height=0.4, label="at the end")
        ax.axvline(ports.WARN_SHARE * 100, color="red", linestyle="--", label="warning: half the range")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set(xlabel="% of the ephemeral port range (net.ipv4.ip_local_port_range)")
        ax.legend(fontsize="small", loc="lower right")
    return figure("ports", "Ephemeral-port pressure per destination", draw,
                   None if len(rows) else "this host opened no connection while tracing")


def _close_wait_ages(a: Analysis):
    cw = open_close_waits(a.tally.close_waits(), a.run.ended_at).dropna(subset=["close_wait_age_s"])

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        for _, group in list(cw.groupby(BY[a.by], dropna=False, sort=False))[:TOP]:
            ax.hist(group["close_wait_age_s"], bins=30, alpha=0.7, label=close_wait_owner(group))
        ax.set(xlabel="age at the end of tracing (s; for those begun before tracing, at least)",
               ylabel="sockets in CLOSE_WAIT")
        ax.legend(fontsize="small")
    return figure("close-wait", "Open CLOSE_WAITs by age", draw,
                   None if len(cw) else "no socket was left in CLOSE_WAIT")


def page_head(title: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>")


def finding_html(f: dict) -> str:
    return (f'<div class="finding {f["severity"]}" style="border-color:{SEVERITY[f["severity"]]}">'
            f'<b>{html.escape(f["severity"])}</b>: {html.escape(f["text"])}'
            f'<div class="evidence">{html.escape(f["evidence"])}</div></div>')


def table(frame: pd.DataFrame, columns: list[str], left: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(c)}</th>' for c in columns)
    body = []
    for row in frame[columns].itertuples(index=False):
        cells = []
        for c, v in zip(columns, row):
            text = "-" if pd.isna(v) else f"{v:.3g}" if isinstance(v, float) else str(v)
            cells.append(f'<td class="{"l" if c in left else ""}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>\n"


def render(a: Analysis, text_summary: str) -> str:
    run = a.run
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started_at))
    parts = [
        page_head(f"tcpclose report {started}"),
        f"<h1>tcpclose: {a.tally.lives} socket lives of {a.procs['pid'].nunique():,} processes, "
        f"traced {run.traced_s:.1f} s from {html.escape(started)}</h1>",
        '<h2 id="findings">Findings</h2>',
    ]
    parts += [finding_html(f) for f in a.findings]
    parts += [_timewait_over_time(a), _timewait_lifetimes(a), _closes_per_process(a), _churn_per_process(a),
              _port_pressure(a), _close_wait_ages(a)]
    parts.append('<h2 id="processes">Processes' + (" by name" if a.by == "comm" else "") + '</h2>')
    rows = top(a.groups, a.top)
    several = "netns" in rows and rows["netns"].dropna().nunique() > 1  # containers: pids and names may repeat
    folded = ["processes", "pids"] if a.by == "comm" else []
    parts.append(table(rows, ["pid", "comm", *folded, *(["netns"] if several else []), "connections",
                               "active_closes", "passive_closes", "timewait_count", "close_wait_open",
                               "opened_per_s", "duration_p50_s", "short_share"], left=("comm", "pids", "netns")))
    parts.append('<h2 id="unseen">What this run could not see</h2><ul>')
    parts += [f"<li>{n} {html.escape(what)}</li>" for what, n in unseen(run).items()]
    parts.append("<li>TIME_WAITs and connections begun before tracing: only those found in the snapshot at "
                 "its start are counted, and their ages are lower bounds</li>")
    if not run.timewait_followed:
        parts.append("<li>how TIME_WAITs ended: not followed in this run (each is taken to last 60 s)</li>")
    parts.append("</ul>")
    parts.append(f'<h2 id="summary">The terminal summary</h2><pre>{html.escape(text_summary)}</pre>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
