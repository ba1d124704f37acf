"""report.html of `tcpclose report --prometheus`: the incident report of a fleet, made from
what its agents reported to Prometheus (metrics.fleet) in the words of a trace's report.html
(output.report_html): the findings first, then the plots over the range, the workloads, what
the agents could not see, and the text summary."""
from __future__ import annotations

import html
import time

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis import ports
from ..labels import printable, span_text
from ..metrics.fleet import REASONS, Fleet
from .report_html import figure, finding_html, log_scale_if_decades, page_head, table

TOP = 5  # workloads and destinations per plot over time
TOP_FINDINGS = 3  # workloads named as closing first
EXHAUSTED = 0.0  # headroom at which connect() to the destination fails


def _finding(topic: str, severity: str, text: str, evidence: str) -> dict:
    return {"topic": topic, "severity": severity, "text": text, "evidence": evidence}


def findings(fleet: Fleet) -> list[dict]:
    """What the range shows, in plain words: who closes first, the CLOSE_WAIT leaks, the
    destinations running out of ports, the TIME_WAITs the kernels did not make, lost records."""
    rows = fleet.workloads
    out = []
    closers = rows[rows["active_closes"] > 0].sort_values("active_closes", ascending=False, kind="stable")
    for row in closers.head(TOP_FINDINGS).itertuples(index=False):
        closed = row.active_closes + row.passive_closes + row.simultaneous_closes
        out.append(_finding(
            "closes_first", "info",
            f"{printable(row.comm)} closes first: {row.active_closes:,} of its {closed:,} closes were active, "
            f"and left {row.timewait_count:,} TIME_WAITs on its hosts (the side that closes first keeps the "
            "TIME_WAIT; its peer does not).",
            'tcpclose_closes_total{kind="active"} and tcpclose_timewaits_total over the range'))
    for row in rows[rows["close_wait_open"] > 0].itertuples(index=False):
        oldest = "" if pd.isna(row.close_wait_max_age_s) else f"the oldest {row.close_wait_max_age_s:,.0f} s old at worst"
        out.append(_finding(
            "close_wait", "problem",
            f"{printable(row.comm)} leaks CLOSE_WAIT: {row.close_wait_open:,} sockets at the end of the range whose "
            "peer closed and that it has not closed. Find where it reads EOF (recv() returning 0) or an error "
            "and add close(); no sysctl fixes this.",
            f"tcpclose_close_wait_sockets at the end of the range{'; ' + oldest if oldest else ''} "
            "(tcpclose_close_wait_oldest_seconds)"))
    for row in fleet.headroom[fleet.headroom["headroom"] < 1 - ports.WARN_SHARE].itertuples(index=False):
        gone = row.headroom <= EXHAUSTED
        out.append(_finding(
            "ports", "problem" if gone else "warning",
            f"{printable(row.instance)}: client TIME_WAITs from {printable(row.source)} to "
            f"{printable(row.destination)} held {1 - row.headroom:.0%} of the ephemeral port range at their peak"
            + (": connect() to it failed with EADDRNOTAVAIL unless tcp_tw_reuse applied." if gone else
               "; at 100 % connect() to it fails with EADDRNOTAVAIL unless tcp_tw_reuse applies.")
            + " Reuse connections (keep-alive, a pool), or widen net.ipv4.ip_local_port_range.",
            "the lowest tcpclose_port_headroom_ratio over the range"))
    if fleet.overflows:
        out.append(_finding(
            "overflow", "problem",
            f"The kernels made {fleet.overflows:,} TIME_WAITs fewer than due because tcp_max_tw_buckets was full: "
            "those connections lost TIME_WAIT's protection. Raise tcp_max_tw_buckets, or make fewer TIME_WAITs.",
            "tcpclose_timewait_overflows_total (TcpExt TCPTimeWaitOverflow) over the range"))
    lost = fleet.unseen.get("ringbuf_drops", 0)
    if lost:
        out.append(_finding(
            "unseen", "warning",
            f"The agents lost {lost:,} records (their ring buffers were full): the counts above are low.",
            'tcpclose_unseen_total{what="ringbuf_drops"} over the range'))
    return out


def _minutes(frame: pd.DataFrame, end: float) -> np.ndarray:
    return (frame.index.to_numpy(float) - end) / 60


def _over_time(fleet: Fleet, name: str, chosen: list[str], ylabel: str, title: str):
    """A drawing of the range query `name`'s series `chosen`, against minutes before the end."""
    frame = fleet.over_time.get(name, pd.DataFrame())
    chosen = [c for c in chosen if c in frame.columns]

    def draw(fig: Figure):
        ax = fig.add_subplot(1, 1, 1)
        x = _minutes(frame, fleet.end)
        for column in chosen:
            ax.plot(x, frame[column].to_numpy(float), label=printable(column))
        ax.set(xlabel=f"minutes before {time.strftime('%H:%M:%S', time.gmtime(fleet.end))} UTC", ylabel=ylabel,
               title=title)
        ax.legend(fontsize="small")
    return draw, bool(chosen)


