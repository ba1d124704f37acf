"""What the running kernel says about itself in /proc: its tick rate, its memory, its TCP
counters and sysctls (those two per network namespace: read inside one with netns.in_netns)."""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from .netns import PROC, in_netns, namespaces

# TcpExt counters that account for timewait sockets (DESIGN.md section 1).  TW and
# TWKilled count timewait sockets when they are *created* (timeout > 4 s vs <= 4 s),
# TWRecycled a connect() that took over a TIME_WAIT's 4-tuple, TCPTimeWaitOverflow
# the timewait sockets never created because tcp_max_tw_buckets was reached.
TIMEWAIT_COUNTERS = ("TW", "TWKilled", "TWRecycled", "TCPTimeWaitOverflow")
# TcpExt counters of the listen queues (host/queues.py): a full accept queue (ListenOverflows,
# ListenDrops), a full SYN queue (TCPReqQFullDrop, or with syncookies TCPReqQFullDoCookies),
# and the SYN cookies sent, validated and refused.
QUEUE_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "SyncookiesSent",
                  "SyncookiesRecv", "SyncookiesFailed")


def hz() -> int | None:
    """CONFIG_HZ, the jiffies per second the timer wheel counts in; None if the config is not readable."""
    candidates = [(PROC / "config.gz", gzip.open), (Path(f"/boot/config-{os.uname().release}"), open)]
    for path, opener in candidates:
        try:
            with opener(path, "rt") as config:
                for line in config:
                    match = re.match(r"CONFIG_HZ=(\d+)$", line.strip())
                    if match:
                        return int(match.group(1))
        except OSError:
            continue
    return None


def idle_cpu_seconds() -> float | None:
    """Seconds every CPU spent idle (or waiting for I/O) since boot, summed (/proc/stat's
    first line, in USER_HZ ticks); None if it cannot be read."""
    try:
        with open(PROC / "stat") as f:
            fields = f.readline().split()
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def process_comm(pid: int) -> str | None:
    """A process's name (its main thread's comm, /proc/PID/comm); None once it is gone."""
    try:
        return (PROC / str(pid) / "comm").read_text().rstrip("\n")
    except OSError:
        return None


def netstat(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat as {"TcpExt": {"TW": 12, ...}, ...}: pairs of header and value lines."""
    tables: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for header, values in zip(lines[0::2], lines[1::2]):
        name, _, names = header.partition(":")
        vname, _, numbers = values.partition(":")
        if name != vname:
            continue
        tables[name] = dict(zip(names.split(), (int(v) for v in numbers.split())))
    return tables


def tcp_counters(text: str) -> dict[str, int]:
    """The TcpExt counters a run accounts for: its timewait sockets' and its listen queues'."""
    tcpext = netstat(text).get("TcpExt", {})
    return {name: tcpext[name] for name in (*TIMEWAIT_COUNTERS, *QUEUE_COUNTERS) if name in tcpext}


def _read_in_netns(ns_path: Path, path: str) -> str | None:
    try:
        return in_netns(ns_path, lambda: Path(path).read_text())
    except OSError:
        return None


def all_tcp_counters() -> dict[str, dict]:
    """{netns id: {"name": ..., "counters": {TW: ..., ListenOverflows: ...}}} for every network
    namespace that can be read (tcp_counters)."""
    out = {}
    for ns, (path, name) in namespaces().items():
        text = _read_in_netns(path, "/proc/thread-self/net/netstat")
        if text is not None:
            out[ns] = {"name": name, "counters": tcp_counters(text)}
    return out


# The TCP sysctls that decide how many TIME_WAITs a host holds and what they cost
# (DESIGN.md section 1).  They live in /proc/sys/net/ipv4 and are per network
# namespace: /proc/sys/net shows the namespace of the task that opens the file.
TCP_SYSCTLS = ("ip_local_port_range", "tcp_tw_reuse", "tcp_fin_timeout", "tcp_max_tw_buckets",
               "tcp_timestamps", "tcp_rfc1337", "tcp_tw_recycle")


def _read_sysctls() -> dict[str, str | None]:
    out = {}
    for name in TCP_SYSCTLS:
        try:  # tcp_tw_recycle is gone since Linux 4.12: None says it does not exist
            out[name] = " ".join((PROC / "sys/net/ipv4" / name).read_text().split())
        except OSError:
            out[name] = None
    return out


def sysctls(netns: Path | None = None) -> dict[str, str | None]:
    """The TCP sysctls as the kernel shows them (text, whitespace collapsed), in this
    namespace or the one `netns` opens; a sysctl that does not exist is None."""
    return in_netns(netns, _read_sysctls)


def port_range_size(value: str | None) -> int | None:
    """How many ephemeral ports net.ipv4.ip_local_port_range gives ("32768 60999" -> 28232)."""
    try:
        low, high = (int(v) for v in (value or "").split())
    except ValueError:
        return None
    return high - low + 1


def tcpext(netns: Path | None = None) -> dict[str, int]:
    """All TcpExt counters of this namespace, or of the one `netns` opens."""
    text = in_netns(netns, lambda: Path("/proc/thread-self/net/netstat").read_text())
    return netstat(text).get("TcpExt", {})
