"""`tcpclose doctor`: what applies to this host, with the evidence, against the sysctl folklore.

It reads the kernel release, the TCP sysctls and TcpExt counters of a network
namespace, the sockets there now (sock_diag), and a recording or --out
directory when given; it never changes a setting.  Each finding has the shape
of analysis/findings.py: {"topic", "severity", "text", "evidence"}.  The kernel facts it
states are in DESIGN.md section 1.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from ..analysis.findings import finding
from ..analysis.pipeline import analyse
from ..analysis.timewait import TIME_WAIT_LEN_S
from ..errors import BadRecording
from ..filters import Filters
from ..analysis import queues
from ..kernel import diag, procfs
from ..kernel.netns import in_netns
from ..labels import owner
from ..record.runinfo import RunInfo
from ..run.replay import rows_of

BUCKETS_NEAR = 0.8  # warn when the TIME_WAITs now fill this share of tcp_max_tw_buckets


def tw_recycle(sysctls: dict, release: str) -> dict:
    value = sysctls.get("tcp_tw_recycle")
    if value is None:
        return finding(
            "tcp_tw_recycle", "info",
            "tcp_tw_recycle does not exist on this kernel: it was removed in Linux 4.12. It dropped SYNs whose TCP "
            "timestamp was older than the last one seen from the same address, which broke clients behind NAT "
            "(their clocks differ). Advice to set it cannot be applied here; tcp_tw_reuse is the safe relative.",
            f"kernel {release}; /proc/sys/net/ipv4/tcp_tw_recycle absent")
    severity = "problem" if value == "1" else "info"
    return finding("tcp_tw_recycle", severity,
                    f"tcp_tw_recycle is {value} on this kernel (older than 4.12)"
                    + (": it drops connections from clients behind NAT; set it to 0" if value == "1" else ""),
                    f"kernel {release}")


def fin_timeout(sysctls: dict, states: dict) -> dict:
    value = sysctls.get("tcp_fin_timeout")
    fin_wait2 = states.get("FIN_WAIT2", 0) + states.get("FIN_WAIT2 (timewait)", 0)
    return finding(
        "tcp_fin_timeout", "info",
        f"tcp_fin_timeout ({value} s) does not shorten TIME_WAIT: it bounds how long a connection this host "
        "closed waits in FIN_WAIT2 for the peer's FIN. TIME_WAIT is fixed at 60 s (TCP_TIMEWAIT_LEN, compiled "
        "into the kernel); changing this sysctl leaves the TIME_WAIT count as it is.",
        f"net.ipv4.tcp_fin_timeout = {value}; {fin_wait2} sockets in FIN_WAIT2 now, {states.get('TIME_WAIT', 0)} "
        "in TIME_WAIT")


def tw_reuse(sysctls: dict, tcpext: dict) -> dict:
    value, timestamps = sysctls.get("tcp_tw_reuse"), sysctls.get("tcp_timestamps")
    size = procfs.port_range_size(sysctls.get("ip_local_port_range"))
    limit = f"{size} ports / {TIME_WAIT_LEN_S:.0f} s = {size / TIME_WAIT_LEN_S:.0f} connections/s" if size else "?"
    what = {
        "0": "connect() never takes over a TIME_WAIT's port, so a client opening connections to one destination "
             f"is limited to {limit} before connect() fails with EADDRNOTAVAIL",
        "1": "connect() may take over a TIME_WAIT older than 1 s towards any destination",
        "2": "connect() may take over a TIME_WAIT older than 1 s towards loopback only (the default); other "
             f"destinations are limited to {limit}",
    }.get(value, f"the value {value} is not one the kernel documents")
    text = (f"tcp_tw_reuse = {value}: {what}. It helps only the connecting side: a server's TIME_WAITs (the "
            "server closed first) are never reused by it.")
    if value in ("1", "2") and timestamps == "0":
        text += " It needs TCP timestamps, and tcp_timestamps is 0, so it does nothing here."
    return finding("tcp_tw_reuse", "warning" if value == "0" else "info", text,
                    f"net.ipv4.tcp_tw_reuse = {value}, tcp_timestamps = {timestamps}; TcpExt TWRecycled = "
                    f"{tcpext.get('TWRecycled', '?')} (connects that took over a TIME_WAIT)")


def max_tw_buckets(sysctls: dict, tcpext: dict, states: dict) -> dict:
    limit = int(sysctls.get("tcp_max_tw_buckets") or 0)
    now = states.get("TIME_WAIT", 0) + states.get("FIN_WAIT2 (timewait)", 0)
    overflow = tcpext.get("TCPTimeWaitOverflow", 0)
    evidence = (f"net.ipv4.tcp_max_tw_buckets = {limit}; {now} timewait sockets now; TcpExt TCPTimeWaitOverflow = "
                f"{overflow} since this network namespace began")
    if overflow:
        return finding(
            "tcp_max_tw_buckets", "problem",
            f"{overflow} TIME_WAITs were never created because tcp_max_tw_buckets ({limit}) was full: those "
            "connections closed without TIME_WAIT's protection, so a delayed segment of an old connection can be "
            "taken into a new one on the same ports, and the peer's retransmitted FIN gets an RST. Raise the limit "
            "(each timewait socket costs a few hundred bytes) or make fewer TIME_WAITs.", evidence)
    if limit and now >= BUCKETS_NEAR * limit:
        return finding("tcp_max_tw_buckets", "warning",
                        f"TIME_WAITs fill {now / limit:.0%} of tcp_max_tw_buckets ({limit}): past it new ones are "
                        "dropped without protection.", evidence)
    return finding("tcp_max_tw_buckets", "info",
                    f"tcp_max_tw_buckets ({limit}) has never overflowed here: every TIME_WAIT was kept.", evidence)


def port_range(sysctls: dict) -> dict:
    value = sysctls.get("ip_local_port_range")
    size = procfs.port_range_size(value)
    return finding(
        "ip_local_port_range", "info",
        f"{size} ephemeral ports: a client can open about {size / TIME_WAIT_LEN_S:.0f} connections/s to one "
        "destination (local address, remote address and port) when it closes first, before its TIME_WAITs hold "
        "every port. SO_REUSEADDR does not change that; reusing connections, more destination addresses or a "
        "wider range do.", f"net.ipv4.ip_local_port_range = {value}")


def sockets_now(counts: dict) -> list[dict]:
    """Who holds TIME_WAITs and CLOSE_WAITs right now (states.counts)."""
    out = []
    for row in counts["processes"]:
        cw, tw = row["states"].get("CLOSE_WAIT", 0), row["states"].get("TIME_WAIT", 0)
        who = owner(row["pid"], row["comm"])
        if cw:
            out.append(finding(
                "close_wait", "problem",
                f"{who} holds {cw} sockets in CLOSE_WAIT now: the peer closed and it has not called close(). "
                "That is a leak in the application (a missing close() after EOF or an error), not a kernel "
                "setting. 'tcpclose trace' gives their ages and file descriptors.",
                f"sock_diag and /proc/{row['pid']}/fd: {cw} CLOSE_WAIT"))
        if tw and row["via"] == "listener":
            out.append(finding(
                "timewait", "warning" if tw >= 1000 else "info",
                f"{who} is a server and closes first: {tw} TIME_WAITs sit on its listening port. Letting clients "
                "close first (or keep-alive) moves or removes them; tcp_tw_reuse cannot help a server.",
                f"sock_diag: {tw} TIME_WAIT on a port {who} listens on"))
    elsewhere = counts["states"].get("TIME_WAIT", 0) - sum(
        r["states"].get("TIME_WAIT", 0) for r in counts["processes"] if r["via"] == "listener")
    if elsewhere:
        out.append(finding(
            "timewait", "info",
            f"{elsewhere} TIME_WAITs are on connections this host opened: its clients close first. A TIME_WAIT "
            "has no process; 'tcpclose trace' names the ones that made them.",
            "sock_diag: TIME_WAIT not on a listening port"))
    return out


AGGREGATES_ONLY = finding(
    "aggregates", "info", "This run kept per-process counts only (--aggregates, or too many socket lives to "
    "analyse in memory): no finding about single "
    "connections, peers or ports can be drawn from it; its processes.csv has who closed first.",
    "run.json has \"aggregates\" and no per-connection records")


def from_run(path: Path) -> list[dict]:
    """The findings of a recording, or of an --out directory (its summary.json)."""
    if path.is_dir():
        facts = path / "summary.json"
        if facts.exists():
            return json.loads(facts.read_text())["findings"]
        run_json = path / "run.json"
        if run_json.exists() and RunInfo.from_dict(json.loads(run_json.read_text())).counted_only:
            return [AGGREGATES_ONLY]
        raise BadRecording(f"{path} has no summary.json: give a directory that 'tcpclose trace -o' wrote")
    kept, run = rows_of(path)
    return [AGGREGATES_ONLY] if run.counted_only else analyse(kept.tally, run).findings


def listen_queues(tcpext: dict, netns: Path | None) -> list[dict]:
    """The listeners near full now, and the queue counters since the namespace began."""
    pressed = queues.pressed(diag.listeners(netns))
    counted = {c: tcpext.get(c, 0) for c in procfs.QUEUE_COUNTERS if tcpext.get(c)}
    if not len(pressed) and not counted:
        return []
    text, evidence = queues.overflow_finding(counted, list(pressed.itertuples(index=False)),
                                             "since this network namespace began")
    return [finding("listen_queue", "warning" if len(pressed) else "info", text, evidence or "no counter moved")]


def run_rate(path: Path | None) -> float | None:
    """A trace's busiest opening rate to one destination (its port pressure), for --sysctl."""
    if path is None:
        return None
    if path.is_dir():
        ports_csv = path / "ports.csv"
        if not ports_csv.is_file():
            return None
        import pandas as pd

        rates = pd.read_csv(ports_csv)["rate_now_per_s"]
        return float(rates.max()) if len(rates) else None
    kept, run = rows_of(path)
    pressure = analyse(kept.tally, run).pressure if not run.counted_only else None
    return float(pressure["rate_now_per_s"].max()) if pressure is not None and len(pressure) else None