def _closes(fleet: Fleet) -> str:
    chosen = fleet.workloads.sort_values("active_closes", ascending=False, kind="stable")
    chosen = chosen[chosen["active_closes"] > 0]["comm"].head(TOP).tolist()
    draw, any_ = _over_time(fleet, "active_closes", chosen, "active closes per second",
                            f"the {TOP} workloads that close first most")
    return figure("closes", "Who closes first, over the range", draw,
                  None if any_ else "no workload closed a connection first in the range")


def _close_waits(fleet: Fleet) -> str:
    frame = fleet.over_time.get("close_waits", pd.DataFrame())
    chosen = frame.max().sort_values(ascending=False) if len(frame) else pd.Series(dtype=float)
    draw, any_ = _over_time(fleet, "close_waits", chosen[chosen > 0].index[:TOP].tolist(), "sockets in CLOSE_WAIT",
                            "CLOSE_WAITs open (a line that only climbs: a leak)")
    return figure("close-wait", "CLOSE_WAITs open over the range", draw,
                  None if any_ else "no workload held a socket in CLOSE_WAIT in the range")


def _headroom(fleet: Fleet) -> str:
    frame = fleet.over_time.get("headroom", pd.DataFrame())
    chosen = frame.min().sort_values().index[:TOP].tolist() if len(frame) else []
    draw, any_ = _over_time(fleet, "headroom", chosen, "share of the range free",
                            "ephemeral-port headroom towards the destinations with the least")

    def with_line(fig: Figure):
        draw(fig)
        ax = fig.axes[0]
        ax.axhline(1 - ports.WARN_SHARE, color="red", linestyle="--")
        ax.set_ylim(-0.02, 1.02)
    return figure("ports", "Ephemeral-port headroom over the range", with_line,
                  None if any_ else "no client TIME_WAIT held a port in the range")


def _bucket_label(upper: float, lower: float) -> str:
    return f"> {lower:g} s" if np.isinf(upper) else f"{lower:g}-{upper:g} s"


def _lifetimes(fleet: Fleet) -> str:
    counts = fleet.lifetimes if fleet.lifetimes is not None else pd.Series(dtype=int)
    reasons = pd.Series({r: int(fleet.workloads[f"timewait_{r}"].sum()) for r in REASONS})

    def draw(fig: Figure):
        ax = fig.add_subplot(1, 2, 1)
        uppers = counts.index.to_numpy(float)
        labels = [_bucket_label(u, l) for u, l in zip(uppers, np.r_[0.0, uppers[:-1]])]
        ax.barh(labels, counts.to_numpy())
        log_scale_if_decades(ax, counts.to_numpy())
        ax.invert_yaxis()
        ax.set(xlabel="TIME_WAITs ended", title="how long they lived (60 s: expired as the kernel meant)")
        ax = fig.add_subplot(1, 2, 2)
        ax.barh(reasons.index, reasons.to_numpy())
        log_scale_if_decades(ax, reasons.to_numpy())
        ax.set(xlabel="TIME_WAITs", title="how they ended")
    return figure("timewait-lifetimes", "TIME_WAIT lifetimes and end reasons over the range", draw,
                  None if counts.sum() or reasons.sum() else "no TIME_WAIT ended in the range")


def render(fleet: Fleet, source: str, text_summary: str, top: int | None) -> str:
    end = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(fleet.end))
    rows = fleet.workloads if top is None else fleet.workloads.head(top)
    parts = [
        page_head(f"tcpclose fleet report {end}"),
        f"<h1>tcpclose: {int(fleet.workloads['connections'].sum()):,} socket lives closed in "
        f"{len(fleet.workloads):,} workloads on {len(fleet.instances)} agent(s), the {span_text(fleet.seconds)} to "
        f"{html.escape(end)}</h1>",
        f"<p>As the agents reported them to {html.escape(printable(source))}.</p>",
        '<h2 id="findings">Findings</h2>',
    ]
    found = findings(fleet)
    parts += [finding_html(f) for f in found] or ['<p class="empty">nothing to report in this range</p>']
    parts += [_closes(fleet), _lifetimes(fleet), _close_waits(fleet), _headroom(fleet)]
    shown = rows.assign(workload=rows["comm"].map(printable))
    parts.append('<h2 id="workloads">Workloads</h2>')
    parts.append(table(shown, ["workload", "connections", "active_closes", "passive_closes", "simultaneous_closes",
                               "timewait_count", "timewait_p50_s", "close_wait_open", "close_wait_max_age_s"],
                       left=("workload",)))
    parts.append('<h2 id="unseen">What the agents could not see</h2><ul>')
    parts += [f"<li>{n:,} {html.escape(what)}</li>" for what, n in sorted(fleet.unseen.items())]
    parts.append("<li>what happened between an agent's last scrape and the end of the range, and on hosts "
                 "whose agent was not scraped</li></ul>")
    parts.append(f'<h2 id="summary">The text summary</h2><pre>{html.escape(text_summary)}</pre>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
