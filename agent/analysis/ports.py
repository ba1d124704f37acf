"""Ephemeral-port pressure: how near each destination this host connects to is to running out of local ports.

connect() needs a local port no other socket uses towards the same remote
address and port, and a TIME_WAIT keeps its port for 60 s (DESIGN.md section 1).
So each (local address, remote address, remote port) has the ephemeral range
(net.ipv4.ip_local_port_range) to itself, and a client can open at most
range / TIME_WAIT length connections a second to it without reusing a port in
TIME_WAIT: 28 232 / 60 s = 470/s with the default range.  Past that connect()
fails with EADDRNOTAVAIL, unless tcp_tw_reuse lets it take over a TIME_WAIT
older than 1 s (it needs TCP timestamps; 2, the default, allows it on loopback only).
"""
from __future__ import annotations

import ipaddress

import numpy as np
import pandas as pd

from ..kernel.procfs import port_range_size
from ..labels import printable
from ..record.runinfo import RunInfo

RATE_WINDOW_S = 10.0  # the "current" rate: connections opened in the last this many seconds of the trace
WARN_SHARE = 0.5  # warn once a destination's TIME_WAITs hold this share of the range
DEFAULT_RANGE = "32768 60999"  # the kernel's default, for recordings without the sysctls
PRESSURE_COLUMNS = [
    "laddr", "raddr", "rport", "processes", "connections", "timewait_peak", "timewait_now", "port_range",
    "peak_share", "now_share", "rate_now_per_s", "max_rate_per_s", "timewait_len_s", "tw_reuse",
    "seconds_left", "warning",
]


def tw_reuse_applies(value: str | None, raddr: str, timestamps: str | None) -> bool:
    """Would tcp_tw_reuse let connect() take over a TIME_WAIT towards raddr?
    1: any destination, 2: loopback only, 0: never; all need tcp_timestamps."""
    if value not in ("1", "2") or timestamps == "0":
        return False
    try:
        return value == "1" or ipaddress.ip_address(raddr).is_loopback
    except ValueError:
        return False


def pressure(tally, run: RunInfo) -> pd.DataFrame:
    """One row per destination this host connected to, the most pressed first.  The TIME_WAITs
    at peak and the rate in the last RATE_WINDOW_S are read to the quantum of the run's
    counts (analysis.quanta: 0.1 s up to 5 minutes)."""
    destinations = tally.occupancy.destinations
    if not destinations:
        return pd.DataFrame(columns=PRESSURE_COLUMNS)
    sysctls = run.sysctls or {}
    size = port_range_size(sysctls.get("ip_local_port_range") or DEFAULT_RANGE)
    started, ended = run.started_at, run.ended_at
    length = tally.timewait_length()
    window = min(RATE_WINDOW_S, max(ended - started, 1e-9))
    rows = []
    for (laddr, raddr, rport), dest in destinations.items():
        quanta = dest.quanta
        last = quanta.index_of(ended)
        held = quanta.cumulative("tw_start", last + 1) - quanta.cumulative("tw_stop", last + 1)
        began = quanta.counts("tw_start", last + 1) > 0
        peak = int(held[began].max()) if began.any() else 0
        now = int(held[-1])
        recent = quanta.counts("opened", last + 1)[max(int((ended - window - started) // quanta.quantum), 0):]
        rate = float(recent.sum() / window)
        reuse = tw_reuse_applies(sysctls.get("tcp_tw_reuse"), raddr, sysctls.get("tcp_timestamps"))
        warn = max(peak, now) > WARN_SHARE * size
        # the range fills at the opening rate less the rate TIME_WAITs end, about now / length
        growth = rate - now / length
        left = (size - now) / growth if warn and growth > 0 else np.nan
        rows.append({
            "laddr": laddr, "raddr": raddr, "rport": int(rport),
            "processes": " ".join(sorted(dest.names)),
            "connections": dest.connections, "timewait_peak": peak, "timewait_now": now, "port_range": size,
            "peak_share": peak / size, "now_share": now / size, "rate_now_per_s": rate,
            "max_rate_per_s": size / length, "timewait_len_s": length, "tw_reuse": reuse,
            "seconds_left": max(left, 0.0), "warning": warn,
        })
    out = pd.DataFrame(rows, columns=PRESSURE_COLUMNS)
    return out.sort_values(["peak_share", "connections"], ascending=False, kind="stable").reset_index(drop=True)


def describe(row) -> str:
    """One destination's pressure in plain words."""
    dest = f"{row.laddr} -> {row.raddr}:{row.rport} ({printable(row.processes)})"
    held = (f"{row.timewait_peak} TIME_WAITs at peak, {row.timewait_now} at the end, of {row.port_range} "
            f"ephemeral ports ({row.peak_share:.0%} at peak)")
    rate = (f"opening {row.rate_now_per_s:.0f}/s; without reuse it can sustain {row.max_rate_per_s:.0f}/s "
            f"({row.port_range} ports / {row.timewait_len_s:.0f} s TIME_WAIT)")
    text = f"{dest}: {held}; {rate}"
    if row.warning:
        if not pd.isna(row.seconds_left):
            text += f". At this rate the ports run out in about {row.seconds_left:.0f} s"
        else:
            text += ". Over half the range is held, though not growing at the current rate"
        text += (": connect() will take over TIME_WAITs older than 1 s (tcp_tw_reuse applies to this destination)"
                 if row.tw_reuse else ": then connect() fails with EADDRNOTAVAIL")
    return text