def review_sysctls(text: str, netns: Path | None = None, run_path: Path | None = None) -> list:
    """doctor --sysctl: the block judged line by line (host/sysctl_review.py)."""
    from . import sysctl_review

    evidence = sysctl_review.gather(netns, run_rate(run_path))
    return sysctl_review.review(text, evidence, lambda key: in_netns(netns, lambda: sysctl_review.read_sysctl(key)))


def examine(netns: Path | None = None, run_path: Path | None = None) -> dict:
    from . import states  # sock_diag

    release = os.uname().release
    sysctls = procfs.sysctls(netns)
    tcpext = procfs.tcpext(netns)
    counts = states.counts(states.sockets_now(Filters(), netns))
    host = [tw_recycle(sysctls, release), fin_timeout(sysctls, counts["states"]), tw_reuse(sysctls, tcpext),
            max_tw_buckets(sysctls, tcpext, counts["states"]), port_range(sysctls)]
    return {
        "kernel_release": release, "sysctls": sysctls,
        "tcpext": {k: tcpext.get(k) for k in procfs.TIMEWAIT_COUNTERS},
        "states": counts["states"],
        "host": host, "sockets_now": sockets_now(counts), "listen_queues": listen_queues(tcpext, netns),
        "recording": from_run(run_path) if run_path else None,
    }


def render(report: dict, width: int = 100) -> str:
    lines = [f"tcpclose doctor: Linux {report['kernel_release']}; sockets now: "
             + (", ".join(f"{n} {s}" for s, n in report["states"].items()) or "none")]
    sections = [("Kernel settings", report["host"]), ("Sockets now", report["sockets_now"]),
                ("Listen queues", report["listen_queues"])]
    if report["recording"] is not None:
        sections.append(("From the recording", report["recording"]))
    for title, found in sections:
        lines.append(f"\n{title}")
        for f in found:
            lines.append(textwrap.fill(f"[{f['severity']}] {f['text']}", width, initial_indent="  ",
                                       subsequent_indent="    "))
            lines.append(textwrap.fill(f"evidence: {f['evidence']}", width, initial_indent="    ",
                                       subsequent_indent="      "))
        if not found:
            lines.append("  nothing")
    lines.append("\nNothing was changed: doctor only reads.")
    return "\n".join(lines) + "\n"
